"""Ctrl-C (a real SIGINT) in the middle of a command's heavy work: exit code 130, one line on
stderr, and the output an earlier run wrote stays byte for byte as it was (nothing half-made
replaces it), nothing half-printed on stdout. `featvis render` is covered in test_hostile_input,
galleries in test_gallery, examples in test_examples."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

NETS = '''
import os
import time
from pathlib import Path

import torch
from torch import nn


class Marked(nn.Module):
    """conv + ReLU + a 3-class head, any input size; its 40th forward pass creates $FEATVIS_TEST_MARK (heavy
    work has begun)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
        self.calls = 0

    def forward(self, x):
        time.sleep(float(os.environ.get("FEATVIS_TEST_SLEEP", "0")))
        self.calls += 1
        if self.calls == 40 and "FEATVIS_TEST_MARK" in os.environ:
            Path(os.environ["FEATVIS_TEST_MARK"]).touch()
        return self.head(self.relu(self.conv(x)))


def marked():
    if "FEATVIS_TEST_LOAD_MARK" in os.environ:  # a command with little model work: interrupted while loading
        Path(os.environ["FEATVIS_TEST_LOAD_MARK"]).touch()
        time.sleep(120)
    return Marked()
'''
MAIN = "import sys; from featvis.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "nets.py").write_text(NETS)
    Image.fromarray((np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)).save(tmp_path / "photo.png")
    return tmp_path


def _interrupted(project: Path, *argv: str, sleep: float = 0.0, at_load: bool = False) -> tuple[int, str]:
    """Run featvis ``argv`` in a fresh process, SIGINT it once its model has run 40 forward passes (each
    ``sleep`` seconds longer, for commands whose whole work is only a few hundred passes), or, ``at_load``,
    while the user's factory builds the model (for commands whose model work is one pass or none)."""
    out, err = _interrupted_run(project, *argv, sleep=sleep, at_load=at_load)
    assert out[0] == "", out  # nothing half-printed on stdout
    return out[1], err


def _interrupted_run(project: Path, *argv: str, sleep: float, at_load: bool) -> tuple[tuple[str, int], str]:
    mark = project / "started"
    mark.unlink(missing_ok=True)
    env = {**os.environ, "FEATVIS_TEST_SLEEP": str(sleep), "FEATVIS_TEST_LOAD_MARK" if at_load else "FEATVIS_TEST_MARK": str(mark)}
    process = subprocess.Popen([sys.executable, "-c", MAIN, *argv, "--quiet"], cwd=project, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 240
    while not mark.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=240)
    return (out, process.returncode), err


def test_ctrl_c_during_explain_keeps_the_earlier_page(project):
    page = project / "explain.html"
    page.write_text("<p>an earlier explanation</p>")
    code, err = _interrupted(project, "explain", "nets.py:marked", "photo.png", "--layer", "relu", "--groups", "2",
                             "--input-size", "32", "--steps", "100000", "--size", "16", "-o", "explain.html")
    assert code == 130, err
    assert err == "featvis: interrupted\n"
    assert page.read_text() == "<p>an earlier explanation</p>"
    assert sorted(p.name for p in project.iterdir() if p.name.startswith("explain")) == ["explain.html"]


def test_ctrl_c_during_circuit_keeps_the_earlier_figure(project):
    figure = project / "circuit.png"
    figure.write_bytes(b"an earlier figure")
    code, err = _interrupted(project, "circuit", "nets.py:marked", "relu:1", "--from", "conv", "--k", "2",
                             "--input-size", "32", "--steps", "100000", "--size", "16", "-o", "circuit.png")
    assert code == 130, err
    assert err == "featvis: interrupted\n"
    assert figure.read_bytes() == b"an earlier figure"


def test_ctrl_c_during_a_saliency_sanity_check_keeps_the_earlier_figure(project):
    figure = project / "saliency.png"
    figure.write_bytes(b"an earlier figure")
    code, err = _interrupted(project, "saliency", "nets.py:marked", "photo.png", "--method", "ig", "--steps", "300",
                             "--internal-batch-size", "1", "--sanity", "--input-size", "32", "-o", "saliency.png", sleep=0.01)
    assert code == 130, err
    assert err == "featvis: interrupted\n"
    assert figure.read_bytes() == b"an earlier figure"


def test_ctrl_c_during_an_occlusion_map_keeps_the_earlier_figure(project):
    figure = project / "saliency.png"
    figure.write_bytes(b"an earlier figure")
    code, err = _interrupted(project, "saliency", "nets.py:marked", "photo.png", "--method", "occlusion",
                             "--internal-batch-size", "1", "--input-size", "32", "-o", "saliency.png", sleep=0.02)
    assert code == 130, err
    assert err == "featvis: interrupted\n"
    assert figure.read_bytes() == b"an earlier figure"


def test_ctrl_c_during_an_atlas_keeps_the_earlier_atlas(project):
    pytest.importorskip("umap", reason="pip install 'featvis[atlas]'")
    (project / "photos").mkdir()
    for i in range(6):
        Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)).save(project / "photos" / f"{i}.png")
    atlas = project / "atlas.png"
    atlas.write_bytes(b"an earlier atlas")
    code, err = _interrupted(project, "atlas", "nets.py:marked", "--images", "photos", "--layer", "relu", "--grid", "2",
                             "--samples", "60", "--workers", "0", "--input-size", "32", "--steps", "100000",
                             "--size", "16", "-o", "atlas.png")
    assert code == 130, err
    assert err == "featvis: interrupted\n"
    assert atlas.read_bytes() == b"an earlier atlas"
    assert sorted(p.name for p in project.iterdir() if p.name.startswith("atlas")) == ["atlas.png"]


def test_ctrl_c_while_training_a_dictionary_keeps_the_earlier_one(project):
    (project / "photos").mkdir()
    for i in range(48):
        Image.fromarray((np.random.default_rng(i).random((32, 32, 3)) * 255).astype(np.uint8)).save(project / "photos" / f"{i}.png")
    earlier = project / "dictionary"
    earlier.mkdir()
    for name in ("dictionary.pt", "dictionary.json"):
        (earlier / name).write_bytes(b"an earlier dictionary")
    code, err = _interrupted(project, "dictionary", "nets.py:marked", "--images", "photos", "--layer", "relu",
                             "--features", "12", "--k", "2", "--samples", "3000", "--steps", "10000000", "--workers", "0",
                             "--image-batch", "1", "--input-size", "32", "--out", "dictionary")
    assert code == 130, err
    assert err == "featvis: interrupted\n"
    assert all((earlier / name).read_bytes() == b"an earlier dictionary" for name in ("dictionary.pt", "dictionary.json"))
    assert {p.name for p in earlier.iterdir()} <= {"dictionary.pt", "dictionary.json", ".samples-0of1.ckpt"}  # resumable


@pytest.mark.parametrize("argv, output", [
    (["maps", "nets.py:marked", "relu", "photo.png", "--input-size", "32", "-o", "maps.png"], "maps.png"),
    (["filters", "nets.py:marked", "conv", "-o", "filters.png"], "filters.png"),
    (["layers", "nets.py:marked", "--input-size", "32"], None),
    (["classify", "nets.py:marked", "photo.png", "--input-size", "32"], None),
    (["rf", "nets.py:marked", "relu", "--input-size", "32"], None),
    (["describe", "nets.py:marked", "relu:1", "--input-size", "32"], None),
], ids=["maps", "filters", "layers", "classify", "rf", "describe"])
def test_ctrl_c_while_a_quick_command_loads_its_model(project, argv, output):
    """Commands whose model work is one pass or none, interrupted while the user's factory runs."""
    if output:
        (project / output).write_bytes(b"an earlier figure")
    code, err = _interrupted(project, *argv, at_load=True)
    assert code == 130, err
    assert err == "featvis: interrupted\n"
    if output:
        assert (project / output).read_bytes() == b"an earlier figure"
