"""Lucid's InceptionV1: the GoogLeNet of the distill.pub articles, Circuits thread and OpenAI Microscope.

This is not the BVLC Caffe release (`featvis.models.inceptionv1`) but Google's own GoogLeNet,
trained for the TensorFlow tutorials and published as the "inception5h" graph, which Lucid
loads as ``InceptionV1``. It differs from the BVLC network in training and in these details,
all reproduced here:

- 1008 classes (ImageNet's 1000 after a ``dummy`` class, then 7 unused outputs);
- ``mixed4a`` has 508 channels (204 in its 3x3 branch) and ``mixed5a``'s 5x5 bottleneck 48;
- TensorFlow ``SAME`` padding: output side ceil(in / stride), the total padding
  max((out - 1) * stride + kernel - in, 0) split with the odd pixel *after* (bottom/right).
  For the stride-2 layers (``conv2d0``, ``maxpool0``, ``maxpool1``, ``maxpool4``,
  ``maxpool10``) that is asymmetric and depends on the input size, so `SamePad` computes it
  per call; stride-1 odd windows get the symmetric (k-1)/2, a plain ``padding=``. Max pools
  pad with -inf (TensorFlow ignores padded cells), convolutions with zeros;
- LRN as in the graph: TensorFlow ``LRN`` ops with depth_radius 5, bias 2, alpha 1e-4, beta 0.5 (see below);
- input RGB, 0-255 minus 117 (Lucid's ``image_value_range = (-117, 138)``).

Modules are named as Lucid's graph nodes (``conv2d0``, ``maxpool0``, ``localresponsenorm0``,
``mixed3a`` ... ``mixed5b``, ``softmax2_pre_activation``); inside a block the branches reuse the
BVLC module's ``Inception`` layout, and `LUCID_ALIASES` names them as Lucid does
(``mixed4a_3x3_bottleneck``, ``mixed4a_5x5_pre_relu``, ...). The concatenated pre-activations
(``mixed4a_pre_relu``) are `LUCID_CONCATS`.

LRN, from the sources: the graph's nodes ``localresponsenorm0``/``1`` (dumped from Lucid's
``InceptionV1.pb`` in github.com/greentfrapp/lucent/pull/51) carry depth_radius 5, bias 2.0, alpha
9.9999997e-05 (1e-4 in float32), beta 0.5. TensorFlow's op (tf.nn.local_response_normalization's
documentation) is x / (bias + alpha * sum(x[d - r : d + r + 1] ** 2)) ** beta, a sum over 11 channels;
PyTorch's ``LocalResponseNorm(size, alpha, beta, k)`` divides alpha by ``size`` (an average, zero-padded), so
the graph's op is ``LocalResponseNorm(11, alpha=11e-4, beta=0.5, k=2.0)``, as captum's optim branch also has
it (captum/optim/models/_image/inception_v1.py: ``lrn_vals = (11, 0.0011, 0.5, 2.0)``). Lucent's InceptionV1
(torch-lucent 0.1.8, lucent/modelzoo/inceptionv1/InceptionV1.py, with the same call as the conversion it came
from, github.com/ProGamerGov/pytorch-old-tensorflow-models/inception5h.py) runs ``F.local_response_norm(size=9,
alpha=9.99999974738e-05, beta=0.5, k=1)``: a 9-channel window, alpha / 9 and bias 1, not the graph's op, so
its activations differ from these from ``localresponsenorm0`` on (mixed3a by about 70% of its range on
random weights; the PR above proposes the fix).

Weights: the graph converted to a PyTorch state dict, ``inception5h.pth``, as published by
Lucent (keys like ``mixed4a_3x3_pre_relu_conv.weight``) and by captum's optim branch (keys like
``mixed4a.conv_3x3.weight``); `lucid_state_dict` reads either layout.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .._util.errors import FeatvisError
from .inceptionv1 import BLOCKS, ConvReLU, Inception
from .inceptionv1 import LUCID_ALIASES as BVLC_LUCID_ALIASES

NUM_CLASSES = 1008
INPUT_MEAN = 117.0  # Lucid: image_value_range = (-117, 255 - 117), RGB


class SamePad(nn.Module):
    """TensorFlow SAME padding of a ``kernel`` x ``kernel`` window with ``stride``, filled with ``value``."""

    def __init__(self, kernel: int, stride: int, value: float = 0.0):
        super().__init__()
        self.kernel, self.stride, self.value = kernel, stride, value

    def amounts(self, size: int) -> tuple[int, int]:
        """(before, after) padding of an axis of ``size`` pixels: the odd pixel goes after."""
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (*self.amounts(x.shape[-1]), *self.amounts(x.shape[-2])), value=self.value)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, value={self.value}"


class SameMaxPool(nn.Sequential):
    """A 3x3 stride-2 max pool with TensorFlow SAME padding (-inf, odd pixel after)."""

    def __init__(self):
        super().__init__()
        self.pad = SamePad(3, 2, value=float("-inf"))
        self.pool = nn.MaxPool2d(3, stride=2)


class StridedConvReLU(nn.Sequential):
    """A stride-2 convolution with TensorFlow SAME padding and its ReLU (``.conv`` is the pre-activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.pad = SamePad(kernel_size, stride)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride)
        self.relu = nn.ReLU()


def _lrn() -> nn.LocalResponseNorm:
    """The graph's LRN (depth_radius 5, bias 2, alpha 1e-4, beta 0.5); PyTorch divides alpha by the window (11)."""
    return nn.LocalResponseNorm(11, alpha=11e-4, beta=0.5, k=2.0)


class InceptionV1Lucid(nn.Module):
    """The inception5h graph, node by node (see the module docstring); returns the 1008 logits."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        #                                         in  #1x1 #3x3red #3x3 #5x5red #5x5 pool   output (224 input)
        self.conv2d0 = StridedConvReLU(3, 64, 7, stride=2)                                 # 112x112x64
        self.maxpool0 = SameMaxPool()                                                      # 56x56x64
        self.localresponsenorm0 = _lrn()
        self.conv2d1 = ConvReLU(64, 64, 1)                                                 # 56x56x64
        self.conv2d2 = ConvReLU(64, 192, 3, padding=1)                                     # 56x56x192
        self.localresponsenorm1 = _lrn()
        self.maxpool1 = SameMaxPool()                                                      # 28x28x192
        self.mixed3a = Inception(192, 64, 96, 128, 16, 32, 32)                             # 28x28x256
        self.mixed3b = Inception(256, 128, 128, 192, 32, 96, 64)                           # 28x28x480
        self.maxpool4 = SameMaxPool()                                                      # 14x14x480
        self.mixed4a = Inception(480, 192, 96, 204, 16, 48, 64)                            # 14x14x508
        self.mixed4b = Inception(508, 160, 112, 224, 24, 64, 64)                           # 14x14x512
        self.mixed4c = Inception(512, 128, 128, 256, 24, 64, 64)                           # 14x14x512
        self.mixed4d = Inception(512, 112, 144, 288, 32, 64, 64)                           # 14x14x528
        self.mixed4e = Inception(528, 256, 160, 320, 32, 128, 128)                         # 14x14x832
        self.maxpool10 = SameMaxPool()                                                     # 7x7x832
        self.mixed5a = Inception(832, 256, 160, 320, 48, 128, 128)                         # 7x7x832
        self.mixed5b = Inception(832, 384, 192, 384, 48, 128, 128)                         # 7x7x1024
        self.avgpool0 = nn.AdaptiveAvgPool2d(1)  # the graph's 7x7 VALID average pool, for any input size
        self.softmax2_pre_activation = nn.Linear(1024, num_classes)                        # 1008 logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.localresponsenorm0(self.maxpool0(self.conv2d0(x)))
        x = self.maxpool1(self.localresponsenorm1(self.conv2d2(self.conv2d1(x))))
        x = self.maxpool4(self.mixed3b(self.mixed3a(x)))
        for block in (self.mixed4a, self.mixed4b, self.mixed4c, self.mixed4d, self.mixed4e):
            x = block(x)
        x = self.mixed5b(self.mixed5a(self.maxpool10(x)))
        return self.softmax2_pre_activation(torch.flatten(self.avgpool0(x), 1))


_STEM = {"conv1": "conv2d0", "conv2": "conv2d1", "conv3": "conv2d2"}


def _lucid_path(bvlc_path: str) -> str:
    """The BVLC module's path translated to this module's: ``inception4a.branch2.0`` -> ``mixed4a.branch2.0``."""
    head, dot, rest = bvlc_path.partition(".")
    return _STEM.get(head, head.replace("inception", "mixed")) + dot + rest


#: Lucid's names of branch layers and pre-activations -> module paths (block names are module paths).
LUCID_ALIASES: dict[str, str] = {
    alias: _lucid_path(path) for alias, path in BVLC_LUCID_ALIASES.items() if alias != _lucid_path(path)
}

#: Lucid's concat-level pre-activations: relu(``mixed4a_pre_relu``) is ``mixed4a``.
LUCID_CONCATS: dict[str, tuple[str, ...]] = {
    f"mixed{b}_pre_relu": tuple(f"mixed{b}.{branch}.conv" for branch in ("branch1", "branch2.1", "branch3.1", "branch4.1"))
    for b in BLOCKS
}

# Published state-dict layouts: our module path of each convolution / linear layer -> its key prefix.
_CONV_PATHS = {path: alias.removesuffix("_pre_relu") for alias, path in LUCID_ALIASES.items()
               if alias.endswith("_pre_relu") and path.endswith(".conv")}
_CAPTUM_BRANCH = {"1x1": "conv_1x1", "3x3_bottleneck": "conv_3x3_reduce", "3x3": "conv_3x3",
                  "5x5_bottleneck": "conv_5x5_reduce", "5x5": "conv_5x5", "pool_reduce": "pool_proj"}
LUCENT_KEYS: dict[str, str] = {path: f"{name}_pre_relu_conv" for path, name in _CONV_PATHS.items()} | {
    "softmax2_pre_activation": "softmax2_pre_activation_matmul"}
CAPTUM_KEYS: dict[str, str] = {
    path: ({"conv2d0": "conv1", "conv2d1": "conv2", "conv2d2": "conv3"}.get(name)
           or f"{name[:7]}.{_CAPTUM_BRANCH[name[8:]]}")
    for path, name in _CONV_PATHS.items()
} | {"softmax2_pre_activation": "fc"}


def lucid_state_dict(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``state`` (Lucent's or captum's ``inception5h.pth`` layout, or ours) renamed to this module's keys.

    Keys neither layout uses (captum's auxiliary heads ``aux1.*``/``aux2.*``) are dropped; a
    file of another model is a one-line error naming a key it lacks.
    """
    for layout in (LUCENT_KEYS, CAPTUM_KEYS, {path: path for path in LUCENT_KEYS}):
        if all(f"{prefix}.weight" in state for prefix in layout.values()):
            return {f"{path}.{kind}": state[f"{prefix}.{kind}"] for path, prefix in layout.items() for kind in ("weight", "bias")}
    raise FeatvisError(f"weights {source} are not an inception5h state dict (no key {LUCENT_KEYS['conv2d0.conv']}.weight "
                       "or conv1.weight); give Lucent's or captum's inception5h.pth")
