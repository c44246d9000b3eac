"""The running server's parts, wired together: two copies of the model (one for the render
queue, one for everything else), the picture cache, the queue, the background tasks, uploads.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .._util.errors import FeatvisError
from .._util.fileio import atomic_write_text, ensure_writable_dir
from ..core.images import save_image
from ..gallery import slug
from ..models.wrapper import FeatvisModel
from .analyses import Circuits, PhotoSettings, analyse_photo, effective_field
from .app import build_app, decode_upload, photo_id_of
from .cache import PictureCache
from .jobs import Task, Tasks, examples_command, examples_dir, run_examples
from .queue import RenderQueue
from .units import ModelInfo

DEFAULT_UPLOAD_MB = 20
EXPLAIN_ICON_PX = 64


@dataclass
class ServeOptions:
    """Everything ``featvis serve`` takes besides the model (see featvis.cli.serve)."""

    cache: Path
    images: str | None = None
    steps: int = 512
    size: int = 128
    seed: int = 0
    precision: str = "auto"
    param: str = "fft"
    batch: int = 16
    window: float = 0.05
    diversity: int = 0
    circuits: int = 6
    k: int = 9
    workers: int = 2
    upload_mb: float = DEFAULT_UPLOAD_MB
    explain_layer: str | None = None  # default: mixed4d where the model has it, else its last spatial layer
    explain_steps: int = 0  # icons of the explanation: 0 gives the numbers and maps only, in seconds
    explain_groups: int = 4
    model_args: Sequence[str] = field(default_factory=list)  # the model options again, for `featvis examples`


class Server:
    """The state behind the app: build it, then ``app`` is the ASGI application."""

    def __init__(self, model: FeatvisModel, aux: FeatvisModel, options: ServeOptions,
                 log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)):
        self.options, self.log = options, log
        self.model, self.aux = model, aux
        self.info = ModelInfo(model, steps=options.steps, size=options.size, seed=options.seed,
                              precision=options.precision, param=options.param, diversity=options.diversity)
        aux_info = ModelInfo(aux, steps=options.steps, size=options.size, seed=options.seed, precision=options.precision)
        if aux_info.fingerprint != self.info.fingerprint:
            raise FeatvisError(f"loading {model.name} twice gave different weights; make its factory deterministic "
                               "(seed it, or pass --weights)")
        self.cache = PictureCache(Path(options.cache), {"name": model.name, "fingerprint": self.info.fingerprint})
        self.queue = RenderQueue(model, self.cache, self.info.render_kw, max_batch=options.batch, window=options.window, log=log)
        self.tasks = Tasks(log)
        self.circuits = Circuits(aux, aux_info, options.circuits)
        self.images = options.images
        self.upload_limit = int(options.upload_mb * 2**20)
        self.explain = PhotoSettings(options.explain_layer or _default_explain_layer(self.info), options.explain_steps,
                                     EXPLAIN_ICON_PX, options.explain_groups, options.seed, options.precision)
        self.app = build_app(self)

    # --- background tasks -----------------------------------------------------------------
    def start_examples(self, layer: str, retry: bool = False) -> Task:
        out = examples_dir(self.cache.root, self.info.fingerprint, layer)
        command = examples_command(self.options.model_args, str(self.images), layer, out, self.options.k, self.options.workers)
        return self.tasks.start(("examples", layer), lambda task: run_examples(command, out), process=True, retry=retry)

    def start_circuits(self, layer: str, channel: int, retry: bool = False) -> Task:
        return self.tasks.start(("circuits", layer, channel), lambda task: self.circuits.connections(layer, channel), retry=retry)

    def erf_png(self, layer: str) -> Path:
        return self.cache.root / "serve" / "erf" / f"{self.info.fingerprint[:12]}-{slug(layer)}.png"

    def start_erf(self, layer: str, retry: bool = False) -> Task:
        def work(task: Task) -> dict:
            png, record = self.erf_png(layer), self.erf_png(layer).with_suffix(".json")
            try:
                if png.is_file():
                    return json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
            result = effective_field(self.aux, layer, png)
            atomic_write_text(record, json.dumps(result) + "\n")
            return result

        return self.tasks.start(("erf", layer), work, retry=retry)

    # --- photos ---------------------------------------------------------------------------
    def photo_dir(self, photo_id: str) -> Path:
        settings = json.dumps(self.explain.to_json(), sort_keys=True)
        return self.cache.root / "photos" / self.info.fingerprint[:12] / photo_id / photo_id_of(settings.encode())

    def photo_path(self, photo_id: str) -> Path:
        return self.cache.root / "photos" / "uploads" / f"{photo_id}.png"

    def store_photo(self, data: bytes) -> str:
        """Decode an upload (the pixel limit applies before decoding) and keep it as PNG; returns its id."""
        photo_id = photo_id_of(data)
        folder = ensure_writable_dir(self.photo_path(photo_id).parent)
        image, _ = decode_upload(data, folder / f".{photo_id}.upload")
        save_image(image, self.photo_path(photo_id))
        return photo_id

    def start_photo(self, photo_id: str, retry: bool = False) -> Task:
        def work(task: Task) -> dict:
            out = ensure_writable_dir(self.photo_dir(photo_id))
            record = out / "analysis.json"
            try:
                return json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
            from ..core.images import load_image

            result = analyse_photo(self.aux, load_image(self.photo_path(photo_id)), out, self.explain)
            atomic_write_text(record, json.dumps(result) + "\n")  # last: the analysis is complete
            return result

        return self.tasks.start(("photo", photo_id), work, retry=retry)


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
