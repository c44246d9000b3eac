"""Natural-photo maxima: how strongly real photos drive an objective, the bar a visualisation must clear.

The photos are scikit-image's sample photos (`featvis.core.images.sample_photos`) and crops of them:
for each photo, squares with the side of its shorter edge and of half that, tiling the photo;
each crop is resized (antialiased) to the model's input scale. Activations of these crops are
cached per model and layer, so scoring every channel of a layer costs one forward pass; they
are also kept in the user cache (``<cache>/natural/``, see `featvis.models.weights.cache_dir`), keyed by
the model's fingerprint (architecture, input convention, every weight), the layer, the size and
the photo set, so a later process skips the photos and the forward pass (layers up to
`DISK_LIMIT` bytes; an unreadable file is recomputed).
"""

from __future__ import annotations

import functools
import hashlib
import math
import weakref
from collections import OrderedDict
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._util.errors import FeatvisError
from .._util.fileio import atomic_output
from .._util.progress import progress_bar
from ..core.images import sample_photos
from ..core.probe import capture
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model, model_fingerprint
from .objectives import INPUT, Objective
from .spec import parse_spec

CACHED_LAYERS = 6
CHUNK = 16
DISK_LIMIT = 64 << 20  # bytes: larger activations (early, wide layers) are recomputed rather than stored
CROPS_VERSION = "1"  # bump when the crops change (photos, tiling, resizing)
_ACTS: "weakref.WeakKeyDictionary[FeatvisModel, OrderedDict]" = weakref.WeakKeyDictionary()
_FINGERPRINTS: "weakref.WeakKeyDictionary[FeatvisModel, str]" = weakref.WeakKeyDictionary()


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
    cache = _ACTS.setdefault(model, OrderedDict())
    wanted = [layer for layer in dict.fromkeys(layers) if layer != INPUT]
    for layer in wanted:
        if (model.parts(layer), size) not in cache:
            stored = read_stored(model, "+".join(model.parts(layer)), size)
            if stored is not None:
                cache[(model.parts(layer), size)] = stored
    missing = [layer for layer in wanted if (model.parts(layer), size) not in cache]
    crops = photo_crops(size).to(model.mean.device) if missing or INPUT in layers else None
    if missing:
        chunks = []
        with progress_bar(len(crops), "natural photos", "crops", enabled=progress) as bar:
            for i in range(0, len(crops), CHUNK):
                chunks.append(capture(model, crops[i : i + CHUNK], missing))
                bar.update(len(crops[i : i + CHUNK]))
        for layer in missing:
            cache[(model.parts(layer), size)] = torch.cat([chunk[layer] for chunk in chunks])
            store(model, "+".join(model.parts(layer)), size, cache[(model.parts(layer), size)])
    result = {INPUT: crops} if crops is not None else {}
    for layer in wanted:
        key = (model.parts(layer), size)
        cache.move_to_end(key)
        result[layer] = cache[key]
    while len(cache) > max(CACHED_LAYERS, len(wanted)):
        cache.popitem(last=False)
    return result


def _stored_path(model: FeatvisModel, what: str, size: int) -> Path:
    """Where ``what`` (a layer's parts, or another name) of the crops at ``size`` is kept in the user cache."""
    from ..models.weights import cache_dir

    if model not in _FINGERPRINTS:
        _FINGERPRINTS[model] = model_fingerprint(model)
    photos = f"{CROPS_VERSION}|scikit-image {metadata.version('scikit-image')}"
    key = hashlib.sha256(f"{_FINGERPRINTS[model]}|{what}|{size}|{photos}".encode()).hexdigest()
    return cache_dir() / "natural" / f"{key[:32]}.pt"


def read_stored(model: FeatvisModel, what: str, size: int) -> torch.Tensor | None:
    """What `store` kept for this model (by weights), ``what`` and crop size; None if absent or unreadable."""
    path = _stored_path(model, what, size)
    if not path.is_file():
        return None
    try:
        value = torch.load(path, map_location=model.mean.device, weights_only=True)
    except Exception:  # a damaged or foreign file: recompute (and overwrite it)
        return None
    return value if isinstance(value, torch.Tensor) else None


def store(model: FeatvisModel, what: str, size: int, acts: torch.Tensor) -> None:
    """Keep ``acts`` in the user cache when small enough; a cache that cannot be written is skipped."""
    if acts.numel() * acts.element_size() > DISK_LIMIT:
        return
    try:
        with atomic_output(_stored_path(model, what, size)) as tmp:
            torch.save(acts.detach().cpu().contiguous(), tmp)
    except (OSError, FeatvisError):
        pass


@analysis
@torch.no_grad()
def natural_max(model: nn.Module, spec: str | Objective, size: int | None = None, progress: bool = False) -> float:
    """The highest value of a one-image objective over the natural photo crops at ``size``
    (``progress``: a bar while the crops' activations are computed)."""
    model = as_model(model)
    objective = parse_spec(model, spec) if isinstance(spec, str) else spec
    if objective.span != 1:
        raise FeatvisError(f"'{objective.name}' scores {objective.span} images together; natural_max needs a one-image objective")
    acts = natural_activations(model, list(objective.layers), size, progress)
    count = next(iter(acts.values())).shape[0]
    return max(float(objective({k: v[i : i + 1] for k, v in acts.items()})[0]) for i in range(count))
