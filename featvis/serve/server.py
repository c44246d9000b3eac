"""The running server's parts, wired together: two copies of the model (one for the render
queue, one for everything else), the picture cache, the queue, the background sections of a unit
page (`Sections`) and uploaded photos (`Photos`). The routes (featvis.serve.app) take only these parts.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .._util.errors import FeatvisError
from .._util.fileio import atomic_write_text, ensure_writable_dir
from ..examples.source import list_images
from ..explain.describe import seen_as
from ..explain.promotes import first_photos, promoted_classes
from ..core.images import load_image, save_image
from ..models.wrapper import FeatvisModel
from ..optvis.settings import RenderSettings
from .analyses import Circuits, PhotoSettings, analyse_photo, effective_field
from .app import build_app, decode_upload, photo_id_of
from .cache import PictureCache
from .guard import HostGuard, allowed_hosts
from .layout import CacheLayout
from .jobs import Task, Tasks, examples_command, run_examples
from .queue import RenderQueue
from .state import DIVERSITY, DROP_AFTER
from .units import ModelInfo

DEFAULT_UPLOAD_MB = 20
EXPLAIN_ICON_PX = 64


@dataclass
class ServeOptions:
    """Everything ``featvis serve`` takes besides the model (see featvis.cli.serve)."""

    cache: Path
    images: str | None = None
    render: RenderSettings = field(default_factory=RenderSettings)
    batch: int = 16
    window: float = 0.05
    drop_after: float = DROP_AFTER
    adaptive: bool = True  # batch only as far as it lowers the mean wait (measured); False: always up to ``batch``
    diversity: int = DIVERSITY
    circuits: int = 6
    k: int = 9
    workers: int = 2
    upload_mb: float = DEFAULT_UPLOAD_MB
    explain_layer: str | None = None  # default: mixed4d where the model has it, else its last spatial layer
    explain_steps: int = 0  # icons of the explanation: 0 gives the numbers and maps only, in seconds
    explain_groups: int = 4
    model_args: Sequence[str] = field(default_factory=list)  # the model options again, for `featvis examples`
    host: str = "127.0.0.1"  # the address it is bound to: requests must name it (or a loopback name, or allow_hosts)
    allow_hosts: Sequence[str] = ()


class Sections:
    """The background sections of a unit page: dataset examples (a ``featvis examples`` subprocess per
    layer, when the server has an image collection), circuits and effective receptive fields (on ``aux``)."""

    def __init__(self, aux: FeatvisModel, info: ModelInfo, layout: CacheLayout, tasks: Tasks, options: ServeOptions):
        self.aux, self.layout, self.tasks = aux, layout, tasks
        self.images = options.images
        self.photo_count = len(list_images(options.images)) if options.images else 0  # a bad source fails at start
        self.options = options
        self.circuits = Circuits(aux, info, options.circuits)

    def start_examples(self, layer: str, retry: bool = False) -> Task:
        out = self.layout.examples(layer)
        command = examples_command(self.options.model_args, str(self.images), layer, out, self.options.k, self.options.workers)
        return self.tasks.start(("examples", layer), lambda task: run_examples(self.tasks, command), process=True, retry=retry)

    def start_circuits(self, layer: str, channel: int, retry: bool = False) -> Task:
        return self.tasks.start(("circuits", layer, channel), lambda task: self.circuits.connections(layer, channel), retry=retry)

    def start_promotes(self, layer: str, channel: int, retry: bool = False) -> Task:
        """The classes a unit promotes (featvis.explain.promotes): over the first photos of --images, else
        through the linearized network."""
        def work(task: Task) -> list[dict]:
            photos = first_photos(self.images)
            return [{"index": i, "label": label, "value": value}
                    for i, label, value in promoted_classes(self.aux, layer, channel, photos=photos)]

        return self.tasks.start(("promotes", layer, channel), work, retry=retry)

    def start_seen_as(self, layer: str, channel: int, paths: Sequence[str]) -> Task:
        """The classes the model predicts for a unit's top dataset examples ``paths`` (featvis.explain.describe)."""
        def work(task: Task) -> list[dict]:
            return [{"index": i, "label": label, "count": count} for i, label, count in seen_as(self.aux, paths)]

        return self.tasks.start(("seen_as", layer, channel), work)

    def start_erf(self, layer: str, retry: bool = False) -> Task:
        def work(task: Task) -> dict:
            png = self.layout.erf(layer)
            record = png.with_suffix(".json")
            try:
                if png.is_file():
                    return json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
            result = effective_field(self.aux, layer, png)
            atomic_write_text(record, json.dumps(result) + "\n")
            return result

        return self.tasks.start(("erf", layer), work, retry=retry)


class Photos:
    """Uploaded photos and their analyses (classification, saliency, explanation) on ``aux``."""

    def __init__(self, aux: FeatvisModel, layout: CacheLayout, tasks: Tasks, explain: PhotoSettings, upload_mb: float):
        self.aux, self.layout, self.tasks, self.explain = aux, layout, tasks, explain
        self.upload_limit = int(upload_mb * 2**20)

    def folder(self, photo_id: str) -> Path:
        """Where a photo's analysis files live (per model and explanation settings)."""
        return self.layout.photo(photo_id, photo_id_of(json.dumps(self.explain.to_json(), sort_keys=True).encode()))

    def path(self, photo_id: str) -> Path:
        return self.layout.upload(photo_id)

    def store(self, data: bytes) -> str:
        """Decode an upload (the pixel limit applies before decoding) and keep it as PNG; returns its id."""
        photo_id = photo_id_of(data)
        folder = ensure_writable_dir(self.path(photo_id).parent)
        image, _ = decode_upload(data, folder / f".{photo_id}.upload")
        save_image(image, self.path(photo_id))
        return photo_id

    def start(self, photo_id: str, retry: bool = False) -> Task:
        def work(task: Task) -> dict:
            out = ensure_writable_dir(self.folder(photo_id))
            record = out / "analysis.json"
            try:
                return json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
            result = analyse_photo(self.aux, load_image(self.path(photo_id)), out, self.explain)
            atomic_write_text(record, json.dumps(result) + "\n")  # last: the analysis is complete
            return result

        return self.tasks.start(("photo", photo_id), work, retry=retry)


class Server:
    """The parts behind the app, wired together: build it, then ``app`` is the ASGI application."""

    def __init__(self, model: FeatvisModel, aux: FeatvisModel, options: ServeOptions,
                 log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)):
        info = ModelInfo(model, options.render, diversity=options.diversity)
        aux_info = ModelInfo(aux, options.render)
        if aux_info.fingerprint != info.fingerprint:
            raise FeatvisError(f"loading {model.name} twice gave different weights; make its factory deterministic "
                               "(seed it, or pass --weights)")
        self.info = info
        self.cache = PictureCache(Path(options.cache), {"name": model.name, "fingerprint": info.fingerprint})
        self.queue = RenderQueue(model, self.cache, options.render, max_batch=options.batch, window=options.window,
                                 drop_after=options.drop_after, adaptive=options.adaptive, log=log)
        tasks = Tasks(log)
        self.sections = Sections(aux, aux_info, self.cache.layout, tasks, options)
        explain = PhotoSettings(options.explain_layer or _default_explain_layer(info), options.explain_steps,
                                EXPLAIN_ICON_PX, options.explain_groups, options.render.seed, options.render.precision)
        self.photos = Photos(aux, self.cache.layout, tasks, explain, options.upload_mb)
        self.app = HostGuard(build_app(info, self.queue, self.cache, self.sections, self.photos),
                             allowed_hosts(options.host, options.allow_hosts), options.host)
        self._tasks = tasks

    def stop(self) -> None:
        """Drop queued background work and end child processes (the render queue's thread ends with the process)."""
        self._tasks.stop()


def _default_explain_layer(info: ModelInfo) -> str:
    """``mixed4d`` where the model has it (the article's layer), else the last layer with a spatial map."""
    names = {row.name for row in info.rows} | {a for row in info.rows for a in row.aliases}
    if "mixed4d" in names:
        return "mixed4d"
    spatial = [row.name for row in info.rows
               if row.shape is not None and len(row.shape) == 3 and min(row.shape[1:]) > 1 and row.field is not None]
    if not spatial:
        raise FeatvisError(f"{info.model.name} has no layer with a spatial map to explain photos at; give --explain-layer")
    return spatial[-1]
