"""Image parameterisations: the tensor the optimiser changes, and how it becomes RGB in [0, 1].

``fft``: the image is the inverse real FFT of a spectrum whose coefficients are scaled by
1/frequency (Lucid's ``fft_image``: ``1 / max(f, 1/max(h, w))``, orthonormal transform, /4), so
gradient steps move low frequencies as much as high ones and images come out less noisy.
``pixel``: the values themselves. ``maco``: the Fourier phase only, magnitude fixed to natural
photos' (`featvis.optvis.maco`). Either way the three channels are then optionally
*decorrelated*: treated as coordinates in ImageNet's colour-correlation basis (the square root
of the colour covariance used by Lucid, columns normalised), and squashed into [0, 1] by a
sigmoid (default) or by clipping around a mid grey. Every image of a batch is independent and
starts from its own seeded noise, or from a given photo (the parameterisation is inverted).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .._util.errors import FeatvisError

COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()
COLOR_MEAN = torch.tensor([0.48, 0.46, 0.41])
VALID = ("sigmoid", "clip")


class ImageParam(nn.Module):
    """A batch of ``len(generators)`` images of ``size`` x ``size``; calling it returns them [B, 3, H, W].

    Subclasses define ``raw()`` (the unconstrained image) and ``encode(raw)`` (its inverse).
    ``has_alpha``: rendering accumulates a transparency map (MACO's); ``learning_rate``: the
    parameterisation's own Adam step (None: the engine's default).
    """

    has_alpha = False
    learning_rate: float | None = None

    def __init__(self, size: int, decorrelate: bool = True, valid: str = "sigmoid"):
        super().__init__()
        if valid not in VALID:
            raise FeatvisError(f"unknown valid-range mapping '{valid}'; use one of {', '.join(VALID)}")
        self.size, self.decorrelate, self.valid = size, decorrelate, valid

    def raw(self) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, raw: torch.Tensor) -> None:
        raise NotImplementedError

    def forward(self) -> torch.Tensor:
        t = self.raw()
        if self.decorrelate:
            t = torch.einsum("ij,bjhw->bihw", COLOR.to(t), t)
        if self.valid == "sigmoid":
            return torch.sigmoid(t)
        return (t + self._offset(t)).clamp(0, 1)

    def _offset(self, t: torch.Tensor) -> torch.Tensor:
        return (COLOR_MEAN if self.decorrelate else torch.full((3,), 0.5)).to(t).view(1, 3, 1, 1)

    @torch.no_grad()
    def set_images(self, images: torch.Tensor) -> None:
        """Make the parameterisation produce ``images`` ([B, 3, size, size] in [0, 1])."""
        if self.valid == "sigmoid":
            t = torch.logit(images.clamp(1e-3, 1 - 1e-3))
        else:
            t = images - self._offset(images)
        if self.decorrelate:
            t = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(COLOR).to(t), t)
        self.encode(t)


class PixelImage(ImageParam):
    """Each pixel value is a parameter (initial noise: normal with standard deviation ``sd``)."""

    def __init__(self, generators: Sequence[torch.Generator], size: int, sd: float = 0.01, **kwargs):
        super().__init__(size, **kwargs)
        self.pixels = nn.Parameter(torch.stack([torch.randn(3, size, size, generator=g) * sd for g in generators]))

    def raw(self) -> torch.Tensor:
        return self.pixels

    def encode(self, raw: torch.Tensor) -> None:
        self.pixels.copy_(raw)


def rfft2d_freqs(h: int, w: int) -> torch.Tensor:
    """Spatial frequency magnitude of each coefficient of ``torch.fft.rfft2`` for an h x w image."""
    fy = torch.fft.fftfreq(h).view(-1, 1)
    fx = torch.fft.rfftfreq(w).view(1, -1)
    return (fx * fx + fy * fy).sqrt()


class FourierImage(ImageParam):
    """The image is irfft2(scale * spectrum) / 4 with scale = 1 / max(f, 1/size)**decay_power."""

    def __init__(self, generators: Sequence[torch.Generator], size: int, sd: float = 0.01, decay_power: float = 1.0, **kwargs):
        super().__init__(size, **kwargs)
        freqs = rfft2d_freqs(size, size)
        self.register_buffer("scale", (1.0 / freqs.clamp_min(1.0 / size) ** decay_power)[..., None], persistent=False)
        shape = (3, *freqs.shape, 2)  # real and imaginary parts
        self.spectrum = nn.Parameter(torch.stack([torch.randn(shape, generator=g) * sd for g in generators]))

    def raw(self) -> torch.Tensor:
        coefficients = torch.view_as_complex(self.spectrum * self.scale)
        return torch.fft.irfft2(coefficients, s=(self.size, self.size), norm="ortho") / 4.0

    def encode(self, raw: torch.Tensor) -> None:
        self.spectrum.copy_(torch.view_as_real(torch.fft.rfft2(raw * 4.0, norm="ortho")) / self.scale)
