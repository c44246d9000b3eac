"""Rendering: it maximises, beats natural photos, gives dead channels a picture, is deterministic,
batches without cross-talk, stops cleanly on Ctrl-C and checks its input before optimising."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import featvis
from featvis import FeatvisError
from featvis.core.images import png_bytes
from featvis.optvis import Objective, channel, diversity, natural_max, render
from featvis.optvis.fast_layers import fast_layers
from featvis.optvis.precision import frozen
from featvis.optvis.transforms import resize

rendering = __import__("featvis.optvis.rendering", fromlist=["REDIRECT_STEPS"])
precision_module = __import__("featvis.optvis.precision", fromlist=["cpu_bfloat16"])


def _small_model() -> featvis.FeatvisModel:
    """A tiny CNN whose relu2 channel 5 is zero everywhere for every noise start (its bias is too low)."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 8, 3, padding=1), relu1=nn.ReLU(), pool=nn.MaxPool2d(2),
                                    lrn=nn.LocalResponseNorm(3), conv2=nn.Conv2d(8, 6, 3, padding=1), relu2=nn.ReLU()))
    with torch.no_grad():
        net.conv2.bias[5] -= 0.3
    return featvis.as_model(net, input_size=32)


def _channel_mean(model, image: torch.Tensor, layer: str, c: int, size: int) -> float:
    """The channel objective measured independently: a plain forward pass and a mean."""
    with torch.no_grad():
        return float(featvis.capture(model, resize(image[None], size), [layer])[layer][0, c].mean())


def test_render_raises_the_channel_far_above_its_start_and_above_natural_photos(inceptionv1):
    (result,) = render(inceptionv1, ["mixed3a:15"], steps=40, size=64, thresholds=[1], progress=False)
    start = _channel_mean(inceptionv1, result.images[1], "mixed3a", 15, 224)
    final = _channel_mean(inceptionv1, result.image, "mixed3a", 15, 224)
    assert result.activation == pytest.approx(final, rel=1e-4)
    assert final > 10 * max(start, 1e-3) and result.ratio > 1
    assert result.natural_max == pytest.approx(natural_max(inceptionv1, "mixed3a:15"), rel=1e-6)
    assert result.ratio == pytest.approx(result.activation / result.natural_max)
    assert result.image.shape == (3, 64, 64) and 0 <= result.image.min() and result.image.max() <= 1
    assert sorted(result.images) == [1, 40] and torch.equal(result.images[40], result.image) and result.steps == 40


def test_channel_dead_for_a_noise_start_still_gets_a_picture(inceptionv1, monkeypatch):
    """mixed4a:0 is zero everywhere for the noise start; plain gradient ascent leaves it flat."""
    (result,) = render(inceptionv1, ["mixed4a:0"], steps=24, size=48, thresholds=[0], progress=False, natural=False)
    assert _channel_mean(inceptionv1, result.images[0], "mixed4a", 0, 224) == 0.0
    assert result.activation > 1.0 and result.image.std() > 0.05
    monkeypatch.setattr(rendering, "REDIRECT_STEPS", 0)
    (plain,) = render(inceptionv1, ["mixed4a:0"], steps=24, size=48, progress=False, natural=False, strict=False)
    assert plain.activation == 0.0 and plain.image.std() < 0.02  # the flat grey image Lucent returns
    assert plain.unmoved.startswith("mixed4a:0: the objective never moved from 0 in 24 steps") and result.unmoved is None
    with pytest.raises(FeatvisError, match=r"^mixed4a:0: the objective never moved .* through mixed4a \(a unit that never fires"):
        render(inceptionv1, ["mixed4a:0"], steps=24, size=48, progress=False, natural=False)


def test_negative_visualization_needs_the_pre_relu_concat(inceptionv1):
    """-mixed4a:97 minimises a ReLU output, whose floor is zero: it stops there with nothing to show.
    -mixed4a_pre_relu:97 (Lucid's concat of the branches before their ReLUs) drives the channel far below zero."""
    pre, post = render(inceptionv1, ["-mixed4a_pre_relu:97", "-mixed4a:97"], steps=24, size=64, progress=False, natural=False)
    measured = _channel_mean(inceptionv1, pre.image, "mixed4a_pre_relu", 97, 224)
    assert measured == pytest.approx(-pre.activation, rel=1e-4) and measured < -50 and pre.image.std() > 0.05
    assert post.activation == 0.0 and _channel_mean(inceptionv1, post.image, "mixed4a", 97, 224) == 0.0


def test_dead_channel_of_a_small_model(monkeypatch):
    model = _small_model()
    (rescued,) = render(model, ["relu2:5"], steps=30, size=32, progress=False, natural=False)
    monkeypatch.setattr(rendering, "REDIRECT_STEPS", 0)
    (flat,) = render(model, ["relu2:5"], steps=30, size=32, progress=False, natural=False, strict=False)
    assert rescued.activation > 0 and rescued.image.std() > 0.05
    assert flat.activation == 0 and flat.image.std() < 0.01 and "relu2:5" in flat.unmoved


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_same_seed_same_png_bytes(inceptionv1, tmp_path, monkeypatch, precision):
    monkeypatch.setattr(rendering, "REDIRECT_STEPS", 1)  # both phases (redirected, then fused conv + ReLU) in 3 steps
    kwargs = dict(steps=3, size=48, progress=False, natural=False, precision=precision)
    first = render(inceptionv1, ["mixed3a:3", "mixed3a:7@10,10"], seed=5, **kwargs)
    second = render(inceptionv1, ["mixed3a:3", "mixed3a:7@10,10"], seed=5, **kwargs)
    other = render(inceptionv1, ["mixed3a:3"], seed=6, **kwargs)
    featvis.save_image(first[0].image, tmp_path / "a.png")
    featvis.save_image(second[0].image, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert png_bytes(first[1].image) == png_bytes(second[1].image) and png_bytes(other[0].image) != png_bytes(first[0].image)


def test_bfloat16_follows_the_float32_gradient_and_reports_float32_activations(inceptionv1, coffee):
    """bfloat16 only changes the model's arithmetic while optimising: its input gradient on a photo
    points where float32's does (cosine 0.93 here; float32 against float64: 0.99999), the image
    beats natural photos, the reported activation is a float32 measurement and the weights come
    back bit for bit."""
    before = {k: v.clone() for k, v in inceptionv1.state_dict().items()}
    x = resize(coffee[None], 224).requires_grad_()
    grads = []
    for dtype in (torch.float32, torch.bfloat16):
        with frozen(inceptionv1, dtype), fast_layers(inceptionv1):  # torch's own LRN has no bfloat16 CPU kernel
            acts = featvis.capture(inceptionv1, x.to(dtype), ["mixed4a"], detach=False)
            grads.append(torch.autograd.grad(acts["mixed4a"][:, 97].float().mean(), x)[0].flatten())
    assert torch.cosine_similarity(*grads, dim=0) > 0.9
    (result,) = render(inceptionv1, ["mixed4a:97"], steps=48, size=64, precision="bfloat16", progress=False)
    assert result.activation == pytest.approx(_channel_mean(inceptionv1, result.image, "mixed4a", 97, 224), rel=1e-4)
    assert result.ratio > 1
    after = inceptionv1.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


class _ChannelSmoothing(nn.Module):
    """Averages each pixel over neighbouring channels with avg_pool3d, which has no bfloat16 CPU kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(x.unsqueeze(1), (3, 1, 1), stride=1, padding=(1, 0, 0)).squeeze(1)


def test_precision_choices_and_models_without_bfloat16_kernels(cpu_bf16):
    model = _small_model()
    assert rendering.compute_dtype("float32", model) is torch.float32
    assert rendering.compute_dtype("bfloat16", model) is torch.bfloat16
    assert rendering.compute_dtype("auto", model) is (torch.bfloat16 if cpu_bf16 else torch.float32)
    with pytest.raises(FeatvisError, match="unknown precision 'half'; use one of auto, float32, bfloat16"):
        rendering.compute_dtype("half", model)
    odd = featvis.as_model(nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), smooth=_ChannelSmoothing(), relu=nn.ReLU())),
                           input_size=16)
    assert rendering.compute_dtype("auto", odd) is torch.float32  # falls back, and renders
    (result,) = render(odd, ["relu:1"], steps=3, size=16, progress=False, natural=False)
    assert result.activation > 0
    with pytest.raises(FeatvisError, match=r"cannot run in bfloat16 here \(.*avg_pool3d.*\); use precision float32"):
        render(odd, ["relu:1"], steps=3, size=16, precision="bfloat16", progress=False, natural=False)


def test_the_cpu_check_reads_the_cpu_flags_unless_forced(monkeypatch):
    """Unset, the check answers what the kernel's CPU flags say (AMX tiles or AVX512-BF16);
    $FEATVIS_CPU_BF16 forces either answer; anything else is one line naming the fix."""
    from conftest import cpu_flags_bfloat16

    monkeypatch.delenv(precision_module.CPU_BF16_ENV, raising=False)
    flags = cpu_flags_bfloat16()
    if flags is not None:
        assert precision_module.cpu_bfloat16() is flags
    for value, expected in (("1", True), ("0", False), (" 1 ", True)):
        monkeypatch.setenv(precision_module.CPU_BF16_ENV, value)
        assert precision_module.cpu_bfloat16() is expected
    monkeypatch.setenv(precision_module.CPU_BF16_ENV, "yes")
    with pytest.raises(FeatvisError, match=r"FEATVIS_CPU_BF16='yes' is not understood; set it to 1 .* or 0"):
        rendering.compute_dtype("auto", _small_model())


def test_a_batch_renders_what_separate_renders_do():
    model = _small_model()
    specs = ["relu2:0", "relu2:3", "conv2:1@4,4", "-relu2:2"]
    kwargs = dict(steps=12, size=32, progress=False, natural=False, strict=False)  # -relu2:2 sits at its floor, 0
    together = render(model, specs, **kwargs)
    for spec, result in zip(specs, together):
        (alone,) = render(model, [spec], **kwargs)
        assert result.spec == spec and torch.allclose(result.image, alone.image, atol=1e-4)
        assert result.activation == pytest.approx(alone.activation, rel=1e-4, abs=1e-5)
        assert (result.unmoved is None) == (alone.unmoved is None) == (spec != "-relu2:2")
    split = render(model, specs, batch=3, **kwargs)
    assert all(torch.allclose(a.image, b.image, atol=1e-4) for a, b in zip(together, split))


def test_an_image_does_not_depend_on_its_batch_bit_for_bit():
    """Through both phases (redirected ReLUs, then fused pairs) of a net whose stride-2 RGB layer
    takes the space-to-depth input gradient: the gallery remakes single images and expects the same bytes."""
    torch.manual_seed(4)
    net = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 6, 5, stride=2, padding=2), relu1=nn.ReLU(),
                                    conv2=nn.Conv2d(6, 5, 3, padding=1), relu2=nn.ReLU()))
    model = featvis.as_model(net, input_size=32)
    steps = rendering.REDIRECT_STEPS + 4
    together = render(model, ["relu2:0", "relu2:1", "relu2:3"], steps=steps, size=32, progress=False, natural=False)
    (alone,) = render(model, ["relu2:1"], steps=steps, size=32, progress=False, natural=False)
    assert torch.equal(together[1].image, alone.image) and together[1].activation == alone.activation


def test_ctrl_c_returns_the_images_so_far(cpu_bf16, monkeypatch):
    """Ctrl-C during step 4 (counted in optimisation steps, whatever checks ran before the first one:
    on a bfloat16 CPU the start-gradient check calls the objectives too) returns the images of the 3
    finished steps, on both precision paths."""
    model = _small_model()
    steps_begun = []
    base = channel("relu2", 1)
    real_zero_grad = rendering.Adam.zero_grad

    def counting_zero_grad(self):  # called once per optimisation step, before its backward pass
        steps_begun.append(1)
        return real_zero_grad(self)

    def stop_in_fourth_step(acts):
        if len(steps_begun) == 3 and torch.is_grad_enabled():  # the 4th step's forward pass (3 steps done)
            raise KeyboardInterrupt
        return base(acts)

    monkeypatch.setattr(rendering.Adam, "zero_grad", counting_zero_grad)
    objective = Objective(stop_in_fourth_step, "stopper", base.layers)
    results = render(model, [objective, "relu2:2"], steps=50, size=32, batch=1, thresholds=[2, 40], progress=False, natural=False)
    assert len(results) == 1 and results[0].interrupted and results[0].steps == 3
    assert results[0].precision in ({"bfloat16", "float32"} if cpu_bf16 else {"float32"})  # the guard may refuse bfloat16
    assert sorted(results[0].images) == [2, 3] and torch.equal(results[0].images[3], results[0].image)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert all("forward" not in m.__dict__ for m in relus)


def test_model_is_frozen_during_and_restored_after():
    model = _small_model()
    model.train()
    seen = []
    probe = channel("relu2", 0)
    objective = Objective(lambda acts: (seen.append((model.training, [p.requires_grad for p in model.parameters()])), probe(acts))[1],
                          "watch", probe.layers)
    render(model, [objective], steps=2, size=32, progress=False, natural=False)
    assert seen[0] == (False, [False] * 4)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


def test_multi_image_objectives_and_photo_start(coffee):
    model = _small_model()
    results = render(model, [channel("relu2", 0) + 10 * diversity("relu2", images=3), "relu2:1"], steps=5, size=32,
                     progress=False)
    assert [(r.index, r.natural_max is None) for r in results] == [(0, True), (1, True), (2, True), (0, False)]
    assert not torch.equal(results[0].image, results[1].image)
    (started,) = render(model, ["relu2:0"], steps=1, size=32, init=coffee, transforms="none", progress=False, natural=False)
    photo = resize(coffee[None, :, :, 100:500], 32)[0]
    assert torch.corrcoef(torch.stack([started.image.flatten(), photo.flatten()]))[0, 1] > 0.95


def test_bad_input_is_refused_before_any_optimisation():
    model = _small_model()
    calls = []
    watch = Objective(lambda acts: calls.append(1) or acts["relu2"][:, 0].mean((1, 2)), "watch", ["relu2"])
    for specs, kwargs, message in [
        ([watch, "relu2:9"], {}, "channel 9 is out of range for relu2"),
        ([watch, "relu3:1"], {}, "closest: relu2"),
        ([watch], {"thresholds": [-1, 5]}, "thresholds must lie in 0..5"),
        ([watch], {"size": 4}, "size >= 8 px"),
        ([watch], {"batch": 0}, "batch must be >= 1.*batch=0"),
        ([watch], {"param": "dct"}, "unknown parameterisation 'dct'"),
        ([watch], {"transforms": "random"}, "unknown transforms 'random'"),
        ([watch, channel("relu2", 0, batch=1) * channel("conv1", 99)], {}, "channel 99 is out of range for conv1"),
        ([], {}, "no specs given"),
    ]:
        with pytest.raises(FeatvisError, match=message):
            render(model, specs, **{"steps": 5, "size": 32, "progress": False, "natural": False, **kwargs})
    tiny = featvis.as_model(nn.Sequential(nn.Conv2d(3, 2, 9), nn.ReLU(), nn.Conv2d(2, 2, 9)), input_size=8)
    with pytest.raises(FeatvisError, match="image size 8 px is too small for 2"):
        render(tiny, ["2:0"], steps=5, size=8, progress=False)
    assert calls == []
