"""One render pipeline: `featvis render`, a `featvis gallery` page and a `featvis serve` picture of the
same unit with the same settings are the same pixels and record the same, actually used, precision,
on a CPU where "auto" asks for bfloat16 ($FEATVIS_CPU_BF16=1 where the CPU lacks it, so every CI
machine takes this branch) and on one where it does not.

The model is built so that the guard's verdict is known by construction: ``relu2`` is an ordinary
conv + ReLU (bfloat16 follows float32's gradient), while ``square`` squares a value that was lifted by
+64 and dropped back by -64. bfloat16 keeps 8 significant bits, so at 64 its spacing is 0.5: the
small activations (~0.01) snap to 0 and the bfloat16 gradient 2 * y vanishes where float32's does
not (cosine ~0 < AGREEMENT): its pictures must be float32 from every door.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featvis
from featvis.optvis import RenderSettings, picture_key
from featvis.optvis import precision as precision_module

NETS = '''
from collections import OrderedDict

import torch
from torch import nn

import featvis


class Square(nn.Module):
    def forward(self, x):
        return x * x


def fragile():
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 4, 3, padding=1)), ("relu1", nn.ReLU()), ("conv2", nn.Conv2d(4, 4, 3, padding=1)),
        ("relu2", nn.ReLU()), ("lift", nn.Conv2d(4, 4, 1)), ("drop", nn.Conv2d(4, 4, 1)), ("square", Square()),
    ]))
    with torch.no_grad():
        for conv, shift in ((net.lift, 64.0), (net.drop, -64.0)):
            conv.weight.copy_(torch.eye(4)[:, :, None, None])
            conv.bias.fill_(shift)
    return featvis.FeatvisModel(net, name="fragile", input_size=32).freeze()
'''
SETTINGS = ["--steps", "6", "--size", "48", "--seed", "0", "--precision", "auto"]
UNITS = {"relu2:1": "bfloat16", "square:1": "float32"}  # the guard's verdict on a bfloat16 CPU (module docstring)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline")
    (folder / "nets.py").write_text(NETS)
    return folder


def _run(folder: Path, cpu: str, *argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "featvis", *argv, "--json", "-q"], cwd=folder, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, precision_module.CPU_BF16_ENV: cpu})
    assert done.returncode == 0, done.stderr
    return done.stdout


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


@pytest.mark.parametrize("cpu", ["1", "0"], ids=["cpu-bfloat16", "cpu-float32"])
def test_render_gallery_and_serve_make_the_same_picture_in_the_same_precision(project, cpu):
    from test_serve import Serve

    tag = f"cpu{cpu}"
    rows = json.loads(_run(project, cpu, "render", "nets.py:fragile", *UNITS, *SETTINGS, "--batch", "1",
                           "--out-dir", str(project / f"render-{tag}")))
    rendered = {row["spec"]: (_pixels(Path(row["path"])), row["precision"]) for row in rows}

    gallery = project / f"gallery-{tag}"
    _run(project, cpu, "gallery", "nets.py:fragile", "--layers", "relu2,square", "--channels", "1", "--no-filters",
         "--out", str(gallery), *SETTINGS)
    records = [r for m in (gallery / "manifests").glob("*.json")
               for r in json.loads(m.read_text())["records"] if r["kind"] == "positive"]
    galleried = {r["result"]["spec"]: (_pixels(gallery / r["result"]["image"]), r["result"]["precision"]) for r in records}

    serve = Serve(project, project / f"cache-{tag}", *SETTINGS, "--batch", "1", model="nets.py:fragile",
                  env={precision_module.CPU_BF16_ENV: cpu})
    served = {}
    try:
        for spec in UNITS:
            layer, channel = spec.split(":")
            key = next(k for k in serve.keys(f"/layer/{layer}/{channel}"))  # the page's first picture: positive
            state = serve.wait(key)
            served[spec] = (_pixels(project / f"cache-{tag}" / state["files"][0]), state["precision"])
    finally:
        serve.stop()

    for spec, expected in UNITS.items():
        expected = expected if cpu == "1" else "float32"
        (a, pa), (b, pb), (c, pc) = rendered[spec], galleried[spec], served[spec]
        assert (pa, pb, pc) == (expected,) * 3, spec
        assert np.abs(a - b).mean() <= 1 and np.abs(a - c).mean() <= 1, spec  # mean |diff| <= 1/255
        assert a.std() > 1, spec  # a real picture, not a flat start


def test_picture_keys_never_mix_precisions(monkeypatch):
    """A cache folder shared by a bfloat16 CPU and a float32 one: "auto" keys differ between them, and a
    guarded bfloat16 picture is never taken for an unguarded one ("bfloat16" asked explicitly)."""
    model = featvis.as_model(__import__("torch").nn.Conv2d(3, 2, 1), input_size=8)
    keys = {}
    for cpu in ("0", "1"):
        monkeypatch.setenv(precision_module.CPU_BF16_ENV, cpu)
        for policy in ("auto", "float32", "bfloat16"):
            keys[cpu, policy] = picture_key(RenderSettings(precision=policy), model, "f")
    assert keys["0", "auto"] == keys["0", "float32"] == keys["1", "float32"]
    assert keys["1", "auto"] != keys["0", "auto"] and keys["1", "auto"] != keys["1", "bfloat16"] == keys["0", "bfloat16"]
    assert keys["1", "auto"]["guard"] == precision_module.AGREEMENT and "guard" not in keys["1", "bfloat16"]


def test_render_settings_are_defined_once_and_every_door_takes_them():
    """The default steps, size and seed appear in featvis/optvis/settings.py alone; every door's parser
    has every setting with those defaults (explain's and atlas's own, from the same module) and the
    choices of the registries; `render`'s keywords defer to the settings object."""
    import inspect
    import re

    from featvis.cli import build_parser
    from featvis.optvis import param_factory, render, settings

    root = Path(featvis.__file__).parent
    pattern = re.compile(r"\b(steps|size|seed)\b\s*(?::\s*int\s*)?=\s*(512|128)\b|default=(512|128)\b")
    offenders = [f"{path.relative_to(root)}:{n}" for path in root.rglob("*.py") if path.name != "settings.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
    assert tuple(param_factory.CLASSES) == settings.PARAMS
    fields = ("steps", "size", "seed", "param", "decorrelate", "transforms", "precision")
    actions = {name: {a.dest: a for a in sub._actions}
               for name, sub in build_parser()._subparsers._group_actions[0].choices.items()}
    doors = {"render": settings.RenderSettings(), "gallery": settings.RenderSettings(), "serve": settings.RenderSettings(),
             "circuit": settings.RenderSettings(), "explain": settings.EXPLAIN_ICONS, "atlas": settings.ATLAS_CELLS}
    for door, defaults in doors.items():
        for name in fields:
            assert actions[door][name].default == getattr(defaults, name), (door, name)
        assert tuple(actions[door]["param"].choices) == settings.PARAMS and tuple(actions[door]["transforms"].choices) == settings.TRANSFORMS
    signature = inspect.signature(render)
    assert all(signature.parameters[name].default is None for name in ("steps", "size", "seed", "param", "precision"))
