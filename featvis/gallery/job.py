"""Making a gallery: render what is missing, record it, rebuild the site — resumable and shardable.

``make_gallery`` validates everything first (output folder, layers, channel ranges, photos), so
bad input fails before any work. Then, unit by unit (``batch`` channels of a layer), it skips
items whose record matches the current settings and whose files are intact, renders the rest
through ``featvis.render`` in one batched optimisation, writes each file atomically under a
name carrying its settings digest (so a re-render never overwrites a file the current site
shows), records the unit in this shard's manifest, rebuilds the pages, and only then deletes
files of records it replaced. Killing the process at any instant leaves a consistent gallery.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import FeatvisError
from ..fileio import ensure_writable_dir
from ..images import save_image
from ..model import FeatvisModel, as_model
from . import manifest as mf
from .manifest import Key, Record, ShardManifest
from .plan import Layer, Unit, parse_channels, parse_layers, plan_units, resolve_layers, shard_from_env, shard_units, slug
from .site import build_site

DEFAULT_BATCH = 8
DEFAULT_PATCHES = 8


def model_fingerprint(model: FeatvisModel) -> str:
    """SHA-256 of the architecture, the input convention and every parameter and buffer."""
    digest = hashlib.sha256()
    digest.update(repr(model.net).encode())
    for tensor in (model.mean, model.std):
        digest.update(tensor.detach().cpu().numpy().tobytes())
    digest.update(f"{model.bgr}|{model.scale}|{model.input_size}".encode())
    for name, tensor in model.net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def first_rgb_conv(model: FeatvisModel) -> str | None:
    """Path of the first convolution that reads the three image channels (its kernels are shown as colour)."""
    for path, module in model.net.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            return path
    return None


@dataclass
class GalleryReport:
    """What one run did: its shard, the items it made, and how many it found already done."""

    out: Path
    index: Path
    shard: tuple[int, int]
    units: int
    made: list[Key] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"out": str(self.out), "index": str(self.index), "shard": f"{self.shard[0]}/{self.shard[1]}",
                "units": self.units, "made": len(self.made), "skipped": self.skipped, "seconds": round(self.seconds, 2)}


class GalleryJob:
    """One process's share of a gallery (see module docstring)."""

    def __init__(self, model: FeatvisModel, root: Path, layers: list[Layer], units: list[Unit], shard: tuple[int, int],
                 settings: dict, photos, patches: int, negative: bool, diversity: int, filters: bool,
                 log: Callable[[str], None]):
        self.model, self.root, self.layers, self.units, self.shard = model, root, layers, units, shard
        self.settings, self.photos, self.patches = settings, photos, patches
        self.negative, self.diversity, self.filters, self.log = negative, diversity, filters, log
        self.meta = {"name": model.name, "fingerprint": settings["model"]}
        manifests = mf.read_manifests(root)
        mf.check_same_model(manifests, self.meta, root)
        self.done = mf.merged_records(root, manifests)
        self.manifest = ShardManifest(root, shard[0], shard[1], self.meta, manifests)
        self.report = GalleryReport(root, root / "index.html", shard, len(units))
        self._peaks: dict[str, object] = {}

    # --- settings and file names --------------------------------------------------------------
    def item_settings(self, layer: Layer, channel: int | None, kind: str, **extra) -> dict:
        return mf.canonical({**self.settings, "layer": layer.path, "channel": channel, "kind": kind, **extra})

    def is_done(self, key: Key, settings: dict) -> bool:
        record = self.done.get(key)
        return record is not None and record.matches(settings)

    def file_name(self, layer: Layer, stem: str, settings: dict) -> str:
        return f"layers/{layer.slug}/img/{stem}-{mf.settings_digest(settings)[:10]}.png"

    def save(self, rel: str, image: torch.Tensor) -> tuple[str, str]:
        path = save_image(image.detach().cpu(), self.root / rel)
        return rel, mf.sha256_file(path)

    def record(self, layer: Layer, channel: int | None, kind: str, settings: dict, files: dict, result: dict) -> Record:
        return Record(layer.path, channel, kind, settings, dict(files), result, layer.info())

    # --- the work -------------------------------------------------------------------------------
    def run(self) -> GalleryReport:
        start = time.perf_counter()
        if self.filters and self.shard[0] == 0:
            self.commit(self.make_filters())
        for number, unit in enumerate(self.units, 1):
            began = time.perf_counter()
            records = self.make_renders(unit) + self.make_diversity(unit) + self.make_patches(unit)
            self.commit(records)
            what = f"{len(records)} items made" if records else "already done"
            self.log(f"[shard {self.shard[0]}/{self.shard[1]}] unit {number}/{len(self.units)}: {unit.layer.name} "
                     f"channels {unit.channels[0]}..{unit.channels[-1]}: {what} ({time.perf_counter() - began:.1f} s)")
        self.finish()
        self.report.seconds = time.perf_counter() - start
        return self.report

    def commit(self, records: list[Record]) -> None:
        """Record finished items, show them in the site, then drop the files they replaced."""
        if not records:
            return
        self.manifest.add(records)
        replaced = [self.done.get(r.key) for r in records]
        for record in records:
            self.done[record.key] = record
        build_site(self.root, self.meta, self.done)
        kept = {rel for record in self.done.values() for rel in record.files}
        for old in filter(None, replaced):
            for rel in set(old.files) - kept:
                (self.root / rel).unlink(missing_ok=True)
        self.report.made.extend(r.key for r in records)

    def finish(self) -> None:
        """Rebuild the site from every shard's manifest (the others may have finished meanwhile)."""
        manifests = mf.read_manifests(self.root)
        build_site(self.root, self.meta, mf.merged_records(self.root, manifests))

    def make_filters(self) -> list[Record]:
        from ..filters import filter_images

        path = first_rgb_conv(self.model)
        if path is None:
            return []
        layer = Layer(path, path, tuple(self.model.aliases_of(path)), self.model.net.get_submodule(path).out_channels,
                      (), self.model.layer_names().index(path))
        settings = mf.canonical({"model": self.settings["model"], "layer": path, "kind": "filters", "normalize": "filter"})
        if self.is_done((path, None, "filters"), settings):
            self.report.skipped += 1
            return []
        images = filter_images(self.model, path, normalize="filter")
        files = dict(self.save(self.file_name(layer, f"filter{i}", settings), image) for i, image in enumerate(images))
        return [self.record(layer, None, "filters", settings, files, {"images": list(files)})]

    def make_renders(self, unit: Unit) -> list[Record]:
        """Feature visualizations (and negatives) of the unit's unfinished channels, in one render call."""
        from .. import render

        kinds = ["positive"] + (["negative"] if self.negative else [])
        todo = []
        for kind in kinds:
            for channel in unit.channels:
                settings = self.item_settings(unit.layer, channel, kind)
                if self.is_done((unit.layer.path, channel, kind), settings):
                    self.report.skipped += 1
                else:
                    todo.append((channel, kind, settings))
        if not todo:
            return []
        specs = [spec_text(unit.layer, channel, kind) for channel, kind, _ in todo]
        results = render(self.model, specs, steps=self.settings["steps"], size=self.settings["size"],
                         batch=self.settings["batch"], seed=self.settings["seed"], progress=self.log is not _quiet)
        records = []
        for (channel, kind, settings), result in zip(todo, results):
            rel, digest = self.save(self.file_name(unit.layer, f"{channel}-{kind}", settings), result.image)
            records.append(self.record(unit.layer, channel, kind, settings, {rel: digest}, {
                "spec": result.spec, "activation": result.activation, "natural_max": result.natural_max,
                "ratio": result.ratio, "image": rel}))
        return records

    def make_diversity(self, unit: Unit) -> list[Record]:
        return []

    def make_patches(self, unit: Unit) -> list[Record]:
        """Top photo patches of the unit's channels (one pass over the photos per layer and process)."""
        if self.photos is None:
            return []
        from .patches import layer_peaks, photos_digest, top_patches

        records = []
        extra = {"photos": photos_digest(self.photos), "patches": self.patches, "input_size": self.model.input_size}
        for channel in unit.channels:
            settings = mf.canonical({"model": self.settings["model"], "layer": unit.layer.path, "channel": channel,
                                     "kind": "patches", **extra})
            if self.is_done((unit.layer.path, channel, "patches"), settings):
                self.report.skipped += 1
                continue
            if unit.layer.path not in self._peaks:
                self._peaks[unit.layer.path] = layer_peaks(self.model, unit.layer, self.photos)
            found = top_patches(self.photos, self._peaks[unit.layer.path], channel, self.patches)
            files, entries = {}, []
            for k, patch in enumerate(found):
                rel, digest = self.save(self.file_name(unit.layer, f"{channel}-patch{k}", settings), patch.image)
                files[rel] = digest
                entries.append({"photo": patch.photo, "box": list(patch.box), "unit": list(patch.unit) if patch.unit else None,
                                "activation": patch.activation, "image": rel})
            records.append(self.record(unit.layer, channel, "patches", settings, files, {
                "photos": {"count": len(self.photos), "digest": extra["photos"]}, "patches": entries}))
        return records


def spec_text(layer: Layer, channel: int, kind: str) -> str:
    """The render spec of a channel (``-`` for the negative), naming the layer as the user did."""
    return f"{'-' if kind == 'negative' else ''}{layer.name}:{channel}"


def _quiet(message: str) -> None:
    pass


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_gallery(
    model: nn.Module,
    layers: str | Sequence[str],
    out: str | os.PathLike,
    *,
    channels: str | None = None,
    steps: int = 512,
    size: int = 128,
    batch: int | None = None,
    seed: int = 0,
    images: str | os.PathLike | None = None,
    patches: int = DEFAULT_PATCHES,
    negative: bool = False,
    diversity: int = 0,
    filters: bool = True,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> GalleryReport:
    """Render a gallery of ``layers`` (channels ``channels``, e.g. ``"0:16"``; all by default) into ``out``.

    Resumable: finished items (same settings, intact files) are skipped. ``shard=(i, N)`` (or
    torchrun's RANK/WORLD_SIZE) makes this process render every N-th unit; all shards may share
    ``out``. ``images`` is a folder of photos for each channel's top ``patches`` patches;
    ``negative`` adds negative visualizations, ``diversity`` (>= 2) a diversity set per channel,
    ``filters`` the first convolution's kernels.
    """
    root = ensure_writable_dir(out)
    fmodel = as_model(model)
    for name, value, least in (("steps", steps, 1), ("size", size, 1), ("patches", patches, 1)):
        if int(value) < least:
            raise FeatvisError(f"--{name} must be at least {least}, got {value}")
    if diversity == 1 or diversity < 0:
        raise FeatvisError(f"--diversity needs at least 2 images (or 0 for none), got {diversity}")
    chosen = resolve_layers(fmodel, parse_layers(layers))
    selections = {layer.name: parse_channels(channels, layer) for layer in chosen}
    batch = int(batch or DEFAULT_BATCH)
    index, count = shard if shard is not None else shard_from_env()
    units = shard_units(plan_units(chosen, selections, batch), index, count)
    photos = None
    if images is not None:
        from .patches import read_photos

        photos = read_photos(images, fmodel)
    settings = {"model": model_fingerprint(fmodel), "steps": int(steps), "size": int(size), "batch": batch,
                "seed": int(seed)}
    job = GalleryJob(fmodel, root, chosen, units, (index, count), settings, photos, int(patches), negative,
                     int(diversity), filters, _stderr if progress else _quiet)
    return job.run()


def rebuild_index(out: str | os.PathLike) -> Path:
    """Rebuild the site of gallery folder ``out`` from all its manifests (after sharded runs); returns index.html."""
    root = Path(out)
    manifests = mf.read_manifests(root)
    if not manifests:
        raise FeatvisError(f"no gallery manifests in {root / mf.MANIFEST_DIR}; make one with `featvis gallery MODEL "
                           f"--layers ... --out {root}` first")
    ensure_writable_dir(root)
    build_site(root, mf.model_of(manifests), mf.merged_records(root, manifests))
    return root / "index.html"


__all__ = ["GalleryReport", "make_gallery", "rebuild_index", "model_fingerprint", "slug"]
