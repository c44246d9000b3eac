"""A photo collection of any size from the bundled sample photos: random crops and flips, ImageFolder-style.

Tests, benchmarks and notebooks need collections of hundreds or thousands of real photos without
a download; this makes them from ``featvis.sample_photos()`` (scikit-image), one class subfolder
per photo, reproducibly from a seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .._util.errors import FeatvisError
from ..core.images import sample_photos, save_image


def sample_collection(folder: str | os.PathLike, count: int, *, size: int = 64, seed: int = 0,
                      fmt: str = "png") -> list[Path]:
    """Write ``count`` random square crops (a half to all of the shorter side, flipped half the time),
    resized to ``size`` pixels, into ``folder/<photo name>/<n>.<fmt>``; returns the paths."""
    if count < 1 or size < 8:
        raise FeatvisError(f"a sample collection needs count >= 1 and size >= 8, got {count} and {size}")
    photos = list(sample_photos().items())
    generator = torch.Generator().manual_seed(seed)
    root = Path(folder)
    paths = []
    for n in range(count):
        name, image = photos[n % len(photos)]
        height, width = image.shape[1:]
        side = int(min(height, width) * (0.5 + 0.5 * torch.rand(1, generator=generator).item()))
        y = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        x = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        crop = image[:, y : y + side, x : x + side]
        if torch.rand(1, generator=generator).item() < 0.5:
            crop = crop.flip(2)
        crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        paths.append(save_image(crop.clamp(0, 1), root / name / f"{n:06d}.{fmt}"))
    return paths
