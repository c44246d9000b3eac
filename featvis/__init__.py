"""featvis: see what convolutional networks see.

Public API (everything a notebook needs):

- Models: ``load_model(spec)`` -> ``FeatvisModel`` (``inceptionv1``, ``googlenet``,
  ``squeezenet1_1``, ``torchvision:NAME``, ``pkg.mod:factory``, ``file.py:factory``) and
  ``as_model(nn.Module)`` for any CNN. Models take RGB images in [0, 1].
- Activations: ``Probe(model, layers, early_exit=...)`` and ``capture(model, x, layers)``.
- Images: ``load_image``, ``save_image``, ``sample_photos``; labels: ``imagenet_labels``.
- Ground truth: ``reference`` (conv/pool from the definition, hand-written gradients) and
  ``check_gradients(fn_or_module, *inputs)`` -> ``GradientReport``.
- Errors: ``FeatvisError`` — every user-fixable problem, with a one-line message.
"""

from . import reference
from .errors import FeatvisError
from .gradcheck import GradientReport, check_gradients
from .images import load_image, sample_photos, save_image
from .labels import imagenet_labels
from .model import FeatvisModel, as_model
from .models import load_model
from .probe import Probe, capture

__version__ = "0.1.0"

__all__ = [
    "FeatvisError",
    "FeatvisModel",
    "GradientReport",
    "Probe",
    "as_model",
    "capture",
    "check_gradients",
    "imagenet_labels",
    "load_image",
    "load_model",
    "reference",
    "sample_photos",
    "save_image",
]
