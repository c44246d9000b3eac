"""Shared figure helpers: one look for every featvis plot, saved as PNG, SVG or PDF.

Everything uses matplotlib's object API (``Figure``), never pyplot, so figures are safe in
threads, servers and notebooks alike. ``save_figure`` picks the format from the file's
extension and writes atomically; files carry no timestamps or random ids, so the same figure
built twice saves to the same bytes.

Maps (saliency, feature maps) are drawn in one of three ways, each with a colour bar:
``"heat"`` (magnitude), ``"blend"`` (magnitude over the photo) and ``"signed"`` (diverging,
centred on zero). Outliers are clipped at a percentile of the magnitude first, since a few
extreme pixels otherwise wash the rest of a gradient map out.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colorbar import Colorbar
from matplotlib.figure import Figure

from .._util.choices import OVERLAYS
from .._util.errors import FeatvisError
from .._util.fileio import atomic_write_bytes

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
HEAT_CMAP = "inferno"
SIGNED_CMAP = "RdBu_r"
ACTIVATION_CMAP = "viridis"
TITLE_SIZE = 12
PANEL_TITLE_SIZE = 9
_METADATA = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None, "Producer": None}}


def new_figure(width: float, height: float) -> Figure:
    """A blank figure of ``width`` x ``height`` inches with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


def figure_format(path: str | os.PathLike) -> str:
    """The matplotlib format for ``path``'s extension; anything but .png/.svg/.pdf is refused."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise FeatvisError(f"cannot save a figure as '{suffix or Path(path).name}'; use a .png, .svg or .pdf file name")
    return FORMATS[suffix]


def figure_bytes(fig: Figure, fmt: str = "png", dpi: int = 150) -> bytes:
    """Render ``fig`` to bytes in ``fmt`` (png, svg or pdf), without timestamps."""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "featvis"}):  # fixed SVG ids instead of random ones
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=_METADATA[fmt])
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` atomically; the format follows the extension (.png, .svg or .pdf)."""
    return atomic_write_bytes(path, figure_bytes(fig, figure_format(path), dpi))


def to_array(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A [3, H, W] / [1, 3, H, W] tensor or [H, W, 3] array as an [H, W, 3] (or [H, W]) float array."""
    array = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, dtype=np.float32)
    if array.ndim == 4:
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def grid_shape(count: int, ncols: int | None = None) -> tuple[int, int]:
    """(rows, columns) of a near-square grid holding ``count`` panels (``ncols`` if given)."""
    cols = max(1, ncols or math.ceil(math.sqrt(count)))
    return max(1, math.ceil(count / cols)), cols


def show_image(ax: Axes, image: torch.Tensor | np.ndarray, title: str | None = None) -> None:
    """Draw an RGB image in [0, 1] without axes."""
    ax.imshow(np.clip(to_array(image), 0.0, 1.0), interpolation="nearest")
    style_panel(ax, title)


def style_panel(ax: Axes, title: str | None = None) -> None:
    """Hide ticks and frame and set a panel title in the shared style."""
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=PANEL_TITLE_SIZE)


def add_colorbar(fig: Figure, mappable: ScalarMappable, ax: Axes | list[Axes], label: str | None = None) -> Colorbar:
    """A slim colour bar beside ``ax`` (one axes or several sharing it)."""
    bar = fig.colorbar(mappable, ax=ax, shrink=0.85, fraction=0.05, pad=0.02)
    if label:
        bar.set_label(label, fontsize=PANEL_TITLE_SIZE)
    bar.ax.tick_params(labelsize=7)
    return bar


def clip_limit(values: torch.Tensor | np.ndarray, clip: float | None = 99.5) -> float:
    """The ``clip`` percentile of |values| (the largest |value| when clip is None); never 0."""
    magnitude = np.abs(to_array(values)).ravel()
    if magnitude.size == 0:
        return 1.0
    limit = float(np.percentile(magnitude, clip)) if clip is not None else float(magnitude.max())
    return limit if limit > 0 else (float(magnitude.max()) or 1.0)


def show_map(
    ax: Axes,
    values: torch.Tensor | np.ndarray,
    kind: str = "heat",
    *,
    image: torch.Tensor | np.ndarray | None = None,
    clip: float | None = 99.5,
    alpha: float = 0.6,
    title: str | None = None,
) -> ScalarMappable:
    """Draw a 2-D map as ``heat`` (|map|), ``blend`` (|map| over ``image``) or ``signed``.

    Values beyond the ``clip`` percentile of the magnitude saturate the colour map. Returns
    the mappable for a colour bar. In ``blend`` each pixel's opacity grows with its value, so
    the photo stays visible where the map is weak.
    """
    if kind not in OVERLAYS:
        raise FeatvisError(f"unknown overlay '{kind}'; use one of {', '.join(OVERLAYS)}")
    array = to_array(values)
    if array.ndim != 2:
        raise FeatvisError(f"a map must be 2-D, got shape {tuple(array.shape)}; reduce the channels first")
    limit = clip_limit(array, clip)
    if kind == "signed":
        mappable = ax.imshow(array, cmap=SIGNED_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
    else:
        magnitude = np.abs(array)
        if kind == "blend":
            if image is None:
                raise FeatvisError("a blended overlay needs the photo; pass image=")
            ax.imshow(np.clip(to_array(image), 0.0, 1.0), interpolation="nearest")
            opacity = alpha * np.clip(magnitude / limit, 0.0, 1.0)
            mappable = ax.imshow(magnitude, cmap=HEAT_CMAP, vmin=0.0, vmax=limit, alpha=opacity, interpolation="nearest")
        else:
            mappable = ax.imshow(magnitude, cmap=HEAT_CMAP, vmin=0.0, vmax=limit, interpolation="nearest")
    style_panel(ax, title)
    return mappable
