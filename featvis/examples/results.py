"""Shard results, their merge, and the final files: JSON per layer, crops as PNG, a summary.

A shard's result (``shards/I-of-N.json``) lists, per layer and channel, its ``k`` best images
(path, unit, activation, box). Merging sorts the union by (activation, path) and keeps ``k``:
exactly what one process over all images keeps, since each shard's top-k contains every image
of the global top-k that it saw. The final files are plain JSON and PNG, readable without featvis:

- ``examples.json``: ``{"images", "skipped", "layers": {LAYER: {CHANNEL: [entries]}}}`` (+ ``negative``);
- ``<layer>.json``: one layer's entries with its settings;
- ``<layer>/<channel>/<rank>.png`` (``n<rank>.png`` for negatives): the crop of each entry, the
  unit's receptive field in the prepared image; with ``full``, ``<rank>-full.png`` the whole
  prepared image with that box drawn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from .._util.errors import FeatvisError
from .._util.progress import progress_bar
from .._util.fileio import atomic_write_bytes
from ..core.images import png_bytes
from .source import box_in_file, loader

FORMAT = "featvis-examples-shard"
SHARD_DIR = "shards"
SUMMARY = "examples.json"
BOX_COLOR = (1.0, 0.1, 0.1)


def shard_file(out: Path, shard: tuple[int, int]) -> Path:
    return out / SHARD_DIR / f"{shard[0]}-of-{shard[1]}.json"


def read_shards(out: Path, job: str | None = None, count: int | None = None) -> list[dict]:
    """Every finished shard result of one job in ``out`` (of job ``job`` split ``count`` ways, when given);
    one line naming what is missing otherwise."""
    files = sorted((out / SHARD_DIR).glob("*-of-*.json"))
    docs = []
    for file in files:
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise FeatvisError(f"shard result {file} is unreadable; delete it and rerun that shard") from None
        if doc.get("format") != FORMAT:
            raise FeatvisError(f"{file} is not a featvis examples shard result; remove it from {out / SHARD_DIR}")
        if job is None or (doc.get("job") == job and doc["shard"][1] == count):
            docs.append(doc)
    if not docs:
        raise FeatvisError(f"no shard results in {out / SHARD_DIR}; run `featvis examples MODEL --images SOURCE "
                           f"--layers L --out {out} --shard i/N` for every shard first")
    jobs = {doc["job"] for doc in docs}
    if len(jobs) > 1:
        raise FeatvisError(f"{out / SHARD_DIR} holds results of {len(jobs)} different jobs (model, images or settings "
                           "differ); rerun the shards with the same settings into a fresh --out")
    count = docs[0]["shard"][1]
    have = {doc["shard"][0] for doc in docs if doc["shard"][1] == count}
    missing = [f"{i}/{count}" for i in range(count) if i not in have]
    if missing or len(docs) != count:
        raise FeatvisError(f"shard(s) {', '.join(missing) or '?'} of {count} not finished in {out / SHARD_DIR}; "
                           "run them, then `featvis examples --merge DIR`")
    return sorted(docs, key=lambda doc: doc["shard"][0])


def merge_entries(lists: Sequence[list[dict]], k: int, negative: bool) -> list[dict]:
    """The ``k`` best of several shards' lists: highest (``negative``: lowest) activation first, ties by path."""
    sign = 1.0 if negative else -1.0
    merged = sorted((entry for entries in lists for entry in entries), key=lambda e: (sign * e["activation"], e["path"]))
    return merged[:k]


def merge_docs(docs: Sequence[dict]) -> dict:
    """One result from the shards' results (the same shape as a shard's, shard 0/1)."""
    first = docs[0]
    merged = {key: value for key, value in first.items() if key not in ("shard", "images", "skipped", "layers")}
    merged["shard"] = [0, 1]
    merged["images"] = sum(doc["images"] for doc in docs)
    merged["skipped"] = sorted((item for doc in docs for item in doc["skipped"]), key=lambda s: s["path"])
    merged["layers"] = {}
    for name, info in first["layers"].items():
        layer = {key: value for key, value in info.items() if key not in ("positive", "negative")}
        for kind in ("positive", "negative") if "negative" in info else ("positive",):
            layer[kind] = {channel: merge_entries([doc["layers"][name][kind][channel] for doc in docs], first["k"],
                                                  kind == "negative")
                           for channel in info[kind]}
        merged["layers"][name] = layer
    return merged


def draw_box(image: torch.Tensor, box: Sequence[int], width: int = 2) -> torch.Tensor:
    """A copy of ``image`` [3, H, W] with the outline of ``box`` drawn in red, inside the box."""
    out = image.clone()
    y0, x0, y1, x1 = box
    color = torch.tensor(BOX_COLOR).view(3, 1, 1)
    for rows, cols in (((y0, min(y0 + width, y1)), (x0, x1)), ((max(y1 - width, y0), y1), (x0, x1)),
                       ((y0, y1), (x0, min(x0 + width, x1))), ((y0, y1), (max(x1 - width, x0), x1))):
        out[:, rows[0] : rows[1], cols[0] : cols[1]] = color
    return out


def example_png(image: torch.Tensor, box: Sequence[int], full: bool = False) -> bytes:
    """An example's PNG from its prepared image [3, S, S]: the crop of ``box``, or (``full``) the whole
    image with the box drawn. The one way crops are made, by the pass and on demand (serve)."""
    y0, x0, y1, x1 = box
    return png_bytes(draw_box(image, box) if full else image[:, y0:y1, x0:x1], fast=True)


def write_final(out: Path, doc: dict, *, workers: int = 0, progress: bool = False) -> dict:
    """Cut every entry's crop from its image (each image read once; none for a pass without crops: they
    are cut on demand by `example_png`), then write the JSON files; returns the summary."""
    size, full = doc["input_size"], doc["full"]
    wanted: dict[str, list[tuple[str, str, int, dict]]] = {}
    for name, info in doc["layers"].items():
        for kind in ("positive", "negative"):
            for channel, entries in info.get(kind, {}).items():
                for rank, entry in enumerate(entries):
                    wanted.setdefault(entry["path"], []).append((info["slug"], channel, rank, entry))
                    entry["crop"] = None
                    entry["kind"] = kind
    paths = sorted(wanted) if doc.get("crops", True) else []
    with progress_bar(len(paths), "crops", "img", enabled=progress) as bar:
        for batch in loader(paths, range(len(paths)), size, 16, workers):
            for index, image, hw in zip(batch.indices, batch.images, batch.sizes):
                for layer_slug, channel, rank, entry in wanted[paths[index]]:
                    stem = f"{layer_slug}/{channel}/{'n' if entry['kind'] == 'negative' else ''}{rank}"
                    _write(out / f"{stem}.png", example_png(image, entry["box"]))
                    entry["crop"] = f"{stem}.png"
                    entry["box_in_file"] = box_in_file(entry["box"], hw, size)
                    if full:
                        _write(out / f"{stem}-full.png", example_png(image, entry["box"], full=True))
                        entry["full"] = f"{stem}-full.png"
            bar.update(len(batch.indices) + len(batch.errors))
    for entries in wanted.values():
        for *_, entry in entries:
            del entry["kind"]
    summary = summary_of(doc)
    for name, info in doc["layers"].items():
        layer = {"layer": name, "model": doc["model"], "k": doc["k"], "input_size": size, "images": doc["images"],
                 **{key: value for key, value in info.items() if key not in ("positive", "negative")},
                 "channels": info["positive"]}
        if "negative" in info:
            layer["negative"] = info["negative"]
        _write(out / f"{info['slug']}.json", (json.dumps(layer, indent=1) + "\n").encode())
    _write(out / SUMMARY, (json.dumps(summary, indent=1) + "\n").encode())
    return summary


def _write(path: Path, data: bytes) -> None:
    """Write atomically, and only when the content changes (a rerun leaves finished files untouched)."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data)


def summary_of(doc: dict) -> dict:
    """The ``--json`` shape: images read, skipped images, per layer and channel the entries best first."""
    summary = {"images": doc["images"], "skipped": doc["skipped"],
               "layers": {name: info["positive"] for name, info in doc["layers"].items()}}
    if doc.get("job"):
        summary["job"] = doc["job"]  # the settings it was made with: a rerun with the same ones reads it back
    negatives = {name: info["negative"] for name, info in doc["layers"].items() if "negative" in info}
    if negatives:
        summary["negative"] = negatives
    return summary
