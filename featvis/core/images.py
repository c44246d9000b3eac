"""Reading and writing images: every image becomes RGB float in [0, 1], whatever its file mode.

Images larger than a pixel limit are refused before they are decoded (a 1 MB PNG can declare
20000 x 20000 pixels: a decompression bomb). The limit is ``DEFAULT_MAX_PIXELS`` (8192 x 8192,
larger than any camera's photo; such an image takes about 2 GB while it is read), and
``$FEATVIS_MAX_PIXELS`` sets another. It replaces PIL's own check (``Image.MAX_IMAGE_PIXELS``),
whose warnings, like every warning PIL gives about a file, are not passed on.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .._util.errors import FeatvisError
from .._util.fileio import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
PIXELS_ENV = "FEATVIS_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 8192 * 8192
_PIL_LIMIT = threading.Lock()  # guards the moment PIL's global limit is lifted for one open


def max_pixels() -> int:
    """The largest image (width x height) featvis reads: $FEATVIS_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    text = os.environ.get(PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise FeatvisError(f"{PIXELS_ENV}={text!r} is not a positive whole number of pixels; set e.g. "
                           f"{PIXELS_ENV}={DEFAULT_MAX_PIXELS} or unset it")
    return value


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """Convert a PIL image of any mode to a float tensor [3, H, W] in [0, 1].

    Grayscale (8/16/32-bit) is replicated to three channels at full precision; alpha is
    composited over white (a transparent background reads as paper, not as black);
    palette and CMYK images are converted to RGB.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(array / peak, 0.0, 1.0)
        return torch.from_numpy(np.stack([gray] * 3)).float()
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def as_image(photo: "np.ndarray | Image.Image | torch.Tensor") -> torch.Tensor:
    """A photo as the API's image: float [3, H, W], RGB in [0, 1].

    Takes what photo libraries give: a NumPy array [H, W, 3] or [H, W, 4] or [H, W] of uint8
    (scikit-image, PIL, imageio), uint16 (scaled by 65535) or floats in [0, 1]; a PIL image of
    any mode; or a tensor already [3, H, W]. Alpha is composited over white, grey replicated.
    """
    if isinstance(photo, Image.Image):
        return pil_to_tensor(photo)
    if isinstance(photo, torch.Tensor):
        if photo.dim() == 3 and photo.shape[0] == 3:
            return photo.float()
        photo = photo.detach().cpu().numpy()
    array = np.asarray(photo)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise FeatvisError(f"expected a photo [H, W, 3], [H, W, 4] or [H, W], got shape {tuple(array.shape)}; "
                           "give channels last, as scikit-image and PIL do")
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        values = np.clip(array.astype(np.float32), 0.0, 1.0)
    else:
        raise FeatvisError(f"unsupported photo dtype {array.dtype}; give uint8, uint16 or floats in [0, 1]")
    if values.ndim == 2:
        values = np.stack([values] * 3, axis=-1)
    elif values.shape[-1] == 4:
        alpha = values[..., 3:]
        values = values[..., :3] * alpha + (1.0 - alpha)
    return torch.from_numpy(np.ascontiguousarray(values)).permute(2, 0, 1).contiguous()


@contextlib.contextmanager
def _open(file: Path) -> Iterator[Image.Image]:
    """``Image.open`` without PIL's own size check (featvis applies its configurable one)."""
    with _PIL_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(file)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with image:
        yield image


def load_image(path: str | os.PathLike, max_side: int | None = None) -> torch.Tensor:
    """Read an image file as a float tensor [3, H, W] with RGB values in [0, 1] (at most `max_pixels`).

    ``max_side``: shrink a larger image while decoding (JPEG's DCT scaling, then PIL's box reduction on
    8-bit pixels), so that a huge photo never becomes a huge float tensor."""
    file = Path(path)
    if file.is_dir():
        raise FeatvisError(f"{file} is a folder, not an image; give an image file (PNG, JPEG, ...)")
    if not file.is_file():
        raise FeatvisError(f"image not found: {file}; check the path")
    limit = max_pixels()
    try:
        with warnings.catch_warnings(), _open(file) as image:
            warnings.simplefilter("ignore")  # PIL's remarks on a file's metadata or palette
            width, height = image.size
            if width * height > limit:
                raise FeatvisError(
                    f"image {file} is {width}x{height} pixels, more than featvis reads ({limit} pixels); "
                    f"downscale it, or raise the limit with {PIXELS_ENV}=N if memory allows")
            if max_side is not None and max(width, height) > max_side:
                image.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
                image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=2.0)
            image.load()
            return pil_to_tensor(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        if isinstance(exc, FeatvisError):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FeatvisError(f"cannot read image {file} ({reason}); give a PNG or JPEG file") from None


def to_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    """Convert [3, H, W] / [H, W, 3] / [H, W] values in [0, 1] to an 8-bit PIL image."""
    array = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8))


def png_bytes(image: torch.Tensor | np.ndarray | Image.Image, fast: bool = False) -> bytes:
    """Encode an image as PNG bytes deterministically (no timestamps), maximally compressed
    (``fast``: light compression, tens of times faster, for the thousands of crops of a dataset pass)."""
    pil = image if isinstance(image, Image.Image) else to_pil(image)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", **({"compress_level": 1} if fast else {"optimize": True}))
    return buffer.getvalue()


def image_format(path: str | os.PathLike) -> str:
    """The format an image is saved in, from ``path``'s extension: PNG or JPEG; others are refused."""
    suffix = Path(path).suffix.lower()
    if suffix not in SAVE_FORMATS:
        raise FeatvisError(f"cannot save an image as '{suffix or Path(path).name}'; use a .png or .jpg file name")
    return SAVE_FORMATS[suffix]


def save_image(image: torch.Tensor | np.ndarray | Image.Image, path: str | os.PathLike) -> Path:
    """Save an image atomically as PNG or JPEG, after its suffix (see `image_format`)."""
    target = Path(path)
    if image_format(target) == "JPEG":
        pil = image if isinstance(image, Image.Image) else to_pil(image)
        buffer = io.BytesIO()
        pil.convert("RGB").save(buffer, format="JPEG", quality=92)
        return atomic_write_bytes(target, buffer.getvalue())
    return atomic_write_bytes(target, png_bytes(image))


def sample_photos() -> dict[str, torch.Tensor]:
    """scikit-image's bundled colour photos (no download needed), as [3, H, W] tensors in [0, 1].

    These photos ship inside scikit-image. They are the 'natural images' that feature
    visualizations are compared against.
    """
    try:
        from skimage import data
    except ImportError:
        raise FeatvisError("scikit-image is needed for the sample photos; pip install scikit-image") from None
    names = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "hubble_deep_field")
    return {name: as_image(getattr(data, name)()[..., :3]) for name in names}
