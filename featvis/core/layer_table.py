"""The table of a model's layers: name, module type, output shape and aliases."""

from __future__ import annotations

import torch
from torch import nn

from .._util.failures import forward_failed, user_location
from ..models.wrapper import FeatvisModel


@torch.no_grad()
def layer_table(model: FeatvisModel, input_size: int | None = None) -> list[dict]:
    """One row per addressable layer: ``{"name", "type", "output_shape": [C, H, W] | None, "aliases",
    "calls"}``.

    Shapes are measured by one forward pass of a blank image of ``input_size`` pixels (a module called
    several times in it, such as one activation module shared by every block, shows its first call's
    shape, which is what featvis's analyses of that layer see; ``calls`` says how many there were). A concat
    layer (``model.concats``) gets type ``Concat`` and ``"concat"``, its parts' module paths; it is
    listed after its last part.
    """
    size = input_size or model.input_size
    shapes: dict[str, list[int]] = {}
    calls: dict[str, int] = {}
    handles = []

    def record(path: str):
        def hook(module: nn.Module, inputs, output) -> None:
            calls[path] = calls.get(path, 0) + 1
            if isinstance(output, torch.Tensor) and path not in shapes:
                shapes[path] = list(output.shape[1:])

        return hook

    try:
        for path, module in model.net.named_modules():
            if path:
                handles.append(module.register_forward_hook(record(path)))
        model(torch.zeros(1, 3, size, size, device=model.mean.device))
    except RuntimeError as exc:  # torch's own complaint (a window larger than its input): as `receptive_fields` says it
        if user_location(exc) is not None:
            raise
        raise forward_failed(model.name, (size, size), exc) from None
    finally:
        for handle in handles:
            handle.remove()
    rows = [
        {"name": path, "type": type(module).__name__, "output_shape": shapes.get(path), "aliases": model.aliases_of(path),
         "calls": calls.get(path, 0)}
        for path, module in model.net.named_modules()
        if path
    ]
    rows += [{"name": name, "type": "Concat", "output_shape": _concat_shape([shapes.get(path) for path in parts]),
              "aliases": [], "concat": list(parts), "calls": min(calls.get(path, 0) for path in parts)}
             for name, parts in model.concats.items()]
    order = {path: index for index, path in enumerate(model.layer_names())}
    return sorted(rows, key=lambda row: (max(order[path] for path in row.get("concat", [row["name"]])), "concat" in row))


def _concat_shape(shapes: list[list[int] | None]) -> list[int] | None:
    """The shape of maps joined along channels: the channels add up, the rest is the first part's."""
    if any(shape is None for shape in shapes):
        return None
    return [sum(shape[0] for shape in shapes), *shapes[0][1:]]
