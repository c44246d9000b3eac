"""The web app (Starlette): routes, validation, the upload limit and error pages.

Routes never compute a picture: they look it up, queue it (featvis.serve.queue) or start a
background task (featvis.serve.jobs) and answer at once; sync handlers run in Starlette's
thread pool so a slow lookup never stalls the event loop. Only three kinds of file are ever
served, each by a name the server made itself and checked: finished pictures of the cache
(``/files/``, verified by digest), dataset-example crops listed in an examples result inside
the cache, and a photo's analysis files (fixed names under an id of 16 hex digits).
Unknown layers, channels, files and broken uploads answer 4xx pages naming the problem; any
other exception answers a plain 500 page (the traceback goes to the server's stderr only).
"""

from __future__ import annotations

import hashlib
import re
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .._util.errors import FeatvisError
from .._util.fileio import atomic_write_bytes
from .._util.heap import give_back_memory
from ..core.images import load_image
from ..explain.describe import loads_of
from . import pages
from .jobs import example_crop
from .state import State
from .units import KINDS, NotFound, Row

if TYPE_CHECKING:
    from .cache import PictureCache
    from .queue import Picture, RenderQueue
    from .server import Photos, Sections
    from .units import ModelInfo

_HEX = re.compile(r"^[0-9a-f]{16,64}$")
_PICTURE = re.compile(r"^layers/[A-Za-z0-9_-]{1,80}/img/[A-Za-z0-9_.-]{1,120}\.png$")
_PHOTO_FILES = {"input.png": "image/png", "saliency.png": "image/png", "explain.html": "text/html; charset=utf-8"}
MAX_STATUS_KEYS = 2000
STRIP = 6  # channels shown beside each block on the index
UPLOAD_SIDE = 2048  # px: an upload's longer side is shrunk to this while decoding (analyses run at the model's size)
NO_STORE = {"Cache-Control": "no-store"}


class TooLarge(Exception):
    """The request body passed the upload limit."""


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers={"X-Content-Type-Options": "nosniff"})


def build_app(info: "ModelInfo", queue: "RenderQueue", cache: "PictureCache", sections: "Sections",
              photos: "Photos") -> Starlette:
    """The Starlette application serving ``info``'s model (see module docstring): pictures through
    ``queue`` and ``cache``, a unit page's background ``sections``, and ``photos``."""
    examples_on = sections.images is not None

    def cards(row: Row, channels: range) -> tuple[list[Picture], list[str | None]]:
        """Each channel's positive picture: known or finished ones as they are, the others rendered only when
        their card scrolls into view (the lazy enqueue URL)."""
        shown, lazy = [], []
        for c in channels:
            picture = info.picture(row, c, "positive", priority=2)
            known = queue.get(picture.digest)
            if known is None and cache.finished(picture.digest, picture.rels):
                known = queue.request(picture)  # finished: shown at once
            shown.append(known or picture)
            lazy.append(None if known else f"/api/enqueue/{pages.quote(row.name, safe='')}/{c}")
        return shown, lazy

    def index(request: Request) -> Response:
        strips = {}
        for name, rows in info.blocks.items():
            if rows[0].has_channels and "/" not in name:
                shown, lazy = cards(rows[0], range(min(STRIP, rows[0].shape[0])))
                strips[name] = [pages.picture_box(None, picture, f"{name}:{picture.channel}", small=True, lazy=ask)
                                for picture, ask in zip(shown, lazy)]
        return _html(pages.index_page(info, examples_on, strips))

    def layer(request: Request) -> Response:
        row = info.row(request.path_params["name"])
        shown, lazy = cards(row, range(row.shape[0]))
        return _html(pages.layer_page(info, row, shown, lazy))

    def unit(request: Request) -> Response:
        row, channel = info.unit(request.path_params["name"], request.path_params["channel"])
        kinds = [k for k in KINDS if k != "diversity" or info.diversity >= 2]
        pictures = {k: queue.request(info.picture(row, channel, k, priority=i)) for i, k in enumerate(kinds)}
        if examples_on:
            sections.start_examples(row.name, retry=True)
        sections.start_circuits(row.name, channel, retry=True)
        sections.start_promotes(row.name, channel, retry=True)
        sections.start_erf(row.name, retry=True)
        return _html(pages.unit_page(info, row, channel, pictures, sections.photo_count, loads_of(info.model, row.name, channel)))

    def enqueue(request: Request) -> Response:
        row, channel = info.unit(request.path_params["name"], request.path_params["channel"])
        picture = queue.request(info.picture(row, channel, "positive", priority=2))
        return JSONResponse({"key": picture.digest, **queue.status(picture)}, headers=NO_STORE)

    def status(request: Request) -> Response:
        keys = request.query_params.getlist("key")[:MAX_STATUS_KEYS]
        answer = {}
        for key in keys:
            picture = queue.get(key) if _HEX.match(key) else None
            if picture is not None:
                answer[key] = queue.status(picture)
        return JSONResponse(answer, headers=NO_STORE)

    def preview(request: Request) -> Response:
        key, index = request.path_params["key"], request.path_params["index"]
        picture = queue.get(key) if _HEX.match(key) else None
        data = queue.preview(picture, int(index)) if picture is not None and index.isdigit() and len(index) < 4 else None
        if data is None:
            raise NotFound("no preview of that picture now: it is not rendering")
        return Response(data, media_type="image/png", headers=NO_STORE)

    def stats(request: Request) -> Response:
        return JSONResponse(queue.stats.to_json(), headers=NO_STORE)

    def picture_meta(request: Request) -> Response:
        key = request.path_params["key"]
        picture = queue.get(key) if _HEX.match(key) else None
        if picture is None:
            raise NotFound(f"no picture {key[:64]} was asked for on this server")
        return JSONResponse({**queue.status(picture), "spec": picture.spec, "settings": picture.settings,
                             "meta": picture.meta}, headers=NO_STORE)

    def files(request: Request) -> Response:
        rel = request.path_params["rel"]
        if not _PICTURE.match(rel) or ".." in rel or not cache.servable(rel):
            raise NotFound(f"no finished picture '{rel[:120]}' in the cache")
        return FileResponse(cache.root / rel, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    # --- background sections --------------------------------------------------------------
    def _pending_or_failed(task, what: str) -> Response | None:
        if task is None or not task.state.finished:
            return Response(f"{what} …", status_code=202, headers=NO_STORE)
        if task.state == State.FAILED:
            return Response(f"{what} failed: {task.error}", status_code=422, media_type="text/plain", headers=NO_STORE)
        return None

    def examples_fragment(request: Request) -> Response:
        row, channel = info.unit(request.path_params["name"], request.path_params["channel"])
        if not examples_on:
            raise NotFound("this server has no image collection; start it with --images SOURCE")
        task = sections.start_examples(row.name)
        waiting = _pending_or_failed(task, "dataset examples")
        if waiting is not None:
            return waiting
        entries = task.result["layers"].get(row.name, {}).get(str(channel), [])
        classes = sections.start_seen_as(row.name, channel, [entry["path"] for entry in entries])
        waiting = _pending_or_failed(classes, "the classes of the dataset examples")
        if waiting is not None:
            return waiting
        base = f"/examples/{pages.quote(row.name, safe='')}/{channel}"
        urls = [(f"{base}/{rank}.png", f"{base}/{rank}-full.png") for rank in range(len(entries))]
        return _html(pages.examples_fragment(row.name, entries, urls, classes.result))

    def example_image(request: Request) -> Response:
        row, channel = info.unit(request.path_params["name"], request.path_params["channel"])
        match = re.fullmatch(r"(\d{1,3})(-full)?\.png", request.path_params["file"])
        task = sections.tasks.get(("examples", row.name))
        if match is None or task is None or task.state != State.DONE:
            raise NotFound("no such dataset example")
        entries = task.result["layers"].get(row.name, {}).get(str(channel), [])
        rank = int(match[1])
        if rank >= len(entries):
            raise NotFound(f"no dataset example {rank} for {row.name}:{channel}")
        try:
            path = example_crop(cache.layout, row.name, entries[rank], info.model.input_size, full=bool(match[2]))
        except FeatvisError as exc:  # the photo was moved or broken since the pass
            raise NotFound(str(exc)) from None
        return FileResponse(path, media_type="image/png")

    def circuits_fragment(request: Request) -> Response:
        row, channel = info.unit(request.path_params["name"], request.path_params["channel"])
        task = sections.start_circuits(row.name, channel)
        waiting = _pending_or_failed(task, "circuits")
        if waiting is not None:
            return waiting
        thumbs = {}
        for connection in task.result["inputs"] + task.result["outputs"]:
            other, index = info.row(connection["layer"]), connection["channel"]
            picture = queue.request(info.picture(other, index, "positive", priority=1))
            thumbs[connection["layer"], index] = pages.picture_box(None, picture, f"{connection['layer']}:{index}", small=True)
        return _html(pages.circuits_fragment(task.result, thumbs))

    def promotes_fragment(request: Request) -> Response:
        row, channel = info.unit(request.path_params["name"], request.path_params["channel"])
        task = sections.start_promotes(row.name, channel)
        waiting = _pending_or_failed(task, "the classes it promotes")
        if waiting is not None:
            return waiting
        return _html(pages.promotes_fragment(task.result, bool(sections.images)))

    def erf_fragment(request: Request) -> Response:
        row = info.row(request.path_params["name"])
        task = sections.start_erf(row.name)
        waiting = _pending_or_failed(task, "effective receptive field")
        if waiting is not None:
            return waiting
        return _html(pages.erf_fragment(task.result, f"/erf/{pages.quote(row.name, safe='')}.png"))

    def erf_image(request: Request) -> Response:
        row = info.row(request.path_params["name"])
        task = sections.tasks.get(("erf", row.name))
        if task is None or task.state != State.DONE:
            raise NotFound(f"no effective field of {row.name} yet")
        return FileResponse(sections.layout.erf(row.name), media_type="image/png")

    # --- photos ---------------------------------------------------------------------------
    def upload_form(request: Request) -> Response:
        return _html(pages.upload_page(photos.upload_limit / 2**20))

    async def upload(request: Request) -> Response:
        limit = photos.upload_limit
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + 64 * 1024:
            return _html(pages.upload_page(limit / 2**20, f"the upload is {int(declared) / 2**20:.1f} MB, more than this "
                                                          f"server takes ({limit / 2**20:g} MB)"), 413)
        received = 0
        receive = request.receive

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit + 64 * 1024:
                raise TooLarge
            return message

        try:
            form = await Request(request.scope, limited).form(max_files=1, max_fields=4)
            item = form.get("photo")
            data = await item.read(limit + 1) if hasattr(item, "read") else None
        except TooLarge:
            return _html(pages.upload_page(limit / 2**20, f"the upload is more than this server takes ({limit / 2**20:g} MB)"), 413)
        except Exception as exc:  # a malformed multipart body
            return _html(pages.upload_page(limit / 2**20, f"could not read the upload ({type(exc).__name__}); send a "
                                                          "form with one file field 'photo'"), 400)
        if not data:
            return _html(pages.upload_page(limit / 2**20, "no photo in the upload; choose a PNG or JPEG file"), 400)
        if len(data) > limit:
            return _html(pages.upload_page(limit / 2**20, f"the photo is more than this server takes ({limit / 2**20:g} MB)"), 413)
        try:
            photo_id = await run_in_threadpool(photos.store, data)
        except FeatvisError as exc:
            return _html(pages.upload_page(limit / 2**20, str(exc)), 400)
        return RedirectResponse(f"/photo/{photo_id}", status_code=303)

    def _photo_id(request: Request) -> str:
        photo_id = request.path_params["id"]
        if not re.fullmatch(r"[0-9a-f]{16}", photo_id) or not photos.path(photo_id).is_file():
            raise NotFound(f"no uploaded photo '{photo_id[:40]}' on this server; upload it again")
        return photo_id

    def photo(request: Request) -> Response:
        photo_id = _photo_id(request)
        photos.start(photo_id, retry=True)
        return _html(pages.photo_page(photo_id))

    def photo_fragment(request: Request) -> Response:
        photo_id = _photo_id(request)
        task = photos.start(photo_id)
        waiting = _pending_or_failed(task, "the photo's analysis")
        if waiting is not None:
            return waiting
        expl = task.result["explain"]
        try:
            row = info.row(expl["layer"]) if expl.get("channels") else None
        except NotFound:  # a layer whose channels have no unit pages: the dictionary stays numbers
            row = None
        dictionary = [pages.picture_box(None, queue.request(info.picture(row, c, "positive", priority=1)), f"{row.name}:{c}",
                                        small=True) for c in expl.get("channels", [])] if row is not None else []
        return _html(pages.photo_fragment(photo_id, task.result, dictionary))

    def photo_file(request: Request) -> Response:
        photo_id = _photo_id(request)
        name = request.path_params["file"]
        task = photos.tasks.get(("photo", photo_id))
        if name == "photo.png":  # the upload itself: there from the moment the page exists
            return FileResponse(photos.path(photo_id), media_type="image/png")
        if name not in _PHOTO_FILES or task is None or task.state != State.DONE:
            raise NotFound(f"no file '{name[:40]}' for photo {photo_id}")
        path = photos.folder(photo_id) / name
        if not path.is_file():
            raise NotFound(f"no file '{name}' for photo {photo_id} yet")
        headers = {"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'"} \
            if name.endswith(".html") else {}
        return FileResponse(path, media_type=_PHOTO_FILES[name], headers=headers)

    # --- errors ---------------------------------------------------------------------------
    async def not_found(request: Request, exc: Exception) -> Response:
        return _html(pages.error_page(404, str(exc)), 404)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        detail = exc.detail if exc.status_code != 404 else f"no page at {request.url.path[:200]}"
        return _html(pages.error_page(exc.status_code, str(detail)), exc.status_code)

    async def bad_input(request: Request, exc: Exception) -> Response:
        return _html(pages.error_page(400, str(exc)), 400)

    async def internal(request: Request, exc: Exception) -> Response:
        traceback.print_exception(exc, file=sys.stderr)
        return _html(pages.error_page(500, f"internal error ({type(exc).__name__}); the server's log has the details"), 500)

    routes = [
        Route("/", index),
        Route("/layer/{name}", layer),
        Route("/layer/{name}/{channel}", unit),
        Route("/api/enqueue/{name}/{channel}", enqueue, methods=["POST"]),
        Route("/api/status", status),
        Route("/api/stats", stats),
        Route("/api/preview/{key}/{index}", preview),
        Route("/api/picture/{key}", picture_meta),
        Route("/files/{rel:path}", files),
        Route("/fragment/examples/{name}/{channel}", examples_fragment),
        Route("/examples/{name}/{channel}/{file}", example_image),
        Route("/fragment/circuits/{name}/{channel}", circuits_fragment),
        Route("/fragment/erf/{name}", erf_fragment),
        Route("/fragment/promotes/{name}/{channel}", promotes_fragment),
        Route("/erf/{name}.png", erf_image),
        Route("/photo", upload_form, methods=["GET"]),
        Route("/photo", upload, methods=["POST"]),
        Route("/photo/{id}", photo),
        Route("/fragment/photo/{id}", photo_fragment),
        Route("/photo/{id}/{file}", photo_file),
    ]
    handlers = {NotFound: not_found, HTTPException: http_error, FeatvisError: bad_input, Exception: internal}
    return Starlette(routes=routes, exception_handlers=handlers)


def photo_id_of(data: bytes) -> str:
    """An uploaded photo's id: the first 16 hex digits of its SHA-256 (the same photo, the same page)."""
    return hashlib.sha256(data).hexdigest()[:16]


def decode_upload(data: bytes, scratch: Path) -> "tuple[object, Path]":
    """Decode upload bytes through featvis's image reader (its pixel limit applies before decoding),
    shrunk to at most `UPLOAD_SIDE` px while decoding, and give the decoder's memory back."""
    atomic_write_bytes(scratch, data)
    try:
        return load_image(scratch, max_side=UPLOAD_SIDE), scratch
    except FeatvisError as exc:
        raise FeatvisError(str(exc).replace(f"image {scratch}", "the upload").replace(str(scratch), "the upload")) from None
    finally:
        scratch.unlink(missing_ok=True)
        give_back_memory()

