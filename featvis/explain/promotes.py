"""The classes a unit promotes, from the model itself (no outside model, no words made up).

For channel ``c`` of a layer, how much each class logit rises when the channel's activation rises by the
same small amount at every position: ``d logit_j / d eps`` of ``logits(a + eps * e_c)``, the channel's
summed gradient, the attribution `explain` uses. One forward-mode pass (`torch.autograd.forward_ad`) gives
every class at once. Over photos it is the mean over them; without photos it is taken through the
linearized network (every ReLU-like activation the identity, max pools as average pools: the circuits'
convention, `featvis.circuits.expanded.linearized`) at a grey image, where it depends on no input.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from .._util.errors import FeatvisError
from ..core.probe import capture
from ..models.modes import analysis
from ..models.wrapper import as_model
from .attribution import LayerInput

#: photos per forward-mode pass
CHUNK = 8
#: photos of a collection the promoted classes are averaged over (describe, serve)
PHOTOS = 8


def first_photos(source) -> list[torch.Tensor] | None:
    """The first `PHOTOS` readable photos of a collection (a folder or a list file; unreadable ones are passed
    over), what the promoted classes are averaged over; None without a collection."""
    if source is None:
        return None
    from ..core.images import load_image
    from ..examples.source import list_images

    photos = []
    for path in list_images(source):
        try:
            photos.append(load_image(path))
        except FeatvisError:
            continue
        if len(photos) == PHOTOS:
            break
    return photos or None


@analysis
def promoted_classes(model: nn.Module, layer: str, channel: int, photos: Sequence[torch.Tensor] | None = None,
                     top: int = 5) -> list[tuple[int, str, float]]:
    """``top`` (class index, label, d logit / d activation) for channel ``channel`` of ``layer``, the most
    promoted first: the mean over ``photos`` ([3, H, W] each, prepared as the model classifies them) or,
    without photos, through the linearized network (see the module docstring)."""
    from ..circuits.expanded import linearized

    fmodel = as_model(model)
    grey = torch.full((1, 3, fmodel.input_size, fmodel.input_size), 0.5, device=fmodel.mean.device)
    inputs = torch.cat([fmodel.prepare(p) for p in photos]) if photos else grey
    with torch.no_grad():
        acts = capture(fmodel, inputs[:1], [layer])[layer]
    if acts.dim() < 2 or not 0 <= channel < acts.shape[1]:
        count = acts.shape[1] if acts.dim() >= 2 else 0
        raise FeatvisError(f"channel {channel} is out of range for layer '{layer}' ({count} channels); use 0..{count - 1}")
    total = None
    for start in range(0, len(inputs), CHUNK):
        x = inputs[start : start + CHUNK]
        with torch.no_grad(), (linearized() if not photos else contextlib.nullcontext()):
            rise = _logit_rise(fmodel, layer, channel, x)
        total = rise.sum(0) if total is None else total + rise.sum(0)
    mean = total / len(inputs)
    values, indices = mean.topk(min(top, mean.numel()))
    return [(int(i), fmodel.label(int(i)), float(v)) for v, i in zip(values, indices)]


def _logit_rise(model, layer: str, channel: int, x: torch.Tensor) -> torch.Tensor:
    """[N, classes]: the derivative of every logit along the channel's all-positions direction, per image."""
    acts = capture(model, x, [layer])[layer]
    direction = torch.zeros_like(acts)
    direction[:, channel] = 1.0
    with LayerInput(model, layer) as swap, fwAD.dual_level():
        logits = swap(x, fwAD.make_dual(acts, direction))
        if logits.dim() != 2:
            raise FeatvisError(f"the model's output has shape {tuple(logits.shape)}, not [N, classes]; the classes a "
                               "unit promotes need class scores")
        tangent = fwAD.unpack_dual(logits).tangent
    return tangent if tangent is not None else torch.zeros_like(logits)  # no path from the layer to the logits
