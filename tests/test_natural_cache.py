"""Natural-photo activations kept in the user cache: a fresh process (here: a fresh model object,
the same weights) reads them instead of running the photos again, and gets the best crop's
activation as computed directly; other weights get their own entry; a damaged file is recomputed."""

from __future__ import annotations

import importlib

import torch
from torch import nn

import featvis
from featvis.optvis import natural
from featvis.optvis.natural import natural_max, photo_crops
from featvis._util.settings import CACHE_ENV

PLAUSIBILITY = importlib.import_module("featvis.optvis.plausibility")  # the module (featvis.optvis.plausibility is its function)


def _net(seed: int) -> featvis.FeatvisModel:
    torch.manual_seed(seed)
    return featvis.load_model(nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2)), input_size=32)


def _direct(model: featvis.FeatvisModel, channel: int) -> float:
    """The best crop's mean activation of ``channel`` in layer 2, straight from the network."""
    return float(featvis.capture(model, photo_crops(32), ["2"])["2"][:, channel].mean(dim=(1, 2)).max())


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(1.0, abs(b))


def test_natural_activations_are_kept_by_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    first = natural_max(_net(0), "2:1", 32)
    files = sorted((tmp_path / "natural").glob("*.pt"))
    assert len(files) == 1 and _close(first, _direct(_net(0), 1))
    calls = []
    monkeypatch.setattr(natural, "capture", lambda *a, **k: calls.append(a) or featvis.capture(*a, **k))
    again = _net(0)  # the same weights in a new object: read from the cache, no forward pass
    assert _close(natural_max(again, "2:2", 32), _direct(again, 2)) and calls == []
    other = _net(1)  # other weights: computed, stored beside
    assert _close(natural_max(other, "2:1", 32), _direct(other, 1))
    assert calls and len(list((tmp_path / "natural").glob("*.pt"))) == 2
    files[0].write_bytes(b"damaged")
    calls.clear()
    assert _close(natural_max(_net(0), "2:1", 32), first) and calls  # recomputed


def test_natural_deep_features_are_kept_by_weights(tmp_path, monkeypatch):
    """Plausibility's natural side is read from the user cache in a fresh process (a fresh model object)."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))

    def head(seed: int) -> featvis.FeatvisModel:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        return featvis.load_model(net, input_size=32)

    images = torch.rand(2, 3, 32, 32)
    first = PLAUSIBILITY.plausibility(head(0), images)
    assert len(list((tmp_path / "natural").glob("*.pt"))) == 1
    calls, deep_features = [], PLAUSIBILITY.deep_features
    monkeypatch.setattr(PLAUSIBILITY, "deep_features", lambda model, x: calls.append(len(x)) or deep_features(model, x))
    again = PLAUSIBILITY.plausibility(head(0), images)
    assert calls == [2] and again == first  # only the two images ran; the crops' features came from the file
