"""Hostile input over every subcommand: exit code 2, one line on stderr, no traceback, nothing lost.

Each row is a mistake a user makes (or a file an attacker hands them); the expected fragment
names the problem as the user must read it. Files already written (``keep.*``) must come out
byte for byte as they went in, and no temporary file may be left behind.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from featvis.cli import COMMANDS, main


def bomb_png(path: Path, width: int, height: int) -> None:
    """A valid RGB PNG of width x height black pixels: a few hundred KB on disk whatever its size."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A 20000 x 20000 PNG of 1.2 MB (made once: compressing 1.2 GB of pixels takes seconds)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    bomb_png(path, 20000, 20000)
    return path


@pytest.fixture
def hostile(user_models, bomb, monkeypatch) -> Path:
    """The user's folder: model files, a bomb, a photo, a folder named like files, files already written."""
    root = user_models
    monkeypatch.chdir(root)
    monkeypatch.delenv("FEATVIS_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("FEATVIS_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("FEATVIS_WEIGHTS_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("TORCH_HOME", str(root / "torch-home"))
    shutil.copy(bomb, root / "bomb.png")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(root / "small.png")
    (root / "photos").mkdir()
    (root / "dir.png").mkdir()
    (root / "afile").write_text("not a folder")
    (root / "keep.png").write_bytes(b"an earlier result")
    (root / "keep.pdf").write_bytes(b"an earlier figure")
    torch.save({"fc.weight": torch.zeros(1), "payload": Evil()}, root / "evil.pt")
    return root


CASES = [
    # errors in the user's own code: type, message, file:line
    (["layers", "nets.py:needs"], {}, "the factory nets.py:needs failed: TypeError: needs() missing 1 required positional argument: 'n' (nets.py:"),
    (["layers", "nets.py:raises"], {}, "ValueError: no such model (nets.py:"),
    (["layers", "syntax.py:f"], {}, "SyntaxError: invalid syntax (syntax.py:2)"),
    (["classify", "boom.py:f", "small.png"], {}, "RuntimeError: boom at import (boom.py:1)"),
    (["layers", "nets.py:tiny"], {}, "RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
    (["layers", "nets.py:tiny"], {}, "pass --input-size N"),
    (["layers", "inceptionv1", "--input-size", "8"], {}, "inceptionv1 cannot run on a 8x8 input"),
    # devices
    (["layers", "inceptionv1", "--device", "meta"], {}, "device 'meta' holds no data"),
    (["gallery", "nets.py:marked", "--layers", "conv", "--out", "gallery", "--device", "cuda:7"], {}, "device 'cuda:7'"),
    # images: folders, bombs, limits
    (["classify", "inceptionv1", "photos"], {}, "photos is a folder, not an image"),
    (["classify", "inceptionv1", "bomb.png"], {}, "image bomb.png is 20000x20000 pixels"),
    (["maps", "nets.py:tiny", "conv", "bomb.png", "-o", "keep.pdf"], {}, "FEATVIS_MAX_PIXELS"),
    (["saliency", "nets.py:tiny", "photos", "-o", "keep.pdf"], {}, "photos is a folder"),
    (["rf", "inceptionv1", "mixed4a", "--effective", "bomb.png", "-o", "keep.pdf"], {}, "20000x20000 pixels"),
    (["classify", "inceptionv1", "small.png"], {"FEATVIS_MAX_PIXELS": "many"}, "FEATVIS_MAX_PIXELS='many' is not"),
    # numbers out of range
    (["classify", "inceptionv1", "small.png", "--top", "0"], {}, "argument --top: must be at least 1"),
    (["layers", "nets.py:tiny", "--std", "0,0,0"], {}, "argument --std: a std divides the input"),
    (["render", "nets.py:marked", "conv:0", "--steps", "0", "-o", "keep.png"], {}, "argument --steps: must be at least 1"),
    (["render", "nets.py:marked", "conv:0", "--size", "100000", "-o", "keep.png"], {}, "use a smaller --size"),
    (["explain", "nets.py:tiny", "small.png", "--layer", "conv", "--steps", "100001", "-o", "keep.html"], {},
     "steps must be a whole number from 1 to 100,000"),  # one bound for every door (RenderSettings)
    (["circuit", "nets.py:tiny", "conv:0", "--from", "conv", "--steps", "100001", "-o", "keep.png"], {}, "steps must be a whole number from 1 to 100,000"),
    # output paths, checked before any work
    (["render", "nets.py:marked", "conv:0", "-o", "keep.xyz"], {}, "cannot save an image as '.xyz'"),
    (["render", "nets.py:marked", "conv:0", "-o", "dir.png"], {}, "dir.png is a folder"),
    (["filters", "nets.py:tiny", "conv", "-o", "dir.png"], {}, "dir.png is a folder"),
    (["gallery", "nets.py:marked", "--layers", "conv", "--out", "afile"], {}, "cannot create folder afile: a file of that name exists"),
    # weights and their settings
    (["layers", "torchvision:resnet18", "--weights", "evil.pt"], {}, "which could run code; save a plain state dict with "
                                                                     "torch.save(model.state_dict(), path)"),
    (["classify", "inceptionv1", "small.png"], {"FEATVIS_WEIGHTS_URL": "notaurl"}, "FEATVIS_WEIGHTS_URL='notaurl' is not a URL"),
    (["classify", "squeezenet1_1", "small.png"], {"FEATVIS_CACHE_DIR": "afile/cache"}, "set FEATVIS_CACHE_DIR to a writable folder"),
    # the analyses: photos, collections and outputs checked before any work
    (["explain", "nets.py:tiny", "bomb.png", "--layer", "conv", "-o", "out.html"], {}, "image bomb.png is 20000x20000 pixels"),
    (["circuit", "nets.py:marked", "conv:0", "--from", "conv", "-o", "keep.xyz"], {}, "cannot save a figure as '.xyz'"),
    (["examples", "nets.py:marked", "--images", "photos", "--layers", "conv", "-o", "examples"], {}, "no image files (.png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp, .ppm) in photos"),
    (["atlas", "nets.py:marked", "--images", "photos", "--layer", "conv", "-o", "keep.png"], {}, "no image files (.png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp, .ppm) in photos"),
    (["serve", "nets.py:marked", "--port", "99999"], {}, "a port is 0..65535, got 99999"),
    (["dictionary", "nets.py:marked", "--images", "photos", "--layer", "conv", "-o", "keepdir"], {}, "no image files (.png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp, .ppm) in photos"),
    (["describe", "nets.py:marked", "conv:99"], {}, "channel 99 is out of range for layer 'conv'"),
    (["render", "nets.py:marked", "conv:0", "--dictionary", "nowhere", "-o", "keep.png"], {}, "--dictionary nowhere: no dictionary.json there"),
]


def test_every_subcommand_is_covered():
    assert {argv[0] for argv, _, _ in CASES} == set(COMMANDS)


@pytest.mark.parametrize("argv, env, fragment", CASES, ids=[" ".join(argv) + "".join(f" {k}" for k in env) for argv, env, _ in CASES])
def test_bad_input_one_line_exit_2_nothing_lost(hostile, capsys, monkeypatch, argv, env, fragment):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = {path: path.read_bytes() for path in hostile.glob("keep.*")}
    code = _exit_code(argv)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if not line.startswith("featvis: warning: ")]
    assert code == 2 and out == ""
    assert len(errors) == 1 and errors[0].startswith("featvis") and ": error: " in errors[0], err
    assert fragment in errors[0]
    assert all(line.startswith("featvis") for line in err.splitlines()), "raw output (a traceback, a warning's source line)"
    assert {path: path.read_bytes() for path in hostile.glob("keep.*")} == before
    assert not [p for p in hostile.rglob("*") if p.name.endswith(".tmp") or ".partial" in p.name]


def _exit_code(argv: list[str]) -> int:
    """main()'s return code, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_user_warnings_one_line_and_layer_names_escaped(hostile, capsys):
    """A warning from the user's forward: one line with its file:line; a module name with a newline stays on its row."""
    assert main(["layers", "nets.py:tiny", "--input-size", "32"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split() == ["bad\\nname", "ReLU", "4x30x30"] and len(out.splitlines()) == 3
    line = next(n for n, text in enumerate(Path("nets.py").read_text().splitlines(), 1) if "warnings.warn(" in text)
    assert err == f"featvis: warning: careful: this model is tiny (nets.py:{line})\n"
