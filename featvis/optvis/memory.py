"""Refusing a render that cannot fit in memory, before anything large is allocated.

A render of B images of ``size`` px, seen by the model at ``scale`` px, holds at least: per
image, the parameterised image with its gradient and Adam's two moments plus the image itself
(5 x 3 x size^2 floats), the transformed input (3 x scale^2) and every activation the forward
pass computes up to the deepest layer the objectives need, which backward keeps, plus a
gradient of each as backward runs. The activations are counted once per model and layer set by
a forward pass at the model's own input size and scaled by area. Temporaries come on top (the
measured peak of GoogLeNet renders is 2.3x the activations, 448 to 896 px), so this bound is
low and a refused render could never have finished; it is compared with the memory free on
the device.
"""

from __future__ import annotations

import os
import weakref

import torch
from torch import nn

from .._util.errors import FeatvisError
from ..core.probe import capture
from ..models.wrapper import FeatvisModel

IMAGE_COPIES = 5  # parameter, its gradient, Adam's two moments, the image
ACTIVATION_COPIES = 2  # each activation kept for backward, and its gradient
_ELEMENTS: "weakref.WeakKeyDictionary[FeatvisModel, dict[tuple[str, ...], float]]" = weakref.WeakKeyDictionary()


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation on ``device`` (None where it cannot be known)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@torch.no_grad()
def activations_per_pixel(model: FeatvisModel, layers: list[str]) -> float:
    """Elements of all module outputs a forward pass up to ``layers`` computes, per input pixel."""
    key = tuple(sorted(set(layers)))
    cache = _ELEMENTS.setdefault(model, {})
    if key not in cache:
        count = 0

        def hook(module: nn.Module, inputs, output) -> None:
            nonlocal count
            if isinstance(output, torch.Tensor) and not any(True for _ in module.children()):
                count += output[0].numel()

        handles = [module.register_forward_hook(hook) for module in model.net.modules()]
        try:
            size = model.input_size
            if layers:
                capture(model, torch.zeros(1, 3, size, size, device=model.mean.device), layers)
        finally:
            for handle in handles:
                handle.remove()
        cache[key] = count / size**2
    return cache[key]


def check_render_fits(model: FeatvisModel, layers: list[str], images: int, size: int, scale: int, dtype: torch.dtype) -> None:
    """Refuse, in one line, a render of ``images`` images that needs more memory than the device has free."""
    free = available_memory(model.mean.device)
    if free is None:
        return
    act_bytes = torch.finfo(dtype).bits // 8
    per_image = 4 * (IMAGE_COPIES * 3 * size**2 + 3 * scale**2) + ACTIVATION_COPIES * act_bytes * activations_per_pixel(model, layers) * scale**2
    needed = images * per_image
    if needed > free:
        raise FeatvisError(
            f"a render of {images} image(s) of {size} px needs at least {needed / 2**30:.1f} GiB, but only "
            f"{free / 2**30:.1f} GiB are free on {model.mean.device}; use a smaller --size or --batch")
