"""Where everything `featvis serve` keeps lives under its cache folder: the one owner of these paths.

    layers/<layer>/img/<stem>-<digest>.png   pictures, named as a static gallery names them (`manifest.picture_rel`)
    manifests/serve-<model>.json             the gallery records of what the server rendered
    serve/<digest>.json                      a picture set's sidecar (its files' SHA-256, its numbers)
    serve/.manifest.lock                     serialises manifest updates of servers sharing the folder
    examples/<model>/<layer>/                a layer's dataset-examples pass (featvis examples --no-crops: numbers)
    examples/<model>/<layer>/crops/<key>.png an example's crop (or whole image), cut when a page first shows it
    erf/<model>-<layer>.png, .json           a layer's effective receptive field
    photos/uploads/<id>.png                  an uploaded photo
    photos/<model>/<id>/<settings>/          its analysis (input.png, saliency.png, explain.html)

``<model>`` is the first 12 hex digits of the model fingerprint, so several models share a folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..gallery import manifest as mf
from ..gallery import slug

META_DIR = "serve"


@dataclass(frozen=True)
class CacheLayout:
    """The paths of one model's files under ``root`` (see the module docstring)."""

    root: Path
    fingerprint: str

    @property
    def model(self) -> str:
        return self.fingerprint[:12]

    def meta(self, digest: str) -> Path:
        return self.root / META_DIR / f"{digest}.json"

    @property
    def manifest_lock(self) -> Path:
        return self.root / META_DIR / ".manifest.lock"

    @property
    def manifest(self) -> Path:
        return self.root / mf.MANIFEST_DIR / f"serve-{self.model}.json"

    def examples(self, layer: str) -> Path:
        return self.root / "examples" / self.model / slug(layer)

    def example_crop(self, layer: str, key: str) -> Path:
        """``key``: a digest of the example (its photo, box and whether the whole image is wanted)."""
        return self.examples(layer) / "crops" / f"{key}.png"

    def erf(self, layer: str) -> Path:
        return self.root / "erf" / f"{self.model}-{slug(layer)}.png"

    def upload(self, photo_id: str) -> Path:
        return self.root / "photos" / "uploads" / f"{photo_id}.png"

    def photo(self, photo_id: str, settings_id: str) -> Path:
        return self.root / "photos" / self.model / photo_id / settings_id
