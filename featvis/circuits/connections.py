"""A unit's strongest connections: which channels of an earlier layer build it, and which later channels it feeds.

Strength is the norm of the expanded weight between the two channels (the spatial kernel), as in
the Circuits thread; ``sign="positive"``/``"negative"`` ranks by the norm of the excitatory or
inhibitory part alone. With ``photos`` it is Microscope's *attribution*: the expanded weight times
the source activation it multiplies, averaged over the photos and every position, so a strong
weight from a channel that never fires counts for little.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._util.errors import FeatvisError
from ..core.images import load_image
from ..core.probe import capture
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model
from .expanded import expanded_weights, fitted_field

SIGNS = (None, "positive", "negative")
PHOTO_BATCH = 16


@dataclass(frozen=True)
class Connection:
    """One connection: the other end (``layer``, ``channel``), its ``strength`` (ranking score),
    the signed ``sum`` of its kernel and the kernel ``map`` itself ([kh, kw])."""

    layer: str
    channel: int
    strength: float
    sum: float
    map: torch.Tensor = field(repr=False)

    def to_dict(self) -> dict:
        return {"layer": self.layer, "channel": self.channel, "strength": self.strength, "sum": self.sum,
                "map": self.map.tolist()}


@dataclass(frozen=True)
class Connections:
    """The strongest ``inputs`` (from the source layer) and ``outputs`` (to the target layer) of ``unit``."""

    unit: str
    inputs: list[Connection]
    outputs: list[Connection]

    def to_dict(self) -> dict:
        return {"unit": self.unit, "inputs": [c.to_dict() for c in self.inputs],
                "outputs": [c.to_dict() for c in self.outputs]}


def parse_unit(model: FeatvisModel, unit: str) -> tuple[str, int]:
    """``"mixed3b:12"`` -> ("mixed3b", 12), with the layer resolved and the channel checked against the
    layer's output (one forward pass to the layer: before any expanded weight is computed)."""
    match = re.fullmatch(r"\s*([^:\s]+):(\d+)\s*", unit)
    if not match:
        example = next(iter(model.layer_names()), "conv1")
        raise FeatvisError(f"bad unit '{unit}'; write LAYER:CHANNEL, e.g. {example}:0 (`featvis layers` lists the layers)")
    layer, channel = match[1], int(match[2])
    model.site(layer)
    with torch.no_grad():
        out = capture(model, torch.zeros(1, 3, model.input_size, model.input_size, device=model.mean.device), [layer])[layer]
    if out.dim() < 2 or channel >= out.shape[1]:
        count = out.shape[1] if out.dim() >= 2 else 0
        raise FeatvisError(f"channel {channel} is out of range for layer '{layer}' ({count} channels); use 0..{count - 1}")
    return layer, channel


def rank(maps: torch.Tensor, layer: str, k: int, sign: str | None = None, scores: torch.Tensor | None = None) -> list[Connection]:
    """The ``k`` strongest of ``maps`` [N, kh, kw] (channel n of ``layer``), strongest first.

    Scores are the norms of the maps (of their positive or negative parts with ``sign``), or the
    given per-channel ``scores``."""
    if sign not in SIGNS:
        raise FeatvisError(f"bad sign '{sign}'; use positive, negative or none")
    if scores is None:
        part = maps if sign is None else maps.clamp(min=0) if sign == "positive" else maps.clamp(max=0)
        scores = part.flatten(1).norm(dim=1)
    order = scores.argsort(descending=True, stable=True)[:k]
    return [Connection(layer, int(n), float(scores[n]), float(maps[n].sum()), maps[n].clone()) for n in order]


def channel_wise(weights: torch.Tensor) -> bool:
    """Whether expanded weights ``[C, C, kh, kw]`` join each channel to itself alone, as a ReLU, a
    batch norm, a pool or an identity does: such a pair shows no circuit, only the same unit again."""
    if weights.dim() != 4 or weights.shape[0] != weights.shape[1]:
        return False
    strength = weights.flatten(2).abs().amax(dim=2)
    return not bool(strength[~torch.eye(len(strength), dtype=torch.bool, device=strength.device)].any())


def _attribution_scores(sums: torch.Tensor, sign: str | None) -> torch.Tensor:
    return sums.abs() if sign is None else sums if sign == "positive" else -sums


@torch.no_grad()
def mean_windows(model: FeatvisModel, photos: Sequence, layer: str, target: str) -> torch.Tensor:
    """``layer``'s activation under each of ``target``'s relative fields, averaged over every window
    that reads no padding and over ``photos``: [C, kh, kw] (float64)."""
    field, _, _ = fitted_field(model, layer, target)
    images = [load_image(p) if not isinstance(p, torch.Tensor) else p for p in photos]
    if not images:
        raise FeatvisError("no photos given for the attribution; pass at least one photo")
    total, count = None, 0
    for start in range(0, len(images), PHOTO_BATCH):
        batch = torch.cat([model.prepare(image) for image in images[start : start + PHOTO_BATCH]])
        acts = capture(model, batch, [layer])[layer].double()
        (oy, ox) = (-p % s for p, s in zip(field.padding, field.stride))  # where the target units' windows start
        windows = F.unfold(acts[..., oy:, ox:], field.size, stride=field.stride)  # [N, C*kh*kw, L]
        summed = windows.sum(dim=(0, 2))
        total = summed if total is None else total + summed
        count += windows.shape[0] * windows.shape[2]
    return (total / count).view(-1, *field.size).cpu()


@analysis
def top_connections(
    model: nn.Module,
    unit: str,
    source: str,
    k: int = 8,
    target: str | None = None,
    photos: Sequence | None = None,
    *,
    sign: str | None = None,
    progress: bool = False,
) -> Connections:
    """The ``k`` strongest inputs of ``unit`` ("LAYER:CHANNEL") from layer ``source`` and, with
    ``target``, its ``k`` strongest outputs to that layer, strongest first.

    Weights view (default): strength is the norm of the expanded weight (``sign``: of its
    positive or negative part only). Attribution view (``photos``: tensors [3, H, W] in [0, 1] or
    paths): each map is the weight times the mean activation it multiplies, strength the absolute
    value of its sum (``sign``: the most excitatory or most inhibitory sums). ``progress``: a bar
    while the expanded weights are computed."""
    fmodel = as_model(model)
    layer, channel = parse_unit(fmodel, unit)
    if k < 1:
        raise FeatvisError(f"k must be at least 1, got {k}")
    for other in (source, target):
        if other is not None:
            fmodel.site(other)  # an unknown layer fails before the expanded weights
    incoming = expanded_weights(fmodel, source, layer, progress=progress)
    if channel >= incoming.shape[0]:
        raise FeatvisError(f"channel {channel} is out of range for layer '{layer}' ({incoming.shape[0]} channels); "
                           f"use 0..{incoming.shape[0] - 1}")
    ends = [(source, incoming[channel], lambda: mean_windows(fmodel, photos, source, layer))]
    if target is not None:
        ends.append((target, expanded_weights(fmodel, layer, target, progress=progress)[:, channel],
                     lambda: mean_windows(fmodel, photos, layer, target)[channel]))
    ranked = []
    for other, maps, windows in ends:
        if photos is None:
            ranked.append(rank(maps, other, k, sign))
        else:
            maps = maps * windows()
            ranked.append(rank(maps, other, k, sign, _attribution_scores(maps.flatten(1).sum(1), sign)))
    return Connections(unit.strip(), ranked[0], ranked[1] if target is not None else [])
