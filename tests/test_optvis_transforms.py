"""Robustness transforms: one affine resampling that equals pad/crop, rotation and resize done by torch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from featvis import FeatvisError
from featvis.reference.gradcheck import check_gradients
from featvis.optvis import Transforms
from featvis.optvis.transforms import STANDARD, affine_theta, apply, resize, resolve

torch.manual_seed(0)
IMG = torch.rand(2, 3, 10, 10)


def _theta(size, out, pad=0, jitter=0, jitter2=0, a1=(0, 0), k=1.0, angle=0.0, a2=(0, 0)):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return affine_theta(size, out, pad, jitter, jitter2, t(a1), t(k), t(angle * math.pi / 180), t(a2))[None].float()


def test_standard_set_is_the_articles():
    assert resolve("default") == STANDARD and resolve("none") is None
    assert (STANDARD.pad, STANDARD.jitter, STANDARD.jitter2, STANDARD.fill) == (12, 8, 4, 0.5)
    assert STANDARD.scales == pytest.approx([1 + (i - 5) / 50 for i in range(11)])
    assert list(STANDARD.angles) == list(range(-10, 11)) + [0] * 5
    with pytest.raises(FeatvisError, match="unknown transforms 'random'"):
        resolve("random")
    with pytest.raises(FeatvisError, match="pad/jitter >= 0"):
        Transforms(jitter=-1)


def test_pad_and_two_jitters_equal_torch_pad_and_crop():
    pad, j1, j2, a1, a2 = 3, 4, 2, (1, 3), (2, 0)  # offsets as (x, y)
    out = 10 + 2 * pad - j1 - j2
    got = apply(IMG, _theta(10, out, pad, j1, j2, a1=a1, a2=a2).expand(2, -1, -1), out, fill=0.5)
    padded = F.pad(IMG, (pad,) * 4, value=0.5)
    top, left = a1[1] + a2[1], a1[0] + a2[0]
    assert torch.allclose(got, padded[..., top : top + out, left : left + out], atol=1e-5)


def test_rotation_by_90_degrees_equals_rot90():
    got = apply(IMG, _theta(10, 10, angle=90.0).expand(2, -1, -1), 10)
    assert torch.allclose(got, torch.rot90(IMG, k=-1, dims=(2, 3)), atol=1e-5)
    back = apply(IMG, _theta(10, 10, angle=-90.0).expand(2, -1, -1), 10)
    assert torch.allclose(back, torch.rot90(IMG, k=1, dims=(2, 3)), atol=1e-5)


def test_resize_and_scale_equal_bilinear_interpolation():
    up = apply(IMG, _theta(10, 20).expand(2, -1, -1), 20)
    reference = F.interpolate(IMG, size=(20, 20), mode="bilinear", align_corners=False)
    assert torch.allclose(up[..., 1:-1, 1:-1], reference[..., 1:-1, 1:-1], atol=1e-5)  # borders blend with the fill
    assert torch.allclose(resize(IMG, 20), reference) and resize(IMG, 10) is IMG
    # scale factor k = 2 magnifies about the centre: the central 5x5 of the source fills a 10x10 output
    zoom = apply(IMG, _theta(10, 10, k=2.0).expand(2, -1, -1), 10)
    centre = F.interpolate(IMG[..., 2:8, 2:8], scale_factor=2, mode="bilinear", align_corners=False)[..., 1:11, 1:11]
    assert torch.allclose(zoom[..., 1:-1, 1:-1], centre[..., 1:-1, 1:-1], atol=1e-5)


def test_transform_is_differentiable():
    theta = _theta(6, 9, pad=2, jitter=2, jitter2=1, a1=(1, 2), k=1.06, angle=7.0, a2=(1, 0)).double()
    image = torch.rand(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    report = check_gradients(lambda x: apply(x, theta, 9, fill=0.5), image)
    assert report.passed, str(report)


def test_draws_come_from_the_configured_sets_and_are_seeded():
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    thetas = STANDARD.draw(generators, 200, 128, 224)
    assert thetas.shape == (200, 3, 2, 3)
    linear = thetas[..., :2].double()
    angles = torch.rad2deg(torch.atan2(linear[..., 0, 1], linear[..., 0, 0]))
    assert set(angles.round().long().flatten().tolist()) == set(range(-10, 11))
    zoom = linear.det().sqrt()  # = window / (k * size), window = 128 + 24 - 8 - 4
    k = 140 / (zoom * 128)
    assert torch.allclose(k, k.mul(50).round().div(50), atol=1e-4) and k.min() >= 0.9 - 1e-6 and k.max() <= 1.1 + 1e-6
    again = STANDARD.draw([torch.Generator().manual_seed(i) for i in range(3)], 200, 128, 224)
    assert torch.equal(thetas, again) and not torch.equal(thetas[:, 0], thetas[:, 1])
    off = Transforms(pad=0, jitter=0, scales=(1.0,), angles=(0.0,), jitter2=0).draw(generators[:1], 3, 16, 16)
    assert torch.allclose(off, torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(3, 1, 2, 3), atol=1e-6)
