"""One CLI: -o/--out (old --output kept) and -q/--quiet everywhere, --input-size where photos are
read, --mean/--std refused for built-in models, stdout reserved for featvis's own output."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from featvis.cli import main
from featvis.core.images import save_image

NETS = '''
import torch
from torch import nn

print("chatty: building")  # EfficientNet-style packages print on import and construction


class Chatty(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        print("chatty: forward")
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def chatty():
    print("chatty: factory")
    return Chatty()
'''


@pytest.fixture
def chatty(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(NETS)
    save_image(Image.new("RGB", (40, 30), (200, 40, 10)), tmp_path / "photo.png")
    return "nets.py:chatty"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_stdout_is_json_only_while_user_code_prints(chatty, capsys):
    code, out, err = _run(capsys, "layers", chatty, "--json", "--input-size", "32")
    rows = json.loads(out)  # nothing but JSON
    assert code == 0 and {row["name"]: row["output_shape"] for row in rows}["conv2"] == [5, 32, 32]
    assert "chatty: factory" in err and "chatty: forward" in err and "chatty" not in out
    code, out, err = _run(capsys, "classify", chatty, "photo.png", "--json", "--top", "2")
    assert code == 0 and [len(r["top"]) for r in json.loads(out)] == [2] and "chatty: forward" in err
    code, out, err = _run(capsys, "layers", chatty, "--input-size", "32")  # text tables too
    assert code == 0 and "chatty" not in out and out.splitlines()[0].split()[0] == "conv1"


@pytest.mark.parametrize("spelling", ["-o", "--out", "--output"])
def test_every_figure_command_takes_o_out_and_the_old_output(chatty, capsys, tmp_path, spelling):
    for argv in (["filters", chatty, "conv1"], ["maps", chatty, "conv2", "photo.png", "--top", "2", "--input-size", "32"],
                 ["saliency", chatty, "photo.png", "--method", "gradcam", "--layer", "conv2", "--input-size", "32"]):
        target = tmp_path / f"{argv[0]}{spelling}.png"
        code, out, err = _run(capsys, *argv, spelling, str(target), "-q")
        assert code == 0, err
        with Image.open(target) as image:
            assert image.format == "PNG" and image.size[0] > 50


def test_quiet_silences_progress_and_default_shows_lines(chatty, capsys, tmp_path):
    """Off a terminal (capsys), progress is plain lines: the render's last line, the preview hint."""
    argv = ["render", chatty, "conv2:1", "--steps", "3", "--size", "16", "--input-size", "16", "-o", "a.png"]
    code, out, err = _run(capsys, *argv)
    assert code == 0 and "render: 3/3 steps (100%)" in err and "--steps 512" in err
    assert "\r" not in err and out.startswith("conv2:1: activation")
    code, out, err = _run(capsys, *argv, "--quiet")
    assert code == 0 and "render:" not in err and "--steps 512" not in err
    assert (tmp_path / "a.png").is_file()


def test_mean_std_refused_for_a_builtin_model(capsys):
    code, out, err = _run(capsys, "layers", "inceptionv1", "--mean", "0.5,0.5,0.5")
    assert code == 2 and err.count("\n") == 1 and "--mean/--std" in err and out == ""


def test_gallery_takes_o_and_quiet(chatty, capsys, tmp_path):
    code, out, err = _run(capsys, "gallery", chatty, "--layers", "conv2", "--channels", "0:1", "-o", "site", "--steps", "2",
                          "--size", "16", "--input-size", "16", "--quiet", "--no-filters", "--json")
    assert code == 0 and json.loads(out)["index"].endswith("index.html") and (tmp_path / "site" / "index.html").is_file()
    assert "conv2" not in err.replace("chatty", "")  # no per-unit progress lines with --quiet
