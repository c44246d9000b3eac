"""A layer's activations on a photo: channel grids, and one channel laid over the photo.

A unit of a convolutional layer looks at one input region whose centre is fixed by the
strides, kernels and paddings below it. Stretching a 14x14 map over a 224 px photo (a naive
resize) puts unit ``i`` at ``(i + 0.5) * 16 - 0.5``; in ``inceptionv1`` the unit actually
sits at its receptive field's centre ``16 i + 14``, 6.5 px further (14.5 px, almost half a
unit, for ``mixed5b``).
``to_input_space`` places every unit's value at its receptive-field centre (from
``featvis.receptive_field``) and interpolates linearly between centres.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from .._util.errors import FeatvisError
from ..core.figures import ACTIVATION_CMAP, TITLE_SIZE, add_colorbar, grid_shape, new_figure, show_image, show_map, style_panel
from ..core.probe import capture, model_input
from ..models.modes import analysis
from ..models.wrapper import as_model
from ..receptive_field import receptive_field


def feature_maps(model: nn.Module, layer: str, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, maps)``: the model input [1, 3, S, S] made from ``image`` and ``layer``'s maps [C, h, w] on it."""
    fmodel = as_model(model)
    x = model_input(fmodel, image)
    output = capture(fmodel, x, [layer])[layer]
    if output.dim() != 4:
        raise FeatvisError(
            f"layer '{layer}' outputs shape {tuple(output.shape[1:])}, not channel maps; choose a convolutional layer"
        )
    return x, output[0]


def top_channels(maps: torch.Tensor, k: int = 16) -> list[int]:
    """The ``k`` channels of ``maps`` [C, h, w] with the highest mean activation, highest first."""
    if k < 1:
        raise FeatvisError(f"--top must be at least 1, got {k}")
    return maps.mean(dim=(1, 2)).topk(min(k, maps.shape[0])).indices.tolist()


def check_channels(channels: Sequence[int], count: int) -> list[int]:
    chosen = [int(c) for c in channels]
    bad = [c for c in chosen if not 0 <= c < count]
    if bad:
        raise FeatvisError(f"channel {bad[0]} is out of range; this layer has channels 0..{count - 1}")
    if not chosen:
        raise FeatvisError("no channels chosen; give at least one channel index")
    return chosen


def to_input_space(model: nn.Module, layer: str, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A layer's map ``values`` [h, w] resampled to input pixels [H, W] by receptive-field centres.

    Unit ``(i, j)``'s value lands exactly on the input pixel at its receptive field's centre;
    pixels between centres interpolate linearly, pixels beyond the outermost centres take the
    nearest unit's value.
    """
    height, width = size
    h, w = values.shape[-2:]
    rf = receptive_field(as_model(model), layer, input_size=(height, width))
    if rf.unanalysed:
        warnings.warn(f"receptive field of '{layer}' unknown ({', '.join(rf.unanalysed)}); map stretched over the input "
                      "instead (register a rule with featvis.receptive_field.register_rule)", stacklevel=2)
        return F.interpolate(values.float()[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    first = rf.center((0, 0))
    last = rf.center((h - 1, w - 1))
    coords = []
    for axis, (count, pixels) in enumerate(((h, height), (w, width))):
        position = torch.arange(pixels, dtype=torch.float32, device=values.device)
        span = last[axis] - first[axis]
        # unit index u at pixel p (linear in p), then grid_sample's [-1, 1] coordinate for align_corners=True
        unit = (position - first[axis]) / span * (count - 1) if count > 1 and span else torch.zeros_like(position)
        coords.append(2 * unit / max(count - 1, 1) - 1)
    grid = torch.stack(torch.meshgrid(coords[1], coords[0], indexing="xy"), dim=-1)  # [H, W, (x, y)]
    sampled = F.grid_sample(values.float()[None, None], grid[None], mode="bilinear", padding_mode="border", align_corners=True)
    return sampled[0, 0]


@analysis
def feature_map_grid(
    model: nn.Module,
    layer: str,
    image: torch.Tensor,
    *,
    top: int = 16,
    channels: Sequence[int] | None = None,
    ncols: int | None = None,
) -> Figure:
    """The photo beside a grid of ``layer``'s channels: the ``top`` by mean activation, or ``channels``.

    All channels share one colour scale (and colour bar), so strong and weak channels compare.
    """
    fmodel = as_model(model)
    x, maps = feature_maps(fmodel, layer, image)
    chosen = check_channels(channels, maps.shape[0]) if channels is not None else top_channels(maps, top)
    rows, cols = grid_shape(len(chosen), ncols)
    fig = new_figure(3.2 + 1.5 * cols, max(3.2, 1.5 * rows + 0.6))
    photo_fig, grid_fig = fig.subfigures(1, 2, width_ratios=[3.2, 1.5 * cols])
    show_image(photo_fig.add_subplot(), x, "input")
    selected = maps[chosen].cpu()
    low, high = float(min(0.0, selected.min())), float(selected.max())
    axes = grid_fig.subplots(rows, cols, squeeze=False).ravel()
    image_artist = None
    for ax, channel, values in zip(axes, chosen, selected):
        image_artist = ax.imshow(values.numpy(), cmap=ACTIVATION_CMAP, vmin=low, vmax=high if high > low else low + 1,
                                 interpolation="nearest")
        style_panel(ax, f"ch {channel} (mean {float(values.mean()):.2g})")
    for ax in axes[len(chosen):]:
        ax.set_axis_off()
    add_colorbar(grid_fig, image_artist, list(axes), "activation")
    how = "chosen" if channels is not None else "top by mean activation"
    fig.suptitle(f"{fmodel.name} {layer}: {len(chosen)} of {maps.shape[0]} channels ({how}), "
                 f"{maps.shape[1]}x{maps.shape[2]} units", fontsize=TITLE_SIZE)
    return fig


@analysis
def feature_map_overlay(model: nn.Module, layer: str, image: torch.Tensor, channel: int, *, clip: float | None = 99.5) -> Figure:
    """One channel on the photo: the raw unit grid, and its positive part placed over the photo
    by receptive-field centres, with the receptive field of the most active unit outlined.
    """
    fmodel = as_model(model)
    x, maps = feature_maps(fmodel, layer, image)
    (channel,) = check_channels([channel], maps.shape[0])
    values = maps[channel].cpu()
    size = tuple(x.shape[-2:])
    placed = to_input_space(fmodel, layer, values, size).clamp_min(0)
    rf = receptive_field(fmodel, layer, input_size=size)
    best = divmod(int(values.argmax()), values.shape[1])
    box = rf.region(best).clip(*size)

    fig = new_figure(11.0, 4.0)
    photo_ax, grid_ax, overlay_ax = fig.subplots(1, 3)
    show_image(photo_ax, x, f"input; receptive field of unit {best}")
    photo_ax.add_patch(Rectangle((box.x0 - 0.5, box.y0 - 0.5), box.x1 - box.x0, box.y1 - box.y0, fill=False,
                                 edgecolor="cyan", linewidth=1.5))
    grid_artist = grid_ax.imshow(values.numpy(), cmap=ACTIVATION_CMAP, interpolation="nearest")
    style_panel(grid_ax, f"channel {channel}: {values.shape[0]}x{values.shape[1]} units")
    add_colorbar(fig, grid_artist, grid_ax, "activation")
    mappable = show_map(overlay_ax, placed, "blend", image=x, clip=clip, title="at receptive-field centres")
    add_colorbar(fig, mappable, overlay_ax, "activation (> 0)")
    fig.suptitle(f"{fmodel.name} {layer} channel {channel} on the photo (stride {rf.stride[0]}, "
                 f"receptive field {rf.size[0]}x{rf.size[1]} px)", fontsize=TITLE_SIZE)
    return fig
