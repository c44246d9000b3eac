"""One shared, batched render queue: every picture the pages ask for goes through it.

Requests arrive from any number of page loads; the queue's one worker thread waits a short
``window`` after the first pending request, then takes as many images as lower the mean wait on
this device (`featvis.serve.batching`: measured, at most ``max_batch``; ``adaptive=False``: always up
to ``max_batch``), highest priority first, then oldest, and optimises them in a single `featvis.render` call, the same
call ``featvis render`` makes, with the same settings. Each image's random draws are seeded by
its own spec, so batching changes a picture only by float rounding; each picture's sidecar
records the specs it was rendered with (``batch``), so ``featvis render`` with those specs gives
it exactly. The same picture is never queued twice, and finished pictures come from the cache.

Progress is measured, not guessed: the render reports every optimisation step (``on_step``); the
queue leaves nothing on the model.

Work nobody waits for is dropped: every request and every status poll of a picture (an open page polls
its pending pictures four times a second) marks it as wanted; a queued picture not wanted for ``drop_after``
seconds leaves the queue (a closed page's 512 cards), and comes back when a page asks again. What is
rendering finishes and is cached.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .._util.errors import FeatvisError
from ..core.images import png_bytes, save_image
from ..core.plan import Layer
from ..gallery import manifest as mf
from ..gallery.job import channel_values
from ..models.wrapper import FeatvisModel
from ..optvis import Objective, RenderResult, RenderSettings, render
from .batching import BatchSizer
from .cache import PictureCache, file_sha
from .state import DROP_AFTER, State

#: steps at which a rendering picture's preview is refreshed (Lucid's thresholds, denser at the start, so a
#: first picture shows within about a second and sharpens in place); keeping them never changes the result
PREVIEW_STEPS = (4, 8, 16, 32, 64, 128, 256)


@dataclass
class Picture:
    """A unit's picture set (``positive``, ``negative`` or ``diversity``): ``span`` images, one file each."""

    digest: str
    settings: dict
    objective: Objective
    layer: Layer
    channel: int
    kind: str
    rels: list[str]
    priority: int = 0
    state: State = State.QUEUED
    error: str | None = None
    meta: dict = field(default_factory=dict)
    order: int = 0
    wanted: float = field(default_factory=time.monotonic)  # when a page last asked for it or polled it
    preview: list[bytes] = field(default_factory=list)  # PNGs of its images at ``preview_step`` while it renders
    preview_step: int = 0

    @property
    def span(self) -> int:
        return self.objective.span

    @property
    def spec(self) -> str:
        return self.objective.name


@dataclass
class QueueStats:
    """What the queue did: render calls made and the number of images in each."""

    calls: int = 0
    images: int = 0
    batches: list[int] = field(default_factory=list)
    seconds: float = 0.0
    dropped: int = 0
    pending: int = 0
    batching: dict = field(default_factory=dict)  # the measured cost of a call and of each image (BatchSizer)

    def to_json(self) -> dict:
        return {"render_calls": self.calls, "images": self.images, "batches": self.batches[-1000:],
                "largest_batch": max(self.batches, default=0), "seconds": round(self.seconds, 3),
                "dropped": self.dropped, "pending": self.pending, "batching": self.batching}


class RenderQueue:
    """The worker thread and its bookkeeping (see module docstring). ``settings``: the pictures'
    settings, as ``featvis render`` takes them (its precision policy unresolved)."""

    def __init__(self, model: FeatvisModel, cache: PictureCache, settings: RenderSettings, *, max_batch: int = 16,
                 window: float = 0.05, drop_after: float = DROP_AFTER, adaptive: bool = True,
                 log: Callable[[str], None] = lambda message: None):
        self.model, self.cache, self.settings = model, cache, settings
        self.max_batch, self.window, self.log = max(1, int(max_batch)), float(window), log
        self.sizer = BatchSizer(self.max_batch) if adaptive else None  # None: always batch up to max_batch
        self.drop_after = float(drop_after)
        self._swept = 0.0
        self.stats = QueueStats()
        self._pictures: dict[str, Picture] = {}
        self._pending: list[Picture] = []
        self._cond = threading.Condition()
        self._count = itertools.count()
        self._progress = 0.0  # of the running render call, 0..1
        self._thread = threading.Thread(target=self._work, name="featvis-render-queue", daemon=True)
        self._thread.start()

    # --- requests ---------------------------------------------------------------------------
    def request(self, picture: Picture) -> Picture:
        """The picture with this digest: finished from the cache, already known, or newly queued."""
        with self._cond:
            known = self._pictures.get(picture.digest)
            if known is not None and known.state != State.FAILED:
                if known.state in (State.QUEUED, State.DROPPED) and picture.priority < known.priority:
                    known.priority = picture.priority  # a page now shows it large: move it up
                self._want(known)
                return known
            meta = self.cache.finished(picture.digest, picture.rels)
            if meta is not None:
                picture.state, picture.meta = State.DONE, meta
            else:
                picture.order = next(self._count)
                self._pending.append(picture)
                self.stats.pending += picture.span
                self._cond.notify_all()
            self._pictures[picture.digest] = picture
            return picture

    def get(self, digest: str) -> Picture | None:
        with self._cond:
            return self._pictures.get(digest)

    def status(self, picture: Picture) -> dict[str, Any]:
        """``{"state", "progress" (0..1), "error", "files", "ahead", "batch", "precision"}`` for the page's
        placeholder (``precision``: the number format a finished picture was made in)."""
        with self._cond:
            self._want(picture)
            progress = 1.0 if picture.state == State.DONE else 0.0
            if picture.state == State.RUNNING:
                progress = self._progress
            ahead = sum(p.span for p in self._pending if (p.priority, p.order) < (picture.priority, picture.order))
            return {"state": picture.state, "progress": round(progress, 3), "error": picture.error,
                    "files": picture.rels if picture.state == State.DONE else [], "ahead": ahead if picture.state == State.QUEUED else 0,
                    "batch": picture.meta.get("batch"), "precision": picture.meta.get("precision"),
                    "preview": picture.preview_step if picture.state == State.RUNNING else 0}

    def preview(self, picture: Picture, index: int) -> bytes | None:
        """The PNG of image ``index`` of a rendering picture at its latest preview step (None when there is none)."""
        with self._cond:
            shown = picture.preview if picture.state == State.RUNNING else []
            return shown[index] if 0 <= index < len(shown) else None

    def _want(self, picture: Picture) -> None:
        """A page asked for ``picture`` or polled it (lock held): a dropped one is queued again."""
        picture.wanted = time.monotonic()
        if picture.state == State.DROPPED:
            picture.state, picture.order = State.QUEUED, next(self._count)
            self._pending.append(picture)
            self._cond.notify_all()

    def _sweep(self) -> None:
        """Drop the queued pictures nobody asked about for ``drop_after`` seconds (lock held; at most twice a second)."""
        now = time.monotonic()
        if now - self._swept >= 0.5:
            self._swept = now
            stale = [p for p in self._pending if now - p.wanted > self.drop_after]
            for picture in stale:
                self._pending.remove(picture)
                picture.state = State.DROPPED
            self.stats.dropped += len(stale)
        self.stats.pending = sum(p.span for p in self._pending)

    # --- the worker -------------------------------------------------------------------------
    def _step(self, done: int, total: int) -> None:
        with self._cond:
            self._progress = min(done / total, 1.0)
            self._sweep()

    def _take(self) -> list[Picture]:
        """Wait for work, give later requests ``window`` seconds to join, take one batch."""
        with self._cond:
            while True:
                self._swept = 0.0
                self._sweep()
                if self._pending:
                    break
                self._cond.wait(self.drop_after)
            deadline = time.monotonic() + self.window
            while (sum(p.span for p in self._pending) < self.max_batch and time.monotonic() < deadline
                   and self._limit(self.max_batch) > 1):  # no use waiting for requests to batch with
                self._cond.wait(max(deadline - time.monotonic(), 0.0))
            self._pending.sort(key=lambda p: (p.priority, p.order))
            limit = self._limit(sum(p.span for p in self._pending))
            batch, images = [], 0
            for picture in list(self._pending):
                if batch and images + picture.span > limit:
                    continue
                batch.append(picture)
                images += picture.span
                self._pending.remove(picture)
            for picture in batch:
                picture.state = State.RUNNING
            self._progress = 0.0
            self.stats.pending = sum(p.span for p in self._pending)
            return batch

    def _limit(self, waiting: int) -> int:
        """Images the next call takes with ``waiting`` queued: as many as lowers the mean wait on this device."""
        return self.sizer.size(waiting) if self.sizer is not None else self.max_batch

    def _work(self) -> None:
        while True:
            self._render(self._take())

    def _render(self, batch: list[Picture]) -> None:
        """One render call for the batch; when it fails (e.g. one unit that never fires), each picture alone,
        so one bad picture never fails the others."""
        began = time.perf_counter()
        owners = [(picture, k) for picture in batch for k in range(picture.span)]

        def preview(step: int, first: int, images: torch.Tensor) -> None:  # outside the lock: PNG encoding takes a while
            shown = [(owners[first + i], png_bytes(image[:3].clamp(0, 1), fast=True)) for i, image in enumerate(images)]
            with self._cond:
                for (picture, k), data in shown:
                    picture.preview = (picture.preview + [b""] * picture.span)[: picture.span]
                    picture.preview[k], picture.preview_step = data, step

        try:
            try:
                steps = self.settings.steps
                results = render(self.model, [p.objective for p in batch], self.settings, batch=self.max_batch,
                                 progress=False, strict=False, on_step=self._step,
                                 thresholds=[s for s in PREVIEW_STEPS if s < steps], on_image=preview)
            finally:
                self._count_call(batch, time.perf_counter() - began)
            if len(results) != sum(p.span for p in batch) or any(r.interrupted for r in results):
                raise FeatvisError("the render stopped early")
            self._save(batch, results, time.perf_counter() - began)
        except Exception as exc:  # the server keeps serving: the pictures say what went wrong
            if len(batch) > 1 and isinstance(exc, FeatvisError):
                for picture in batch:
                    with self._cond:
                        self._progress = 0.0
                    self._render([picture])
                return
            message = str(exc) if isinstance(exc, FeatvisError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, FeatvisError):
                traceback.print_exc(file=sys.stderr)
            with self._cond:
                for picture in batch:
                    picture.state, picture.error = State.FAILED, message
            self.log(f"featvis serve: render of {', '.join(p.spec for p in batch)} failed: {message}")

    def _count_call(self, batch: list[Picture], seconds: float) -> None:
        with self._cond:
            self.stats.calls += 1
            self.stats.images += sum(p.span for p in batch)
            self.stats.batches.append(sum(p.span for p in batch))
            self.stats.seconds += seconds
            if self.sizer is not None:
                self.sizer.add(sum(p.span for p in batch), seconds)
                self.stats.batching = self.sizer.to_json()

    def _save(self, batch: list[Picture], results: list[RenderResult], seconds: float) -> None:
        """Write every picture atomically, then its sidecar and gallery record; then mark it done."""
        specs = [p.spec for p in batch]
        start = 0
        for picture in batch:
            mine = results[start : start + picture.span]
            start += picture.span
            stuck = next((r.unmoved for r in mine if r.unmoved), None)
            if stuck:  # a unit that never fires: the page says so, nothing is cached
                with self._cond:
                    picture.state, picture.error = State.FAILED, stuck
                continue
            files = {}
            for rel, result in zip(picture.rels, mine):
                save_image(result.image.detach().cpu(), self.cache.root / rel)
                files[rel] = file_sha(self.cache.root / rel)
            meta = {"spec": picture.spec, "kind": picture.kind, "layer": picture.layer.name, "channel": picture.channel,
                    "activations": [r.activation for r in mine], "ratio": mine[0].ratio, "natural_max": mine[0].natural_max,
                    "plausibility": mine[0].plausibility, "batch": specs, "seconds": round(seconds, 3),
                    "settings": picture.settings, "precision": mine[0].precision}
            self.cache.commit(picture.digest, files, meta, self._record(picture, mine, files))
            with self._cond:
                picture.meta = {**meta, "files": files}
                picture.state = State.DONE

    def _record(self, picture: Picture, results: list[RenderResult], files: dict[str, str]) -> mf.Record:
        """The gallery's record of this picture (so ``featvis gallery`` on the same folder skips it)."""
        if picture.kind == "diversity":
            images = torch.stack([r.image for r in results])
            result = {"spec": picture.spec, "images": list(files),
                      "activations": channel_values(self.model, picture.layer.name, picture.channel, images,
                                                    self.settings.size), "precision": results[0].precision}
        else:
            r = results[0]
            result = {"spec": r.spec, "activation": r.activation, "natural_max": r.natural_max, "ratio": r.ratio,
                      "plausibility": r.plausibility, "image": picture.rels[0], "batch": self.max_batch,
                      "precision": r.precision}
        return mf.Record(picture.layer.path, picture.channel, picture.kind, picture.settings, dict(files), result,
                         picture.layer.info())
