"""The building blocks of interpretability (Olah et al., Distill 2018) for one photo.

- `explain(model, image, layer, target=..., groups=6)` -> `Explanation`: semantic dictionary,
  activation grid at exact receptive-field centres, NMF neuron groups, spatial attribution
  (gradient x activation, completeness reported) and the flow from an earlier layer's groups;
  ``Explanation.to_dict()`` holds every number
- `explanation_page(model, explanation, title)`: a self-contained HTML page; `grid_image`,
  `attribution_figure`, `groups_figure`: the pictures
- building blocks: `nmf` (deterministic HALS NMF), `logit_gradient`, `group_flow`, `LayerInput`
  (run a model from a layer on), `unit_centres`, `compose_grid`
- `promoted_classes(model, layer, channel, photos=None)`: the classes a unit promotes most
"""

from .._util.callable_module import make_callable
from .attribution import LayerInput, group_flow, layer_activations, logit_gradient
from .blocks import Explanation, Groups, explain
from .grid import compose_grid, unit_centres
from .nmf import NMFResult, nmf
from .page import attribution_figure, explanation_page, grid_image, groups_figure
from .promotes import promoted_classes

__all__ = [
    "Explanation", "Groups", "LayerInput", "NMFResult", "attribution_figure", "compose_grid", "explain", "explanation_page",
    "grid_image", "group_flow", "groups_figure", "layer_activations", "logit_gradient", "nmf", "promoted_classes",
    "unit_centres",
]

make_callable(__name__, "explain")  # featvis.explain(...) calls it; the package's names stay reachable
