"""String specs for objectives, as typed on the command line.

Grammar (whitespace around the spec is ignored)::

    SPEC     := ["-"] BODY                  a leading "-" negates: a negative visualisation
    BODY     := "class:" CLASS              class logit; CLASS a label ("banana") or an index
              | LAYER                       whole layer: DeepDream (mean squared activation)
              | LAYER ":" CHANNEL           channel: mean activation over all positions
              | LAYER ":" CHANNEL "@" WHERE neuron: one position of the channel's map
    WHERE    := Y "," X | "center"          row, column of the layer's map (0-based)

``LAYER`` is a module path, alias or concat layer (``mixed4a``, ``inception4a.branch2``, ``fc``,
``mixed4a_pre_relu``); for a layer without a map (``fc``) ``LAYER:CHANNEL`` is that output, e.g.
the logit ``fc:954``. Examples: ``mixed4a:97``, ``mixed4a:97@7,7``, ``-mixed4a:97``, ``mixed4a``,
``fc:954``, ``class:banana``; ``-mixed4a_pre_relu:97`` for a negative visualisation that the ReLU
of ``mixed4a`` does not flatten.
Errors quote the offending part of the spec and its character positions.
"""

from __future__ import annotations

import re
import weakref
from typing import Iterable

import torch

from .._util.errors import FeatvisError
from ..core.probe import capture
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model
from .objectives import INPUT, Objective, Shapes, channel, class_logit, deepdream, neuron

_SHAPES: "weakref.WeakKeyDictionary[FeatvisModel, dict[tuple[tuple[str, ...], int], tuple[int, ...]]]" = weakref.WeakKeyDictionary()


def _fail(text: str, start: int, end: int, problem: str, fix: str) -> FeatvisError:
    part = text[start:end] or "(nothing)"
    where = f"character {start + 1}" if end - start <= 1 else f"characters {start + 1}-{end}"
    return FeatvisError(f"bad spec '{text}': {problem} '{part}' at {where}; {fix}")


def _hint(exc: FeatvisError) -> str:
    """The suggestion part of a lookup error ("...; closest: a, b")."""
    message = str(exc)
    return message.split("; ", 1)[1] if "; " in message else message


@analysis
def parse_spec(model: torch.nn.Module, text: str) -> Objective:
    """Parse a spec (grammar in the module docstring) into an Objective, checking layer and channel."""
    model = as_model(model)
    raw = text
    text = text.strip()
    offset = len(raw) - len(raw.lstrip())
    negative = text.startswith("-")
    body = text[1:] if negative else text
    start = offset + int(negative)
    if not body:
        raise _fail(raw, start, start, "nothing to visualise:", "write LAYER, LAYER:CHANNEL, LAYER:CHANNEL@Y,X or class:LABEL")
    if body.startswith("class:"):
        label = body[len("class:"):]
        try:
            objective = class_logit(model, label)
        except FeatvisError as exc:
            raise _fail(raw, start + 6, start + len(body), "class", _hint(exc)) from None
    else:
        layer, colon, rest = body.partition(":")
        if not layer or re.search(r"[\s@,]", layer):
            raise _fail(raw, start, start + len(layer), "layer name", "write a layer name or alias such as mixed4a first")
        try:
            model.parts(layer)
        except FeatvisError as exc:
            raise _fail(raw, start, start + len(layer), f"no layer of {model.name} is called", _hint(exc)) from None
        objective = deepdream(layer) if not colon else _channel_or_neuron(raw, layer, rest, start + len(layer) + 1)
    try:
        objective.check(layer_shapes(model, objective.layers, model.input_size))
    except FeatvisError as exc:
        raise FeatvisError(f"bad spec '{raw}': {exc}") from None
    if negative:
        name = f"-{objective.name}"
        objective = -objective
        objective.name = name
    return objective


def _channel_or_neuron(raw: str, layer: str, rest: str, start: int) -> Objective:
    number, at, where = rest.partition("@")
    if not number.isdigit():
        raise _fail(raw, start, start + len(number), "channel", f"write {layer}:CHANNEL with CHANNEL a number, e.g. {layer}:97")
    n = int(number)
    if not at:
        return channel(layer, n)
    if where == "center":
        return neuron(layer, n)
    match = re.fullmatch(r"(\d+),(\d+)", where)
    if not match:
        pos = start + len(number) + 1
        raise _fail(raw, pos, pos + len(where), "position", f"write {layer}:{n}@Y,X with row and column numbers, or @center")
    return neuron(layer, n, int(match[1]), int(match[2]))


@torch.no_grad()
def layer_shapes(model: FeatvisModel, layers: Iterable[str], size: int) -> Shapes:
    """Activation shapes (without batch) of ``layers`` for a ``size`` x ``size`` input, cached per model."""
    cache = _SHAPES.setdefault(model, {})
    wanted = [layer for layer in dict.fromkeys(layers) if layer != INPUT]
    missing = [layer for layer in wanted if (model.parts(layer), size) not in cache]
    if missing:
        blank = torch.zeros(1, 3, size, size, device=model.mean.device)
        try:
            acts = capture(model, blank, missing)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0][:160]
            if size > model.input_size:
                raise FeatvisError(f"{model.name} cannot take {size} px images up to {', '.join(missing)} ({reason}); "
                                   f"its input size is {model.input_size} px: use that size") from None
            raise FeatvisError(f"image size {size} px is too small for {', '.join(missing)} of {model.name} ({reason}); use a larger size") from None
        for layer, act in acts.items():
            if act.numel() == 0:
                raise FeatvisError(f"image size {size} px is too small for {layer} of {model.name} (empty output); use a larger size")
            cache[(model.parts(layer), size)] = tuple(act.shape[1:])
    shapes = {layer: cache[(model.parts(layer), size)] for layer in wanted}
    return {**shapes, INPUT: (3, size, size)}
