"""`featvis render`: PNGs per spec or as a grid, JSON fields, thresholds, and errors before optimising."""

from __future__ import annotations

import json
import re

import pytest
import torch

import featvis
from featvis.cli import main
from featvis.optvis.transforms import resize

NETS = """
import torch
from torch import nn

def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU())
"""


@pytest.fixture
def small(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(NETS)
    return "nets.py:small"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_out_dir_json_and_thresholds(inceptionv1, tmp_path, capsys):
    code, out, _ = _run(capsys, "render", "inceptionv1", "mixed3a:1", "-mixed3a:1", "mixed3a:1@5,5", "--steps", "4",
                        "--size", "40", "--thresholds", "2", "--out-dir", str(tmp_path / "out"), "--json")
    rows = json.loads(out)
    assert code == 0 and [row["spec"] for row in rows] == ["mixed3a:1", "-mixed3a:1", "mixed3a:1@5,5"]
    assert all(set(row) == {"spec", "path", "activation", "natural_max", "ratio", "plausibility", "steps", "interrupted", "precision"}
               and row["precision"] in {"float32", "bfloat16"} for row in rows)
    assert all(row["steps"] == 4 and row["interrupted"] is False for row in rows)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["mixed3a_1-step2.png", "mixed3a_1.png", "mixed3a_1_5_5-step2.png", "mixed3a_1_5_5.png",
                     "neg_mixed3a_1-step2.png", "neg_mixed3a_1.png"]
    image = featvis.load_image(rows[0]["path"])
    assert image.shape == (3, 40, 40)
    with torch.no_grad():  # the reported activation, re-measured on the saved 8-bit PNG
        measured = featvis.capture(inceptionv1, resize(image[None], 224), ["mixed3a"])["mixed3a"][0, 1].mean()
    assert float(measured) == pytest.approx(rows[0]["activation"], rel=0.02)
    assert rows[0]["ratio"] == pytest.approx(rows[0]["activation"] / rows[0]["natural_max"])


def test_negative_spec_on_a_concat_layer(inceptionv1, tmp_path, capsys):
    code, out, _ = _run(capsys, "render", "inceptionv1", "-mixed4a_pre_relu:97", "--steps", "2", "--size", "32",
                        "--out-dir", str(tmp_path), "--json")
    (row,) = json.loads(out)
    assert code == 0 and row["path"] == str(tmp_path / "neg_mixed4a_pre_relu_97.png") and row["natural_max"] is not None
    image = featvis.load_image(row["path"])
    with torch.no_grad():  # the reported activation, re-measured on the saved 8-bit PNG: minus the pre-ReLU channel
        measured = featvis.capture(inceptionv1, resize(image[None], 224), ["mixed4a_pre_relu"])["mixed4a_pre_relu"][0, 97].mean()
    assert float(-measured) == pytest.approx(row["activation"], rel=0.02)
    code, out, err = _run(capsys, "render", "inceptionv1", "mixed4a_pre_relu:600", "-o", str(tmp_path / "never.png"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "channel 600 is out of range for mixed4a_pre_relu, which has 512 channels; use 0..511" in err


def test_one_png_grid_and_text_output(small, tmp_path, capsys):
    code, out, err = _run(capsys, "render", small, "4:1", "4:2", "4:3", "--steps", "2", "--size", "16", "-o", "grid.png",
                          "--param", "pixel", "--no-decorrelate", "--transforms", "none", "--seed", "3", "--batch", "2")
    assert code == 0
    grid = featvis.load_image(tmp_path / "grid.png")
    assert grid.shape == (3, 16 * 2 + 4, 16 * 2 + 4)  # 2 x 2 grid, 4 px gaps, last cell white
    assert torch.all(grid[:, 20:, 20:] == 1.0)
    lines = out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("4:1: activation ") and lines[0].endswith("-> grid.png")
    # a quick render says how long full quality would take, in seconds while under a minute and a half
    estimate = re.search(r"a quick render \(2 steps, \d+ s\); for full quality use --steps 512 \(about (\d+) (s|min) here\)", err)
    assert estimate and int(estimate[1]) > 0 and (estimate[2] == "min" or int(estimate[1]) < 90)


def test_precision_flag_reaches_the_optimisation(small, tmp_path, capsys):
    """float32 twice gives the same bytes; bfloat16 arithmetic gives a (slightly) different image."""
    for name, precision in [("a.png", "float32"), ("b.png", "float32"), ("c.png", "bfloat16")]:
        code, _, _ = _run(capsys, "render", small, "4:1", "--steps", "3", "--size", "16", "--precision", precision, "-o", name)
        assert code == 0
    a, b, c = (featvis.load_image(tmp_path / n) for n in ("a.png", "b.png", "c.png"))
    assert torch.equal(a, b) and not torch.equal(a, c) and (a - c).abs().mean() < 0.03


def test_init_photo(small, tmp_path, capsys, coffee):
    featvis.save_image(coffee, tmp_path / "coffee.png")
    code, out, _ = _run(capsys, "render", small, "4:1", "--steps", "1", "--size", "24", "--init", "coffee.png",
                        "--transforms", "none", "-o", "out.png", "--json")
    image = featvis.load_image(tmp_path / "out.png")
    photo = resize(coffee[None, :, :, 100:500], 24)[0]
    assert code == 0 and torch.corrcoef(torch.stack([image.flatten(), photo.flatten()]))[0, 1] > 0.95


@pytest.mark.parametrize("argv, message", [
    (["4:9"], "bad spec '4:9': channel 9 is out of range for 4, which has 6 channels; use 0..5"),
    (["4:x"], "bad spec '4:x': channel 'x' at character 3"),
    (["7:1"], "bad spec '7:1': no layer of model is called '7' at character 1"),
    (["4:1", "--thresholds", "2,900"], "thresholds must lie in 0..512"),
    (["4:1", "--init", "missing.png"], "image not found: missing.png"),
    (["4:1", "--size", "4"], "size >= 8 px"),
])
def test_bad_input_one_line_exit_2_nothing_written(small, tmp_path, capsys, argv, message):
    code, out, err = _run(capsys, "render", small, *argv, "-o", "never.png")
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err
    assert not (tmp_path / "never.png").exists()
