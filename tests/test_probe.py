"""The probe: activations equal a direct computation, early exit really stops, hooks never leak."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import featvis


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_activations_equal_direct_forward():
    net = _net()
    model = featvis.as_model(net, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = torch.rand(2, 3, 12, 12)
    model(x)  # materialise the lazy layer
    acts = featvis.capture(model, x, ["1", "2"], early_exit=False)
    h = net[1](net[0]((x - 0.5) / 0.5))
    assert torch.allclose(acts["1"], h) and torch.allclose(acts["2"], net[2](h))


def test_early_exit_skips_later_layers():
    net = _net()
    model = featvis.as_model(net)
    calls = []
    net[3].register_forward_hook(lambda *a: calls.append("late"))
    featvis.capture(model, torch.rand(1, 3, 12, 12), ["2"], early_exit=True)
    assert calls == []
    featvis.capture(model, torch.rand(1, 3, 12, 12), ["2"], early_exit=False)
    assert calls == ["late"]


def test_early_exit_keeps_graph_for_optimisation(inceptionv1):
    x = torch.rand(1, 3, 96, 96, requires_grad=True)
    with featvis.Probe(inceptionv1, ["mixed3a"], early_exit=True, detach=False) as probe:
        act = probe(x)["mixed3a"]
    act[0, 7].mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in inceptionv1.parameters())


def test_hooks_removed_even_on_error():
    net = _net()
    model = featvis.as_model(net)
    with pytest.raises(RuntimeError):
        with featvis.Probe(model, ["0"]) as probe:
            assert _hook_count(net) == 1
            probe(torch.rand(1, 4, 12, 12))  # wrong channel count: the forward pass fails
    assert _hook_count(net) == 0


def test_unknown_layer_lists_closest_names(inceptionv1):
    with pytest.raises(featvis.FeatvisError, match=r"unknown layer 'mixed4f'.*closest: .*mixed4"):
        featvis.Probe(inceptionv1, ["mixed4f"])
    with pytest.raises(featvis.FeatvisError, match=r"unknown layer 'inception4z'.*inception4"):
        featvis.capture(inceptionv1, torch.rand(1, 3, 32, 32), ["inception4z"])
