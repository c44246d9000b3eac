"""Redirected ReLU (Lucid): a gradient that lets "dead" channels get a picture.

A channel that is zero everywhere for a random start gets no gradient through its ReLU, so
plain gradient ascent leaves the image flat grey. For the first `REDIRECT_STEPS` steps of
rendering, featvis replaces every ``nn.ReLU`` module's backward pass as Lucid's
``redirected_relu_grad`` does. The forward pass is unchanged: y = max(x, 0).

The alteration, exactly: with g = dL/dy the incoming gradient of the loss being *minimised*
(L = -objective), the ordinary gradient is g * [x > 0]. For each batch element separately:
if that ordinary gradient is non-zero somewhere in the element, it is used unchanged;
if it is zero everywhere in the element, the element gets instead g * [x >= 0 or g <= 0],
i.e. g passes everywhere except where it would push an already negative pre-activation
further down. The redirected gradient thus points the image towards making the unit positive.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

REDIRECT_STEPS = 16  # Lucid switches back to the true gradient after global step 16


class RedirectedReLU(torch.autograd.Function):
    """y = relu(x) with the redirected backward described in the module docstring."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        relu_grad = torch.ops.aten.threshold_backward(grad, x, 0)  # grad * [x > 0]
        if x.dim() < 2:
            return relu_grad if bool(relu_grad.any()) else grad.masked_fill((x < 0) & (grad > 0), 0)
        dims = tuple(range(1, x.dim()))
        # all zero, per element: amax and amin are vectorised, several times faster than any()
        dead = (relu_grad.amax(dim=dims) == 0) & (relu_grad.amin(dim=dims) == 0)
        for b in dead.nonzero().flatten().tolist():
            relu_grad[b] = grad[b].masked_fill((x[b] < 0) & (grad[b] > 0), 0)
        return relu_grad


def redirected_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(x) whose backward pass is redirected (see the module docstring)."""
    return RedirectedReLU.apply(x)


@contextlib.contextmanager
def redirected_relus(model: nn.Module) -> Iterator[int]:
    """Within the block every ``nn.ReLU`` module of ``model`` uses `redirected_relu`; yields how many.

    The modules themselves stay in place (their hooks keep working): only their ``forward`` is
    shadowed by an instance attribute, removed again on exit, whatever happens.
    """
    patched = [module for module in model.modules() if type(module) is nn.ReLU]
    try:
        for module in patched:
            module.forward = redirected_relu
        yield len(patched)
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)
