"""The table of a model's layers: name, module type, output shape and aliases."""

from __future__ import annotations

import torch
from torch import nn

from .._util.failures import forward_failed, user_location
from ..models.wrapper import FeatvisModel, site_name
from .sites import every_module_hooked


@torch.no_grad()
def layer_table(model: FeatvisModel, input_size: int | None = None) -> list[dict]:
    """One row per addressable layer: ``{"name", "type", "output_shape": [C, H, W] | None, "aliases",
    "calls"}``.

    Shapes are measured by one forward pass of a blank image of ``input_size`` pixels. A module called
    several times in it (one activation module shared by every block) has ``calls`` > 1, the first call's
    shape, and ``"sites"``: ``{"name": "path#k", "output_shape"}`` per call, the names analyses take
    (`FeatvisModel.site`). A concat
    layer (``model.concats``) gets type ``Concat`` and ``"concat"``, its parts' module paths; it is
    listed after its last part.
    """
    size = input_size or model.input_size
    shapes: dict[str, list[list[int] | None]] = {}

    def record(path: str):
        def hook(module: nn.Module, inputs, output) -> None:
            shapes.setdefault(path, []).append(list(output.shape[1:]) if isinstance(output, torch.Tensor) else None)

        return hook

    try:
        with every_module_hooked(model.net, after=record):
            model(torch.zeros(1, 3, size, size, device=model.mean.device))
    except RuntimeError as exc:  # torch's own complaint (a window larger than its input): as `receptive_fields` says it
        if user_location(exc) is not None:
            raise
        raise forward_failed(model.name, (size, size), exc) from None
    rows = [_row(model, path, type(module).__name__, shapes.get(path, [])) for path, module in model.net.named_modules() if path]
    rows += [{"name": name, "type": "Concat", "output_shape": _concat_shape([(shapes.get(path) or [None])[0] for path in parts]),
              "aliases": [], "concat": list(parts), "calls": min(len(shapes.get(path, [])) for path in parts)}
             for name, parts in model.concats.items()]
    order = {path: index for index, path in enumerate(model.layer_names())}
    return sorted(rows, key=lambda row: (max(order[path] for path in row.get("concat", [row["name"]])), "concat" in row))


def _row(model: FeatvisModel, path: str, kind: str, shapes: list[list[int] | None]) -> dict:
    row = {"name": path, "type": kind, "output_shape": shapes[0] if shapes else None, "aliases": model.aliases_of(path),
           "calls": len(shapes)}
    if len(shapes) > 1:
        row["sites"] = [{"name": site_name(path, k, len(shapes)), "output_shape": shape} for k, shape in enumerate(shapes, 1)]
    return row


def _concat_shape(shapes: list[list[int] | None]) -> list[int] | None:
    """The shape of maps joined along channels: the channels add up, the rest is the first part's."""
    if any(shape is None for shape in shapes):
        return None
    return [sum(shape[0] for shape in shapes), *shapes[0][1:]]
