"""Shared fixtures. Tests that need the real ImageNet weights find them through the one
documented setting, $FEATVIS_WEIGHTS_DIR (a folder holding bvlc_googlenet/ and squeezenet1_1/,
as laid out in the README); without it they skip with that reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import featvis
from featvis.weights import WEIGHTS_ENV

os.environ.setdefault("MPLBACKEND", "Agg")


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
