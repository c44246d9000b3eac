"""Reading and writing images: every image becomes RGB float in [0, 1], whatever its file mode."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import FeatvisError
from .fileio import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


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


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a float tensor [3, H, W] with RGB values in [0, 1]."""
    file = Path(path)
    if not file.is_file():
        raise FeatvisError(f"image not found: {file}; check the path")
    try:
        with Image.open(file) as image:
            image.load()
            return pil_to_tensor(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
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


def save_image(image: torch.Tensor | np.ndarray | Image.Image, path: str | os.PathLike) -> Path:
    """Save an image atomically; the format follows the suffix (PNG unless JPEG is asked for)."""
    target = Path(path)
    if target.suffix.lower() in (".jpg", ".jpeg"):
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
    return {
        name: torch.from_numpy(getattr(data, name)()[..., :3].copy()).permute(2, 0, 1).float() / 255.0
        for name in names
    }
