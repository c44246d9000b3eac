"""Saliency: which input pixels drove a class score, and whether a map can be trusted.

- ``methods``: ``saliency(model, photo, method)`` -> ``SaliencyResult`` through captum (gradient,
  input x gradient, integrated gradients, SmoothGrad, guided backprop, deconvolution, Grad-CAM,
  guided Grad-CAM, occlusion: ``METHODS``; ``REGIONAL`` ones give [1, H, W]), ``attribute`` (the raw
  attribution), ``guided_model`` (every ReLU call its own module) and ``saliency_figure``.
- ``sanity``: the checks of Adebayo et al. 2018 (``cascading_randomization``, ``sanity_figure``) and
  deletion/insertion scores (Petsiuk et al. 2018: ``deletion_insertion``, ``report_figure``).

``featvis.saliency(model, photo, "gradcam")`` calls ``saliency``: the package is callable.
"""

from .._util.callable_module import make_callable
from .._util.choices import GUIDED, LAYERED, METHODS, REGIONAL, SIGNED
from .methods import (
    SaliencyResult,
    attribute,
    check_method,
    default_gradcam_layer,
    describe,
    draw_saliency,
    guided_model,
    reduce_map,
    resolve_target,
    saliency,
    saliency_figure,
)
from .sanity import DeletionInsertion, SanityStep, cascading_randomization, deletion_insertion, report_figure, sanity_figure

__all__ = ["DeletionInsertion", "GUIDED", "LAYERED", "METHODS", "REGIONAL", "SIGNED", "SaliencyResult", "SanityStep", "attribute",
           "cascading_randomization", "check_method", "default_gradcam_layer", "deletion_insertion", "describe", "draw_saliency",
           "guided_model", "reduce_map", "report_figure", "resolve_target", "saliency", "saliency_figure", "sanity_figure"]

make_callable(__name__, "saliency")  # featvis.saliency(...) calls saliency(); featvis.saliency.X reaches the package
