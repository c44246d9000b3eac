"""The activation grid's geometry: every unit's icon placed at its exact receptive-field centre.

A unit of a convolutional layer looks at an input region whose centre is fixed by the strides,
kernels and paddings below it (``featvis.receptive_field``); in ``inceptionv1``'s ``mixed4d``
unit ``i`` sits at input pixel ``16 i + 14``, not at ``16 i + 7.5`` where stretching the 14x14
map over the photo would put it. `unit_centres` gives those centres; `compose_grid` draws each
position's icon, one stride wide, centred there on an enlarged copy of the photo.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from .._util.errors import FeatvisError
from ..models.wrapper import FeatvisModel
from ..receptive_field import receptive_field

#: Icons are drawn about this many pixels wide (the enlargement of the photo follows from it).
ICON_PIXELS = 80


def unit_centres(model: FeatvisModel, layer: str, input_hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(centres, stride)``: input-pixel centres [h, w, 2] (row, column) of every unit's receptive field
    for an input of ``input_hw``, and the layer's stride in pixels."""
    rf = receptive_field(model, layer, input_size=input_hw)
    if rf.unanalysed or rf.stride is None or 0 in rf.stride:
        why = ", ".join(rf.unanalysed) or "its units all see the whole input"
        raise FeatvisError(f"cannot place '{layer}' on the photo ({why}); choose a convolutional layer, "
                           "or describe custom layers with featvis.register_rule")
    _, h, w = rf.output_shape
    rows = torch.tensor([rf.center((y, 0))[0] for y in range(h)], dtype=torch.float64)
    cols = torch.tensor([rf.center((0, x))[1] for x in range(w)], dtype=torch.float64)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1), rf.stride


def compose_grid(photo: torch.Tensor, icons: Mapping[tuple[int, int], torch.Tensor], centres: torch.Tensor,
                 stride: tuple[int, int], zoom: int | None = None, cell: int = 1) -> torch.Tensor:
    """The photo [3, S, S] enlarged ``zoom`` times with each icon [3, s, s] of position (y, x) drawn
    ``cell`` strides wide (``cell`` > 1 when only every cell-th position was rendered), centred on
    ``centres[y, x]`` (input pixel k's centre is k + 0.5 in continuous coordinates); icons reaching
    past the border are cut. Returns [3, S*zoom, S*zoom]."""
    zoom = zoom or max(1, round(ICON_PIXELS / (max(stride) * cell)))
    canvas = F.interpolate(photo[None].float(), scale_factor=zoom, mode="nearest")[0]
    height, width = canvas.shape[1:]
    side_y, side_x = stride[0] * zoom * cell, stride[1] * zoom * cell
    for (y, x), icon in icons.items():
        piece = F.interpolate(icon[None].float(), size=(side_y, side_x), mode="bilinear", antialias=True, align_corners=False)[0]
        top = round((float(centres[y, x, 0]) + 0.5) * zoom - side_y / 2)
        left = round((float(centres[y, x, 1]) + 0.5) * zoom - side_x / 2)
        y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + side_y, height), min(left + side_x, width)
        if y1 > y0 and x1 > x0:
            canvas[:, y0:y1, x0:x1] = piece[:, y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas.clamp(0, 1)
