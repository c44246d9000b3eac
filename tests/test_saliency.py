"""Saliency methods against independent ground truth: autograd, hand-written guided ReLUs, the IG
completeness axiom, occlusion by hand, Grad-CAM from its definition, and the photo itself."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import GuidedBackprop
from torch import nn

import featvis
from featvis import FeatvisError
from featvis.saliency import attribute, guided_model, saliency

ESPRESSO = 967


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward keeps only positive gradients at positive inputs (Springenberg et al.)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


class _DeconvReLU(torch.autograd.Function):
    """ReLU whose backward is a ReLU of the gradient, whatever the input (Zeiler & Fergus)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


def _reference(model, x, target, relu, monkeypatch) -> torch.Tensor:
    """The input gradient with every relu — module or functional — replaced by ``relu``."""
    with monkeypatch.context() as patch:
        patch.setattr(F, "relu", lambda t, inplace=False: relu.apply(t))
        x = x.clone().requires_grad_(True)
        model(x)[0, target].backward()
    return x.grad[0]


def _gradient(model, x, target) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[0, target], x)
    return grad[0]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _kaiming(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
    return net


def test_guided_and_deconv_on_inceptionv1(inceptionv1, coffee, monkeypatch):
    x = inceptionv1.prepare(coffee)
    guided = attribute(inceptionv1, x, "guided", ESPRESSO)
    deconv = attribute(inceptionv1, x, "deconv", ESPRESSO)
    torch.testing.assert_close(guided, _reference(inceptionv1, x, ESPRESSO, _GuidedReLU, monkeypatch), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(deconv, _reference(inceptionv1, x, ESPRESSO, _DeconvReLU, monkeypatch), rtol=1e-4, atol=1e-5)
    assert _relative(guided, _gradient(inceptionv1, x, ESPRESSO)) > 0.5


@pytest.mark.parametrize("name", ["resnet18", "googlenet"])
def test_guided_really_applies_to_torchvision_relus(name, coffee, monkeypatch):
    """resnet18: in-place nn.ReLU modules, each called twice per block; googlenet: F.relu(x, inplace=True)."""
    options = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    model = featvis.as_model(_kaiming(torchvision.models.get_model(name, weights=None, **options)), input_size=96).freeze()
    x = model.prepare(coffee)  # 96 px keeps the test fast; the ReLU wiring does not depend on size
    gradient = _gradient(model, x, 3)
    expected = _reference(model, x, 3, _GuidedReLU, monkeypatch)
    guided = attribute(model, x, "guided", 3)
    torch.testing.assert_close(guided, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    assert _relative(guided, gradient) > 0.5
    deconv = attribute(model, x, "deconv", 3)
    torch.testing.assert_close(deconv, _reference(model, x, 3, _DeconvReLU, monkeypatch), rtol=1e-4,
                               atol=1e-6 * float(deconv.abs().max()))
    prepared = guided_model(model)
    assert {path for path, _ in model.net.named_modules()} <= {path for path, _ in prepared.net.named_modules()}
    relus = [m for m in prepared.net.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    assert all(m.inplace for m in model.net.modules() if isinstance(m, nn.ReLU))  # the original is untouched
    if name == "googlenet":  # the silent failure this preparation exists for
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # captum's notes about hooks
            plain = GuidedBackprop(model).attribute(x.clone(), target=3)[0]
        torch.testing.assert_close(plain, gradient)


class _Handwritten(nn.Module):
    """A user CNN: functional relus in forward and one nn.ReLU object used by two branches."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 5, padding=2)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(16, 8, 3, stride=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.cat([self.relu(self.a(x)), self.relu(self.b(x))], 1)
        x = F.relu(self.head(x)).mean((2, 3))
        return self.fc(x).relu()


def test_handwritten_cnn_gets_one_relu_per_call(monkeypatch):
    torch.manual_seed(0)
    model = featvis.as_model(_Handwritten(), input_size=32).freeze()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prepared = guided_model(model)
    assert sum(isinstance(m, nn.ReLU) for m in prepared.net.modules()) == 4
    assert guided_model(prepared) is prepared
    torch.testing.assert_close(prepared(x), model(x))
    for method, relu in (("guided", _GuidedReLU), ("deconv", _DeconvReLU)):
        expected = _reference(model, x, 2, relu, monkeypatch)
        torch.testing.assert_close(attribute(model, x, method, 2), expected, rtol=1e-4, atol=1e-7)


def test_unrewritable_relu_is_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            x = self.conv(x)
            return F.relu(x).mean((2, 3)) if x.sum() > -1e9 else x.mean((2, 3))  # data-dependent: fx cannot trace

    model = featvis.as_model(Branchy(), input_size=16).freeze()
    with pytest.raises(FeatvisError, match="torch.fx cannot rewrite"):
        guided_model(model)


def test_gradient_and_input_x_gradient_are_autograd(inceptionv1, coffee):
    x = inceptionv1.prepare(coffee)
    grad = _gradient(inceptionv1, x, ESPRESSO)
    torch.testing.assert_close(attribute(inceptionv1, x, "saliency", ESPRESSO), grad)
    torch.testing.assert_close(attribute(inceptionv1, x, "ixg", ESPRESSO), grad * x[0])


def test_integrated_gradients_completeness(inceptionv1, coffee):
    """Sundararajan et al.'s axiom: attributions sum to f(x) - f(baseline)."""
    x = inceptionv1.prepare(coffee)
    with torch.no_grad():
        difference = float(inceptionv1(x)[0, ESPRESSO] - inceptionv1(torch.zeros_like(x))[0, ESPRESSO])
    total = float(attribute(inceptionv1, x, "ig", ESPRESSO, steps=32, internal_batch_size=16).sum())
    assert total == pytest.approx(difference, rel=0.05)
    few = attribute(inceptionv1, x, "ig", ESPRESSO, steps=4, internal_batch_size=3)
    torch.testing.assert_close(few, attribute(inceptionv1, x, "ig", ESPRESSO, steps=4, internal_batch_size=None),
                               rtol=1e-4, atol=1e-6)


def test_smoothgrad_noise_is_relative_to_the_input_range():
    class HalfSquare(nn.Module):  # gradient of sum(x^2)/2 is x itself, so SmoothGrad's noise shows
        def forward(self, x):
            return (x * x).flatten(1).sum(1, keepdim=True) / 2

    model = featvis.as_model(HalfSquare(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=64).freeze()
    x = 0.2 + 0.5 * torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # range ~0.5
    span = float(x.max() - x.min())
    single = attribute(model, x, "smoothgrad", 0, samples=1, noise=0.1)
    assert float((single - x[0]).std()) == pytest.approx(0.1 * span, rel=0.05)
    averaged = attribute(model, x, "smoothgrad", 0, samples=16, noise=0.1)
    assert float((averaged - x[0]).std()) == pytest.approx(0.1 * span / 4, rel=0.1)
    torch.testing.assert_close(attribute(model, x, "smoothgrad", 0, samples=3, noise=0.0), x[0])
    torch.testing.assert_close(averaged, attribute(model, x, "smoothgrad", 0, samples=16, noise=0.1))  # seeded


def test_occlusion_is_the_score_drop_per_patch(inceptionv1, coffee):
    x = inceptionv1.prepare(coffee)
    occlusion = attribute(inceptionv1, x, "occlusion", ESPRESSO, window=112, stride=112, baseline=0.5)
    assert occlusion.shape == (1, 224, 224)
    with torch.no_grad():
        full = float(inceptionv1(x)[0, ESPRESSO])
        for top in (0, 112):
            for left in (0, 112):
                covered = x.clone()
                covered[..., top : top + 112, left : left + 112] = 0.5
                drop = full - float(inceptionv1(covered)[0, ESPRESSO])
                patch = occlusion[0, top : top + 112, left : left + 112]
                torch.testing.assert_close(patch, torch.full_like(patch, drop), rtol=1e-4, atol=1e-4)


def test_gradcam_follows_its_definition(inceptionv1, coffee):
    """Selvaraju et al.: ReLU of the channel maps weighted by their mean gradient; units at field centres."""
    x = inceptionv1.prepare(coffee).requires_grad_(True)
    activations = {}
    handle = inceptionv1.net.inception4e.register_forward_hook(lambda m, i, out: activations.setdefault("a", out))
    try:
        logit = inceptionv1(x)[0, ESPRESSO]
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logit, activations["a"])
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * activations["a"]).sum(1))[0].detach()
    x = x.detach()
    ours = attribute(inceptionv1, x, "gradcam", ESPRESSO, layer="mixed4e")[0]
    centres = 14 + 16 * torch.arange(14)  # mixed4e: stride 16, unit 0 centred on pixel 14
    torch.testing.assert_close(ours[centres][:, centres], cam, rtol=1e-4, atol=1e-4 * float(cam.max()))
    guided = attribute(inceptionv1, x, "guided", ESPRESSO)
    torch.testing.assert_close(attribute(inceptionv1, x, "guided-gradcam", ESPRESSO, layer="mixed4e"), guided * ours)


def _cup_box(photo: torch.Tensor) -> tuple[int, int, int, int]:
    """The cup's white rim, found from pixel statistics alone: the largest bright, unsaturated blob."""
    from skimage import measure

    high, low = photo.max(0).values, photo.min(0).values
    white = (high > 0.75) & ((high - low) / high.clamp_min(1e-6) < 0.25)
    blob = max(measure.regionprops(measure.label(white.numpy())), key=lambda region: region.area)
    return blob.bbox


def test_gradcam_highlights_the_cup(inceptionv1, coffee):
    result = saliency(inceptionv1, coffee, "gradcam", target="espresso", layer="mixed5b")
    assert (result.target, result.label, result.layer) == (ESPRESSO, "espresso", "mixed5b")
    assert result.prob == pytest.approx(0.90, abs=0.02)  # SOURCE.md: espresso at p ~ 0.90
    y0, x0, y1, x1 = _cup_box(result.image)
    assert (y1 - y0) * (x1 - x0) < 0.5 * 224 * 224  # a region, not the whole photo
    inside = torch.zeros(224, 224, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    assert float(result.map[inside].mean()) > 2 * float(result.map[~inside].mean())


def test_targets_defaults_and_errors(inceptionv1, coffee, chelsea):
    assert saliency(inceptionv1, coffee).target == ESPRESSO  # top-1 by default
    cat = saliency(inceptionv1, chelsea, "saliency", target="tabby cat")  # a synonym of synset 281
    assert (cat.target, cat.label) == (281, "tabby")
    assert saliency(inceptionv1, chelsea, "ixg", target="281").target == 281
    with pytest.raises(FeatvisError, match="closest: espresso"):
        saliency(inceptionv1, coffee, target="espreso")
    with pytest.raises(FeatvisError, match="out of range"):
        saliency(inceptionv1, coffee, target=1000)
    with pytest.raises(FeatvisError, match="'fc' has no spatial output.*such as inception5b"):
        saliency(inceptionv1, coffee, "gradcam", layer="fc")
    with pytest.raises(FeatvisError, match="unknown saliency method 'lime'"):
        saliency(inceptionv1, coffee, "lime")
    with pytest.raises(FeatvisError, match="expected an RGB image"):
        saliency(inceptionv1, coffee[0])
    assert saliency(inceptionv1, coffee, "gradcam").layer == "inception5b"


@pytest.mark.parametrize("method", ["saliency", "smoothgrad", "guided", "deconv", "guided-gradcam"])
def test_unsigned_maps_are_magnitudes(method):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    model = featvis.as_model(net, input_size=32).freeze()
    result = saliency(model, torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), method, samples=2)
    assert not result.signed and result.map.shape == (32, 32) and float(result.map.max()) > 0
    torch.testing.assert_close(result.map, result.attribution.abs().sum(0))


def test_signed_maps_keep_their_sign(inceptionv1, coffee):
    result = saliency(inceptionv1, coffee, "ixg")
    assert result.signed and float(result.map.min()) < 0 < float(result.map.max())
    np.testing.assert_allclose(result.map.numpy(), result.attribution.sum(0).numpy(), rtol=1e-6)
