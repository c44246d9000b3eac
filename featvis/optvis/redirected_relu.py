"""Redirected ReLU (Lucid): a gradient that lets "dead" channels get a picture.

A channel that is zero everywhere for a random start gets no gradient through its ReLU, so
plain gradient ascent leaves the image flat grey. For the first `REDIRECT_STEPS` steps of
rendering, featvis replaces the backward pass of every ``nn.ReLU`` module as Lucid's
``redirected_relu_grad`` does, and of every ``nn.ReLU6`` (and any ``nn.Hardtanh``, its clamp
to [lo, hi]) as Lucid's ``redirected_relu6_grad`` does (tensorflow/lucid,
lucid/misc/redirected_relu_grad.py): MobileNets and EfficientNet-Lite use ReLU6, and without it
their dead units stayed flat. The forward pass is unchanged: y = clamp(x, lo, hi).

The alteration, exactly: with g = dL/dy the incoming gradient of the loss being *minimised*
(L = -objective), the ordinary gradient is g * [lo < x < hi] (``hi`` = +inf for a ReLU, lo = 0).
For each batch element separately: if that ordinary gradient is non-zero somewhere in the
element, it is used unchanged; if it is zero everywhere in the element, the element gets
instead g * [not (x < lo and g > 0) and not (x > hi and g < 0)], i.e. g passes everywhere
except where it would push a pre-activation further out of the open range. The redirected
gradient thus points the image towards making the unit respond.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

REDIRECT_STEPS = 16  # Lucid switches back to the true gradient after global step 16


class RedirectedReLU(torch.autograd.Function):
    """y = relu(x), or clamp(x, lo, hi) given ``hi``, with the redirected backward described in the module docstring."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float = 0.0, hi: float | None = None) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp_min(lo) if hi is None else x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        lo, hi = ctx.lo, ctx.hi
        ordinary = torch.ops.aten.threshold_backward(grad, x, lo)  # grad * [x > lo]
        if hi is not None:
            ordinary = ordinary.masked_fill(x >= hi, 0)

        def redirected(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            blocked = (x < lo) & (g > 0)
            return g.masked_fill(blocked if hi is None else blocked | ((x > hi) & (g < 0)), 0)

        if x.dim() < 2:
            return (ordinary if bool(ordinary.any()) else redirected(grad, x)), None, None
        dims = tuple(range(1, x.dim()))
        # all zero, per element: amax and amin are vectorised, several times faster than any()
        dead = (ordinary.amax(dim=dims) == 0) & (ordinary.amin(dim=dims) == 0)
        for b in dead.nonzero().flatten().tolist():
            ordinary[b] = redirected(grad[b], x[b])
        return ordinary, None, None


def redirected_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(x) whose backward pass is redirected (see the module docstring)."""
    return RedirectedReLU.apply(x)


def _redirected_clamp(module: nn.Hardtanh):
    """``module``'s clamp (ReLU6, Hardtanh) with the redirected backward."""
    return lambda x: RedirectedReLU.apply(x, module.min_val, module.max_val)


@contextlib.contextmanager
def redirected_relus(model: nn.Module) -> Iterator[int]:
    """Within the block every ``nn.ReLU``, ``nn.ReLU6`` and ``nn.Hardtanh`` module of ``model`` has the
    redirected backward; yields how many.

    The modules themselves stay in place (their hooks keep working): only their ``forward`` is
    shadowed by an instance attribute, removed again on exit, whatever happens.
    """
    patched = [module for module in model.modules() if type(module) in (nn.ReLU, nn.ReLU6, nn.Hardtanh)]
    try:
        for module in patched:
            module.forward = redirected_relu if type(module) is nn.ReLU else _redirected_clamp(module)
        yield len(patched)
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)
