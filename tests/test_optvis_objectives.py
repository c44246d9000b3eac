"""Objectives and the spec grammar: values against hand-written torch, composition, batch targeting, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import featvis
from featvis import FeatvisError
from featvis.optvis import (
    alignment, blur, channel, deepdream, direction, direction_neuron, diversity, interpolate, l1, l2, layer_shapes, neuron,
    parse_spec, total_variation,
)
from featvis.optvis.objectives import INPUT

torch.manual_seed(0)
ACT = torch.randn(3, 6, 5, 7)
IMG = torch.rand(3, 3, 8, 8)
ACTS = {"l": ACT, INPUT: IMG}


def test_channel_neuron_deepdream_direction_match_torch():
    assert torch.allclose(channel("l", 2)(ACTS), ACT[:, 2].mean(dim=(1, 2)))
    assert torch.allclose(neuron("l", 4)(ACTS), ACT[:, 4, 2, 3])  # centre of a 5x7 map
    assert torch.allclose(neuron("l", 4, 1, 6)(ACTS), ACT[:, 4, 1, 6])
    assert torch.allclose(deepdream("l")(ACTS), (ACT**2).mean(dim=(1, 2, 3)))
    vec = torch.randn(6)
    assert torch.allclose(direction("l", vec)(ACTS), (ACT * vec.view(1, 6, 1, 1)).sum(1).mean(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(direction_neuron("l", vec, 0, 0)(ACTS), ACT[:, :, 0, 0] @ vec, atol=1e-6)
    logits = {"fc": torch.randn(3, 10)}
    assert torch.allclose(channel("fc", 7)(logits), logits["fc"][:, 7])


def test_composition_negation_and_batch_targeting():
    a, b = channel("l", 0), channel("l", 1)
    va, vb = a(ACTS), b(ACTS)
    assert torch.allclose((a + 2 * b - 0.5)(ACTS), va + 2 * vb - 0.5)
    assert torch.allclose((-a)(ACTS), -va) and torch.allclose((a * b)(ACTS), va * vb) and torch.allclose((a / 4)(ACTS), va / 4)
    assert torch.allclose((1 - a)(ACTS), 1 - va)
    targeted = channel("l", 0, batch=1) + channel("l", 5, batch=2)
    assert targeted.span == 3 and targeted.layers == ("l",)
    assert torch.allclose(targeted(ACTS), torch.stack([torch.tensor(0.0), va[1], ACT[2, 5].mean()]))
    # the gradient of a targeted term reaches only its image
    x = ACT.clone().requires_grad_()
    channel("l", 3, batch=1)({"l": x}).sum().backward()
    assert x.grad[[0, 2]].abs().sum() == 0 and x.grad[1, 3].abs().sum() > 0


def test_diversity_is_minus_gram_similarity_to_the_others():
    value = diversity("l", images=3)(ACTS)
    grams = [F.normalize((a.reshape(6, -1) @ a.reshape(6, -1).T).flatten(), dim=0) for a in ACT]
    expected = torch.tensor([-sum(float(grams[i] @ grams[j]) for j in range(3) if j != i) / 3 for i in range(3)])
    assert torch.allclose(value, expected.float(), atol=1e-5)
    same = {"l": ACT[:1].expand(3, -1, -1, -1)}
    assert torch.allclose(diversity("l")(same), torch.full((3,), -2 / 3))  # identical images: cosine 1 with both others


def test_interpolation_weights_and_alignment():
    a, b = channel("l", 0), channel("l", 1)
    w = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(interpolate(a, b, images=3)(ACTS), (1 - w) * a(ACTS) + w * b(ACTS))
    assert interpolate(a, b, images=5).span == 5
    with pytest.raises(FeatvisError, match="at least 2"):
        interpolate(a, b, images=1)
    d01 = ((ACT[0] - ACT[1]) ** 2).mean() / 2 / 2
    d12 = ((ACT[1] - ACT[2]) ** 2).mean() / 2 / 2
    d02 = ((ACT[0] - ACT[2]) ** 2).mean() / 4 / 2
    assert torch.allclose(alignment("l")(ACTS), -torch.stack([d01 + d02, d01 + d12, d12 + d02]), atol=1e-6)


def test_penalties():
    assert torch.allclose(l1()(ACTS), (IMG - 0.5).abs().mean(dim=(1, 2, 3)))
    assert torch.allclose(l2(constant=0.0)(ACTS), IMG.pow(2).mean(dim=(1, 2, 3)).sqrt())
    tv = (IMG[..., 1:, :] - IMG[..., :-1, :]).abs().mean(dim=(1, 2, 3)) + (IMG[..., 1:] - IMG[..., :-1]).abs().mean(dim=(1, 2, 3))
    assert torch.allclose(total_variation()(ACTS), tv)
    flat = {INPUT: torch.full((2, 3, 6, 6), 0.3)}
    assert torch.allclose(blur()(flat), torch.zeros(2), atol=1e-7)  # a flat image is its own blur
    x = IMG.clone().requires_grad_()
    blur()({INPUT: x}).sum().backward()  # gradient pulls towards the (fixed) blurred copy
    kernel = torch.ones(3, 1, 3, 3) / 9
    blurred = F.conv2d(F.pad(IMG, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    assert torch.allclose(x.grad, (IMG - blurred) / IMG[0].numel(), atol=1e-7)


def test_spec_grammar(inceptionv1):
    cases = {
        "mixed4a:97": ("mixed4a:97", ["mixed4a"]),
        " mixed4a:97@7,7 ": ("mixed4a:97@7,7", ["mixed4a"]),
        "mixed4a:97@center": ("mixed4a:97@center", ["mixed4a"]),
        "-mixed4a:97": ("-mixed4a:97", ["mixed4a"]),
        "mixed4a": ("mixed4a", ["mixed4a"]),
        "fc:954": ("fc:954", ["fc"]),
        "class:banana": ("class:banana", ["fc"]),
        "inception4a.branch2.1.conv:3": ("inception4a.branch2.1.conv:3", ["inception4a.branch2.1.conv"]),
        "-mixed4a_pre_relu:97": ("-mixed4a_pre_relu:97", ["mixed4a_pre_relu"]),
        "mixed4a_pre_relu:97@7,7": ("mixed4a_pre_relu:97@7,7", ["mixed4a_pre_relu"]),
        "mixed4a_pre_relu": ("mixed4a_pre_relu", ["mixed4a_pre_relu"]),
    }
    for text, (name, layers) in cases.items():
        objective = parse_spec(inceptionv1, text)
        assert objective.name == name and list(objective.layers) == layers
    assert parse_spec(inceptionv1, parse_spec(inceptionv1, "-mixed4a:97@7,7").name).name == "-mixed4a:97@7,7"  # round trip
    acts = {"mixed4a": torch.randn(2, 512, 14, 14), "fc": torch.randn(2, 1000)}
    assert torch.equal(parse_spec(inceptionv1, "mixed4a:97@3,9")(acts), acts["mixed4a"][:, 97, 3, 9])
    assert torch.equal(parse_spec(inceptionv1, "mixed4a:97@center")(acts), acts["mixed4a"][:, 97, 7, 7])
    assert torch.equal(parse_spec(inceptionv1, "-mixed4a:97")(acts), -acts["mixed4a"][:, 97].mean(dim=(1, 2)))
    assert torch.equal(parse_spec(inceptionv1, "class:banana")(acts), acts["fc"][:, 954])
    assert torch.equal(parse_spec(inceptionv1, "class:954")(acts), acts["fc"][:, 954])


@pytest.mark.parametrize("text, pointer", [
    ("mixed4a:9x7", "channel '9x7' at characters 9-11"),
    ("mixed4a:-3", "channel '-3' at characters 9-10"),
    ("mixed9z:3", "'mixed9z' at characters 1-7; closest: mixed"),
    ("mixed4a:97@7;7", "position '7;7' at characters 12-14"),
    ("class:bananna", "class 'bananna' at characters 7-13; closest: banana"),
    ("mixed4a:512", "channel 512 is out of range for mixed4a, which has 512 channels; use 0..511"),
    ("mixed4a:1@14,0", "position 14,0 is outside mixed4a's 14x14 map"),
    ("mixed4a_pre_relu:600", "channel 600 is out of range for mixed4a_pre_relu, which has 512 channels; use 0..511"),
    ("mixed4a_pre_relu:1@0,14", "position 0,14 is outside mixed4a_pre_relu's 14x14 map"),
    ("mixed4a_pre_rel:1", "'mixed4a_pre_rel' at characters 1-15; closest: mixed4a_pre_relu"),
    ("fc:3@1,1", "fc has no spatial map"),
    ("", "nothing to visualise"),
])
def test_spec_errors_point_at_the_bad_part(inceptionv1, text, pointer):
    with pytest.raises(FeatvisError) as info:
        parse_spec(inceptionv1, text)
    message = str(info.value)
    assert message.startswith(f"bad spec '{text}': ") and pointer in message and "\n" not in message


def test_layer_shapes_and_too_small_images():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(4), torch.nn.Conv2d(4, 2, 3))
    model = featvis.as_model(net, input_size=32)
    shapes = layer_shapes(model, ["0", "3"], 32)
    assert shapes["0"] == (4, 28, 28) and shapes["3"] == (2, 5, 5) and shapes[INPUT] == (3, 32, 32)
    with pytest.raises(FeatvisError, match="image size 8 px is too small for 3"):
        layer_shapes(model, ["3"], 8)
