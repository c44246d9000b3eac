"""GoogLeNet / Inception v1 (Szegedy et al., "Going Deeper with Convolutions", 2014).

Exactly the network of the paper's Table 1 and of the BVLC Caffe release: LRN after the first
pool and after conv3, true 5x5 branches, 3x3 stride-2 max pools in ceil mode, a 3x3 stride-1 max pool before each pool
projection, 7x7 average pool, dropout, a 1000-way classifier. No batch norm, no aux heads.

It is *not* the network of distill.pub's articles and OpenAI Microscope: that is Lucid's
TensorFlow-trained GoogLeNet (`featvis.models.inceptionv1_lucid`), a different training, so unit
numbers such as ``mixed4a:476`` do not carry over; the Lucid layer names below are names only.

The network takes Caffe's input (BGR, 0-255, mean-subtracted); `featvis.load_model` wraps it so
users feed RGB in [0, 1]. Every ReLU is an ``nn.ReLU`` module, so hooks and gradient tricks
(guided backprop, redirected ReLU) reach it.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvReLU(nn.Sequential):
    """A convolution followed by its ReLU: ``.conv`` is the pre-activation, the block the post."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.relu = nn.ReLU()


class Inception(nn.Module):
    """One Inception module: 1x1, 1x1->3x3, 1x1->5x5 and pool->1x1 branches, concatenated."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int, pool_proj: int):
        super().__init__()
        self.branch1 = ConvReLU(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(ConvReLU(in_channels, ch3x3red, 1), ConvReLU(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(ConvReLU(in_channels, ch5x5red, 1), ConvReLU(ch5x5red, ch5x5, 5, padding=2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), ConvReLU(in_channels, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


def _lrn() -> nn.LocalResponseNorm:
    # Caffe LRN across channels: x / (1 + alpha/n * sum x^2)^beta with n=5, alpha=1e-4, beta=0.75.
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


class InceptionV1(nn.Module):
    """GoogLeNet with torchvision-style layer names; see the module docstring."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.4):
        super().__init__()
        #                                 in   #1x1 #3x3red #3x3 #5x5red #5x5 pool proj   output (224 input)
        self.conv1 = ConvReLU(3, 64, 7, stride=2, padding=3)                               # 112x112x64
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)                          # 56x56x64
        self.lrn1 = _lrn()
        self.conv2 = ConvReLU(64, 64, 1)                                                   # 56x56x64
        self.conv3 = ConvReLU(64, 192, 3, padding=1)                                       # 56x56x192
        self.lrn2 = _lrn()
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)                          # 28x28x192
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)                         # 28x28x256
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)                       # 28x28x480
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)                          # 14x14x480
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)                        # 14x14x512
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)                       # 14x14x512
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)                       # 14x14x512
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)                       # 14x14x528
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)                     # 14x14x832
        self.maxpool4 = nn.MaxPool2d(3, stride=2, ceil_mode=True)                          # 7x7x832
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)                     # 7x7x832
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)                     # 7x7x1024
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the paper's 7x7 average pool, for any input size
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)                                             # 1000 logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.lrn2(self.conv3(self.conv2(self.lrn1(x)))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        for block in (self.inception4a, self.inception4b, self.inception4c, self.inception4d, self.inception4e):
            x = block(x)
        x = self.inception5b(self.inception5a(self.maxpool4(x)))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


#: The nine Inception blocks in order, named as in the paper (3a ... 5b).
BLOCKS = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
_BRANCHES = {  # our path inside a block -> (Caffe layer suffix, Lucid alias suffix)
    "branch1": ("1x1", "1x1"),
    "branch2.0": ("3x3_reduce", "3x3_bottleneck"),
    "branch2.1": ("3x3", "3x3"),
    "branch3.0": ("5x5_reduce", "5x5_bottleneck"),
    "branch3.1": ("5x5", "5x5"),
    "branch4.1": ("pool_proj", "pool_reduce"),
}

#: Our module path of each convolution -> its Caffe layer name in the BVLC release.
CAFFE_LAYERS: dict[str, str] = {
    "conv1.conv": "conv1/7x7_s2",
    "conv2.conv": "conv2/3x3_reduce",
    "conv3.conv": "conv2/3x3",
    **{f"inception{b}.{path}.conv": f"inception_{b}/{caffe}" for b in BLOCKS for path, (caffe, _) in _BRANCHES.items()},
    "fc": "loss3/classifier",
}

#: Lucid / distill.pub layer names -> our module paths.
LUCID_ALIASES: dict[str, str] = {
    "conv2d0": "conv1", "conv2d0_pre_relu": "conv1.conv",
    "conv2d1": "conv2", "conv2d1_pre_relu": "conv2.conv",
    "conv2d2": "conv3", "conv2d2_pre_relu": "conv3.conv",
    **{f"mixed{b}": f"inception{b}" for b in BLOCKS},
    **{f"mixed{b}_{lucid}": f"inception{b}.{path}" for b in BLOCKS for path, (_, lucid) in _BRANCHES.items()},
    **{f"mixed{b}_{lucid}_pre_relu": f"inception{b}.{path}.conv" for b in BLOCKS for path, (_, lucid) in _BRANCHES.items()},
    **{f"mixed{b}_pool": f"inception{b}.branch4.0" for b in BLOCKS},
}

#: Lucid's concat-level pre-activations: the four branch outputs that ``Inception.forward``
#: concatenates, taken before their ReLUs, in its order; relu(``mixed4a_pre_relu``) is ``mixed4a``.
#: Negative visualizations need them: minimising a ReLU output only drives it to zero.
LUCID_CONCATS: dict[str, tuple[str, ...]] = {
    f"mixed{b}_pre_relu": tuple(f"inception{b}.{branch}.conv" for branch in ("branch1", "branch2.1", "branch3.1", "branch4.1"))
    for b in BLOCKS
}
