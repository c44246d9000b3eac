"""Reference 2-D convolution and pooling: the lecture's definitions in NumPy, with hand-written gradients.

This is featvis's ground truth, written for correctness and readability, not speed
(see benchmarks/bench_reference.py). Every op works in float64 on explicit windows:

* a window index maps each (output position, kernel offset) to the input pixel it reads,
  padding included (zeros, reflect, replicate, circular), so the forward pass is one
  gather of all windows ("im2col") followed by a weighted sum (conv), a max or a mean;
* the backward pass is the adjoint of that gather: every window entry's gradient is
  added back onto the pixel it was read from.

Ops take NumPy arrays (and return NumPy) or tensors (and return tensors that are
differentiable through the hand-written backward, via `torch.autograd.Function`s).
Input is NCHW, or CHW for a single image, exactly like PyTorch. Configurations PyTorch
refuses raise `FeatvisError` naming the problem.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from featvis import shapes
from featvis.errors import FeatvisError
from featvis.shapes import IntPair, Padding

__all__ = [
    "PADDING_MODES",
    "conv2d",
    "conv2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "Conv2dFunction",
    "MaxPool2dFunction",
    "AvgPool2dFunction",
]

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


# ----------------------------------------------------------------------------- convolution


class ConvPlan(NamedTuple):
    """A validated convolution: its windows and the group count."""

    windows: Windows
    groups: int


def _conv_plan(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    stride: IntPair,
    padding: Padding,
    dilation: IntPair,
    groups: int,
    padding_mode: str,
) -> ConvPlan:
    """Check a convolution the way PyTorch does and work out which pixel every window reads."""
    if len(w_shape) != 4:
        raise FeatvisError(
            f"conv2d weight must be (out_channels, in_channels/groups, kh, kw), got shape {tuple(w_shape)}"
        )
    if padding_mode not in PADDING_MODES:
        raise FeatvisError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
    if shapes.as_int(groups) is None or groups < 1:
        raise FeatvisError(f"groups must be a positive int, got {groups!r}")
    groups = shapes.as_int(groups)
    _, channels, height, width = x_shape
    out_channels, group_channels, kh, kw = w_shape
    if out_channels < 1 or out_channels % groups:
        raise FeatvisError(
            f"conv2d weight has {out_channels} output channels, which must be a positive multiple of groups={groups}"
        )
    if group_channels * groups != channels:
        raise FeatvisError(
            f"conv2d input has {channels} channels but the weight expects {group_channels * groups} "
            f"({group_channels} per group x groups={groups}); make the channel counts match"
        )
    out_h, out_w = shapes.conv_output_shape((height, width), (kh, kw), stride, padding, dilation)
    strides, dilations = shapes.pair(stride, "stride"), shapes.pair(dilation, "dilation")
    top, bottom, left, right = shapes.conv_padding(padding, (kh, kw), strides, dilations)
    for size, pads, axis in ((height, (top, bottom), "height"), (width, (left, right), "width")):
        if padding_mode == "reflect" and max(pads) >= size:
            raise FeatvisError(f"reflect padding {max(pads)} must be smaller than the input {axis} {size}")
        if padding_mode == "circular" and max(pads) > size:
            raise FeatvisError(f"circular padding {max(pads)} wraps around more than once (input {axis} {size})")
    windows = Windows(
        _window_index(height, out_h, kh, strides[0], dilations[0], top, padding_mode),
        _window_index(width, out_w, kw, strides[1], dilations[1], left, padding_mode),
    )
    return ConvPlan(windows, groups)


def _grouped(array: np.ndarray, groups: int, axis: int) -> np.ndarray:
    """Split `axis` into (groups, axis/groups)."""
    return array.reshape(array.shape[:axis] + (groups, -1) + array.shape[axis + 1 :])


def _conv_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, plan: ConvPlan) -> np.ndarray:
    """out[n, o, y, x] = bias[o] + sum over the group's channels c and offsets (i, j) of
    weight[o, c, i, j] * input[n, c, window row (y, i), window column (x, j)]."""
    cols = _grouped(_gather(x, plan.windows, 0.0), plan.groups, 1)
    kernels = _grouped(weight, plan.groups, 0)
    out = np.einsum("ngcyixj,gocij->ngoyx", cols, kernels, optimize=True)
    out = out.reshape(out.shape[0], -1, *out.shape[3:])
    return out if bias is None else out + bias[None, :, None, None]


def _conv_backward(
    grad: np.ndarray, x: np.ndarray, weight: np.ndarray, plan: ConvPlan
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of the convolution: each output's gradient flows back along the products it summed."""
    cols = _grouped(_gather(x, plan.windows, 0.0), plan.groups, 1)
    grouped_grad = _grouped(grad, plan.groups, 1)
    dweight = np.einsum("ngoyx,ngcyixj->gocij", grouped_grad, cols, optimize=True).reshape(weight.shape)
    dcols = np.einsum("ngoyx,gocij->ngcyixj", grouped_grad, _grouped(weight, plan.groups, 0), optimize=True)
    dx = _scatter(dcols.reshape(dcols.shape[0], -1, *dcols.shape[3:]), plan.windows, x.shape)
    return dx, dweight, grad.sum(axis=(0, 2, 3))


class Conv2dFunction(torch.autograd.Function):
    """`conv2d` as an autograd op with the hand-written backward of `conv2d_backward` (4-D input only)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: ConvPlan) -> torch.Tensor:
        ctx.plan = plan
        ctx.save_for_backward(x, weight, bias)
        b = None if bias is None else _as_float64(bias)
        return _like(_conv_forward(_as_float64(x), _as_float64(weight), b, plan), x)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = _conv_backward(_as_float64(grad), _as_float64(x), _as_float64(weight), ctx.plan)
        needs = ctx.needs_input_grad
        return (
            _like(dx, x) if needs[0] else None,
            _like(dweight, weight) if needs[1] else None,
            _like(dbias, bias) if bias is not None and needs[2] else None,
            None,
        )


def conv2d(
    x: ArrayOrTensor,
    weight: ArrayOrTensor,
    bias: ArrayOrTensor | None = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> ArrayOrTensor:
    """2-D convolution (cross-correlation, as in every CNN library) from its definition.

    Same arguments and results as `torch.nn.functional.conv2d` (padding may be an int,
    a pair, "same" or "valid"), plus `nn.Conv2d`'s padding_mode. NumPy in, float64
    NumPy out; tensor in, tensor out, differentiable through `conv2d_backward`.
    """
    if isinstance(x, torch.Tensor):
        x4, batched = _batch(x, "conv2d")
        weight_t, bias_t = _tensor_like(weight, x), None if bias is None else _tensor_like(bias, x)
        _check_bias(bias_t, weight_t.shape)
        plan = _conv_plan(tuple(x4.shape), tuple(weight_t.shape), stride, padding, dilation, groups, padding_mode)
        return _unbatch(Conv2dFunction.apply(x4, weight_t, bias_t, plan), batched)
    x4, batched = _batch(_as_float64(x), "conv2d")
    weight_a, bias_a = _as_float64(weight), None if bias is None else _as_float64(bias)
    _check_bias(bias_a, weight_a.shape)
    plan = _conv_plan(x4.shape, weight_a.shape, stride, padding, dilation, groups, padding_mode)
    return _unbatch(_conv_forward(x4, weight_a, bias_a, plan), batched)


def conv2d_backward(
    grad_output: Any,
    x: Any,
    weight: Any,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dweight, dbias) of `conv2d` for `grad_output`, in float64 NumPy (arrays or tensors in).

    dbias is always returned (the sum of grad_output over batch and positions); ignore it
    for a convolution without bias.
    """
    x4, batched = _batch(_as_float64(x), "conv2d")
    weight_a = _as_float64(weight)
    plan = _conv_plan(x4.shape, weight_a.shape, stride, padding, dilation, groups, padding_mode)
    rows, cols = plan.windows
    grad = _batched_grad(grad_output, batched, (x4.shape[0], weight_a.shape[0], rows.shape[0], cols.shape[0]))
    dx, dweight, dbias = _conv_backward(grad, x4, weight_a, plan)
    return _unbatch(dx, batched), dweight, dbias


def _check_bias(bias: Any, w_shape: tuple[int, ...]) -> None:
    if bias is not None and tuple(bias.shape) != (w_shape[0],):
        raise FeatvisError(
            f"conv2d bias must be 1-D with {w_shape[0]} entries (one per output channel), got shape {tuple(bias.shape)}"
        )


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


# ----------------------------------------------------------------------------- tensor plumbing


def _like(array: np.ndarray, reference: torch.Tensor) -> torch.Tensor:
    """`array` as a tensor with `reference`'s floating dtype and device."""
    dtype = reference.dtype if reference.is_floating_point() else torch.get_default_dtype()
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype=dtype, device=reference.device)


def _tensor_like(value: Any, x: torch.Tensor) -> torch.Tensor:
    """A weight or bias given as an array next to a tensor input becomes a tensor like the input."""
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value), dtype=x.dtype, device=x.device)
