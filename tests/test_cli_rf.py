"""`featvis rf`: the receptive-field table and JSON, the effective field, one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from featvis.cli import main
from featvis.core.images import save_image

NETS = '''
import torch.nn.functional as F
from torch import nn


class Up(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2)


def stack():
    """n = 50 stacked 3x3 convolutions: the lecture's 100 px dog."""
    return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), *(nn.Conv2d(2, 2, 3, padding=1) for _ in range(49)))


def upsampling():
    return nn.Sequential(nn.Conv2d(3, 2, 3), Up(), nn.Conv2d(2, 2, 3))
'''


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def nets(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(NETS)
    return "nets.py"


def test_json_fields_and_literature_values(capsys):
    """AlexNet's pool5 sees 195 px at stride 32 (Araujo et al. 2019); the JSON has exactly the issue's fields first."""
    code, out, _ = _run(capsys, "rf", "torchvision:alexnet", "features.12", "features.0", "--json")
    rows = json.loads(out)
    assert code == 0 and [row["layer"] for row in rows] == ["features.12", "features.0"]
    assert list(rows[0])[:6] == ["layer", "size", "stride", "padding", "aligned", "output_shape"]
    assert {k: rows[0][k] for k in ("size", "stride", "aligned", "output_shape")} == {
        "size": [195, 195], "stride": [32, 32], "aligned": True, "output_shape": [256, 6, 6]}
    assert (rows[1]["size"], rows[1]["stride"], rows[1]["padding"]) == ([11, 11], [4, 4], [2, 2])


def test_theory_needs_no_weights(tmp_path, monkeypatch, capsys):
    """GoogLeNet's conv1 (7x7/2, pad 3) then a 3x3/2 pool: r = 7 + 2 * 2 = 11 px at stride 4; offline, no weights."""
    monkeypatch.delenv("FEATVIS_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("FEATVIS_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("FEATVIS_WEIGHTS_URL", "http://127.0.0.1:9/")
    code, out, _ = _run(capsys, "rf", "inceptionv1", "conv2d0", "maxpool1", "--json")
    rows = json.loads(out)
    assert code == 0 and [(r["size"], r["stride"], r["padding"]) for r in rows] == [([7, 7], [2, 2], [3, 3]), ([11, 11], [4, 4], [3, 3])]
    save_image(torch.rand(3, 64, 64), tmp_path / "photo.png")
    code, _, err = _run(capsys, "rf", "inceptionv1", "mixed4a", "--effective", str(tmp_path / "photo.png"))
    assert code == 2 and err.count("\n") == 1 and "FEATVIS_WEIGHTS_DIR" in err  # the measured field does need the weights


def test_table_of_a_user_model_and_the_100px_dog(nets, capsys):
    code, out, _ = _run(capsys, "rf", f"{nets}:stack", "48", "49", "--input-size", "128")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["layer", "r", "S", "P", "output", "aligned"]
    assert lines[1].split() == ["48", "99", "1", "49", "2x128x128", "yes"]  # 49 layers: 99 px, not yet the dog
    assert lines[2].split() == ["49", "101", "1", "50", "2x128x128", "yes"]  # 50 layers: 101 px


def test_every_layer_by_default_with_aliases_as_given(weights_dir, capsys):
    code, out, _ = _run(capsys, "rf", "inceptionv1", "--json", "--input-size", "128")
    rows = {row["layer"]: row for row in json.loads(out)}
    assert code == 0 and len(rows) > 200 and rows["inception4a"]["output_shape"] == [512, 8, 8]
    assert rows["fc"]["global"] and rows["fc"]["size"] == [128, 128] and rows["fc"]["stride"] == [0, 0]
    code, out, _ = _run(capsys, "rf", "inceptionv1", "mixed4a", "conv2d0")
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["layer", "mixed4a", "conv2d0"] and lines[3].startswith("r: field size")
    assert lines[1].split() == ["mixed4a", "171", "16", "71", "512x14x14", "yes"]


def test_unanalysed_operation_named_in_table_and_json(nets, capsys):
    code, out, _ = _run(capsys, "rf", f"{nets}:upsampling", "0", "2")
    assert code == 0
    assert out.splitlines()[2].split() == ["2", "?", "?", "?", "2x442x442", "?"]  # 224 -> 222 -> 444 -> 442
    assert "2: not analysed: 1 (interpolate)" in out and "featvis.register_rule" in out
    code, out, _ = _run(capsys, "rf", f"{nets}:upsampling", "2", "--json")
    row = json.loads(out)[0]
    assert row["size"] is None and row["aligned"] is False and row["unanalysed"] == ["1 (interpolate)"]


def test_effective_field_beside_the_theoretical(weights_dir, coffee, chelsea, tmp_path, capsys):
    photos = [save_image(coffee, tmp_path / "coffee.png"), save_image(chelsea, tmp_path / "cat.jpg")]
    figure = tmp_path / "erf.png"
    code, out, _ = _run(capsys, "rf", "inceptionv1", "mixed3a", "--effective", *map(str, photos), "-o", str(figure))
    assert code == 0 and "theoretical 59 px" in out and "over 2 photo(s)" in out and f"wrote {figure}" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = _run(capsys, "rf", "inceptionv1", "mixed3a", "--effective", str(photos[0]), "--json")
    row = json.loads(out)
    assert row["theoretical_size"] == [59, 59] and row["inputs"] == 1 and row["path"] is None
    assert 1 < row["effective_size"] < 59


@pytest.mark.parametrize("argv, message", [
    (["rf", "torchvision:alexnet", "features.99"], "unknown layer 'features.99'"),
    (["rf", "torchvision:alexnet", "features.0", "features.3", "--effective", "a.png"], "give exactly one LAYER (got 2)"),
    (["rf", "torchvision:alexnet", "--effective", "a.png"], "give exactly one LAYER (got 0)"),
    (["rf", "torchvision:alexnet", "features.0", "-o", "erf.png"], "-o draws the effective field"),
    (["rf", "torchvision:alexnet", "features.0", "--effective", "missing.png"], "image not found: missing.png"),
    (["rf", "torchvision:alexnet", "features.0", "--effective", "a.png", "-o", "erf.gif"], "cannot save a figure as '.gif'"),
    (["rf", "torchvision:alexnet", "--input-size", "16"], "cannot run on a 16x16 input"),
])
def test_bad_input_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("featvis: error: ") and message in err


def test_console_script_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("featvis")
    run = subprocess.run([str(script), "rf", "torchvision:resnet18", "layer9"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.startswith("featvis: error: unknown layer")
