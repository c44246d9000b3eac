"""A tiny CNN for the `featvis examples` process tests, loadable as ``tests/examples_models.py:slow_cnn``.

It sleeps ``$FEATVIS_TEST_SLEEP`` seconds per forward pass, so a test can kill a run in the middle.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict

import torch
from torch import nn

import featvis

SLEEP_ENV = "FEATVIS_TEST_SLEEP"


class Sleep(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(float(os.environ.get(SLEEP_ENV, "0")))
        return x


def slow_cnn() -> featvis.FeatvisModel:
    """sleep -> conv1 (3x3, stride 2) -> ReLU -> max pool 2 -> conv2 (3x3, pad 1) -> ReLU, 32 px input."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(
        sleep=Sleep(), conv1=nn.Conv2d(3, 6, 3, stride=2), relu1=nn.ReLU(), pool=nn.MaxPool2d(2),
        conv2=nn.Conv2d(6, 5, 3, padding=1), relu2=nn.ReLU(),
    ))
    return featvis.FeatvisModel(net, name="slow", input_size=32).freeze()
