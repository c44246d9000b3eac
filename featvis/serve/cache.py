"""The serve cache: pictures on disk, named and laid out exactly as a static gallery names them.

Paths come from `featvis.serve.layout.CacheLayout`. A picture's file is
``layers/<layer slug>/img/<stem>-<digest>.png`` where ``digest`` is the
gallery's settings digest of (model fingerprint, spec, steps, size, seed, precision, ...), so a
``featvis gallery`` run with ``--out`` the same folder and the same settings produces the same
names, and each side reuses the other's pictures:

- gallery -> serve: records of the gallery's manifests (``manifests/*.json``) whose files are
  intact count as cached pictures;
- serve -> gallery: every finished picture is also recorded in ``manifests/serve-<model>.json``
  (the gallery's record format), so the gallery skips it.

Every file is written atomically (featvis._util.fileio) and the SHA-256 of each is kept in a small
sidecar ``serve/<digest>.json`` written *after* the pictures. A picture is served only when its
sidecar exists and the file's digest matches (checked once per process and file version), so a
server killed in the middle of a render, or a damaged file, never serves a broken picture: the
picture is rendered again instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .._util.fileio import atomic_write_text, ensure_writable_dir
from ..gallery import manifest as mf
from .layout import CacheLayout


class PictureCache:
    """Which pictures under ``root`` are complete, and the bookkeeping that says so."""

    def __init__(self, root: Path, model_meta: dict):
        self.root = ensure_writable_dir(root)
        self.layout = CacheLayout(self.root, model_meta["fingerprint"])
        ensure_writable_dir(self.layout.manifest_lock.parent)
        self.model_meta = model_meta  # {"name", "fingerprint"}, as a gallery's manifest names its model
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[int, int, str]] = {}  # rel -> (size, mtime_ns, sha256) known intact
        self._good: dict[str, str] = {}  # rel -> the sha256 it was checked against and matched
        self._gallery: dict[str, str] = {}  # rel -> sha256 from the gallery's intact records
        self.manifest_path: Path | None = self.layout.manifest
        manifests = mf.read_manifests(self.root)
        other = mf.model_of(manifests)
        if other is not None and other.get("name") != model_meta["name"]:
            self.manifest_path = None  # another model's gallery lives here: never make it refuse to continue
        for record in mf.merged_records(self.root, manifests).values():
            self._gallery.update(record.files)

    # --- reading ----------------------------------------------------------------------------
    def meta_path(self, digest: str) -> Path:
        return self.layout.meta(digest)

    def meta(self, digest: str) -> dict | None:
        """The sidecar of a finished render (its files' digests and numbers), or None."""
        try:
            data = json.loads(self.meta_path(digest).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None

    def intact(self, rel: str, sha256: str | None) -> bool:
        """Whether file ``rel`` exists with digest ``sha256`` (hashing once per file version)."""
        if not sha256:
            return False
        path = self.root / rel
        try:
            stat = path.stat()
        except OSError:
            return False
        known = self._verified.get(rel)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            actual = known[2]
        else:
            try:
                actual = mf.sha256_file(path)
            except OSError:
                return False
            self._verified[rel] = (stat.st_size, stat.st_mtime_ns, actual)
        if actual == sha256:
            self._good[rel] = sha256
        return actual == sha256

    def finished(self, digest: str, rels: list[str]) -> dict | None:
        """The numbers of a complete picture set (every file intact), else None.

        Our own sidecar first; otherwise a gallery's intact record of the same files."""
        meta = self.meta(digest)
        if meta is not None and all(self.intact(rel, meta["files"].get(rel)) for rel in rels):
            return meta
        if rels and all(self.intact(rel, self._gallery.get(rel)) for rel in rels):
            return {"files": {rel: self._gallery[rel] for rel in rels}, "source": "gallery"}
        return None

    def servable(self, rel: str) -> bool:
        """Whether ``rel`` is a picture this cache knows to be complete (the only files served)."""
        return rel in self._good and self.intact(rel, self._good[rel])

    # --- writing ----------------------------------------------------------------------------
    def commit(self, digest: str, files: dict[str, str], meta: dict[str, Any], record: mf.Record | None) -> None:
        """After the pictures were written atomically: their sidecar, then the gallery record."""
        for rel, sha in files.items():
            path = self.root / rel
            stat = path.stat()
            self._verified[rel] = (stat.st_size, stat.st_mtime_ns, sha)
            self._good[rel] = sha
        atomic_write_text(self.meta_path(digest), json.dumps({**meta, "files": files}, sort_keys=True) + "\n")
        if record is not None:
            self._record(record)

    def _record(self, record: mf.Record) -> None:
        """Add one record to this model's serve manifest (a lock file: several servers may share the cache)."""
        if self.manifest_path is None:
            return
        ensure_writable_dir(self.manifest_path.parent)
        record.finished = time.time()
        with self._lock, open(self.layout.manifest_lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
                records = {tuple(mf.Record.from_json(r).key): r for r in data.get("records", [])}
            except (OSError, ValueError, TypeError, KeyError):
                records = {}
            records[record.key] = asdict(record)
            doc = {"format": mf.FORMAT, "version": mf.VERSION, "shard": "serve", "model": self.model_meta,
                   "updated": time.time(), "records": list(records.values())}
            atomic_write_text(self.manifest_path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def file_sha(path: str | os.PathLike) -> str:
    """SHA-256 of a file (the gallery's digest)."""
    return mf.sha256_file(path)
