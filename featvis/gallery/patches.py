"""Each channel's top-activating photo patches: where in the user's photos a channel fires most.

Every photo is prepared the way the model classifies it (``FeatvisModel.prepare``: resize and
centre crop to the input size). For each channel, each photo contributes its strongest unit;
the photos with the strongest units win, and the patch cut out of each is that unit's
receptive field (clipped to the photo), so the patch is exactly what the unit could see.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import FeatvisError
from ..images import load_image
from ..model import FeatvisModel
from ..probe import Probe
from ..receptive_field import ReceptiveField, receptive_field
from .plan import Layer


@dataclass(frozen=True)
class Photo:
    name: str
    sha256: str
    image: torch.Tensor  # [3, S, S] prepared for the model


@dataclass(frozen=True)
class Patch:
    photo: str
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 in the prepared photo, half-open
    unit: tuple[int, int] | None  # (y, x) of the strongest unit; None for layers without space
    activation: float
    image: torch.Tensor  # [3, h, w]


def read_photos(folder: str | os.PathLike, model: FeatvisModel) -> list[Photo]:
    """Every readable image in ``folder`` (sorted by name), prepared; unreadable files are skipped with a warning."""
    root = Path(folder)
    if not root.is_dir():
        raise FeatvisError(f"photo folder not found: {root}; give --images a folder of photos")
    photos = []
    for path in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            image = load_image(path)
        except FeatvisError as exc:
            warnings.warn(f"skipping photo: {exc}", stacklevel=2)
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        photos.append(Photo(path.name, digest, model.prepare(image)[0].cpu()))
    if not photos:
        raise FeatvisError(f"no readable photos in {root}; put PNG or JPEG photos there")
    return photos


def photos_digest(photos: Sequence[Photo]) -> str:
    """One digest for the photo set (names and contents), recorded with the patches it produced."""
    return hashlib.sha256("\n".join(f"{p.name}\t{p.sha256}" for p in photos).encode()).hexdigest()


@dataclass
class LayerPeaks:
    """Per photo and channel: the strongest activation and where it is, and the layer's receptive field."""

    values: torch.Tensor  # [P, C]
    positions: torch.Tensor | None  # [P, C, 2] (y, x); None for layers without space
    field: ReceptiveField | None  # None: patches are whole photos


@torch.no_grad()
def layer_peaks(model: FeatvisModel, layer: Layer, photos: Sequence[Photo], chunk: int = 16) -> LayerPeaks:
    """Run the photos through the model up to ``layer`` and keep each channel's peak per photo."""
    values, positions = [], []
    device = model.mean.device
    with Probe(model, [layer.path], early_exit=True) as probe:
        for start in range(0, len(photos), chunk):
            batch = torch.stack([p.image for p in photos[start : start + chunk]]).to(device)
            act = probe(batch)[layer.path].float().cpu()
            if act.dim() == 2:
                values.append(act)
                continue
            flat = act.flatten(2)
            best, index = flat.max(dim=2)
            values.append(best)
            positions.append(torch.stack([index // act.shape[3], index % act.shape[3]], dim=-1))
    field = None
    if positions:
        try:
            field = receptive_field(model, layer.path, input_size=model.input_size)
            field.region((0, 0))
        except FeatvisError as exc:
            warnings.warn(f"patches of {layer.name} show whole photos: {exc}", stacklevel=2)
            field = None
    return LayerPeaks(torch.cat(values), torch.cat(positions) if positions else None, field)


def top_patches(photos: Sequence[Photo], peaks: LayerPeaks, channel: int, count: int) -> list[Patch]:
    """The ``count`` photos where ``channel`` peaks highest, each cut to the peak unit's receptive field."""
    order = torch.argsort(peaks.values[:, channel], descending=True, stable=True)[:count]
    patches = []
    for index in order.tolist():
        photo = photos[index]
        height, width = photo.image.shape[1:]
        unit = None if peaks.positions is None else tuple(int(v) for v in peaks.positions[index, channel])
        if peaks.field is None or unit is None:
            box = (0, 0, height, width)
        else:
            clipped = peaks.field.region(unit).clip(height, width)
            box = (clipped.y0, clipped.x0, clipped.y1, clipped.x1)
        y0, x0, y1, x1 = box
        patches.append(Patch(photo.name, box, unit, float(peaks.values[index, channel]), photo.image[:, y0:y1, x0:x1]))
    return patches
