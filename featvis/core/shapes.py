"""Output sizes and parameter counts of 2-D convolution and pooling layers.

The arithmetic of a sliding window, written once: the reference ops in
`featvis.reference` use it for their own shapes, and users can ask it what a layer
will produce before building one. Every result equals PyTorch's for the same
configuration (ceil_mode and dilation included), and every configuration PyTorch
refuses is refused here with a `FeatvisError` naming the problem.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from featvis._util.errors import FeatvisError

IntPair = int | Sequence[int]
Padding = int | Sequence[int] | str

__all__ = ["conv_output_shape", "pool_output_shape", "conv_param_count"]


def as_int(value: object) -> int | None:
    """`value` as an int when it is an integer (NumPy integers included, bools not), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def pair(value: IntPair, name: str) -> tuple[int, int]:
    """`value` as (height, width): an int is used for both, a sequence must hold two ints."""
    single = as_int(value)
    if single is not None:
        return single, single
    if isinstance(value, Sequence) and len(value) == 2:
        first, second = (as_int(v) for v in value)
        if first is not None and second is not None:
            return first, second
    raise FeatvisError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")


def positive_pair(value: IntPair, name: str) -> tuple[int, int]:
    """`value` as (height, width), refusing zero or negative entries."""
    result = pair(value, name)
    if min(result) < 1:
        raise FeatvisError(f"{name} must be positive, got {value!r}; use 1 or more")
    return result


def conv_padding(
    padding: Padding, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Resolve a conv padding spec to (top, bottom, left, right).

    "same" pads a total of dilation*(kernel-1) per axis, the odd extra pixel going to the
    bottom/right, exactly as PyTorch does; it is only defined for stride 1.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding != "same":
            raise FeatvisError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        if stride != (1, 1):
            raise FeatvisError(
                f"padding='same' is not defined for strided convolutions (stride={stride}); "
                "use stride 1 or give the padding as numbers"
            )
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        (top, left) = (t // 2 for t in totals)
        return top, totals[0] - top, left, totals[1] - left
    ph, pw = pair(padding, "padding")
    if min(ph, pw) < 0:
        raise FeatvisError(f"padding must not be negative, got {padding!r}")
    return ph, ph, pw, pw


def effective_kernel(kernel: int, dilation: int) -> int:
    """Extent of a dilated kernel: dilation*(kernel-1)+1 input pixels."""
    return dilation * (kernel - 1) + 1


def sliding_output_size(
    size: int, pad_before: int, pad_after: int, kernel: int, stride: int, dilation: int, ceil_mode: bool = False
) -> int:
    """Number of window positions along one axis (PyTorch's formula, ceil_mode rule included).

    In ceil mode the last window may hang over the end, but it must start inside the
    input or the leading padding; otherwise it is dropped.
    """
    span = size + pad_before + pad_after - effective_kernel(kernel, dilation)
    out = -(-span // stride) + 1 if ceil_mode else span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad_before:
        out -= 1
    return out


def _spatial(size: IntPair, name: str = "input size") -> tuple[int, int]:
    height, width = pair(size, name)
    if min(height, width) < 1:
        raise FeatvisError(f"{name} must be at least 1x1, got {size!r}")
    return height, width


def conv_output_shape(
    input_size: IntPair,
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
) -> tuple[int, int]:
    """(height, width) of a Conv2d's output for an input of `input_size` = (H, W) or int.

    out = floor((H + pad_top + pad_bottom - dilation*(kernel-1) - 1) / stride) + 1.
    Raises `FeatvisError` when the dilated kernel is larger than the padded input.
    """
    height, width = _spatial(input_size)
    kernel = positive_pair(kernel_size, "kernel size")
    strides = positive_pair(stride, "stride")
    dilations = positive_pair(dilation, "dilation")
    top, bottom, left, right = conv_padding(padding, kernel, strides, dilations)
    padded = (height + top + bottom, width + left + right)
    extent = tuple(effective_kernel(k, d) for k, d in zip(kernel, dilations))
    if padded[0] < extent[0] or padded[1] < extent[1]:
        raise FeatvisError(
            f"kernel {kernel[0]}x{kernel[1]} (dilation {dilations}, extent {extent[0]}x{extent[1]}) is larger "
            f"than the padded input {padded[0]}x{padded[1]}; use a smaller kernel or dilation, or more padding"
        )
    return (
        sliding_output_size(height, top, bottom, kernel[0], strides[0], dilations[0]),
        sliding_output_size(width, left, right, kernel[1], strides[1], dilations[1]),
    )


def pool_padding(padding: IntPair, kernel: tuple[int, int]) -> tuple[int, int]:
    """Validate pooling padding: non-negative and at most half the kernel, as PyTorch requires."""
    pads = pair(padding, "padding")
    if min(pads) < 0:
        raise FeatvisError(f"padding must not be negative, got {padding!r}")
    if pads[0] > kernel[0] // 2 or pads[1] > kernel[1] // 2:
        raise FeatvisError(
            f"pooling padding {pads} is more than half the kernel {kernel}; use padding <= kernel//2"
        )
    return pads


def pool_stride(stride: IntPair | None, kernel: tuple[int, int]) -> tuple[int, int]:
    """Pooling stride as (height, width); None or an empty sequence means the kernel size (PyTorch's default)."""
    if stride is None or (isinstance(stride, Sequence) and len(stride) == 0):
        return kernel
    return positive_pair(stride, "stride")


def pool_output_shape(
    input_size: IntPair,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
) -> tuple[int, int]:
    """(height, width) of a MaxPool2d/AvgPool2d output (stride defaults to the kernel size).

    Like PyTorch, ceil_mode rounds the window count up but drops a last window that
    would start in the trailing padding. Raises `FeatvisError` when no window fits.
    """
    height, width = _spatial(input_size)
    kernel = positive_pair(kernel_size, "kernel size")
    strides = pool_stride(stride, kernel)
    dilations = positive_pair(dilation, "dilation")
    pads = pool_padding(padding, kernel)
    out = tuple(
        sliding_output_size(n, p, p, k, s, d, ceil_mode)
        for n, p, k, s, d in zip((height, width), pads, kernel, strides, dilations)
    )
    if min(out) < 1:
        raise FeatvisError(
            f"pooling a {height}x{width} input with kernel {kernel}, stride {strides}, padding {pads}, "
            f"dilation {dilations} leaves no window (output {out[0]}x{out[1]}); use a smaller kernel or a larger input"
        )
    return out


def conv_param_count(
    in_channels: int, out_channels: int, kernel_size: IntPair, groups: int = 1, bias: bool = True
) -> int:
    """Trainable parameters of a Conv2d: out * (in/groups) * kh * kw weights, plus out biases.

    Each output channel owns one 3-D kernel spanning its group's input channels, and
    the same kernel is shared by every position (that is why the count does not
    depend on the image size).
    """
    kh, kw = positive_pair(kernel_size, "kernel size")
    if groups < 1:
        raise FeatvisError(f"groups must be positive, got {groups}")
    if in_channels < 0 or in_channels % groups or out_channels < 1 or out_channels % groups:
        raise FeatvisError(
            f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups}), "
            "and out_channels at least 1"
        )
    return out_channels * (in_channels // groups) * kh * kw + (out_channels if bias else 0)
