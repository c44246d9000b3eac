"""Activation atlases (Carter et al., "Activation Atlas", Distill 2019): the space of a layer's activations, drawn.

One streaming pass over the photos (featvis.examples.stream, resumable like ``featvis examples``)
samples activation vectors at random positions — the positions of image ``i`` depend only on
``seed`` and ``i`` — together with the class the model predicts for the image. UMAP (the
optional extra ``featvis[atlas]``) lays the vectors out in 2-D; a ``grid`` x ``grid`` lattice bins
them; each populated cell's mean vector is rendered with the ``direction`` objective (cosine-
weighted, as in the article) through the batched render engine, and drawn over white with an
opacity that grows with the cell's count. A class atlas (``target``) weights every sample by its
attribution to that class's logit (activation x gradient at that position, summed over channels),
keeps the positively attributed ones and averages vectors with those weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._util.errors import FeatvisError
from .._util.fileio import atomic_write_text, ensure_writable_dir
from ..core.images import save_image
from ..core.sites import site_modules
from ..models.labels import label_index
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model, model_fingerprint
from ..optvis import RenderSettings, direction, render
from ..optvis.settings import ATLAS_CELLS
from .sample import PositionSampler
from .source import check_loader_args, images_digest, list_images
from .stream import stream

MAX_FLOATS = 1 << 28  # 1 GiB of sampled activations at most
INSTALL = 'pip install "featvis[atlas]"  (or: pip install umap-learn)'


def _forward(model: FeatvisModel, layer: str, target: int | None):
    """Forward to the logits, keeping ``layer``'s output; with ``target``, its attribution map to that logit."""
    site = model.site(layer)

    def keep(kept: dict, out: torch.Tensor) -> torch.Tensor:
        # with a target, the rest of the network runs on a leaf copy, so its gradient is d logit / d act
        kept["act"] = out.detach().requires_grad_() if target is not None else out
        return kept["act"]

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        kept: dict[str, torch.Tensor] = {}
        with site_modules(model, [site]) as modules:
            handle = modules[site].register_forward_hook(lambda _m, _i, out: keep(kept, out) if "act" not in kept else None)
            try:
                with torch.set_grad_enabled(target is not None):
                    logits = model(x)
                    act = kept["act"]
                    out = {"act": act.detach()}
                    if model.labels is not None and logits.dim() == 2:
                        out["logits"] = logits.detach()
                    if target is not None:
                        gradient, = torch.autograd.grad(logits[:, target].sum(), act)
                        out["attribution"] = (act * gradient).sum(1).detach()
            finally:
                handle.remove()
        return out

    return run


def require_umap():
    """The umap module, or one line naming the install command."""
    try:
        import umap
    except ImportError:
        raise FeatvisError(f"activation atlases need umap-learn; {INSTALL}") from None
    return umap


def layout(vectors: np.ndarray, seed: int) -> np.ndarray:
    """2-D UMAP coordinates (cosine metric, as in the article) of ``vectors`` [N, C]."""
    umap = require_umap()
    neighbours = max(2, min(15, len(vectors) - 1))
    reducer = umap.UMAP(n_components=2, n_neighbors=neighbours, min_dist=0.01, metric="cosine", random_state=seed,
                        n_jobs=1)
    return np.asarray(reducer.fit_transform(vectors), dtype=np.float64)


def bin_cells(coords: np.ndarray, grid: int) -> np.ndarray:
    """(row, column) of each point on a ``grid`` x ``grid`` lattice over the points' bounding box."""
    low, high = coords.min(0), coords.max(0)
    scaled = (coords - low) / np.where(high > low, high - low, 1.0)
    cells = np.minimum((scaled * grid).astype(np.int64), grid - 1)
    return np.stack([grid - 1 - cells[:, 1], cells[:, 0]], axis=1)  # y up, as in a plot


@dataclass
class Atlas:
    """The atlas image [3, grid*cell, grid*cell] and its cells, in the JSON shape of ``featvis atlas --json``."""

    image: torch.Tensor
    cells: list[dict]
    summary: dict


@analysis
def activation_atlas(
    model: nn.Module,
    images: str | os.PathLike,
    layer: str,
    out: str | os.PathLike,
    *,
    grid: int = 20,
    samples: int = 20000,
    target: str | int | None = None,
    settings: RenderSettings | None = None,
    cell: int | None = None,
    steps: int | None = None,
    batch: int = 32,
    workers: int = 2,
    render_batch: int = 16,
    seed: int | None = None,
    precision: str | None = None,
    progress: bool = True,
) -> Atlas:
    """The activation atlas of ``layer`` over ``images`` (a folder or a list file), saved as PNG at ``out``
    (with ``<out>.json`` beside it): ``samples`` vectors, a ``grid`` x ``grid`` lattice, each cell rendered with
    ``settings`` (default `ATLAS_CELLS`; ``cell`` px is its size; ``steps``, ``seed``, ``precision`` override
    its fields; the seed also draws the sampled positions and the layout). ``target``: a class (label or index)
    for a class atlas."""
    fmodel = as_model(model)
    pictures = (settings or ATLAS_CELLS).replace(size=cell, steps=steps, seed=seed, precision=precision)
    seed = pictures.seed
    for name, value, least, most in (("grid", grid, 1, 200), ("samples", samples, 2, 10_000_000), ("cell", pictures.size, 8, 512),
                                     ("render-batch", render_batch, 1, 1024)):  # steps: RenderSettings bounds them
        if not least <= int(value) <= most:
            raise FeatvisError(f"--{name} must be between {least} and {most}, got {value}")
    check_loader_args(batch, workers)
    require_umap()
    target_index = label_index(fmodel.labels, target) if target is not None else None
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise FeatvisError(f"the atlas is saved as PNG; give -o a .png path, got {path}")
    ensure_writable_dir(path.parent if str(path.parent) else ".")
    paths = list_images(images)
    fmodel.site(layer)  # a single module, or one call of it (concat layers are refused with a hint)
    with torch.no_grad():
        probe_out = _forward(fmodel, layer, None)(torch.zeros(1, 3, fmodel.input_size, fmodel.input_size,
                                                              device=fmodel.mean.device))["act"]
    if probe_out.dim() != 4:
        raise FeatvisError(f"layer '{layer}' outputs shape {list(probe_out.shape[1:])}; an atlas needs a [C, H, W] layer")
    channels = probe_out.shape[1]
    per_image = max(1, math.ceil(samples / len(paths)))
    rows = per_image * len(paths)
    if rows * channels > MAX_FLOATS:
        raise FeatvisError(f"{rows} samples x {channels} channels exceed {MAX_FLOATS} floats; lower --samples")
    sampler = PositionSampler(channels, rows, per_image, seed)
    sampling = {"model": model_fingerprint(fmodel), "layer": layer, "samples": samples, "seed": seed,
                "target": target_index, "images": images_digest(paths), "input_size": fmodel.input_size}
    digest = hashlib.sha256(json.dumps(sampling, sort_keys=True).encode()).hexdigest()
    checkpoint = path.with_name(f".{path.name}.ckpt")
    report = stream(paths, range(len(paths)), fmodel.input_size, _forward(fmodel, layer, target_index), sampler,
                    batch=batch, workers=workers, device=fmodel.mean.device, checkpoint=checkpoint, digest=digest,
                    progress=progress, desc="sampling")
    if not report.read:
        checkpoint.unlink(missing_ok=True)
        raise FeatvisError(f"none of the {len(paths)} images in {images} could be read; give PNG or JPEG photos")
    count = sampler.count
    vectors, labels, weights = sampler.vectors[:count], sampler.label[:count], sampler.weight[:count]
    if target_index is not None:
        weights = weights.clamp(min=0)
        if not bool((weights > 0).any()):
            raise FeatvisError(f"no sampled position attributes positively to class {target}; use more images or another class")
    else:
        weights = torch.ones(count)
    cells_yx = bin_cells(layout(vectors.numpy(), seed), grid)
    atlas = _cells(fmodel, layer, vectors, labels, weights, cells_yx, grid, pictures, render_batch, progress)
    atlas.summary.update({"layer": layer, "grid": grid, "samples": count, "images": report.read,
                          "skipped": [{"path": p, "error": e} for p, e in report.skipped],
                          "class": fmodel.label(target_index) if target_index is not None else None, "image": str(path)})
    save_image(atlas.image, path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(atlas.summary, indent=1) + "\n")
    checkpoint.unlink(missing_ok=True)
    return atlas


def _cells(model: FeatvisModel, layer: str, vectors: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
           cells_yx: np.ndarray, grid: int, settings: RenderSettings, render_batch: int, progress: bool) -> Atlas:
    """Average each populated cell (weighted), render its direction, composite with opacity by weight."""
    keys = cells_yx[:, 0] * grid + cells_yx[:, 1]
    populated = [int(key) for key in np.unique(keys) if float(weights[torch.from_numpy(keys == key)].sum()) > 0]
    entries, objectives = [], []
    for key in populated:
        members = torch.from_numpy(keys == key)
        w = weights[members]
        mean = (vectors[members] * w[:, None]).sum(0) / w.sum()
        votes = Counter()
        for label, weight in zip(labels[members].tolist(), w.tolist()):
            if label >= 0:
                votes[label] += weight
        total = sum(votes.values()) or 1.0
        entries.append({"cell": [key // grid, key % grid], "count": int(members.sum()), "weight": float(w.sum()),
                        "norm": float(mean.norm()),
                        "top_classes": [{"index": i, "label": model.label(i), "share": round(v / total, 4)}
                                        for i, v in votes.most_common(3)]})
        objectives.append(direction(layer, mean, cossim_pow=1.0))
    results = render(model, objectives, settings, batch=render_batch, natural=False, progress=progress)
    if len(results) != len(objectives) or any(r.interrupted for r in results):
        raise KeyboardInterrupt
    cell = settings.size
    image = torch.ones(3, grid * cell, grid * cell)
    peak = max(e["weight"] for e in entries)
    for entry, result in zip(entries, results):
        alpha = math.sqrt(entry["weight"] / peak)
        entry["opacity"] = round(alpha, 4)
        entry["activation"] = result.activation
        entry["precision"] = result.precision
        y, x = entry["cell"]
        tile = image[:, y * cell : (y + 1) * cell, x * cell : (x + 1) * cell]
        tile.mul_(1 - alpha).add_(alpha * result.image.float().cpu())
    return Atlas(image, entries, {"cells": entries})


__all__ = ["Atlas", "activation_atlas", "bin_cells", "layout", "require_umap"]
