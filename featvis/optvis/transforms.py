"""Transformation robustness: random pad, jitter, scale and rotation, as one resampling.

The article's standard set (Lucid's ``standard_transforms``) applies, in order: pad 12 px with
grey 0.5, jitter 8 (a random crop 8 px smaller), a random scale from 0.9..1.1 (step 0.02), a
random rotation from -10..10 degrees (0 five times likelier), jitter 4. The model sees the
result at its input scale: the canvas a 128 px image gives at scale 1 (128 + 24 - 8 - 4 =
140 px) fills the 224 px input, as Lucent's final upsampling does; at other scales the same
window is cut from the scaled canvas, so objects really grow and shrink relative to the
network. Every step maps output pixels affinely to source pixels, so featvis composes them into
one 2x3 matrix per image and step and samples the image once (``F.affine_grid`` +
``F.grid_sample``, bilinear, outside reads grey): differentiable, one pass, no repeated
blurring. Each image of a batch draws its own transforms from its own generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from .._util.errors import FeatvisError

DRAW_BLOCK = 256  # steps of random transforms drawn at once


@dataclass(frozen=True)
class Transforms:
    """Random transforms: ``pad`` (px, filled with ``fill``), ``jitter`` (px), ``scales`` (factors),
    ``angles`` (degrees), ``jitter2`` (px); each choice uniform over its options. Zero / (1.0,) /
    (0.0,) turn a transform off."""

    pad: int = 12
    jitter: int = 8
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))
    angles: tuple[float, ...] = tuple(float(a) for a in range(-10, 11)) + (0.0,) * 5
    jitter2: int = 4
    fill: float = 0.5

    def __post_init__(self) -> None:
        if min(self.pad, self.jitter, self.jitter2) < 0 or not self.scales or not self.angles or min(self.scales) <= 0:
            raise FeatvisError("transforms need pad/jitter >= 0, at least one positive scale and one angle")

    def draw(self, generators: Sequence[torch.Generator], steps: int, size: int, out_size: int) -> torch.Tensor:
        """Sampling matrices [steps, B, 2, 3] (``F.affine_grid`` convention) for ``steps`` steps of B images."""
        u = torch.stack([torch.rand(steps, 6, generator=g, dtype=torch.float64) for g in generators], 1)
        pick = lambda column, n: (u[..., column] * n).floor().clamp(max=n - 1)  # noqa: E731
        a1 = torch.stack([pick(0, self.jitter + 1), pick(1, self.jitter + 1)], -1)
        k = torch.tensor(self.scales, dtype=torch.float64)[pick(2, len(self.scales)).long()]
        angle = torch.tensor(self.angles, dtype=torch.float64)[pick(3, len(self.angles)).long()] * math.pi / 180
        a2 = torch.stack([pick(4, self.jitter2 + 1), pick(5, self.jitter2 + 1)], -1)
        return affine_theta(size, out_size, self.pad, self.jitter, self.jitter2, a1, k, angle, a2).float()

    def stream(self, generators: Sequence[torch.Generator], steps: int, size: int, out_size: int,
               block: int = DRAW_BLOCK) -> Iterator[torch.Tensor]:
        """The matrices of `draw`, [B, 2, 3] per step, drawn ``block`` steps at a time: memory stays
        bounded however many steps run (each generator's stream is the same as one draw of every step)."""
        for start in range(0, steps, block):
            yield from self.draw(generators, min(block, steps - start), size, out_size)


def affine_theta(size: int, out_size: int, pad: float, jitter: float, jitter2: float, a1: torch.Tensor, k: torch.Tensor,
                 angle: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """The composed affine map, for any batch shape of draws (``a1``, ``a2``: [..., 2] crop offsets as x, y).

    In pixel coordinates (pixel i spans [i, i+1)) the window is W = size + 2 pad - jitter - jitter2
    canvas pixels shown at magnification M = out_size / W. An output point o, centred as
    v = o / M - W / 2, comes from the source point
    x = size / 2 + (a1 - jitter / 2) + R(-angle) (v + a2 - jitter2 / 2) / k:
    the crops shift, the rotation and scale act about the canvas centre.
    """
    window = size + 2 * pad - jitter - jitter2
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2) / k[..., None, None]  # R(-angle) / k
    A = rot * window / out_size
    b = size / 2 + a1 - jitter / 2 + (rot @ (a2 - jitter2 / 2 - window / 2)[..., None])[..., 0]
    # normalised coordinates (align_corners=False): o = (on + 1) out_size / 2, xn = 2 x / size - 1
    linear = A * out_size / size
    shift = (linear @ torch.ones(2, 1, dtype=A.dtype))[..., 0] + 2 * b / size - 1
    return torch.cat([linear, shift[..., None]], -1)


def apply(images: torch.Tensor, theta: torch.Tensor, out_size: int, fill: float = 0.5) -> torch.Tensor:
    """Resample each image [B, 3, H, W] through its matrix [B, 2, 3] to out_size; outside reads ``fill``."""
    grid = F.affine_grid(theta.to(images), [images.shape[0], images.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def resize(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """Bilinear resize to the model's input scale without any random transform (identity if equal)."""
    if images.shape[-1] == out_size and images.shape[-2] == out_size:
        return images
    return F.interpolate(images, size=(out_size, out_size), mode="bilinear", align_corners=False)


STANDARD = Transforms()


def resolve(transforms: "str | Transforms | None") -> Transforms | None:
    """``"default"`` -> the article's set, ``"none"``/None -> no random transforms, or a Transforms."""
    if isinstance(transforms, Transforms) or transforms is None:
        return transforms
    if transforms == "default":
        return STANDARD
    if transforms == "none":
        return None
    raise FeatvisError(f"unknown transforms '{transforms}'; use default, none or a featvis.optvis.Transforms(...)")
