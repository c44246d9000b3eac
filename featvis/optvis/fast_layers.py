"""Exact, faster stand-ins for slow layers, used only while rendering.

`fused_conv_relus`: an ``nn.Conv2d`` followed by an ``nn.ReLU`` in an ``nn.Sequential`` runs as one
oneDNN convolution with the ReLU fused in (on CPU the separate ReLU pass costs up to half the
convolution); the backward is ReLU's (zero where the output is zero) then the convolution's.
Pairs whose convolution has hooks (a probed pre-activation) are left alone. For a stride-2 first
layer the input gradient goes through the equivalent stride-1 convolution (space to depth).
Convolutions not fused (redirected-ReLU steps, hooked ones) still run as one oneDNN call each
under `fast_layers`.

`fast_layers`: PyTorch's ``nn.LocalResponseNorm`` runs an ``avg_pool3d`` over a padded 5-D copy and about
25 memory passes forward and backward; on GoogLeNet at 224 px it costs as much as all its
convolutions up to mixed4a. `local_response_norm` computes the same function,
b = a (k + alpha/n sum_window a^2)^-beta, with the window sum as ``size`` shifted views of one
channel-padded buffer (no copy, no GEMM over a mostly-zero band matrix) and a hand-derived backward:
da_j = g_j p_j - 2 beta alpha/n a_j sum_{c: j in window(c)} g_c b_c / d_c, with d the bracket
and p = d^-beta; about 17 memory passes in all, 0.57x the time of the band-GEMM version at 192
channels (``benchmarks/bench_render.py`` and ``bench_process.py`` measure the whole render).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _padded(like: torch.Tensor, lo: int, hi: int, value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A [B, lo + C + hi, H, W] buffer in ``like``'s memory format whose ``lo`` first and ``hi`` last
    channels hold ``value``, and the view of its C middle channels (to be written)."""
    b, c, h, w = like.shape
    channels_last = like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
    buffer = torch.empty(b, lo + c + hi, h, w, dtype=like.dtype, device=like.device,
                         memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    buffer[:, :lo].fill_(value)
    buffer[:, lo + c :].fill_(value)
    return buffer, buffer[:, lo : lo + c]


def _window_sums(buffer: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """out[:, c] = buffer[:, c] + ... + buffer[:, c + size - 1]: shifted views, one add each."""
    out = buffer[:, :channels] + buffer[:, 1 : channels + 1]
    for shift in range(2, size):
        out += buffer[:, shift : shift + channels]
    return out


class _LocalResponseNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        lo, hi = size // 2, (size - 1) // 2  # channel c's window: c - lo .. c + hi
        # every window has `size` terms a x^2 + k / size (padding: k / size alone), so sums to d at once
        buffer, middle = _padded(x, lo, hi, k / size)
        torch.addcmul(torch.tensor(k / size, dtype=x.dtype, device=x.device), x, x, value=alpha / size, out=middle)
        d = _window_sums(buffer, x.shape[1], size)
        p = torch.rsqrt(d * d.sqrt()) if beta == 0.75 else d.pow(-beta)  # GoogLeNet's beta: 3 fast passes, not pow
        out = x * p
        ctx.save_for_backward(x, d, p, out)
        ctx.size, ctx.scale = size, -2 * beta * alpha / size
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, d, p, out = ctx.saved_tensors
        lo, hi = ctx.size // 2, (ctx.size - 1) // 2
        buffer, middle = _padded(grad, hi, lo, 0.0)  # the transposed window: c - hi .. c + lo
        torch.mul(grad, out, out=middle).div_(d)
        window = _window_sums(buffer, x.shape[1], ctx.size)
        return torch.addcmul(grad * p, x, window, value=ctx.scale), None, None, None, None


def local_response_norm(x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> torch.Tensor:
    """Same values and gradients as ``F.local_response_norm`` for [B, C, H, W] inputs, faster."""
    return _LocalResponseNorm.apply(x, size, alpha, beta, k)


@contextlib.contextmanager
def fast_layers(model: nn.Module) -> Iterator[int]:
    """Within the block 4-D ``nn.LocalResponseNorm`` calls use `local_response_norm` and every
    ``nn.Conv2d`` oneDNN can run is one `_Conv` call (a stride-2 RGB layer thus gets the faster
    input gradient in every phase; for the others it measured at most 1.5% faster than PyTorch's
    own convolution path on GoogLeNet); yields how many modules.

    Like `redirected_relus`, only an instance ``forward`` is set and removed on exit.
    """
    def lrn_forward(module: nn.LocalResponseNorm) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 4:
                return F.local_response_norm(x, module.size, module.alpha, module.beta, module.k)
            return local_response_norm(x, module.size, module.alpha, module.beta, module.k)
        return forward

    def conv_forward(conv: nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            if _onednn(conv, x):
                return _Conv.apply(x, conv.weight, conv.bias, conv, False)
            return conv._conv_forward(x, conv.weight, conv.bias)
        return forward

    forwards = {module: lrn_forward(module) for module in model.modules() if type(module) is nn.LocalResponseNorm}
    forwards |= {module: conv_forward(module) for module in model.modules()
                 if type(module) is nn.Conv2d}
    with _instance_forwards(forwards):
        yield len(forwards)


class _Conv(torch.autograd.Function):
    """``conv`` as one oneDNN call, followed by ReLU when ``relu`` (fused), with a faster input gradient for `_space_to_depth_ok` layers."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: nn.Conv2d, relu: bool) -> torch.Tensor:
        out = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups,
                                                      "relu" if relu else "none", [], "")
        ctx.save_for_backward(x, weight, out if relu else None)
        ctx.conv, ctx.has_bias, ctx.relu = conv, bias is not None, relu
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, out = ctx.saved_tensors
        conv = ctx.conv
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias]
        if mask == [True, False, False] and _space_to_depth_ok(conv):
            return _input_grad_space_to_depth(grad, x, weight, conv), None, None, None, None
        dx, dw, db = torch.ops.aten.convolution_backward(grad, x, weight, [weight.shape[0]] if ctx.has_bias else None,
                                                         conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups, mask)
        return dx, dw, db, None, None


def _space_to_depth_ok(conv: nn.Conv2d) -> bool:
    """A stride-2 first layer on few channels (GoogLeNet's 7x7 on RGB), where oneDNN's input gradient is slow."""
    return conv.stride == (2, 2) and conv.dilation == (1, 1) and conv.groups == 1 and conv.in_channels <= 4


def _input_grad_space_to_depth(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The input gradient of a stride-2 convolution computed as that of the equivalent stride-1 one.

    Padding the kernel to even size and moving each 2x2 pixel block into channels
    (``pixel_unshuffle``) turns the stride-2 convolution on C channels into a stride-1 one on 4C,
    whose transposed convolution oneDNN runs about twice as fast; ``pixel_shuffle`` moves the
    gradient back to pixels. Exact up to float rounding order. One image at a time: for small
    images oneDNN's blocking (so its rounding) depends on the batch size, and an image's render
    must not depend on what else is in its batch; at 224 px it is as fast as the whole batch.
    """
    kh, kw = weight.shape[-2:]
    even = F.pad(weight, (0, kw % 2, 0, kh % 2))
    blocks = F.pixel_unshuffle(even, 2).contiguous(memory_format=torch.channels_last)
    transposed = torch.cat([F.conv_transpose2d(grad[i : i + 1], blocks) for i in range(grad.shape[0])])
    padded = F.pixel_shuffle(transposed, 2)  # gradient w.r.t. the zero-padded input
    (ph, pw), (h, w) = conv.padding, x.shape[-2:]
    padded = F.pad(padded, (0, max(0, w + 2 * pw - padded.shape[-1]), 0, max(0, h + 2 * ph - padded.shape[-2])))
    return padded[..., ph : ph + h, pw : pw + w].contiguous(memory_format=torch.channels_last)


def _onednn(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether `_Conv` can run ``conv`` on ``x``: oneDNN's bfloat16 convolution needs AVX512BW/VL/DQ or
    AVX-NE-CONVERT (elsewhere PyTorch's own convolution path runs bfloat16)."""
    return (x.device.type == "cpu" and x.dim() == 4 and torch.backends.mkldnn.is_available()
            and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _onednn_bfloat16()))
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


@functools.cache
def _onednn_bfloat16() -> bool:
    """Whether this CPU runs oneDNN's bfloat16 convolution (asked once: `_onednn` is on every convolution's path)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _fusable(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv``'s output may skip its ReLU module: nobody hooks the pre-activation."""
    return (_onednn(conv, x) and not conv._forward_hooks and not conv._forward_pre_hooks
            and not nn.modules.module._global_forward_hooks)


@contextlib.contextmanager
def _instance_forwards(forwards: dict[nn.Module, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Each module's ``forward`` shadowed by an instance attribute for the block; whatever instance
    ``forward`` it had before (another stand-in's) is put back on exit, whatever happens."""
    before = {module: module.__dict__.get("forward") for module in forwards}
    try:
        for module, forward in forwards.items():
            module.forward = forward
        yield
    finally:
        for module, previous in before.items():
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous


@contextlib.contextmanager
def fused_conv_relus(model: nn.Module) -> Iterator[int]:
    """Within the block, ``Conv2d`` + ``ReLU`` pairs of an ``nn.Sequential`` run fused; yields how many pairs.

    The convolution's ``forward`` returns the fused result and the ReLU's passes exactly that tensor
    through (anything else it still rectifies); on exit both modules get back the ``forward`` they had.
    """
    pairs = [(first, second) for module in model.modules() if isinstance(module, nn.Sequential)
             for first, second in zip(module, list(module)[1:]) if type(first) is nn.Conv2d and type(second) is nn.ReLU]
    forwards: dict[nn.Module, Callable[[torch.Tensor], torch.Tensor]] = {}

    def patch(conv: nn.Conv2d, relu: nn.ReLU) -> None:
        fused: list[torch.Tensor | None] = [None]
        unfused = conv.forward  # the class's, or fast_layers' stand-in

        def conv_forward(x: torch.Tensor) -> torch.Tensor:
            fused[0] = _Conv.apply(x, conv.weight, conv.bias, conv, True) if _fusable(conv, x) else None
            return unfused(x) if fused[0] is None else fused[0]

        def relu_forward(x: torch.Tensor) -> torch.Tensor:
            done, fused[0] = fused[0] is x, None
            return x if done else F.relu(x)

        forwards[conv], forwards[relu] = conv_forward, relu_forward

    for conv, relu in pairs:
        patch(conv, relu)
    with _instance_forwards(forwards):
        yield len(pairs)
