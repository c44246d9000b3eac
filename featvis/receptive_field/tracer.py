"""The walk: run the model once and read each layer's field (``receptive_fields``, ``receptive_field``,
``relative_field``).

How the graph is walked: the model runs once on a blank image while a ``TorchFunctionMode``
watches every torch function and tensor method, so Python control flow, functional calls
(``torch.cat``, ``x + y``, ``F.relu``) and modules are all seen as they really execute. Every
tensor derived from the input carries its field; a rule per operation (``_RULES``) gives the
field of the result; forward hooks read the field of each module's output.

- Merges (addition, concatenation, products) take the union of the incoming fields, so ``r``
  is the largest over all paths. A graph is *aligned* when all paths agree on the centre of
  every unit; a misaligned layer says ``aligned=False`` and its numbers are the exact bounding
  box of all paths, never one path's.
- Pooling a whole axis (adaptive/global pools, means, linear layers on a flattened map) gives a
  *constant* axis (stride 0): every unit sees the same pixels, normally the full input.
- An operation without a rule is named in ``ReceptiveField.unanalysed`` instead of producing a
  number; ``register_rule`` teaches featvis the geometry of your own layer types.
- ``(r, S, P)`` use Araujo et al.'s model of padding (zeros beyond the border). Alongside them
  every unit carries the exact range of pixels it depends on (``ReceptiveField.visible``): at
  the borders that leaves out windows reaching into padding and pixels past the last window of
  a strided layer, and follows reflect/replicate/circular padding.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from .._util.errors import FeatvisError
from .._util.failures import forward_failed
from ..core import shapes
from ..core.sites import every_module_hooked
from ..models.modes import analysis, eval_mode
from ..models.wrapper import CALL_MARK, FeatvisModel, as_model
from .field import _Axis, _Local, _Merged, _Op, _tensors, _Unknown
from .result import ReceptiveField, union_field
from .rules import _MODULE_RULES, _RULES, _module_rule, _op_name


# --- the walk -----------------------------------------------------------------------------------
class _Tracer(TorchFunctionMode):
    """Runs alongside a forward pass and gives every tensor derived from the input its field."""

    def __init__(self, input_size: tuple[int, int]):
        super().__init__()
        self.input_size = input_size
        self.fields = WeakIdKeyDictionary()
        self.stack = ["model"]  # paths of the modules running now; the innermost names unknown ops
        self.opaque = 0  # > 0 inside a module that has a user rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.opaque:
            outputs = list(_tensors(out)) or ([args[0]] if _op_name(func) == "setitem" else [])  # in place, returns None
            if outputs:
                op = _Op(self, _op_name(func), args, kwargs, out)
                if op.inputs:
                    self.record(outputs, self.rule(op))
        return out

    def rule(self, op: _Op) -> Any:
        rule = _RULES.get(op.name)
        if rule is None:
            states = [s for _, s in op.inputs]
            if all(isinstance(s, _Local) and s.covers(self.input_size) for s in states):
                same_rank = next(_tensors(op.out)).dim() == op.source.dim()
                return states[0] if same_rank else replace(states[0], dims=(None, None))  # computed from what sees everything
            return op.unknown()
        try:
            return rule(op)
        except (FeatvisError, TypeError, ValueError, IndexError, AttributeError):
            return op.unknown("unexpected arguments")

    def record(self, outputs: list[torch.Tensor], state: Any) -> None:
        for tensor in outputs:
            if state is None:
                self.fields.pop(tensor, None)
            else:
                self.fields[tensor] = state


def _trace(model: FeatvisModel, size: tuple[int, int], origin: str | None = None) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """Run the model once on a blank image; the field and output shape of every site that ran (a module
    path for its first call, ``path#k`` for its k-th: see ``FeatvisModel.site``).

    The run uses shape-only "meta" tensors (no arithmetic, so milliseconds for any model);
    a model that needs real values (``.item()``, numpy) is run for real instead. With ``origin``
    (a site) fields are measured on that module's output map instead of the image, along
    the paths through it only, and only modules that finish after it are recorded.
    """
    try:
        with torch.no_grad(), eval_mode(model):
            try:
                return _trace_once(model, size, meta=True, origin=origin)
            except Exception:  # noqa: BLE001 - any failure on meta tensors: retry with real ones
                return _trace_once(model, size, meta=False, origin=origin)
    except RuntimeError as exc:
        raise forward_failed(model.name, size, exc) from None


def _trace_once(model: FeatvisModel, size: tuple[int, int], meta: bool,
                origin: str | None = None) -> dict[str, tuple[Any, tuple[int, ...]]]:
    tracer = _Tracer(size)
    records: dict[str, tuple[Any, tuple[int, ...]]] = {}  # by site: a path, and path#k for its k-th call
    calls: dict[str, int] = {}
    pending: list[_Op | None] = []  # inputs of the user-rule modules running now

    def before(path: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            tracer.stack.append(path)
            if type(module) in _MODULE_RULES:
                pending.append(_Op(tracer, _op_name(type(module)), inputs, {}, None) if not tracer.opaque else None)
                tracer.opaque += 1

        return hook

    def after(path: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            rule = _MODULE_RULES.get(type(module))
            if rule is not None:
                tracer.opaque -= 1
                op = pending.pop()
                if op is not None and op.inputs:
                    op.out = output
                    tracer.record(list(_tensors(output)), _module_rule(op, rule, module))
            tracer.stack.pop()
            calls[path] = calls.get(path, 0) + 1
            sites = (path, f"{path}{CALL_MARK}1") if calls[path] == 1 else (f"{path}{CALL_MARK}{calls[path]}",)
            if origin in sites and origin not in records and isinstance(output, torch.Tensor) and output.dim() >= 3:
                tracer.fields.clear()  # from here on, fields are measured on this map, along paths through it
                records.clear()
                tracer.input_size = tuple(output.shape[-2:])
                tracer.fields[output] = _Local((-2, -1), tuple(_Axis.pixels(n) for n in output.shape[-2:]))
            for site in sites:
                if site not in records and isinstance(output, torch.Tensor):
                    records[site] = (tracer.fields.get(output), tuple(output.shape))

        return hook

    parameter = next((p for p in model.net.parameters() if p.is_floating_point()), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = torch.device("meta") if meta else model.mean.device
    image = torch.zeros(1, 3, *size, dtype=dtype, device=device)
    tracer.fields[image] = _Local((-2, -1), (_Axis.pixels(size[0]), _Axis.pixels(size[1])))
    with every_module_hooked(model.net, after=after, before=before), tracer:
        if meta:
            tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
            shapes_only = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
            torch.func.functional_call(model, shapes_only, (image,))
        else:
            model(image)
    return records


def _output_shape(state: Any, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(C, H, W)``: H and W from the spatial dims, C all other non-batch dims; (C, 1, 1) without positions."""
    if isinstance(state, _Local):
        hw = [shape[d] if d is not None else 1 for d in state.dims]
    elif len(shape) >= 4 and not isinstance(state, _Merged):
        hw = list(shape[-2:])
    else:
        hw = [1, 1]
    return math.prod(shape[1:]) // (hw[0] * hw[1]), hw[0], hw[1]


def _result(layer: str, path: str, state: Any, shape: tuple[int, ...], size: tuple[int, int]) -> ReceptiveField:
    output_shape = _output_shape(state, shape)
    if state is None:
        state = _Unknown((f"{path} (its output does not depend on the input)",))
    if isinstance(state, _Unknown):
        return ReceptiveField(layer, path, None, None, None, False, output_shape, None, size, state.names)
    if isinstance(state, _Merged):
        state = state.pooled()  # a flattened map: the field of the whole output
    h, w = state.axes
    spans = tuple(
        tuple((int(f), int(l) + 1) if f <= l else (0, 0) for f, l in zip(*np.broadcast_arrays(a.first, a.last, np.empty(n))[:2]))
        for a, n in zip(state.axes, output_shape[1:])
    )
    if state.irregular:
        return ReceptiveField(layer, path, None, None, None, False, output_shape, None, size, state.irregular, spans)
    return ReceptiveField(
        layer, path,
        size=(h.hi - h.lo + 1, w.hi - w.lo + 1),
        stride=(h.stride, w.stride),
        padding=(-h.lo, -w.lo),
        aligned=state.aligned,
        output_shape=output_shape,
        center0=((h.lo + h.hi) / 2, (w.lo + w.hi) / 2),
        input_size=size,
        spans=spans,
    )


@analysis
def receptive_fields(
    model: nn.Module, layers: Sequence[str] | None = None, input_size: int | Sequence[int] | None = None
) -> list[ReceptiveField]:
    """Receptive fields of ``layers`` (names or aliases, in that order; None: every layer that runs).

    ``model`` is a ``FeatvisModel`` or any ``nn.Module`` taking RGB images; ``input_size`` (int or
    ``(h, w)``, default the model's) sets output shapes and what "global" covers.
    """
    model = as_model(model)
    size = shapes.positive_pair(input_size if input_size is not None else model.input_size, "input size")
    names = list(layers) if layers is not None else None
    # a concat layer (model.concats) is the union of its parts' fields; every other name is one site
    paths = [model.parts(name) for name in names] if names is not None else None
    records = _trace(model, size)
    if names is None:
        names = [site for site in model.sites() if site in records]
        paths = [(site,) for site in names]
    missing = [name for name, parts in zip(names, paths) if any(path not in records for path in parts)]
    if missing:
        raise FeatvisError(
            f"layer(s) {', '.join(missing)} did not run (or did not output a tensor) in a forward pass of {model.name}; "
            "choose layers the model uses"
        )
    return [_result(name, parts[0], *records[parts[0]], size) if len(parts) == 1 and name not in model.concats
            else union_field(name, [_result(path, path, *records[path], size) for path in parts])
            for name, parts in zip(names, paths)]


@analysis
def receptive_field(model: nn.Module, layer: str, input_size: int | Sequence[int] | None = None) -> ReceptiveField:
    """The receptive field of one layer (see ``receptive_fields``)."""
    return receptive_fields(model, [layer], input_size)[0]


@analysis
def relative_field(model: nn.Module, source: str, target: str, input_size: int | Sequence[int] | None = None) -> ReceptiveField:
    """The receptive field of layer ``target`` measured in units of layer ``source``'s output map.

    Only paths through ``source`` count (a skip connection around it is a constant here), and
    ``input_size`` in the result is ``source``'s map size for an image of ``input_size``. A
    ``target`` that does not run after ``source`` or does not depend on it is refused.
    """
    model = as_model(model)
    size = shapes.positive_pair(input_size if input_size is not None else model.input_size, "input size")
    source_path, target_path = model.site(source), model.site(target)
    records = _trace(model, size, origin=source_path)
    if source_path not in records or len(records[source_path][1]) != 4:
        raise FeatvisError(f"layer '{source}' did not run or has no spatial map (C x H x W) in {model.name}; "
                           "choose a convolutional layer as the source")
    source_shape = records[source_path][1]
    if target_path not in records or records[target_path][0] is None:
        raise FeatvisError(f"layer '{target}' is not downstream of '{source}' in {model.name} (its output does not "
                           f"depend on '{source}'); choose a target that '{source}' feeds")
    return _result(target, target_path, *records[target_path], tuple(source_shape[-2:]))
