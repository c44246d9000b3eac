"""The public API a new user meets: NumPy/PIL photos in, modules and functions of one name,
figure helpers, the attribution shape rule, short reprs, progress off a terminal."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

import featvis


@pytest.fixture(scope="module")
def tiny() -> featvis.FeatvisModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    return featvis.load_model(net, input_size=32)


def test_as_image_matches_torchvision_and_pil():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    assert torch.equal(featvis.as_image(rgb), TF.to_tensor(rgb))  # torchvision's HWC uint8 -> CHW [0, 1]
    gray = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    assert torch.equal(featvis.as_image(gray), TF.to_tensor(gray).expand(3, -1, -1))
    assert torch.equal(featvis.as_image(Image.fromarray(rgb)), TF.to_tensor(rgb))
    rgba = rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)
    white = Image.alpha_composite(Image.new("RGBA", (40, 30), (255, 255, 255, 255)), Image.fromarray(rgba, "RGBA"))
    assert (featvis.as_image(rgba) - TF.to_tensor(white.convert("RGB"))).abs().max() <= 1 / 255 + 1e-6  # PIL rounds to 8 bits
    assert torch.allclose(featvis.as_image(rgb.astype(np.uint16) * 257), TF.to_tensor(rgb))
    assert torch.equal(featvis.as_image(rgb.astype(np.float32) / 255), TF.to_tensor(rgb))
    with pytest.raises(featvis.FeatvisError, match="channels last"):
        featvis.as_image(np.zeros((3, 30, 40), np.uint8))


def test_saliency_is_a_module_and_calls_its_function(tiny):
    """featvis.saliency(...) is the vanilla gradient, checked against autograd; its module's figure works."""
    photo = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    result = featvis.saliency(tiny, photo, "saliency", target=2)
    x = tiny.prepare(photo).requires_grad_(True)
    (grad,) = torch.autograd.grad(tiny(x)[0, 2], x)
    assert torch.allclose(result.attribution, grad[0], atol=1e-6)
    assert inspect.ismodule(featvis.saliency) and featvis.saliency.saliency_figure is featvis.saliency_figure
    assert "method" in inspect.signature(featvis.saliency).parameters
    assert isinstance(featvis.saliency_figure(result), Figure)


def test_receptive_field_is_a_module_and_calls_its_function(tiny):
    """Two 3x3 convolutions, the second of stride 2: r = 3 + (3 - 1) * 1 = 5, S = 2, P = 1 + 1 = 2 (Araujo et al.)."""
    field = featvis.receptive_field(tiny, "2")
    assert (field.size, field.stride, field.padding) == ((5, 5), (2, 2), (2, 2))
    assert inspect.ismodule(featvis.receptive_field) and featvis.receptive_field.ReceptiveField is featvis.ReceptiveField


def test_attribution_shape_rule(tiny):
    photo = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    for method in featvis.saliency.METHODS:
        result = featvis.saliency(tiny, photo, method, target=0, steps=4, samples=2, window=8, stride=8)
        channels = 1 if method in featvis.saliency.REGIONAL else 3
        assert tuple(result.attribution.shape) == (channels, 32, 32) and tuple(result.map.shape) == (32, 32), method


def test_results_print_short_with_shapes(tiny, capsys):
    results = featvis.render(tiny, ["2:1"], steps=2, size=16, natural=False, progress=True)
    text = repr(results[0])
    assert len(text) < 300 and f"image=tensor[{', '.join(map(str, results[0].image.shape))}] float32" in text
    assert "render: 2/2 steps (100%)" in capsys.readouterr().err  # off a terminal: a plain line, no carriage return
    photo = torch.rand(3, 32, 32)
    assert len(repr(featvis.saliency(tiny, photo, "ig", steps=2))) < 400
