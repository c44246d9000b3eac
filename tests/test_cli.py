"""The `featvis` command line: layers, classify, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from featvis.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _featvis(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    """The installed console script, in a fresh process (true exit code, real stderr)."""
    script = Path(sys.executable).with_name("featvis")
    return subprocess.run([str(script), *argv], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)


@pytest.fixture
def offline(tmp_path, monkeypatch) -> None:
    """No weights anywhere: no FEATVIS_WEIGHTS_DIR, an empty cache, a download address nobody serves."""
    monkeypatch.delenv("FEATVIS_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("FEATVIS_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("FEATVIS_WEIGHTS_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_layers_json_needs_no_weights(offline, capsys):
    """Shapes as in the paper's Table 1, from the architecture alone: offline, no weights present."""
    code, out, _ = _run(capsys, "layers", "inceptionv1", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0
    assert rows["inception4a"] == {"name": "inception4a", "type": "Inception", "output_shape": [512, 14, 14], "aliases": ["mixed4a"],
                                   "calls": 1}
    assert rows["conv1"]["aliases"] == ["conv2d0"] and rows["fc"]["output_shape"] == [1000]
    code, out, _ = _run(capsys, "layers", "inceptionv1", "--json", "--input-size", "128")
    assert {row["name"]: row for row in json.loads(out)}["inception4a"]["output_shape"] == [512, 8, 8]


def test_layers_lists_concat_layers_after_their_last_part(weights_dir, capsys):
    parts = ["inception4a.branch1.conv", "inception4a.branch2.1.conv", "inception4a.branch3.1.conv", "inception4a.branch4.1.conv"]
    code, out, _ = _run(capsys, "layers", "inceptionv1", "--json")
    names = [row["name"] for row in json.loads(out)]
    row = json.loads(out)[names.index("mixed4a_pre_relu")]
    assert code == 0 and row == {"name": "mixed4a_pre_relu", "type": "Concat", "output_shape": [512, 14, 14], "aliases": [],
                                 "concat": parts, "calls": 1}
    assert names[names.index("mixed4a_pre_relu") - 1] == parts[-1]
    code, out, _ = _run(capsys, "layers", "inceptionv1")
    (line,) = [line for line in out.splitlines() if line.startswith("mixed4a_pre_relu ")]
    assert code == 0 and line.split()[1:3] == ["Concat", "512x14x14"] and line.endswith(f"(concat of {' + '.join(parts)})")


def test_classify_json_with_any_image_mode(weights_dir, coffee, tmp_path, capsys):
    rgb = (coffee.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "coffee.jpg", quality=95)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "coffee_rgba.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "coffee_gray.png")
    paths = [str(tmp_path / n) for n in ("coffee.jpg", "coffee_rgba.png", "coffee_gray.png")]
    code, out, _ = _run(capsys, "classify", "inceptionv1", *paths, "--top", "2", "--json")
    results = json.loads(out)
    assert code == 0 and [r["image"] for r in results] == paths
    assert all(len(r["top"]) == 2 and set(r["top"][0]) == {"index", "label", "prob"} for r in results)
    assert results[0]["top"][0]["label"] == results[1]["top"][0]["label"] == "espresso"
    assert results[0]["top"][0]["index"] == 967 and 0.5 < results[0]["top"][0]["prob"] <= 1.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["classify", "inceptionv1", "missing.png"], "image not found: missing.png"),
        (["classify", "inceptionv1", "corrupt.png"], "cannot read image corrupt.png"),
        (["layers", "alexnett"], "unknown model 'alexnett'"),
        (["layers", "torchvision:resnet18", "--weights", "wrong.pt"], "do not fit this model"),
        (["layers", "torchvision:resnet18", "--weights", "corrupt.pt"], "cannot load weights corrupt.pt"),
        (["layers", "nets.py:nothing"], "'nothing' not found in nets.py"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated zip")
    (tmp_path / "nets.py").write_text("import torch\n")
    torch.save(torchvision.models.resnet18(weights=None, num_classes=7).state_dict(), tmp_path / "wrong.pt")
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("featvis: error: ") and message in err


def test_console_script_exit_codes_without_traceback(tmp_path):
    bad = _featvis("classify", "torchvision:resnet18", str(tmp_path / "nope.jpg"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == f"featvis: error: image not found: {tmp_path / 'nope.jpg'}; check the path"
    ok = _featvis("layers", "torchvision:resnet18", "--json", "--input-size", "64")
    assert ok.returncode == 0
    assert {"name": "layer4", "type": "Sequential", "output_shape": [512, 2, 2], "aliases": [], "calls": 1} in json.loads(ok.stdout)
