"""Exact, faster stand-ins for slow layers, used only while rendering.

`fused_conv_relus`: an ``nn.Conv2d`` followed by an ``nn.ReLU`` in an ``nn.Sequential`` runs as one
oneDNN convolution with the ReLU fused in (on CPU the separate ReLU pass costs up to half the
convolution); the backward is ReLU's (zero where the output is zero) then the convolution's.
Pairs whose convolution has hooks (a probed pre-activation) are left alone. For a stride-2 first
layer the input gradient goes through the equivalent stride-1 convolution (space to depth).

`fast_layers`: PyTorch's ``nn.LocalResponseNorm`` runs an ``avg_pool3d`` over a padded 5-D copy and about
25 memory passes forward and backward; on GoogLeNet at 224 px it costs as much as all its
convolutions up to mixed4a. `local_response_norm` computes the same function,
b = a (k + alpha/n sum_window a^2)^-beta, with the window sum as one 1x1 convolution by a band
matrix (a GEMM) and a hand-derived backward:
da_j = g_j p_j - 2 beta alpha/n a_j sum_{c: j in window(c)} g_c b_c / d_c, with d the bracket
and p = d^-beta; 7 memory passes and two GEMMs in all.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=16)
def _band(channels: int, size: int, scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[C, C, 1, 1] weight w[c, c'] = scale where c' lies in channel c's window (as nn.LocalResponseNorm)."""
    index = torch.arange(channels, device=device)
    offset = index[None, :] - index[:, None]
    band = ((offset >= -(size // 2)) & (offset <= (size - 1) // 2)).to(dtype) * scale
    return band[:, :, None, None].contiguous(memory_format=torch.channels_last)


class _LocalResponseNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        weight = _band(x.shape[1], size, alpha / size, x.dtype, x.device)
        d = F.conv2d(x * x, weight, torch.full((x.shape[1],), k, dtype=x.dtype, device=x.device))
        p = d.pow(-beta)
        out = x * p
        ctx.save_for_backward(x, p, out / d, weight)
        ctx.beta = beta
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, p, out_over_d, weight = ctx.saved_tensors
        window = F.conv2d(grad * out_over_d, weight.transpose(0, 1))
        return torch.addcmul(grad * p, x, window, value=-2 * ctx.beta), None, None, None, None


def local_response_norm(x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> torch.Tensor:
    """Same values and gradients as ``F.local_response_norm`` for [B, C, H, W] inputs, faster."""
    return _LocalResponseNorm.apply(x, size, alpha, beta, k)


@contextlib.contextmanager
def fast_layers(model: nn.Module) -> Iterator[int]:
    """Within the block 4-D ``nn.LocalResponseNorm`` calls use `local_response_norm`; yields how many modules.

    Like `redirected_relus`, only an instance ``forward`` is set and removed on exit.
    """
    patched = [module for module in model.modules() if type(module) is nn.LocalResponseNorm]

    def forward_of(module: nn.LocalResponseNorm):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 4:
                return F.local_response_norm(x, module.size, module.alpha, module.beta, module.k)
            return local_response_norm(x, module.size, module.alpha, module.beta, module.k)
        return forward

    try:
        for module in patched:
            module.forward = forward_of(module)
        yield len(patched)
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)


class _ConvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: nn.Conv2d) -> torch.Tensor:
        out = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups,
                                                      "relu", [], "")
        ctx.save_for_backward(x, weight, out)
        ctx.conv, ctx.has_bias = conv, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, out = ctx.saved_tensors
        conv = ctx.conv
        grad = torch.ops.aten.threshold_backward(grad, out, 0)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias]
        if mask == [True, False, False] and _space_to_depth_ok(conv):
            return _input_grad_space_to_depth(grad, x, weight, conv), None, None, None
        dx, dw, db = torch.ops.aten.convolution_backward(grad, x, weight, [weight.shape[0]] if ctx.has_bias else None,
                                                         conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups, mask)
        return dx, dw, db, None


def _space_to_depth_ok(conv: nn.Conv2d) -> bool:
    """A stride-2 first layer on few channels (GoogLeNet's 7x7 on RGB), where oneDNN's input gradient is slow."""
    return conv.stride == (2, 2) and conv.dilation == (1, 1) and conv.groups == 1 and conv.in_channels <= 4


def _input_grad_space_to_depth(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The input gradient of a stride-2 convolution computed as that of the equivalent stride-1 one.

    Padding the kernel to even size and moving each 2x2 pixel block into channels
    (``pixel_unshuffle``) turns the stride-2 convolution on C channels into a stride-1 one on 4C,
    whose transposed convolution oneDNN runs about twice as fast; ``pixel_shuffle`` moves the
    gradient back to pixels. Exact up to float rounding order.
    """
    kh, kw = weight.shape[-2:]
    even = F.pad(weight, (0, kw % 2, 0, kh % 2))
    blocks = F.pixel_unshuffle(even, 2).contiguous(memory_format=torch.channels_last)
    padded = F.pixel_shuffle(F.conv_transpose2d(grad, blocks), 2)  # gradient w.r.t. the zero-padded input
    (ph, pw), (h, w) = conv.padding, x.shape[-2:]
    padded = F.pad(padded, (0, max(0, w + 2 * pw - padded.shape[-1]), 0, max(0, h + 2 * ph - padded.shape[-2])))
    return padded[..., ph : ph + h, pw : pw + w].contiguous(memory_format=torch.channels_last)


def _fusable(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.dim() == 4 and torch.backends.mkldnn.is_available()
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str) and not conv._forward_hooks
            and not conv._forward_pre_hooks and not nn.modules.module._global_forward_hooks)


@contextlib.contextmanager
def fused_conv_relus(model: nn.Module) -> Iterator[int]:
    """Within the block, ``Conv2d`` + ``ReLU`` pairs of an ``nn.Sequential`` run fused; yields how many pairs.

    The convolution's ``forward`` returns the fused result and the ReLU's passes exactly that tensor
    through (anything else it still rectifies); both instance attributes are removed on exit.
    """
    pairs = [(first, second) for module in model.modules() if isinstance(module, nn.Sequential)
             for first, second in zip(module, list(module)[1:]) if type(first) is nn.Conv2d and type(second) is nn.ReLU]

    def patch(conv: nn.Conv2d, relu: nn.ReLU) -> None:
        fused: list[torch.Tensor | None] = [None]

        def conv_forward(x: torch.Tensor) -> torch.Tensor:
            fused[0] = _ConvReLU.apply(x, conv.weight, conv.bias, conv) if _fusable(conv, x) else None
            return conv._conv_forward(x, conv.weight, conv.bias) if fused[0] is None else fused[0]

        def relu_forward(x: torch.Tensor) -> torch.Tensor:
            done, fused[0] = fused[0] is x, None
            return x if done else F.relu(x)

        conv.forward, relu.forward = conv_forward, relu_forward

    try:
        for conv, relu in pairs:
            patch(conv, relu)
        yield len(pairs)
    finally:
        for conv, relu in pairs:
            conv.__dict__.pop("forward", None)
            relu.__dict__.pop("forward", None)
