"""Natural-photo maxima: how strongly real photos drive an objective, the bar a visualisation must clear.

The photos are scikit-image's sample photos (`featvis.images.sample_photos`) and crops of them:
for each photo, squares with the side of its shorter edge and of half that, tiling the photo;
each crop is resized (antialiased) to the model's input scale. Activations of these crops are
cached per model and layer, so scoring every channel of a layer costs one forward pass.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FeatvisError
from ..images import sample_photos
from ..model import FeatvisModel, as_model
from ..probe import capture
from ..progress import progress_bar
from .objectives import INPUT, Objective
from .spec import parse_spec

CACHED_LAYERS = 6
CHUNK = 16
_ACTS: "weakref.WeakKeyDictionary[FeatvisModel, OrderedDict]" = weakref.WeakKeyDictionary()


def _starts(length: int, side: int) -> list[int]:
    count = math.ceil(length / side)
    return [round(i * (length - side) / max(count - 1, 1)) for i in range(count)]


@functools.lru_cache(maxsize=2)
def photo_crops(size: int) -> torch.Tensor:
    """Every crop of every sample photo, resized to ``size`` x ``size``: [N, 3, size, size] in [0, 1]."""
    crops = []
    for photo in sample_photos().values():
        h, w = photo.shape[1:]
        for side in (min(h, w), min(h, w) // 2):
            for top in _starts(h, side):
                for left in _starts(w, side):
                    crop = photo[None, :, top : top + side, left : left + side]
                    crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(crops).clamp(0, 1)


@torch.no_grad()
def natural_activations(model: nn.Module, layers: list[str], size: int | None = None,
                        progress: bool = False) -> dict[str, torch.Tensor]:
    """Activations of ``layers`` for all photo crops at ``size`` (default: the model's input size), cached;
    ``progress`` shows a bar while they are computed."""
    model = as_model(model)
    size = size or model.input_size
    crops = photo_crops(size).to(model.mean.device)
    cache = _ACTS.setdefault(model, OrderedDict())
    wanted = [layer for layer in dict.fromkeys(layers) if layer != INPUT]
    missing = [layer for layer in wanted if (model.parts(layer), size) not in cache]
    if missing:
        chunks = []
        with progress_bar(len(crops), "natural photos", "crops", enabled=progress) as bar:
            for i in range(0, len(crops), CHUNK):
                chunks.append(capture(model, crops[i : i + CHUNK], missing))
                bar.update(len(crops[i : i + CHUNK]))
        for layer in missing:
            cache[(model.parts(layer), size)] = torch.cat([chunk[layer] for chunk in chunks])
    result = {INPUT: crops}
    for layer in wanted:
        key = (model.parts(layer), size)
        cache.move_to_end(key)
        result[layer] = cache[key]
    while len(cache) > max(CACHED_LAYERS, len(wanted)):
        cache.popitem(last=False)
    return result


@torch.no_grad()
def natural_max(model: nn.Module, spec: str | Objective, size: int | None = None, progress: bool = False) -> float:
    """The highest value of a one-image objective over the natural photo crops at ``size``
    (``progress``: a bar while the crops' activations are computed)."""
    model = as_model(model)
    objective = parse_spec(model, spec) if isinstance(spec, str) else spec
    if objective.span != 1:
        raise FeatvisError(f"'{objective.name}' scores {objective.span} images together; natural_max needs a one-image objective")
    acts = natural_activations(model, list(objective.layers), size, progress)
    count = acts[INPUT].shape[0]
    return max(float(objective({k: v[i : i + 1] for k, v in acts.items()})[0]) for i in range(count))
