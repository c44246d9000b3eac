"""Models: the networks featvis looks into, and everything that makes them ready to probe.

- ``wrapper``: ``FeatvisModel`` (any ``nn.Module`` taking RGB images in [0, 1]: normalization,
  input size, labels, layer aliases), ``as_model`` and ``model_fingerprint`` (cache keys).
- ``modes``: ``@analysis``, which runs the model in eval mode for one call and restores every module's mode.
- ``zoo``: ``load_model(spec)`` for ``inceptionv1``, ``inceptionv1_lucid``, ``googlenet``,
  ``squeezenet1_1``, ``efficientnet_lite2``, ``torchvision:NAME`` and user factories.
- ``weights``: finding, downloading and SHA-256-checking weights files; ``labels``: ImageNet names.
- ``inceptionv1``, ``inceptionv1_lucid``, ``efficientnet_lite``: the architectures, each read like its paper's table.
"""

from .efficientnet_lite import efficientnet_lite2
from .inceptionv1 import InceptionV1
from .wrapper import IMAGENET_MEAN, IMAGENET_STD, FeatvisModel, as_model, model_fingerprint
from .zoo import BUILTIN, googlenet, inceptionv1, inceptionv1_lucid, load_model, squeezenet1_1

__all__ = ["BUILTIN", "FeatvisModel", "IMAGENET_MEAN", "IMAGENET_STD", "InceptionV1", "as_model", "efficientnet_lite2", "googlenet",
           "inceptionv1", "inceptionv1_lucid", "load_model", "model_fingerprint", "squeezenet1_1"]
