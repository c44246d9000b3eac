"""The gallery's record of finished work: one manifest per shard, merged by verifying file digests.

A record says "item KEY was made with SETTINGS and produced FILES (with these SHA-256 digests)
and these RESULTS". Each shard rewrites only its own manifest (atomically), so any number of
processes can share one output folder. A record counts as done only while every file it names
still exists with the recorded digest; when several manifests hold the same key, the newest
such record wins. The HTML is built from the merged records alone, so the site always shows
finished work and never a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .._util.errors import FeatvisError
from .._util.fileio import atomic_write_text, ensure_writable_dir
from ..core.plan import slug

FORMAT = "featvis-gallery-manifest"
VERSION = 1
MANIFEST_DIR = "manifests"

Key = tuple[str, "int | None", str]  # (layer path, channel or None, kind)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), so settings compare equal after a round trip."""
    return json.loads(json.dumps(obj, sort_keys=True))


def item_key(base: dict, layer_path: str, channel: int | None, kind: str, **extra: Any) -> dict:
    """The settings an item of a gallery (or of serve's cache, which shares its layout) is recorded
    under: ``base`` (`featvis.optvis.picture_key`, or the model fingerprint alone for analyses) plus the
    item's layer, channel and kind and what else it depends on (``spec``, ``images``, ...)."""
    return canonical({**base, "layer": layer_path, "channel": channel, "kind": kind, **extra})


def picture_rel(layer_path: str, stem: str, settings: dict) -> str:
    """A picture's path inside a gallery folder: named for its item and settings digest, so a re-render
    with other settings never overwrites a file the current site shows (serve's cache uses the same names)."""
    return f"layers/{slug(layer_path)}/img/{stem}-{settings_digest(settings)[:10]}.png"


def settings_digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(canonical(settings), sort_keys=True).encode()).hexdigest()


@dataclass
class Record:
    """One finished item: ``files`` maps paths relative to the gallery folder to SHA-256 digests."""

    layer: str
    channel: int | None
    kind: str
    settings: dict
    files: dict[str, str]
    result: dict = field(default_factory=dict)
    layer_info: dict = field(default_factory=dict)
    finished: float = 0.0

    @property
    def key(self) -> Key:
        return (self.layer, self.channel, self.kind)

    def matches(self, settings: dict) -> bool:
        return canonical(self.settings) == canonical(settings)

    def files_intact(self, root: Path) -> bool:
        """Every file exists and has the recorded digest."""
        for rel, digest in self.files.items():
            path = root / rel
            try:
                if sha256_file(path) != digest:
                    return False
            except OSError:
                return False
        return True

    @classmethod
    def from_json(cls, data: dict) -> "Record":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def manifest_name(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}.json"


def read_manifests(root: Path) -> list[dict]:
    """Every manifest in ``root/manifests`` (unreadable ones are skipped with a warning)."""
    folder = root / MANIFEST_DIR
    manifests = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT or data.get("version") != VERSION:
                raise ValueError("not a featvis gallery manifest of this version")
            data["records"] = [Record.from_json(item) for item in data["records"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"ignoring manifest {path} ({exc}); its items will be made again", stacklevel=2)
            continue
        data["path"] = path
        manifests.append(data)
    return manifests


def model_of(manifests: Iterable[dict]) -> dict | None:
    """The model these manifests describe (the newest one's)."""
    newest = max(manifests, key=lambda m: m.get("updated", 0.0), default=None)
    return newest["model"] if newest else None


def merged_records(root: Path, manifests: Iterable[dict]) -> dict[Key, Record]:
    """Per key, the newest record whose files are intact."""
    candidates: dict[Key, list[Record]] = {}
    for manifest in manifests:
        for record in manifest["records"]:
            candidates.setdefault(record.key, []).append(record)
    merged = {}
    for key, records in candidates.items():
        for record in sorted(records, key=lambda r: r.finished, reverse=True):
            if record.files_intact(root):
                merged[key] = record
                break
    return merged


class ShardManifest:
    """The manifest this process owns; ``add`` rewrites it atomically after each finished unit."""

    def __init__(self, root: Path, index: int, count: int, model: dict, existing: Iterable[dict] = ()):
        self.root = root
        self.path = root / MANIFEST_DIR / manifest_name(index, count)
        self.shard = f"{index}/{count}"
        self.model = model
        self.records: dict[Key, Record] = {}
        for manifest in existing:
            if Path(manifest["path"]) == self.path:
                self.records = {record.key: record for record in manifest["records"]}
        ensure_writable_dir(self.path.parent)

    def add(self, records: Iterable[Record]) -> None:
        now = time.time()
        for record in records:
            record.finished = now
            self.records[record.key] = record
        self.write()

    def write(self) -> None:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "shard": self.shard,
            "model": self.model,
            "updated": time.time(),
            "records": [asdict(record) for record in self.records.values()],
        }
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def check_same_model(manifests: list[dict], model: dict, root: Path) -> None:
    """A gallery folder holds one model: refuse to mix another model's channels into it."""
    other = model_of(manifests)
    if other is not None and other.get("name") != model["name"]:
        raise FeatvisError(
            f"{root} holds a gallery of model '{other.get('name')}', not '{model['name']}'; choose another --out folder"
        )
