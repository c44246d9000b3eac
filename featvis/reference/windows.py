"""Windows: which input pixel each (output position, kernel offset) reads, padding included, the gather
(im2col) of all windows and its adjoint, and the array/tensor plumbing every reference op shares.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch

from featvis._util.errors import FeatvisError

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


class Windows(NamedTuple):
    """Where every window reads from, per axis: rows[o, i] is the input row read by kernel row i
    of output row o (H, one past the last row, stands for the fill value), likewise cols."""

    rows: np.ndarray
    cols: np.ndarray


def _window_index(size: int, out: int, kernel: int, stride: int, dilation: int, before: int, mode: str) -> np.ndarray:
    """Input position read by each (output position, kernel offset) along one axis; `size` = fill."""
    position = np.arange(out)[:, None] * stride - before + np.arange(kernel)[None, :] * dilation
    if mode == "replicate":
        return np.clip(position, 0, size - 1)
    if mode == "circular":
        return position % size
    if mode == "reflect":  # mirror about the first and last pixel without repeating them
        position = np.abs(position)
        return np.where(position >= size, 2 * (size - 1) - position, position)
    return np.where((position >= 0) & (position < size), position, size)


def _gather(x: np.ndarray, windows: Windows, fill: float) -> np.ndarray:
    """All windows of x (N, C, H, W) as (N, C, Ho, kh, Wo, kw); positions outside read `fill`."""
    extended = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=fill)
    return extended[:, :, windows.rows[:, :, None, None], windows.cols[None, None, :, :]]


def _scatter(grad_windows: np.ndarray, windows: Windows, shape: tuple[int, ...]) -> np.ndarray:
    """Adjoint of `_gather`: add each window entry's gradient onto the pixel it was read from."""
    n, c, h, w = shape
    extended = np.zeros((n, c, h + 1, w + 1))
    index = (slice(None), slice(None), windows.rows[:, :, None, None], windows.cols[None, None, :, :])
    np.add.at(extended, index, grad_windows)
    return extended[:, :, :h, :w]  # the fill row/column collects padding gradients: dropped


def _as_float64(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _batch(x: ArrayOrTensor, op: str) -> tuple[ArrayOrTensor, bool]:
    """x as a 4-D batch, and whether it already was one (a 3-D input is a single CHW image)."""
    if x.ndim not in (3, 4):
        raise FeatvisError(
            f"{op} expects input of shape (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}; add or remove axes"
        )
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise FeatvisError(f"{op} needs a non-empty image, got input of shape {tuple(x.shape)}")
    return (x, True) if x.ndim == 4 else (x[None], False)


def _unbatch(y: ArrayOrTensor, batched: bool) -> ArrayOrTensor:
    return y if batched else y[0]


def _batched_grad(grad_output: Any, batched: bool, expected: tuple[int, ...]) -> np.ndarray:
    """grad_output as float64 with the batch axis the input had, checked against the output's shape."""
    grad = _as_float64(grad_output)
    grad = grad if batched else grad[None]
    if grad.shape != expected:
        raise FeatvisError(f"grad_output has shape {grad.shape} but the op's output has shape {expected}")
    return grad


# ----------------------------------------------------------------------------- tensor plumbing


def _like(array: np.ndarray, reference: torch.Tensor) -> torch.Tensor:
    """`array` as a tensor with `reference`'s floating dtype and device."""
    dtype = reference.dtype if reference.is_floating_point() else torch.get_default_dtype()
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype=dtype, device=reference.device)


def _tensor_like(value: Any, x: torch.Tensor) -> torch.Tensor:
    """A weight or bias given as an array next to a tensor input becomes a tensor like the input."""
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value), dtype=x.dtype, device=x.device)
