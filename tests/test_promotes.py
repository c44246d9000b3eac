"""The classes a unit promotes: on a net whose head is set by hand the answer is computed by hand (its head
weight, times the fraction of positions where the ReLU passes); on GoogLeNet each value is the channel's
summed reverse-mode gradient of that logit (autograd), and the two routes are compared."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import featvis
from featvis.explain.attribution import LayerInput
from featvis.explain.promotes import promoted_classes


def _planted() -> tuple[featvis.FeatvisModel, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    head = torch.tensor([[0.5, -1.0, 0.0, 2.0], [3.0, 0.2, -0.5, 0.0], [-2.0, 1.5, 1.0, 0.1],
                         [0.0, 0.0, 4.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
    with torch.no_grad():
        net[4].weight.copy_(head)
    model = featvis.as_model(net, input_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                             labels=["a", "b", "c", "d", "e"])
    return model, head


def test_without_photos_a_channel_promotes_what_its_head_weights_say():
    model, head = _planted()
    for c in range(4):
        got = promoted_classes(model, "0", c, top=5)
        order = head[:, c].argsort(descending=True).tolist()
        assert [i for i, _, _ in got][:2] == order[:2]
        for index, label, value in got:
            assert label == "abcde"[index] and value == pytest.approx(float(head[index, c]), abs=1e-5)


def test_over_photos_only_the_positions_the_relu_passes_count():
    model, head = _planted()
    photos = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for c in range(4):
        fractions = []
        for photo in photos:  # plain PyTorch: where the channel is positive after the convolution
            with torch.no_grad():
                conv = model.net[0](model.normalize(model.prepare(photo)))
            fractions.append(float((conv[0, c] > 0).float().mean()))
        expected = head[:, c] * sum(fractions) / len(fractions)
        got = {i: v for i, _, v in promoted_classes(model, "0", c, photos=photos, top=5)}
        assert got == pytest.approx({i: float(expected[i]) for i in range(5)}, abs=1e-5)


def test_googlenet_values_are_the_summed_reverse_mode_gradient(inceptionv1, chelsea):
    layer, channel = "mixed4d", 100
    top = promoted_classes(inceptionv1, layer, channel, photos=[chelsea], top=3)
    x = inceptionv1.prepare(chelsea)
    acts = featvis.capture(inceptionv1, x, [layer])[layer].requires_grad_(True)
    with LayerInput(inceptionv1, layer) as swap, torch.enable_grad():
        logits = swap(x, acts)
        for index, _, value in top:
            (grad,) = torch.autograd.grad(logits[0, index], acts, retain_graph=True)
            assert value == pytest.approx(float(grad[0, channel].sum()), rel=1e-3, abs=1e-5)
        every = torch.stack([torch.autograd.grad(logits[0, j], acts, retain_graph=True)[0][0, channel].sum()
                             for j in torch.randint(0, 1000, (20,), generator=torch.Generator().manual_seed(0)).tolist()])
    assert float(every.max()) <= top[0][2] + 1e-5  # no sampled class beats the first one
