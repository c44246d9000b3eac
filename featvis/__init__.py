"""featvis: see what convolutional networks see.

Public API (everything a notebook needs):

- Models: ``load_model(spec)`` -> ``FeatvisModel`` (``inceptionv1``, ``googlenet``,
  ``squeezenet1_1``, ``torchvision:NAME``, ``pkg.mod:factory``, ``file.py:factory``) and
  ``as_model(nn.Module)`` for any CNN. Models take RGB images in [0, 1].
- Activations: ``Probe(model, layers, early_exit=...)`` and ``capture(model, x, layers)``.
- Images: ``load_image``, ``save_image``, ``sample_photos``; labels: ``imagenet_labels``.
- Errors: ``FeatvisError`` — every user-fixable problem, with a one-line message.
"""

from .errors import FeatvisError
from .images import load_image, sample_photos, save_image
from .labels import imagenet_labels
from .model import FeatvisModel, as_model
from .models import load_model
from .probe import Probe, capture

__version__ = "0.1.0"

__all__ = [
    "FeatvisError",
    "FeatvisModel",
    "Probe",
    "as_model",
    "capture",
    "imagenet_labels",
    "load_image",
    "load_model",
    "sample_photos",
    "save_image",
]
