"""The probe: activations equal a direct computation, early exit really stops, hooks never leak."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import featvis
from featvis.optvis.fast_layers import fused_conv_relus


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


BRANCHES = ["mixed4a_1x1_pre_relu", "mixed4a_3x3_pre_relu", "mixed4a_5x5_pre_relu", "mixed4a_pool_reduce_pre_relu"]


def test_concat_layer_joins_the_branch_pre_activations_and_exits_early(inceptionv1):
    """mixed4a_pre_relu is torch.cat of the four branch convolutions (Lucid's name); its ReLU is mixed4a."""
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    acts = featvis.capture(inceptionv1, x, ["mixed4a_pre_relu", "mixed4a", *BRANCHES])
    concat = acts["mixed4a_pre_relu"]
    assert concat.shape == (1, 512, 14, 14) and concat.min() < 0
    assert torch.equal(concat, torch.cat([acts[name] for name in BRANCHES], 1))
    assert torch.equal(concat.relu(), acts["mixed4a"])
    later = []  # the probe stops once the last part ran: not even that branch's ReLU runs
    handles = [inceptionv1.net.get_submodule(path).register_forward_hook(lambda *a: later.append(1))
               for path in ("inception4a.branch4.1.relu", "inception4b")]
    try:
        featvis.capture(inceptionv1, x, ["mixed4a_pre_relu"])
    finally:
        for handle in handles:
            handle.remove()
    assert later == [] and _hook_count(inceptionv1) == 0
    with fused_conv_relus(inceptionv1):  # rendering's fused conv + ReLU leaves the probed convolutions alone
        assert torch.equal(featvis.capture(inceptionv1, x, ["mixed4a_pre_relu"])["mixed4a_pre_relu"], concat)


def test_concat_layer_gradient_equals_the_gradient_through_its_parts(inceptionv1):
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(512, generator=torch.Generator().manual_seed(2))  # every branch takes part

    def input_gradient(layers, join):
        leaf = x.clone().requires_grad_(True)
        with featvis.Probe(inceptionv1, layers, early_exit=True, detach=False) as probe:
            act = join(probe(leaf))
        (act.mean((2, 3)) * weights).sum().backward()
        return leaf.grad

    concat = input_gradient(["mixed4a_pre_relu"], lambda acts: acts["mixed4a_pre_relu"])
    parts = input_gradient(BRANCHES, lambda acts: torch.cat([acts[name] for name in BRANCHES], 1))
    assert concat.abs().sum() > 0 and torch.allclose(concat, parts, rtol=1e-5, atol=1e-8)
    assert all(p.grad is None for p in inceptionv1.parameters())
