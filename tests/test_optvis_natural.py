"""Natural-photo maxima: the best value over scikit-image's photos and their crops, cached per layer."""

from __future__ import annotations

import math

import pytest
import torch

import featvis
from featvis import FeatvisError
from featvis.optvis import channel, diversity, natural_max, photo_crops


def test_crops_tile_every_sample_photo():
    crops = photo_crops(40)
    expected = 0
    for photo in featvis.sample_photos().values():
        h, w = photo.shape[1:]
        for side in (min(h, w), min(h, w) // 2):
            expected += math.ceil(h / side) * math.ceil(w / side)
    assert crops.shape == (expected, 3, 40, 40) and expected >= 40
    assert crops.min() >= 0 and crops.max() <= 1


def test_natural_max_is_the_best_crop_and_is_cached(inceptionv1):
    crops = photo_crops(224)
    with torch.no_grad():
        acts = featvis.capture(inceptionv1, crops, ["mixed4a"])
    assert natural_max(inceptionv1, "mixed4a:97") == pytest.approx(float(acts["mixed4a"][:, 97].mean(dim=(1, 2)).max()), rel=1e-5)
    assert natural_max(inceptionv1, "mixed4a:97@7,7") == pytest.approx(float(acts["mixed4a"][:, 97, 7, 7].max()), rel=1e-5)
    assert natural_max(inceptionv1, "-mixed4a:97") == pytest.approx(float(-acts["mixed4a"][:, 97].mean(dim=(1, 2)).min()), rel=1e-5)
    runs = []
    handle = inceptionv1.net.conv1.register_forward_hook(lambda *args: runs.append(1))
    try:
        natural_max(inceptionv1, channel("mixed4a", 3))
    finally:
        handle.remove()
    assert runs == []  # mixed4a's activations on the crops were cached
    with pytest.raises(FeatvisError, match="needs a one-image objective"):
        natural_max(inceptionv1, channel("mixed4a", 3) + diversity("mixed4a", images=2))
