"""A network's learned convolution kernels, as images.

First-layer kernels read RGB pixels, so they are shown in colour — but only after folding the
model's input normalisation into them: ``inceptionv1`` reads BGR 0-255 minus a mean, and its
raw kernels shown as RGB would swap red and blue. ``rgb_kernels`` gives the kernel and bias that
act on the RGB [0, 1] image itself (exactly, away from the zero-padded border). Deeper kernels
span many input channels; they are shown as one grid per filter (a row of its input-channel
slices) on a diverging colour map centred on zero.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .._util.choices import NORMALIZE
from .._util.errors import FeatvisError
from ..core.figures import SIGNED_CMAP, TITLE_SIZE, add_colorbar, grid_shape, new_figure
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model


def conv_layer(model: nn.Module, layer: str) -> tuple[str, nn.Conv2d]:
    """The Conv2d a layer name denotes: the layer itself, or the one convolution inside it.

    ``conv1`` of ``inceptionv1`` is a conv+ReLU block and means its convolution; a block with
    several convolutions (an Inception module) is ambiguous and lists them.
    """
    fmodel = as_model(model)
    path = fmodel.resolve(layer)
    module = fmodel.net.get_submodule(path)
    if isinstance(module, nn.Conv2d):
        return path, module
    convs = [(f"{path}.{sub}", m) for sub, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) == 1:
        return convs[0]
    if not convs:
        raise FeatvisError(f"layer '{layer}' ({type(module).__name__}) has no convolution kernels; choose a Conv2d layer")
    names = ", ".join(name for name, _ in convs[:6]) + (", ..." if len(convs) > 6 else "")
    raise FeatvisError(f"layer '{layer}' holds {len(convs)} convolutions; name one of them: {names}")


def _input_affine(model: FeatvisModel) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(A [3, 3], b [3])`` with ``model.normalize(x) = A @ x + b`` per pixel, or None if not affine."""
    device = model.mean.device
    with torch.no_grad():
        offset = model.normalize(torch.zeros(1, 3, 1, 1, device=device))
        if offset.shape != (1, 3, 1, 1):
            return None
        basis = torch.eye(3, device=device).view(3, 3, 1, 1)
        matrix = (model.normalize(basis) - offset).view(3, 3).T  # column c: response to RGB channel c
        probe = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)).to(device)
        predicted = torch.einsum("jc,nchw->njhw", matrix, probe) + offset
        if not torch.allclose(model.normalize(probe), predicted, rtol=1e-4, atol=1e-4 * float(offset.abs().max() + 1)):
            return None
    return matrix, offset.view(3)


class _Reached(Exception):
    """Ends the forward pass at the convolution: what comes after (a head fixed to one input size) never runs."""


def _reads_model_input(model: FeatvisModel, conv: nn.Conv2d) -> bool:
    """Whether ``conv`` is applied to the normalised input image itself (the pass stops at ``conv``)."""
    seen: list[torch.Tensor] = []

    def reached(module: nn.Module, inputs: tuple) -> None:
        seen.append(inputs[0].detach())
        raise _Reached

    handle = conv.register_forward_pre_hook(reached)
    x = torch.rand(1, 3, model.input_size, model.input_size, generator=torch.Generator().manual_seed(0)).to(model.mean.device)
    try:
        with torch.no_grad():
            model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    return bool(seen) and seen[0].shape == x.shape and torch.allclose(seen[0], model.normalize(x))


def rgb_kernels(model: nn.Module, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight [N, 3, h, w] (RGB order) and bias [N] of a first-layer convolution on RGB [0, 1] input.

    When the convolution reads the model's input and the normalisation is affine per pixel
    (mean/std, BGR flip, 0-255 scale), it is folded in: ``conv(normalize(x)) == conv'(x)``.
    Otherwise the stored weights are returned as they are.
    """
    fmodel = as_model(model)
    path, conv = conv_layer(fmodel, layer)
    if conv.in_channels != 3 or conv.groups != 1:
        raise FeatvisError(
            f"layer '{layer}' ({path}) takes {conv.in_channels} input channels, not RGB; "
            "show it with filter_grid (one grid per input channel)"
        )
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels, device=weight.device)
    affine = _input_affine(fmodel) if _reads_model_input(fmodel, conv) else None
    if affine is None:
        return weight.clone(), bias.clone()
    matrix, offset = affine
    folded = torch.einsum("ojhw,jc->ochw", weight, matrix.to(weight.dtype))
    return folded, bias + torch.einsum("ojhw,j->o", weight, offset.to(weight.dtype))


def _select(count: int, filters: Sequence[int] | None, what: str = "filter") -> list[int]:
    chosen = list(range(count)) if filters is None else [int(i) for i in filters]
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise FeatvisError(f"{what} index {bad[0]} is out of range; this layer has {what}s 0..{count - 1}")
    if not chosen:
        raise FeatvisError(f"no {what}s selected; give at least one index")
    return chosen


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZE:
        raise FeatvisError(f"unknown normalisation '{normalize}'; use 'filter' (each its own scale) or 'shared'")


@analysis
def filter_images(
    model: nn.Module, layer: str, filters: Sequence[int] | None = None, normalize: str = "filter"
) -> torch.Tensor:
    """First-layer RGB kernels as images [N, 3, h, w] in [0, 1], zero weight at grey 0.5.

    ``normalize="filter"`` scales each kernel by its own largest |weight|; ``"shared"`` uses
    one scale for all, so weak kernels look weak.
    """
    _check_normalize(normalize)
    weight, _ = rgb_kernels(model, layer)
    weight = weight[_select(weight.shape[0], filters)]
    if normalize == "filter":
        scale = weight.abs().amax(dim=(1, 2, 3), keepdim=True)
    else:
        scale = weight.abs().max().expand(weight.shape[0], 1, 1, 1)
    return (0.5 + 0.5 * weight / scale.clamp_min(1e-12)).clamp(0.0, 1.0)


def _mosaic(tiles: np.ndarray, rows: int, cols: int, gap: int = 1) -> np.ndarray:
    """Tiles [N, h, w(, 3)] laid out row-major on a NaN/white background with ``gap`` pixels between."""
    count, h, w = tiles.shape[:3]
    shape = (rows * (h + gap) - gap, cols * (w + gap) - gap) + tiles.shape[3:]
    canvas = np.full(shape, 1.0 if tiles.ndim == 4 else np.nan, dtype=np.float32)
    for index in range(count):
        r, c = divmod(index, cols)
        canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[index]
    return canvas


@analysis
def filter_grid(
    model: nn.Module,
    layer: str,
    filters: Sequence[int] | None = None,
    *,
    normalize: str = "filter",
    in_channels: Sequence[int] | None = None,
    ncols: int | None = None,
    labels: bool = True,
) -> Figure:
    """A figure of a convolution's kernels.

    RGB first layers: a colour grid of ``filters`` (default all), upscaled by nearest
    neighbour. Deeper layers: one row per filter (default the first 8) and one column per
    input channel (default the first 16), on a diverging map centred on zero with a colour
    bar (relative units under per-filter normalisation, weights under ``"shared"``).
    """
    _check_normalize(normalize)
    fmodel = as_model(model)
    path, conv = conv_layer(fmodel, layer)
    title = f"{fmodel.name} {layer}" + (f" ({path})" if path != layer else "")
    if conv.in_channels == 3 and conv.groups == 1:
        return _rgb_grid(fmodel, layer, filters, normalize, ncols, labels, title)
    return _channel_grid(conv, filters, in_channels, normalize, labels, title)


def _rgb_grid(model: FeatvisModel, layer: str, filters, normalize: str, ncols, labels: bool, title: str) -> Figure:
    chosen = _select(rgb_kernels(model, layer)[0].shape[0], filters)
    images = filter_images(model, layer, chosen, normalize).permute(0, 2, 3, 1).cpu().numpy()
    rows, cols = grid_shape(len(chosen), ncols)
    h, w = images.shape[1:3]
    mosaic = _mosaic(images, rows, cols)
    fig = new_figure(max(3.0, 0.75 * cols), max(2.5, 0.75 * rows * h / w + 0.6))
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    if labels:
        for slot, index in enumerate(chosen):
            r, c = divmod(slot, cols)
            ax.text(c * (w + 1), r * (h + 1), str(index), fontsize=5, color="black", va="top", ha="left",
                    bbox={"boxstyle": "square,pad=0.05", "facecolor": "white", "edgecolor": "none", "alpha": 0.7})
    scale = "each kernel scaled to its own range" if normalize == "filter" else "one scale for all kernels"
    fig.suptitle(f"{title}\n{len(chosen)} RGB kernels {h}x{w}, {scale}, grey = 0", fontsize=TITLE_SIZE)
    return fig


def _channel_grid(conv: nn.Conv2d, filters, in_channels, normalize: str, labels: bool, title: str) -> Figure:
    weight = conv.weight.detach().cpu()
    rows = _select(weight.shape[0], filters if filters is not None else range(min(8, weight.shape[0])))
    cols = _select(weight.shape[1], in_channels if in_channels is not None else range(min(16, weight.shape[1])),
                   what="input channel")
    kernels = weight[rows][:, cols]  # [R, C, h, w]
    if normalize == "filter":
        kernels = kernels / weight[rows].abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    limit = float(kernels.abs().max()) or 1.0
    h, w = kernels.shape[-2:]
    gap = 0 if h == w == 1 else 1  # 1x1 kernels read best as one dense matrix
    mosaic = _mosaic(kernels.reshape(-1, h, w).numpy(), len(rows), len(cols), gap)
    fig = new_figure(max(4.0, 0.35 * len(cols) * max(w, 2) / 2 + 1.5), max(2.5, 0.35 * len(rows) * max(h, 2) / 2 + 0.8))
    ax = fig.add_subplot()
    image = ax.imshow(mosaic, cmap=SIGNED_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks([c * (w + gap) + (w - 1) / 2 for c in range(len(cols))], [str(c) for c in cols] if labels else [])
    ax.set_yticks([r * (h + gap) + (h - 1) / 2 for r in range(len(rows))], [str(r) for r in rows] if labels else [])
    ax.tick_params(length=0, labelsize=6)
    ax.set_xlabel("input channel", fontsize=8)
    ax.set_ylabel("filter", fontsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    add_colorbar(fig, image, ax, "weight / filter's max |weight|" if normalize == "filter" else "weight")
    fig.suptitle(f"{title}\nkernels {h}x{w}: {len(rows)} filters x {len(cols)} of {weight.shape[1]} input channels",
                 fontsize=TITLE_SIZE)
    return fig
