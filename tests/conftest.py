"""Shared fixtures. Tests that need the real ImageNet weights find them through the one
documented setting, $FEATVIS_WEIGHTS_DIR (a folder holding bvlc_googlenet/ and squeezenet1_1/,
as laid out in the README); without it they skip with that reason.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import featvis
from featvis.models.weights import WEIGHTS_ENV

os.environ.setdefault("MPLBACKEND", "Agg")
# The Ctrl-C tests send real SIGINTs to featvis processes. A suite started as a background job (`cmd &` in a
# script) inherits SIGINT ignored, and so would every process it starts: give them Python's own handler back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _weights_root() -> Path | None:
    root = os.environ.get(WEIGHTS_ENV)
    return Path(root) if root and (Path(root) / "bvlc_googlenet").is_dir() else None


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    root = _weights_root()
    if root is None:
        pytest.skip(f"real ImageNet weights absent: set {WEIGHTS_ENV} to a folder holding bvlc_googlenet/ and squeezenet1_1/")
    return root


@pytest.fixture(scope="session")
def inceptionv1(weights_dir) -> featvis.FeatvisModel:
    """The BVLC GoogLeNet with its real weights, eval mode, parameters frozen."""
    return featvis.load_model("inceptionv1", progress=False)


@pytest.fixture(scope="session")
def squeezenet(weights_dir) -> featvis.FeatvisModel:
    return featvis.load_model("squeezenet1_1", progress=False)


def _skimage_photo(name: str) -> torch.Tensor:
    from skimage import data

    return torch.from_numpy(np.ascontiguousarray(getattr(data, name)())).permute(2, 0, 1).float() / 255.0


@pytest.fixture(scope="session")
def coffee() -> torch.Tensor:
    """scikit-image's coffee() photo, [3, 400, 600] RGB in [0, 1]."""
    return _skimage_photo("coffee")


@pytest.fixture(scope="session")
def chelsea() -> torch.Tensor:
    """scikit-image's chelsea() cat photo, [3, 300, 451] RGB in [0, 1]."""
    return _skimage_photo("chelsea")


USER_MODELS = '''
import os
import warnings
from pathlib import Path

import torch
from torch import nn


class Tiny(nn.Module):
    """Needs 32 px inputs (its Linear layer); warns on every forward; one module name holds a newline."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.add_module("bad\\nname", nn.ReLU())
        self.fc = nn.Linear(4 * 30 * 30, 10)

    def forward(self, x):
        warnings.warn("careful: this model is tiny")
        x = getattr(self, "bad\\nname")(self.conv(x))
        return self.fc(x.flatten(1))


class Marked(nn.Module):
    """Any input size; its 40th forward pass creates the file $FEATVIS_TEST_MARK, if set (a render is well into its
    optimisation: the checks before it, shapes, layout and the natural-photo pass, take fewer)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 40 and "FEATVIS_TEST_MARK" in os.environ:
            Path(os.environ["FEATVIS_TEST_MARK"]).touch()
        return self.conv(x)


def tiny():
    return Tiny()


def marked():
    return Marked()


def needs(n):
    return Tiny()


def raises():
    raise ValueError("no such model")
'''


@pytest.fixture
def user_models(tmp_path) -> Path:
    """A folder holding user model files: nets.py (see USER_MODELS), syntax.py (a syntax error on
    line 2) and boom.py (raises on import)."""
    (tmp_path / "nets.py").write_text(USER_MODELS)
    (tmp_path / "syntax.py").write_text("import torch\nx = 1 +\n")
    (tmp_path / "boom.py").write_text("raise RuntimeError('boom at import')\n")
    return tmp_path


@pytest.fixture(params=["0", "1"], ids=["cpu-float32", "cpu-bfloat16"])
def cpu_bf16(request, monkeypatch) -> bool:
    """Both answers of the CPU capability check ($FEATVIS_CPU_BF16): a test taking this fixture runs
    once as on an AVX2 CPU (auto = float32) and once as on an AVX512-BF16/AMX one (auto = bfloat16,
    guarded), whatever CPU runs the suite. The per-model decisions of earlier tests are forgotten."""
    from featvis.optvis import precision

    monkeypatch.setenv(precision.CPU_BF16_ENV, request.param)
    monkeypatch.setattr(precision, "_CHECKED", type(precision._CHECKED)())
    return request.param == "1"


def cpu_flags_bfloat16() -> bool | None:
    """Ground truth for the CPU check, independent of featvis: whether the kernel lists AMX tiles or
    AVX512-BF16 among the CPU's flags (None where /proc/cpuinfo is absent)."""
    info = Path("/proc/cpuinfo")
    return bool(set(info.read_text().split()) & {"amx_tile", "avx512_bf16"}) if info.exists() else None


@pytest.fixture(scope="module")
def one_thread():
    """Many small float64 ops: one torch thread avoids thread spin-waits on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
