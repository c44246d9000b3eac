"""``dataset_examples``: every chosen channel's top-k images over a collection of any size, in one pass.

Everything is checked before the pass (output folder, k, batch, workers, images, layers,
channels). The pass (featvis.examples.stream) keeps a running top-k per channel; its result is
this shard's file; when every shard's file is there, they are merged and the crops and JSON
written (featvis.examples.results). A shard whose result file matches the settings is not run
again, so rerunning a finished command only rewrites the final files.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .._util.errors import FeatvisError
from .._util.fileio import atomic_write_text, ensure_writable_dir
from ..core.plan import parse_layers, shard_from_env
from ..core.probe import Probe
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model, model_fingerprint
from .layers import PassLayer, resolve_pass_layers
from .results import FORMAT, SHARD_DIR, SUMMARY, merge_docs, read_shards, shard_file, summary_of, write_final
from .source import Batch, check_loader_args, images_digest, list_images
from .stream import stream
from .topk import TopK, peaks

MAX_K = 1000


class ExamplesConsumer:
    """Running top-k (and bottom-k with ``negative``) of every chosen channel of every layer."""

    def __init__(self, layers: Sequence[PassLayer], k: int, negative: bool):
        self.layers = layers
        self.kinds = ("positive", "negative") if negative else ("positive",)
        self.tops = {(layer.name, kind): TopK(len(layer.channels), k) for layer in layers for kind in self.kinds}
        self._chosen = {layer.name: torch.tensor(layer.channels) for layer in layers}

    def update(self, batch: Batch, outputs: dict[str, torch.Tensor]) -> None:
        index = torch.tensor(batch.indices)
        for layer in self.layers:
            act = outputs[layer.name].index_select(1, self._chosen[layer.name].to(outputs[layer.name].device))
            for kind in self.kinds:
                values, units = peaks(act, negative=kind == "negative")
                self.tops[layer.name, kind].update(values, units, index)

    def state(self) -> dict:
        return {f"{name}\t{kind}": top.state() for (name, kind), top in self.tops.items()}

    def load(self, state: dict) -> None:
        if set(state) != set(self.state()):
            raise ValueError("checkpoint holds other layers")
        for (name, kind), top in self.tops.items():
            top.load(state[f"{name}\t{kind}"])

    def result(self, paths: Sequence[str], size: int) -> dict:
        """Per layer and kind, per channel (a string): entries best first (most negative first for ``negative``)."""
        layers = {}
        for layer in self.layers:
            info = {"parts": list(layer.parts), "slug": layer.slug, "shape": list(layer.shape)}
            for kind in self.kinds:
                sign = -1.0 if kind == "negative" else 1.0
                top = self.tops[layer.name, kind]
                info[kind] = {str(c): [{"path": paths[i], "unit": list(unit), "activation": sign * value,
                                        "box": layer.box(unit, size)} for value, i, unit in top.entries(row)]
                              for row, c in enumerate(layer.channels)}
            layers[layer.name] = info
        return layers


@dataclass
class ExamplesResult:
    """A run's outcome: ``summary`` in the ``--json`` shape; ``merged`` False while other shards are missing."""

    out: Path
    summary: dict
    shard: tuple[int, int]
    merged: bool
    resumed_at: int = 0  # images of this shard done before this run (from a checkpoint)
    pass_seconds: float = 0.0  # the streaming pass of this run, without crops and JSON

    def to_json(self) -> dict:
        return self.summary if self.merged else {**self.summary, "shard": f"{self.shard[0]}/{self.shard[1]}", "merged": False}


@analysis
def dataset_examples(
    model: nn.Module,
    images: str | os.PathLike,
    layers: str | Sequence[str],
    out: str | os.PathLike,
    *,
    channels: str | dict[str, str] | None = None,
    k: int = 9,
    batch: int = 32,
    workers: int = 2,
    negative: bool = False,
    shard: tuple[int, int] | None = None,
    full: bool = False,
    checkpoint_every: float = 60.0,
    progress: bool = True,
    crops: bool = True,
) -> ExamplesResult:
    """Each channel's ``k`` top images in ``images`` (a folder, searched recursively, or a text file of paths).

    ``layers``: names or aliases (``"mixed4c,mixed4a_pre_relu"``); ``channels``: e.g. ``"0:16"`` (all by
    default), or a selection per layer name; ``full``: also each example's whole image with the box drawn; ``negative``: also the ``k`` most negative. Results go to ``out`` (see
    featvis.examples.results); ``shard=(i, N)`` (default torchrun's RANK/WORLD_SIZE) processes every
    N-th image, and the shard finishing last merges. Resumes from the checkpoint after a kill; a finished
    run with the same settings is read back, not run again. ``crops=False`` stores numbers only (path, unit,
    box, activation): `featvis.examples.results.example_png` cuts a crop when one is wanted.
    """
    fmodel = as_model(model)
    k, batch, workers = int(k), int(batch), int(workers)
    if not 1 <= k <= MAX_K:
        raise FeatvisError(f"--k must be between 1 and {MAX_K}, got {k}")
    check_loader_args(batch, workers)
    root = ensure_writable_dir(out)
    ensure_writable_dir(root / SHARD_DIR)
    paths = list_images(images)
    index, count = shard if shard is not None else shard_from_env()
    chosen = resolve_pass_layers(fmodel, parse_layers(layers), channels)
    job = {"format": FORMAT, "model": fmodel.name, "fingerprint": model_fingerprint(fmodel), "k": k, "negative": negative,
           "full": full, "crops": bool(crops), "input_size": fmodel.input_size, "images_digest": images_digest(paths),
           "layers": {layer.name: [list(layer.parts), list(layer.channels)] for layer in chosen}}
    digest = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()
    final = _finished(root / SUMMARY, digest)
    if final is not None:  # every shard is done and merged with these settings: nothing to run
        return ExamplesResult(root, final, (index, count), True)
    result_path = shard_file(root, (index, count))
    doc = _finished(result_path, digest)
    resumed_at, seconds = 0, 0.0
    if doc is None:
        consumer = ExamplesConsumer(chosen, k, negative)
        checkpoint = result_path.with_suffix(".ckpt")
        with torch.inference_mode(), Probe(fmodel, [layer.name for layer in chosen], early_exit=True) as probe:
            report = stream(paths, range(index, len(paths), count), fmodel.input_size, probe, consumer, batch=batch,
                            workers=workers, device=fmodel.mean.device, checkpoint=checkpoint,
                            digest=f"{digest}:{index}/{count}", checkpoint_every=checkpoint_every, progress=progress)
        resumed_at, seconds = report.resumed_at, report.seconds
        doc = {"format": FORMAT, "job": digest, "shard": [index, count], "model": fmodel.name, "k": k,
               "negative": negative, "full": full, "crops": bool(crops), "input_size": fmodel.input_size, "images": report.read,
               "skipped": [{"path": p, "error": e} for p, e in report.skipped],
               "layers": consumer.result(paths, fmodel.input_size)}
        if not doc["images"] and count == 1:
            checkpoint.unlink(missing_ok=True)
            raise FeatvisError(f"none of the {len(paths)} images in {images} could be read (first: "
                               f"{doc['skipped'][0]['error']}); give PNG or JPEG photos")
        atomic_write_text(result_path, json.dumps(doc) + "\n")
        checkpoint.unlink(missing_ok=True)
    try:
        docs = read_shards(root, digest, count)
    except FeatvisError:
        return ExamplesResult(root, summary_of(doc), (index, count), False, resumed_at, seconds)
    return ExamplesResult(root, write_final(root, merge_docs(docs), workers=workers, progress=progress), (index, count),
                          True, resumed_at, seconds)


def merge_examples(out: str | os.PathLike, *, workers: int = 2, progress: bool = True) -> ExamplesResult:
    """Join the shard results in ``out`` (from ``dataset_examples(..., shard=(i, N))``) into the final files."""
    root = Path(out)
    if not root.is_dir():
        raise FeatvisError(f"--merge {root}: no such folder; give the --out folder of the sharded runs")
    docs = read_shards(root)
    ensure_writable_dir(root)
    merged = merge_docs(docs)
    if not merged["images"]:
        raise FeatvisError(f"none of the images of {root} could be read; give PNG or JPEG photos")
    return ExamplesResult(root, write_final(root, merged, workers=workers, progress=progress), (0, 1), True)


def _finished(path: Path, digest: str) -> dict | None:
    """An earlier result (a shard's, or the merged summary), if it was made with the same settings."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if doc.get("job") == digest else None


def photo_examples(model: FeatvisModel, images: str | os.PathLike, out: Path, channels: dict[str, Sequence[int]], k: int,
                   progress: bool) -> ExamplesResult:
    """The examples a gallery shows: ``channels`` per layer name, whole images with boxes, each entry named by
    its path under ``images``; unreadable photos are skipped with a warning. ``summary["photos_digest"]``
    identifies the collection."""
    result = dataset_examples(model, images, list(channels), out, k=k, full=True, shard=(0, 1), progress=progress,
                              channels={name: ",".join(map(str, chosen)) for name, chosen in channels.items()})
    for skipped in result.summary["skipped"]:
        warnings.warn(f"skipping photo: {skipped['error']}", stacklevel=2)
    base = Path(images) if Path(images).is_dir() else None
    for per_channel in result.summary["layers"].values():
        for entries in per_channel.values():
            for entry in entries:
                entry["name"] = str(Path(entry["path"]).relative_to(base)) if base else entry["path"]
    result.summary["photos_digest"] = images_digest(list_images(images))
    return result
