"""MACO: magnitude-constrained feature visualization (Fel et al., "Unlocking Feature Visualization for
Deeper Networks with MAgnitude Constrained Optimization", NeurIPS 2023).

The image is the inverse FFT of a spectrum whose *magnitude is fixed* to that of natural images
and whose *phase alone* is optimised; the result is standardised, put through the colour
decorrelation and a sigmoid like the other parameterisations. Fixing the magnitude keeps every
image's energy spread over frequencies as in photos, which keeps deep networks from being
driven by high-frequency patterns.

The natural spectrum (`natural_spectrum`) is computed from the photos featvis has — the crops
of scikit-image's sample photos that `natural_max` also uses (`photo_crops`), resized to the
image size: each crop minus its mean colour, mapped into the decorrelated colour space (the
inverse of `COLOR`), then the magnitude of its orthonormal ``rfft2``, averaged over crops, per
channel. Fel et al. average ImageNet instead; featvis ships no ImageNet images.

MACO's transparency map: the magnitude of the objective's gradient with respect to the image,
accumulated over the optimisation (rendering does this for any parameterisation with
``has_alpha``), says which pixels mattered; `alpha_map` scales it to [0, 1].
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import nn

from .._util.errors import FeatvisError
from .natural import photo_crops
from .param import COLOR, ImageParam

ALPHA_QUANTILE = 0.99  # the accumulated gradient at this quantile maps to alpha 1 (a few hot pixels would blank the rest)


@functools.lru_cache(maxsize=4)
def natural_spectrum(size: int, decorrelate: bool = True) -> torch.Tensor:
    """Mean ``|rfft2|`` (orthonormal) of the natural photo crops at ``size``: [3, size, size // 2 + 1]."""
    crops = photo_crops(size)
    centred = crops - crops.mean(dim=(2, 3), keepdim=True)
    if decorrelate:
        centred = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(COLOR), centred)
    return torch.fft.rfft2(centred, norm="ortho").abs().mean(0)


class MacoImage(ImageParam):
    """Phase-only Fourier images: irfft2(magnitude * exp(i * phase)), standardised per image.

    ``magnitude`` is `natural_spectrum` (fixed); ``phase`` [B, 3, size, size // 2 + 1] is the
    parameter, starting uniform in [-pi, pi) from each image's generator.
    """

    has_alpha = True
    learning_rate = 0.2  # phases are angles: Adam's default 0.05 would need ~4x the steps

    def __init__(self, generators: Sequence[torch.Generator], size: int, **kwargs):
        super().__init__(size, **kwargs)
        self.register_buffer("magnitude", natural_spectrum(size, self.decorrelate).clone(), persistent=False)
        shape = tuple(self.magnitude.shape)
        self.phase = nn.Parameter(torch.stack([(torch.rand(shape, generator=g) * 2 - 1) * math.pi for g in generators]))

    def raw(self) -> torch.Tensor:
        spectrum = torch.polar(self.magnitude.expand_as(self.phase), self.phase)
        t = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")
        t = t - t.mean(dim=(1, 2, 3), keepdim=True)
        return t / t.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)

    def encode(self, raw: torch.Tensor) -> None:
        raise FeatvisError("the maco parameterisation keeps the natural magnitude fixed, so it cannot start from a photo; "
                           "use --param fft with --init or --accentuate")


def alpha_map(accumulated: torch.Tensor) -> torch.Tensor:
    """[H, W] accumulated gradient magnitude -> transparency in [0, 1] (its 99th percentile is 1)."""
    top = torch.quantile(accumulated.flatten().float(), ALPHA_QUANTILE)
    return (accumulated / top).clamp(0, 1) if top > 0 else torch.zeros_like(accumulated)
