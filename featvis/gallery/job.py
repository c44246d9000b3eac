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

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .._util.choices import GALLERY_BATCH, GALLERY_PATCHES
from .._util.errors import FeatvisError
from .._util.fileio import ensure_writable_dir
from ..core.activations import pre_activation
from ..core.images import load_image, save_image
from ..core.plan import Layer, Unit, parse_channels, parse_layers, plan_units, resolve_layers, shard_from_env, shard_units, slug
from ..core.probe import capture
from ..examples import ExamplesResult, photo_examples
from ..explain.describe import Description, class_scores, loads_of, predictions, seen_as
from ..explain.promotes import first_photos, promoted_classes
from ..inspect.filters import filter_images
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model, model_fingerprint
from ..optvis import Objective, RenderResult, RenderSettings, channel, diversity, picture_key, render
from ..optvis.objectives import INPUT
from ..optvis.transforms import resize
from . import manifest as mf
from .circuits import CircuitPlanner
from .manifest import Key, Record, ShardManifest
from .site import build_site

DEFAULT_BATCH = GALLERY_BATCH  # channels per unit of work: one render call, one manifest update
DEFAULT_PATCHES = GALLERY_PATCHES
DIVERSITY_WEIGHT = 100.0  # Lucid's weight for its diversity example: channel + 1e2 * diversity


def unit_objective(layer: str, c: int, kind: str, images: int = 0, pre: str | None = None) -> Objective:
    """A channel's objective for a kind of picture: ``positive``, ``negative`` (of the layer's pre-activation
    ``pre`` where it has one: featvis.core.activations), or ``diversity`` of ``images`` pictures (Lucid's
    channel + 1e2 * diversity); the gallery's and serve's."""
    if kind == "positive":
        return channel(layer, c)
    if kind == "negative":
        return -channel(pre or layer, c)
    return channel(layer, c) + DIVERSITY_WEIGHT * diversity(layer, images)


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


def stderr_lines(enabled: bool) -> Callable[[str], None]:
    """A logger printing progress lines on stderr (the job's and the circuit planner's), or nothing."""
    return (lambda message: print(message, file=sys.stderr, flush=True)) if enabled else (lambda message: None)


class GalleryJob:
    """One process's share of a gallery (see module docstring)."""

    def __init__(self, model: FeatvisModel, root: Path, units: list[Unit], shard: tuple[int, int], pictures: RenderSettings,
                 batch: int, examples: ExamplesResult | None, patches: int, negative: bool, diversity: int,
                 filters: bool, progress: bool, circuits: CircuitPlanner | None = None,
                 descriptions: Descriptions | None = None):
        self.model, self.root, self.units, self.shard = model, root, units, shard
        self.pictures = pictures
        # what an image depends on (featvis.optvis.picture_key); not the batch: each image has its own random draws
        self.settings = picture_key(pictures, model, model_fingerprint(model))
        self.batch, self.examples, self.patches = batch, examples, patches
        self.negative, self.diversity, self.filters, self.progress = negative, diversity, filters, progress
        self.circuits, self.descriptions = circuits, descriptions
        self.log = stderr_lines(progress)
        self.meta = {"name": model.name, "fingerprint": self.settings["model"]}
        manifests = mf.read_manifests(root)
        mf.check_same_model(manifests, self.meta, root)
        self.done = mf.merged_records(root, manifests)
        self.manifest = ShardManifest(root, shard[0], shard[1], self.meta, manifests)
        self.report = GalleryReport(root, root / "index.html", shard, len(units))

    # --- bookkeeping ----------------------------------------------------------------------------
    def todo(self, layer: Layer, channel: int | None, kind: str, settings: dict) -> bool:
        """Whether an item must be made: no record with these settings and intact files."""
        record = self.done.get((layer.path, channel, kind))
        if record is not None and record.matches(settings):
            self.report.skipped += 1
            return False
        return True

    def save(self, layer: Layer, stem: str, settings: dict, image: torch.Tensor) -> tuple[str, str]:
        """Write a PNG named for its item and settings digest; returns (path in the gallery, SHA-256)."""
        rel = mf.picture_rel(layer.path, stem, settings)
        path = save_image(image.detach().cpu(), self.root / rel)
        return rel, mf.sha256_file(path)

    def record(self, layer: Layer, channel: int | None, kind: str, settings: dict, files: dict, result: dict) -> Record:
        return Record(layer.path, channel, kind, settings, dict(files), result, layer.info())

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

    # --- the work -------------------------------------------------------------------------------
    def run(self) -> GalleryReport:
        start = time.perf_counter()
        if self.filters and self.shard[0] == 0:
            self.commit(self.make_filters())
        for number, unit in enumerate(self.units, 1):
            began = time.perf_counter()
            records = (self.make_renders(unit) + self.make_diversity(unit) + self.make_patches(unit) + self.make_circuits(unit)
                       + self.make_descriptions(unit))
            self.commit(records)
            channels = f"channels {unit.channels[0]}..{unit.channels[-1]}" if len(unit.channels) > 1 else f"channel {unit.channels[0]}"
            what = f"{len(records)} items made" if records else "already done"
            self.log(f"[shard {self.shard[0]}/{self.shard[1]}] unit {number}/{len(self.units)}: {unit.layer.name} "
                     f"{channels}: {what} ({time.perf_counter() - began:.1f} s)")
        # the site from every shard's manifest: the others may have finished meanwhile
        build_site(self.root, self.meta, mf.merged_records(self.root, mf.read_manifests(self.root)))
        self.report.seconds = time.perf_counter() - start
        return self.report

    def render(self, objectives: list[Objective], images: int) -> list[RenderResult]:
        """Render through the engine; a run cut short (Ctrl-C) is never recorded as finished. A unit that
        never fires keeps its (flat) picture, as the page of a whole model should, and the log says so."""
        results = render(self.model, objectives, self.pictures, strict=False, batch=self.batch,
                         progress=self.progress and sys.stderr.isatty())
        if len(results) != images or any(r.interrupted or r.steps != self.pictures.steps for r in results):
            raise KeyboardInterrupt
        for result in results:
            if result.unmoved:
                self.log(f"featvis gallery: {result.unmoved}")
        return results

    def make_filters(self) -> list[Record]:
        """The first convolution's RGB kernels, one small PNG each (shard 0 only)."""
        path = first_rgb_conv(self.model)
        if path is None:
            return []
        layer = Layer(path, path, tuple(self.model.aliases_of(path)), self.model.net.get_submodule(path).out_channels,
                      (), self.model.layer_names().index(path))
        settings = mf.canonical({"model": self.settings["model"], "layer": path, "kind": "filters", "normalize": "filter"})
        if not self.todo(layer, None, "filters", settings):
            return []
        files = dict(self.save(layer, f"filter{i}", settings, image)
                     for i, image in enumerate(filter_images(self.model, path, normalize="filter")))
        return [self.record(layer, None, "filters", settings, files, {"images": list(files)})]

    def item_settings(self, layer: Layer, channel: int, kind: str, objective: Objective, **extra) -> dict:
        """Everything an image depends on; the objective's name seeds its random start."""
        return mf.item_key(self.settings, layer.path, channel, kind, spec=objective.name, **extra)

    def make_renders(self, unit: Unit) -> list[Record]:
        """Feature visualizations (and negatives) of the unit's unfinished channels, in one render call."""
        todo = []
        pre = pre_activation(self.model, unit.layer.name) if self.negative else None
        for kind in ("positive", "negative") if self.negative else ("positive",):
            for c in unit.channels:
                objective = unit_objective(unit.layer.name, c, kind, pre=pre)
                settings = self.item_settings(unit.layer, c, kind, objective)
                if self.todo(unit.layer, c, kind, settings):
                    todo.append((c, kind, objective, settings))
        if not todo:
            return []
        results = self.render([objective for _, _, objective, _ in todo], len(todo))
        records = []
        for (c, kind, _, settings), result in zip(todo, results):
            rel, digest = self.save(unit.layer, f"{c}-{kind}", settings, result.image)
            records.append(self.record(unit.layer, c, kind, settings, {rel: digest}, {
                "spec": result.spec, "activation": result.activation, "natural_max": result.natural_max,
                "ratio": result.ratio, "plausibility": result.plausibility, "image": rel, "batch": self.batch,
                "precision": result.precision}))
        return records

    def make_diversity(self, unit: Unit) -> list[Record]:
        """Per channel, ``diversity`` images optimised together to differ in style (Gram matrices) at the layer."""
        if not self.diversity:
            return []
        todo = []
        for c in unit.channels:
            objective = unit_objective(unit.layer.name, c, "diversity", self.diversity)
            settings = self.item_settings(unit.layer, c, "diversity", objective, images=self.diversity)
            if self.todo(unit.layer, c, "diversity", settings):
                todo.append((c, objective, settings))
        if not todo:
            return []
        results = self.render([objective for _, objective, _ in todo], len(todo) * self.diversity)
        records = []
        for number, (c, objective, settings) in enumerate(todo):
            mine = results[number * self.diversity : (number + 1) * self.diversity]
            images = torch.stack([r.image for r in mine])
            files = dict(self.save(unit.layer, f"{c}-diversity{k}", settings, image) for k, image in enumerate(images))
            records.append(self.record(unit.layer, c, "diversity", settings, files, {
                "spec": objective.name, "images": list(files),
                "activations": channel_values(self.model, unit.layer.name, c, images, self.pictures.size),
                "precision": mine[0].precision}))
        return records

    def make_patches(self, unit: Unit) -> list[Record]:
        """Top photo patches of the unit's channels, from the dataset-examples pass over the photos
        (featvis.examples): each the receptive field of the channel's strongest unit in one photo,
        with that whole photo (as the model sees it) and the box drawn."""
        if self.examples is None:
            return []
        examples = self.examples.summary
        digest = examples["photos_digest"]
        records = []
        for c in unit.channels:
            settings = mf.item_key({"model": self.settings["model"]}, unit.layer.path, c, "patches", photos=digest,
                                   patches=self.patches)
            if not self.todo(unit.layer, c, "patches", settings):
                continue
            files, entries = {}, []
            for k, example in enumerate(examples["layers"][unit.layer.name][str(c)]):
                if example["crop"] is None:
                    continue  # the photo became unreadable after the pass
                crop, sha = self.save(unit.layer, f"{c}-patch{k}", settings, load_image(self.examples.out / example["crop"]))
                full, full_sha = self.save(unit.layer, f"{c}-photo{k}", settings, load_image(self.examples.out / example["full"]))
                files.update({crop: sha, full: full_sha})
                entries.append({"photo": example["name"], "box": example["box"], "activation": example["activation"],
                                "unit": example["unit"], "image": crop, "full": full})
            records.append(self.record(unit.layer, c, "patches", settings, files, {
                "photos": {"count": examples["images"], "digest": digest}, "patches": entries}))
        return records

    def make_circuits(self, unit: Unit) -> list[Record]:
        """Each channel's strongest inputs and outputs by expanded weight (see featvis.gallery.circuits)."""
        if self.circuits is None:
            return []
        records = []
        for c in unit.channels:
            settings = mf.item_key({"model": self.settings["model"]}, unit.layer.path, c, "circuits",
                                   **self.circuits.settings(unit.layer))
            if self.todo(unit.layer, c, "circuits", settings):
                records.append(self.record(unit.layer, c, "circuits", settings, {}, self.circuits.connections(unit.layer, c)))
        return records

    def make_descriptions(self, unit: Unit) -> list[Record]:
        """Each channel in the model's words (featvis.explain.describe): the classes it promotes, and the classes
        the model sees in its top photos (the patches' photos)."""
        if self.descriptions is None:
            return []
        examples = self.examples.summary if self.examples is not None else None
        records = []
        for c in unit.channels:
            if examples is None and (unit.layer.path, c, "description") in self.done:
                self.report.skipped += 1  # a run without --images keeps the description made from photos, as the patches
                continue
            settings = mf.item_key({"model": self.settings["model"]}, unit.layer.path, c, "description",
                                   photos=examples["photos_digest"] if examples else None)
            if self.todo(unit.layer, c, "description", settings):
                paths = [e["path"] for e in examples["layers"][unit.layer.name][str(c)]] if examples else []
                records.append(self.record(unit.layer, c, "description", settings, {},
                                           self.descriptions.of(unit.layer.name, c, paths).to_dict()))
        return records


@dataclass
class Descriptions:
    """What the channel pages' descriptions are made from: the model, the first photos of the collection, and
    the class of every photo classified so far (channels share top photos: each is classified once)."""

    model: FeatvisModel
    photos: list[torch.Tensor] | None
    predicted: dict[str, int] = field(default_factory=dict)

    def of(self, layer: str, channel: int, paths: Sequence[str]) -> Description:
        self.predicted.update(predictions(self.model, [p for p in paths if p not in self.predicted]))
        return Description(f"{layer}:{channel}", promoted_classes(self.model, layer, channel, self.photos),
                           seen_as(self.model, paths, self.predicted) if paths else [], len(paths),
                           loads_of(self.model, layer, channel))


@torch.no_grad()
def channel_values(model: FeatvisModel, layer: str, c: int, images: torch.Tensor, size: int) -> list[float]:
    """The channel objective on finished images, measured as the engine measures ``activation``
    (no transforms, at the model's input scale)."""
    scale = max(size, model.input_size)
    acts = capture(model, resize(images.to(model.mean.device), scale), [layer])
    return [float(v) for v in channel(layer, c)({**acts, INPUT: images})]


@analysis
def make_gallery(
    model: nn.Module,
    layers: str | Sequence[str],
    out: str | os.PathLike,
    settings: RenderSettings | None = None,
    *,
    channels: str | None = None,
    steps: int | None = None,
    size: int | None = None,
    batch: int | None = None,
    seed: int | None = None,
    images: str | os.PathLike | None = None,
    patches: int = DEFAULT_PATCHES,
    negative: bool = False,
    diversity: int = 0,
    filters: bool = True,
    shard: tuple[int, int] | None = None,
    precision: str | None = None,
    progress: bool = True,
    circuits: int = 0,
    param: str | None = None,
) -> GalleryReport:
    """Render a gallery of ``layers`` (channels ``channels``, e.g. ``"0:16"``; all by default) into ``out``.

    ``settings``: the pictures' `RenderSettings`, as for `render` (``steps``, ``size``, ``seed``,
    ``precision`` and ``param`` override its fields; ``param="maco"`` to compare with the default
    ``"fft"``: give each its own ``out``). A picture's record says the precision it was made in; its
    key, the precision "auto" asks for here (`featvis.optvis.picture_key`).
    Resumable: finished items (same settings, intact files) are skipped. ``shard=(i, N)`` (or
    torchrun's RANK/WORLD_SIZE) makes this process render every N-th unit; all shards may share
    ``out``. ``images`` is a folder of photos for each channel's top ``patches`` patches;
    ``negative`` adds negative visualizations, ``diversity`` (>= 2) a diversity set per channel,
    ``filters`` the first convolution's kernels. ``circuits=k`` lists on each channel page its ``k``
    strongest inputs and outputs by expanded weight (featvis.gallery.circuits).
    """
    root = ensure_writable_dir(out)
    fmodel = as_model(model)
    settings = (settings or RenderSettings()).replace(steps=steps, size=size, seed=seed, precision=precision, param=param)
    if int(patches) < 1:
        raise FeatvisError(f"--patches must be at least 1, got {patches}")
    if circuits < 0 or circuits > 64:
        raise FeatvisError(f"--circuits takes 1 to 64 connections per side, got {circuits}")
    if diversity == 1 or diversity < 0:
        raise FeatvisError(f"--diversity needs at least 2 images (or 0 for none), got {diversity}")
    chosen = resolve_layers(fmodel, parse_layers(layers))
    selections = {layer.name: parse_channels(channels, layer) for layer in chosen}
    batch = int(batch or DEFAULT_BATCH)
    index, count = shard if shard is not None else shard_from_env()
    units = shard_units(plan_units(chosen, selections, batch), index, count)
    examples = None
    if images is not None:
        mine: dict[str, list[int]] = {}
        for unit in units:
            mine.setdefault(unit.layer.name, []).extend(unit.channels)
        examples = photo_examples(fmodel, images, root / "examples" / f"{index}-of-{count}", mine, int(patches),
                                  progress) if mine else None
    planner = CircuitPlanner(fmodel, chosen, int(circuits), stderr_lines(progress)) if circuits else None
    descriptions = Descriptions(fmodel, first_photos(images)) if class_scores(fmodel) else None
    job = GalleryJob(fmodel, root, units, (index, count), settings, batch, examples, int(patches), negative,
                     int(diversity), filters, progress, planner, descriptions)
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
