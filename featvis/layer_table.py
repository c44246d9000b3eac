"""The table of a model's layers: name, module type, output shape and aliases."""

from __future__ import annotations

import torch
from torch import nn

from .model import FeatvisModel


@torch.no_grad()
def layer_table(model: FeatvisModel, input_size: int | None = None) -> list[dict]:
    """One row per addressable layer: ``{"name", "type", "output_shape": [C, H, W] | None, "aliases"}``.

    Shapes are measured by one forward pass of a blank image of ``input_size`` pixels.
    """
    size = input_size or model.input_size
    shapes: dict[str, list[int]] = {}
    handles = []

    def record(path: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if isinstance(output, torch.Tensor) and path not in shapes:
                shapes[path] = list(output.shape[1:])

        return hook

    try:
        for path, module in model.net.named_modules():
            if path:
                handles.append(module.register_forward_hook(record(path)))
        model(torch.zeros(1, 3, size, size, device=model.mean.device))
    finally:
        for handle in handles:
            handle.remove()
    return [
        {"name": path, "type": type(module).__name__, "output_shape": shapes.get(path), "aliases": model.aliases_of(path)}
        for path, module in model.net.named_modules()
        if path
    ]
