"""Where the photos come from: a folder (searched recursively) or a text file of paths, decoded in workers.

The image list is sorted by path, so an image's index in it is also its rank in the tie-break
order, and every process of a sharded job computes the same list. Worker processes decode
through ``featvis.core.images.load_image`` (its format handling and limits apply) and prepare each
photo as the model classifies it (``featvis.models.wrapper.prepare_image``). An unreadable image becomes
a ``None`` with its error, never an exception: the stream skips and lists it.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .._util.errors import FeatvisError
from ..core.images import IMAGE_SUFFIXES, load_image
from ..models.wrapper import prepare_geometry, prepare_image

MAX_BATCH = 4096
MAX_WORKERS = 256


def list_images(source: str | os.PathLike) -> list[str]:
    """Image paths of ``source``, sorted: a folder's image files (recursively, hidden ones left out),
    or the lines of a text file (blank lines and ``#`` comments left out; relative paths are
    relative to the file). Every listed path must exist."""
    root = Path(source)
    if root.is_dir():
        paths = sorted(str(p) for p in root.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not paths:
            raise FeatvisError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {root} or its subfolders; "
                               "give --images a folder of photos or a text file of paths")
        return paths
    if not root.is_file():
        raise FeatvisError(f"--images {root} not found; give a folder of photos or a text file with one path per line")
    if root.suffix.lower() in IMAGE_SUFFIXES:
        raise FeatvisError(f"--images {root} is one image, not a collection; give a folder of photos (put it in one) "
                           "or a text file with one image path per line")
    try:
        lines = root.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FeatvisError(f"cannot read the list of images {root} ({exc}); give a UTF-8 text file, one path per line") from None
    listed = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    paths = sorted({str(p if p.is_absolute() else root.parent / p) for p in map(Path, listed)})
    if not paths:
        raise FeatvisError(f"the list {root} names no images; write one image path per line")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise FeatvisError(f"{len(missing)} path(s) in {root} do not exist: {missing[0]}{more}; fix or remove those lines")
    return paths


def images_digest(paths: Sequence[str]) -> str:
    """Names, sizes and modification times of the images: a checkpoint is only trusted for the same collection."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_prepared(path: str, size: int) -> tuple[torch.Tensor | None, str | None, tuple[int, int]]:
    """(prepared image [3, size, size], None, (H, W)) or (None, why it is unreadable, (0, 0))."""
    try:
        image = load_image(path)
        return prepare_image(image, size)[0], None, tuple(image.shape[1:])
    except FeatvisError as exc:
        return None, str(exc), (0, 0)
    except Exception as exc:  # a decoder bug or a decompression bomb: skip the file, never stop the pass
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0], (0, 0)


@dataclass
class Batch:
    """Decoded images of one DataLoader batch: ``images[j]`` is image ``indices[j]`` of the list."""

    indices: list[int]
    images: torch.Tensor  # [n, 3, S, S]
    sizes: list[tuple[int, int]]
    errors: list[tuple[int, str]]  # (index, reason) of unreadable images


class ImageList(Dataset):
    """Items ``(index, prepared image or None, error, original size)`` for the given indices of ``paths``."""

    def __init__(self, paths: Sequence[str], indices: Sequence[int], size: int):
        self.paths, self.indices, self.size = paths, list(indices), int(size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int):
        index = self.indices[item]
        image, error, hw = read_prepared(self.paths[index], self.size)
        return index, image, error, hw


def collate(items) -> Batch:
    good = [(i, image, hw) for i, image, _, hw in items if image is not None]
    errors = [(i, error) for i, image, error, _ in items if image is None]
    images = torch.stack([image for _, image, _ in good]) if good else torch.empty(0)
    return Batch([i for i, _, _ in good], images, [hw for _, _, hw in good], errors)


def loader(paths: Sequence[str], indices: Sequence[int], size: int, batch: int, workers: int, pin: bool = False) -> DataLoader:
    """A DataLoader over ``indices`` of ``paths`` in order, decoding in ``workers`` processes."""
    check_loader_args(batch, workers)
    return DataLoader(ImageList(paths, indices, size), batch_size=batch, shuffle=False, num_workers=workers,
                      collate_fn=collate, pin_memory=pin, prefetch_factor=4 if workers else None,
                      persistent_workers=False)


def check_loader_args(batch: int, workers: int) -> None:
    if not 1 <= batch <= MAX_BATCH:
        raise FeatvisError(f"--batch must be between 1 and {MAX_BATCH}, got {batch}")
    if not 0 <= workers <= MAX_WORKERS:
        raise FeatvisError(f"--workers must be between 0 and {MAX_WORKERS}, got {workers}")


def box_in_file(box: Sequence[int], hw: Sequence[int], size: int) -> list[int]:
    """A box in the prepared image mapped back to pixels of the original file (half-open, rounded outward)."""
    height, width = hw
    new_h, new_w, top, left = prepare_geometry(height, width, size)
    sy, sx = height / new_h, width / new_w
    y0, x0, y1, x1 = box
    return [max(0, math.floor((y0 + top) * sy)), max(0, math.floor((x0 + left) * sx)),
            min(height, math.ceil((y1 + top) * sy)), min(width, math.ceil((x1 + left) * sx))]
