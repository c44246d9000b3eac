"""What a gallery run must make: layers, channel selections, units of work, and each shard's share.

A unit is up to ``batch`` channels of one layer rendered in one optimisation. Units are listed
in a fixed order from the command's arguments alone, so every shard of a job computes the same
list and takes every N-th unit (``units[i::N]``) without talking to the others.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from .._util.errors import FeatvisError
from ..models.wrapper import FeatvisModel, split_call
from .probe import capture

_SLUG_OK = re.compile(r"^[a-z0-9_-]{1,64}$")


def slug(name: str) -> str:
    """A file-name-safe, case-insensitively unique name for a layer path (user names may hold anything)."""
    if _SLUG_OK.match(name):
        return name
    readable = re.sub(r"[^a-z0-9_-]+", "_", name.lower()).strip("_")[:40] or "layer"
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Layer:
    """A layer as the user named it, with what the gallery needs to know about it."""

    name: str
    path: str
    aliases: tuple[str, ...]
    channels: int
    shape: tuple[int, ...]
    order: int

    @property
    def slug(self) -> str:
        return slug(self.path)

    def info(self) -> dict:
        return {"name": self.name, "path": self.path, "aliases": list(self.aliases), "channels": self.channels,
                "shape": list(self.shape), "order": self.order, "slug": self.slug}


@dataclass(frozen=True)
class Unit:
    """Channels of one layer rendered together."""

    layer: Layer
    channels: tuple[int, ...]


def parse_layers(text: str | Sequence[str]) -> list[str]:
    """``"mixed3a,mixed4a"`` (or a list) -> names; layer names may not be empty."""
    names = [name.strip() for name in text.split(",")] if isinstance(text, str) else [str(n) for n in text]
    if not names or any(not name for name in names):
        raise FeatvisError(f"--layers needs comma-separated layer names like mixed3a,mixed4a, got '{text}'")
    return list(dict.fromkeys(names))


@torch.no_grad()
def resolve_layers(model: FeatvisModel, names: Sequence[str]) -> list[Layer]:
    """Check every layer exists and has channels; measure its output shape with one blank image."""
    paths = {name: model.site(name) for name in names}
    device = model.mean.device
    outputs = capture(model, torch.zeros(1, 3, model.input_size, model.input_size, device=device), list(names))
    order = {path: index for index, path in enumerate(model.layer_names())}
    layers: list[Layer] = []
    for name in names:
        if any(layer.path == paths[name] for layer in layers):
            continue  # an alias of a layer already listed
        shape = tuple(outputs[name].shape[1:])
        if len(shape) not in (1, 3):
            raise FeatvisError(
                f"layer '{name}' outputs shape {list(shape)}; a gallery needs a layer with channels ([C] or [C, H, W])"
            )
        path = paths[name]
        module = split_call(path)[0]
        layers.append(Layer(name, path, tuple(model.aliases_of(path)), shape[0], shape, order[module]))
    return layers


def parse_channels(text: str | None, layer: Layer) -> list[int]:
    """Channel selection for ``layer``: ``all``/``:``, ``A:B`` (B excluded), ``A:``, ``:B``, ``N`` and lists ``0:4,9``."""
    total = layer.channels
    if text is None or text.strip() in ("", "all", ":"):
        return list(range(total))
    chosen: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if ":" in part:
                start_text, _, end_text = part.partition(":")
                start = int(start_text) if start_text.strip() else 0
                end = int(end_text) if end_text.strip() else total
            else:
                start = int(part)
                end = start + 1
        except ValueError:
            raise FeatvisError(f"bad channel selection '{part}'; use A:B, N or lists like 0:8,12") from None
        if start < 0 or end > total or start >= end:
            raise FeatvisError(
                f"channels '{part}' out of range for layer '{layer.name}', which has {total} channels "
                f"(0..{total - 1}); use e.g. --channels 0:{min(total, 16)}"
            )
        chosen.extend(range(start, end))
    return sorted(set(chosen))


def plan_units(layers: Sequence[Layer], channels: dict[str, list[int]], batch: int) -> list[Unit]:
    """Units of up to ``batch`` consecutive selected channels, layer by layer, in a fixed order."""
    if batch < 1:
        raise FeatvisError(f"--batch must be at least 1, got {batch}")
    units = []
    for layer in layers:
        selected = channels[layer.name]
        units.extend(Unit(layer, tuple(selected[i : i + batch])) for i in range(0, len(selected), batch))
    return units


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise FeatvisError(f"bad shard '{text}'; use --shard i/N with 0 <= i < N, e.g. --shard 0/4")
    return int(match[1]), int(match[2])


def shard_from_env(environ: dict | None = None) -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as set by torchrun / torch.distributed launchers; (0, 1) when absent."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return 0, 1
    return parse_shard(f"{env.get('RANK', '0')}/{env.get('WORLD_SIZE', '1')}")


def shard_units(units: Sequence[Unit], index: int, count: int) -> list[Unit]:
    """This shard's share: every ``count``-th unit starting at ``index``."""
    return list(units[index::count])
