"""``make_param``: the image parameterisation a render asks for, by name ("fft", "pixel", "maco").

Its own module so that ``param`` (the base class, pixels, Fourier) and ``maco`` (which builds on
both and on natural photos) each import only what they build on.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .._util.errors import FeatvisError
from .maco import MacoImage
from .param import FourierImage, ImageParam, PixelImage
from .settings import PARAMS

CLASSES: dict[str, type[ImageParam]] = dict(zip(PARAMS, (FourierImage, PixelImage, MacoImage), strict=True))


def make_param(kind: str, generators: Sequence[torch.Generator], size: int, *, decorrelate: bool = True,
               valid: str = "sigmoid", init: torch.Tensor | None = None) -> ImageParam:
    """Build the ``kind`` ("fft", "pixel" or "maco") parameterisation, from noise or from ``init`` images."""
    if kind not in PARAMS:
        raise FeatvisError(f"unknown parameterisation '{kind}'; use one of {', '.join(PARAMS)}")
    param = CLASSES[kind](generators, size, decorrelate=decorrelate, valid=valid)
    if init is not None:
        param.set_images(init.expand(len(generators), -1, -1, -1))
    return param
