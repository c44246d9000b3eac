"""Image parameterisations: the 1/f Fourier basis, colour decorrelation, range, inversion, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featvis import FeatvisError
from featvis.optvis import FourierImage, PixelImage, make_param
from featvis.optvis.param import COLOR, COLOR_CORRELATION_SVD_SQRT, rfft2d_freqs


def _generators(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_frequencies_match_numpy():
    for h, w in [(8, 8), (7, 10), (9, 5)]:
        fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
        assert np.allclose(rfft2d_freqs(h, w).numpy(), np.sqrt(fx**2 + fy**2))


def test_colour_matrix_is_lucids_normalised_square_root():
    assert torch.allclose(COLOR.norm(dim=0).max(), torch.tensor(1.0))
    assert torch.allclose(COLOR * COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max(), COLOR_CORRELATION_SVD_SQRT)


@pytest.mark.parametrize("kind", ["fft", "pixel"])
@pytest.mark.parametrize("decorrelate", [True, False])
@pytest.mark.parametrize("valid", ["sigmoid", "clip"])
def test_images_in_unit_range_and_invertible(kind, decorrelate, valid):
    param = make_param(kind, _generators(2), 16, decorrelate=decorrelate, valid=valid)
    with torch.no_grad():
        for p in param.parameters():
            p.mul_(400.0)  # far beyond the initial noise: must still land in [0, 1]
        images = param()
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    photo = torch.rand(1, 3, 16, 16) * 0.9 + 0.05
    started = make_param(kind, _generators(2), 16, decorrelate=decorrelate, valid=valid, init=photo)
    assert torch.allclose(started(), photo.expand(2, -1, -1, -1), atol=2e-5)


def test_fft_param_is_lucids_scaled_inverse_fft():
    param = FourierImage(_generators(1), 12, decorrelate=False)
    spectrum = param.spectrum.detach().double().numpy()[0]
    freqs = np.sqrt(np.fft.fftfreq(12)[:, None] ** 2 + np.fft.rfftfreq(12)[None, :] ** 2)
    scale = 1.0 / np.maximum(freqs, 1.0 / 12)
    raw = np.fft.irfft2((spectrum[..., 0] + 1j * spectrum[..., 1]) * scale, s=(12, 12), norm="ortho") / 4
    assert np.allclose(param.raw().detach().numpy()[0], raw, atol=1e-6)
    # 1/f scaling: equal-energy noise in every coefficient gives an image dominated by low frequencies
    image = param.raw().detach()[0, 0].double().numpy()
    power = np.abs(np.fft.rfft2(image)) ** 2
    assert power[freqs < 0.15].mean() > 4 * power[freqs > 0.35].mean()


def test_decorrelation_applies_the_colour_matrix():
    plain = PixelImage(_generators(1), 4, decorrelate=False)
    mixed = PixelImage(_generators(1), 4, decorrelate=True)
    raw = plain.pixels.detach()
    expected = torch.sigmoid(torch.einsum("ij,bjhw->bihw", COLOR, raw))
    assert torch.allclose(mixed(), expected) and torch.allclose(plain(), torch.sigmoid(raw))


def test_each_image_has_its_own_seeded_noise():
    a = make_param("fft", _generators(3), 8)().detach()
    b = make_param("fft", _generators(3), 8)().detach()
    c = make_param("fft", _generators(3, seed=1), 8)().detach()
    assert torch.equal(a, b) and torch.equal(a[1], c[0]) and not torch.equal(a[0], a[1])


def test_unknown_kind_or_range():
    with pytest.raises(FeatvisError, match="unknown parameterisation 'dct'; use one of fft, pixel"):
        make_param("dct", _generators(1), 8)
    with pytest.raises(FeatvisError, match="use one of sigmoid, clip"):
        make_param("fft", _generators(1), 8, valid="tanh")
