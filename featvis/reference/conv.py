"""Reference 2-D convolution: one gather of all windows, a weighted sum; the hand-written backward is the
gather's adjoint. ``conv2d``/``conv2d_backward`` on arrays or tensors (``Conv2dFunction``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from featvis._util.errors import FeatvisError
from featvis.core import shapes
from featvis.core.shapes import IntPair, Padding

from .windows import (
    PADDING_MODES,
    ArrayOrTensor,
    Windows,
    _as_float64,
    _batch,
    _batched_grad,
    _gather,
    _like,
    _scatter,
    _tensor_like,
    _unbatch,
    _window_index,
)

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
