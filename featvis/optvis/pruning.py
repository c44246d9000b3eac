"""Pruned concatenations: an optimisation computes only the branches of a block its objectives read.

An Inception block outputs the concatenation of its branches. A channel objective such as
``mixed4a:97`` reads one branch, yet a plain forward pass runs all four and the backward pass
goes through all four with zero gradients. When every objective reading a layer declares the
channels it reads (`Objective.channels`) and the layer's module is found to output exactly the
concatenation along channels of some of its children, in the order they run (checked once per
model, layer and input size, bit for bit, on a random image), rendering probes only the
children holding those channels (its early exit comes right after the last one) and puts zeros
where the others' channels would be, which nothing reads. Scores, gradients and images are the
same as without pruning (tested bit for bit); GoogLeNet's mixed4a:0..7 render about 4% faster.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Iterable

import torch

from ..core.probe import capture
from ..models.wrapper import FeatvisModel, split_call
from .objectives import INPUT, Objective

_CHILDREN: "weakref.WeakKeyDictionary[FeatvisModel, dict[tuple[tuple[str, ...], int], tuple[tuple[str, int], ...] | None]]" = (
    weakref.WeakKeyDictionary())


@dataclass(frozen=True)
class Pruned:
    """``layer`` assembled from ``parts`` (child path, channels) in order; only ``needed`` ones are computed."""

    layer: str
    parts: tuple[tuple[str, int], ...]
    needed: tuple[bool, ...]

    @property
    def paths(self) -> list[str]:
        return [path for (path, _), need in zip(self.parts, self.needed) if need]


def concat_children(model: FeatvisModel, layer: str, size: int) -> tuple[tuple[str, int], ...] | None:
    """The (child path, channels) whose outputs, concatenated along channels in the order the
    children run, are exactly ``layer``'s output at ``size`` px; None for any other layer."""
    parts = model.parts(layer)  # by all its parts: a concat layer is not the module it starts with
    cache = _CHILDREN.setdefault(model, {})
    if (parts, size) not in cache:
        one_module = len(parts) == 1 and split_call(parts[0])[1] is None  # not a concat, nor one call of a shared module
        cache[(parts, size)] = _find_children(model, parts[0], size) if one_module else None
    return cache[(parts, size)]


@torch.no_grad()
def _find_children(model: FeatvisModel, path: str, size: int) -> tuple[tuple[str, int], ...] | None:
    children = list(model.net.get_submodule(path).named_children())
    if len(children) < 2:
        return None
    ran: list[tuple[str, object]] = []
    handles = [child.register_forward_hook(lambda m, i, out, name=name: ran.append((name, out))) for name, child in children]
    try:
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(model.mean.device)
        output = capture(model, image, [path])[path]
    finally:
        for handle in handles:
            handle.remove()
    names = [name for name, _ in ran]
    if len(set(names)) != len(names) or output.dim() < 2:
        return None  # a child that runs twice: no simple concatenation
    outs = [(name, out) for name, out in ran if isinstance(out, torch.Tensor) and out.dim() == output.dim()
            and out.shape[0] == output.shape[0] and out.shape[2:] == output.shape[2:]]
    if sum(out.shape[1] for _, out in outs) != output.shape[1] or not torch.equal(torch.cat([o for _, o in outs], 1), output):
        return None
    return tuple((f"{path}.{name}", out.shape[1]) for name, out in outs)


def prune(model: FeatvisModel, layers: Iterable[str], readers: Iterable[Objective], size: int) -> dict[str, Pruned]:
    """The layers among ``layers`` that can be assembled from fewer children than all, given
    that ``readers`` (every objective reading them) are all that read them."""
    readers = list(readers)
    pruned = {}
    for layer in layers:
        reads = [objective.reads(layer) for objective in readers]
        if layer == INPUT or any(read is None for read in reads):
            continue
        parts = concat_children(model, layer, size)
        if parts is None:
            continue
        wanted = frozenset().union(*reads)
        if not wanted:
            continue  # read only by something that declares nothing (e.g. accentuation's anchor)
        starts = [sum(channels for _, channels in parts[:i]) for i in range(len(parts))]
        needed = tuple(any(start <= c < start + channels for c in wanted) for start, (_, channels) in zip(starts, parts))
        if not all(needed):
            pruned[layer] = Pruned(layer, parts, needed)
    return pruned


def probed_layers(layers: list[str], pruned: dict[str, Pruned]) -> list[str]:
    """What to probe: the layers themselves, pruned ones replaced by their needed children."""
    return list(dict.fromkeys(p for layer in layers for p in (pruned[layer].paths if layer in pruned else [layer])))


def assemble(acts: dict[str, torch.Tensor], layers: list[str], pruned: dict[str, Pruned]) -> dict[str, torch.Tensor]:
    """``{layer: activation}`` for ``layers`` from the probed ``acts``: a pruned layer is its needed
    children's outputs with zeros in place of the others'."""
    result = {layer: acts[layer] for layer in layers if layer not in pruned}
    for layer, plan in pruned.items():
        like = acts[plan.paths[0]]
        layout = torch.channels_last if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        pieces = [acts[path] if need else torch.empty(like.shape[0], channels, *like.shape[2:], dtype=like.dtype, device=like.device,
                                                      memory_format=layout).zero_()  # the block's own output layout: same sums
                  for (path, channels), need in zip(plan.parts, plan.needed)]
        result[layer] = torch.cat(pieces, 1)
    return result
