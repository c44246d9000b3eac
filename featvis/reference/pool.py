"""Reference max and average pooling over explicit windows, with hand-written backward passes
(``max_pool2d``, ``avg_pool2d`` and their ``*_backward``; ``MaxPool2dFunction``, ``AvgPool2dFunction``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from featvis._util.errors import FeatvisError
from featvis.core import shapes
from featvis.core.shapes import IntPair

from .windows import ArrayOrTensor, Windows, _as_float64, _batch, _batched_grad, _gather, _like, _scatter, _unbatch, _window_index

# ----------------------------------------------------------------------------- pooling


class PoolPlan(NamedTuple):
    """A validated pooling window layout (one per output position)."""

    windows: Windows
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


def _pool_plan(
    x_shape: tuple[int, ...], kernel_size: IntPair, stride: IntPair | None, padding: IntPair, dilation: IntPair, ceil_mode: bool
) -> PoolPlan:
    """Check a pooling configuration the way PyTorch does and lay out its windows.

    Positions in the padding or (ceil_mode) past it read the fill value.
    """
    height, width = x_shape[-2:]
    kernel = shapes.positive_pair(kernel_size, "kernel size")
    strides = shapes.pool_stride(stride, kernel)
    out_h, out_w = shapes.pool_output_shape((height, width), kernel, strides, padding, dilation, ceil_mode)
    pads, dilations = shapes.pool_padding(padding, kernel), shapes.pair(dilation, "dilation")
    windows = Windows(
        _window_index(height, out_h, kernel[0], strides[0], dilations[0], pads[0], "zeros"),
        _window_index(width, out_w, kernel[1], strides[1], dilations[1], pads[1], "zeros"),
    )
    return PoolPlan(windows, kernel, strides, pads)


def _max_forward(x: np.ndarray, plan: PoolPlan) -> tuple[np.ndarray, np.ndarray]:
    """Max of every window and the flat index (row * W + col) of the input pixel that won.

    Windows are scanned row by row; a strictly larger value or a NaN takes over, so ties
    go to the first maximum and NaN propagates (PyTorch's rules). A window lying wholly in
    the padding (possible with dilation) yields -inf, as in PyTorch, but index -1 and no
    gradient, where PyTorch reports an arbitrary pixel and sends it the gradient.
    """
    n, c, height, width = x.shape
    rows, cols = plan.windows
    values = _gather(x, plan.windows, -np.inf).transpose(0, 1, 2, 4, 3, 5)  # (N, C, Ho, Wo, kh, kw)
    values = values.reshape(n, c, rows.shape[0], cols.shape[0], -1)
    valid = ((rows < height)[:, None, :, None] & (cols < width)[None, :, None, :]).reshape(values.shape[2:])
    flat = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(values.shape[2:])
    first_valid = np.take_along_axis(flat, valid.argmax(axis=-1)[..., None], axis=-1)[..., 0]
    best = np.full(values.shape[:-1], -np.inf)
    index = np.broadcast_to(np.where(valid.any(axis=-1), first_valid, -1), best.shape).copy()
    for k in range(values.shape[-1]):
        candidate = values[..., k]
        wins = valid[..., k] & ((candidate > best) | np.isnan(candidate))
        best = np.where(wins, candidate, best)
        index = np.where(wins, flat[..., k], index)
    return best, index


def _max_backward(grad: np.ndarray, index: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Each window's gradient goes entirely to the pixel that won it."""
    n, c, height, width = shape
    dx = np.zeros((n * c, height * width))
    planes = np.broadcast_to(np.arange(n * c).reshape(n, c, 1, 1), index.shape)
    won = index >= 0
    np.add.at(dx, (planes[won], index[won]), grad[won])
    return dx.reshape(shape)


def _avg_divisor(
    shape: tuple[int, ...], plan: PoolPlan, count_include_pad: bool, divisor_override: int | None
) -> np.ndarray | float:
    """What each window's sum is divided by: the override, or the window's pixel count, counting
    the padding when count_include_pad but never the ceil_mode overhang past it (PyTorch's rule)."""
    if divisor_override is not None:
        return float(divisor_override)
    counts = []
    outs = (len(plan.windows.rows), len(plan.windows.cols))
    for size, out, k, s, p in zip(shape[-2:], outs, plan.kernel, plan.stride, plan.padding):
        start = np.arange(out) * s - p
        end = np.minimum(start + k, size + p)
        counts.append(end - start if count_include_pad else np.minimum(end, size) - np.maximum(start, 0))
    return np.outer(counts[0], counts[1]).astype(np.float64)


def _avg_forward(x: np.ndarray, plan: PoolPlan, divisor: np.ndarray | float) -> np.ndarray:
    """Sum of every window (padding reads 0) divided by its divisor."""
    return _gather(x, plan.windows, 0.0).sum(axis=(3, 5)) / divisor


def _avg_backward(grad: np.ndarray, shape: tuple[int, ...], plan: PoolPlan, divisor: np.ndarray | float) -> np.ndarray:
    """Each window spreads grad/divisor over every pixel it averaged."""
    rows, cols = plan.windows
    per_pixel = (grad / divisor)[:, :, :, None, :, None]
    spread = np.broadcast_to(per_pixel, grad.shape[:3] + (rows.shape[1], cols.shape[0], cols.shape[1]))
    return _scatter(spread, plan.windows, shape)


def _avg_plan(
    x_shape: tuple[int, ...],
    kernel_size: IntPair,
    stride: IntPair | None,
    padding: IntPair,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> tuple[PoolPlan, np.ndarray | float]:
    """Windows and divisors of a mean pooling (no dilation, as in PyTorch)."""
    if divisor_override is not None and (shapes.as_int(divisor_override) is None or divisor_override == 0):
        raise FeatvisError(f"divisor_override must be a non-zero int or None, got {divisor_override!r}")
    plan = _pool_plan(x_shape, kernel_size, stride, padding, 1, ceil_mode)
    return plan, _avg_divisor(x_shape, plan, count_include_pad, divisor_override)


class MaxPool2dFunction(torch.autograd.Function):
    """`max_pool2d` as an autograd op returning (values, indices); backward by `_max_backward`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, plan: PoolPlan) -> tuple[torch.Tensor, torch.Tensor]:
        values, index = _max_forward(_as_float64(x), plan)
        ctx.shape = tuple(x.shape)
        ctx.save_for_backward(x)
        ctx.index = index
        indices = torch.from_numpy(index).to(x.device)
        ctx.mark_non_differentiable(indices)
        return _like(values, x), indices

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor, _grad_indices: Any) -> tuple[torch.Tensor | None, None]:
        (x,) = ctx.saved_tensors
        return _like(_max_backward(_as_float64(grad), ctx.index, ctx.shape), x), None


class AvgPool2dFunction(torch.autograd.Function):
    """`avg_pool2d` as an autograd op; backward by `_avg_backward`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, plan: PoolPlan, divisor: np.ndarray | float) -> torch.Tensor:
        ctx.plan, ctx.divisor, ctx.shape = plan, divisor, tuple(x.shape)
        ctx.save_for_backward(x)
        return _like(_avg_forward(_as_float64(x), plan, divisor), x)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (x,) = ctx.saved_tensors
        return _like(_avg_backward(_as_float64(grad), ctx.shape, ctx.plan, ctx.divisor), x), None, None


def max_pool2d(
    x: ArrayOrTensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> ArrayOrTensor | tuple[ArrayOrTensor, ArrayOrTensor]:
    """Max pooling from its definition: the largest value in each (dilated) window.

    Same arguments and results as `torch.nn.functional.max_pool2d`; padding is implicit
    -inf; indices are flat positions row * W + col within each input plane.
    """
    x4, batched = _batch(x if isinstance(x, torch.Tensor) else _as_float64(x), "max_pool2d")
    plan = _pool_plan(tuple(x4.shape), kernel_size, stride, padding, dilation, ceil_mode)
    forward = MaxPool2dFunction.apply if isinstance(x4, torch.Tensor) else _max_forward
    values, indices = (_unbatch(y, batched) for y in forward(x4, plan))
    return (values, indices) if return_indices else values


def max_pool2d_backward(
    grad_output: Any,
    x: Any,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
) -> np.ndarray:
    """dx of `max_pool2d` for `grad_output`, in float64 NumPy: each window's gradient goes to its maximum."""
    x4, batched = _batch(_as_float64(x), "max_pool2d")
    plan = _pool_plan(x4.shape, kernel_size, stride, padding, dilation, ceil_mode)
    values, index = _max_forward(x4, plan)
    grad = _batched_grad(grad_output, batched, values.shape)
    return _unbatch(_max_backward(grad, index, x4.shape), batched)


def avg_pool2d(
    x: ArrayOrTensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> ArrayOrTensor:
    """Mean pooling from its definition: each window's sum divided by its size.

    Same arguments and results as `torch.nn.functional.avg_pool2d`, including how
    count_include_pad and ceil_mode change the divisor at the border.
    """
    x4, batched = _batch(x if isinstance(x, torch.Tensor) else _as_float64(x), "avg_pool2d")
    plan, divisor = _avg_plan(tuple(x4.shape), kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    forward = AvgPool2dFunction.apply if isinstance(x4, torch.Tensor) else _avg_forward
    return _unbatch(forward(x4, plan, divisor), batched)


def avg_pool2d_backward(
    grad_output: Any,
    x: Any,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> np.ndarray:
    """dx of `avg_pool2d` for `grad_output`, in float64 NumPy: each window spreads grad/divisor evenly."""
    x4, batched = _batch(_as_float64(x), "avg_pool2d")
    plan, divisor = _avg_plan(x4.shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    grad = _batched_grad(grad_output, batched, x4.shape[:2] + (len(plan.windows.rows), len(plan.windows.cols)))
    return _unbatch(_avg_backward(grad, x4.shape, plan, divisor), batched)
