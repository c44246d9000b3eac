"""The layers a pass reads: names as given (aliases and concat layers such as ``mixed4a_pre_relu``
included), their channel counts, and the exact receptive-field box of any unit.

A concat layer's unit sees the union of what its parts' units at that position see (the
receptive field of a concatenation is the union of its inputs' fields).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from .._util.errors import FeatvisError
from ..core.plan import Layer, parse_channels, slug
from ..core.probe import capture
from ..models.wrapper import FeatvisModel
from ..receptive_field import ReceptiveField, receptive_fields


@dataclass(frozen=True)
class PassLayer:
    """A layer as the user named it: its module parts, shape [C] or [C, H, W] and chosen channels."""

    name: str
    parts: tuple[str, ...]
    shape: tuple[int, ...]
    channels: tuple[int, ...]
    fields: tuple[ReceptiveField, ...]  # empty: boxes are the whole image

    @property
    def slug(self) -> str:
        return slug(self.name)

    def box(self, unit: Sequence[int], size: int) -> list[int]:
        """[y0, x0, y1, x1] (half-open, clipped to the ``size`` x ``size`` input) that unit (y, x) sees."""
        if not self.fields or len(self.shape) == 1:
            return [0, 0, size, size]
        boxes = [field.region(tuple(unit)).clip(size, size) for field in self.fields]
        return [min(b.y0 for b in boxes), min(b.x0 for b in boxes), max(b.y1 for b in boxes), max(b.x1 for b in boxes)]


@torch.no_grad()
def resolve_pass_layers(model: FeatvisModel, names: Sequence[str], channels: str | dict[str, str] | None) -> list[PassLayer]:
    """Check every layer (one blank forward pass measures shapes), parse ``channels`` (one selection for all,
    or one per layer name) for each, find receptive fields."""
    parts = {name: model.parts(name) for name in names}
    outputs = capture(model, torch.zeros(1, 3, model.input_size, model.input_size, device=model.mean.device), list(names))
    layers: list[PassLayer] = []
    for name in names:
        if any(layer.parts == parts[name] for layer in layers):
            continue  # an alias of a layer already listed
        shape = tuple(outputs[name].shape[1:])
        if len(shape) not in (1, 3):
            raise FeatvisError(f"layer '{name}' outputs shape {list(shape)}; choose a layer with channels ([C] or [C, H, W])")
        selection = channels.get(name) if isinstance(channels, dict) else channels
        chosen = parse_channels(selection, Layer(name, "+".join(parts[name]), (), shape[0], shape, 0))
        fields: tuple[ReceptiveField, ...] = ()
        if len(shape) == 3:
            try:
                fields = tuple(receptive_fields(model, list(parts[name]), model.input_size))
                for field in fields:
                    field.region((0, 0))
            except FeatvisError as exc:
                warnings.warn(f"boxes of {name} are whole images: {exc}", stacklevel=2)
                fields = ()
        layers.append(PassLayer(name, parts[name], shape, tuple(chosen), fields))
    return layers
