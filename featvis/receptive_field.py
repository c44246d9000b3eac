"""Receptive fields of any CNN, exactly: which input pixels can a unit of a layer see?

The theory follows Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural
Networks" (Distill, 2019). Along each axis, unit ``i`` of a layer sees the input pixels
``[S*i - P, S*i - P + r - 1]``: ``r`` is the field size, ``S`` the effective stride and ``P``
the effective padding. A window of k taps with stride s, padding p and dilation d turns an
incoming ``(S, lo, hi)`` (unit i sees ``[S*i + lo, S*i + hi]``) into
``(S*s, lo - S*p, hi + S*(d*(k-1) - p))``; ceil_mode only adds a last window.

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
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from . import shapes
from .callable_module import make_callable
from .errors import FeatvisError
from .failures import forward_failed
from .model import FeatvisModel, as_model

__all__ = ["Box", "GLOBAL", "POINTWISE", "ReceptiveField", "Window", "receptive_field", "receptive_fields", "register_rule",
           "relative_field"]


# --- public results -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Box:
    """A rectangle of pixels (or units), half-open: rows ``y0 .. y1-1``, columns ``x0 .. x1-1``."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def center(self) -> tuple[float, float]:
        """Centre in pixel indices (pixel k's centre is k)."""
        return (self.y0 + self.y1 - 1) / 2, (self.x0 + self.x1 - 1) / 2

    def clip(self, height: int, width: int) -> "Box":
        """The part of the box inside a ``height`` x ``width`` image (empty boxes have y1 == y0)."""
        y0, x0 = min(max(self.y0, 0), height), min(max(self.x0, 0), width)
        return Box(y0, x0, max(y0, min(self.y1, height)), max(x0, min(self.x1, width)))


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of one layer, per axis ``(h, w)``, for an input of ``input_size``.

    Unit ``(y, x)`` sees input rows ``stride[0]*y - padding[0]`` to that plus ``size[0] - 1``,
    likewise columns (``region``). ``stride == (0, 0)`` means every unit sees the same pixels
    (after a global pool or a linear layer); ``is_global`` when those are the whole input.
    ``center0`` is the input-space centre of unit (0, 0) in pixel indices.

    ``unanalysed`` names what stops one ``(r, S, P)`` from describing the layer: an operation
    featvis has no rule for, or one whose windows differ between units (adaptive pooling to a
    size that does not divide the input). The numbers are then ``None`` and ``aligned`` is
    False; in the second case ``visible`` and ``units_seeing`` still answer exactly.
    """

    layer: str
    path: str
    size: tuple[int, int] | None
    stride: tuple[int, int] | None
    padding: tuple[int, int] | None
    aligned: bool
    output_shape: tuple[int, int, int]
    center0: tuple[float, float] | None
    input_size: tuple[int, int]
    unanalysed: tuple[str, ...] = ()
    #: per axis, per unit: the exact half-open range of input pixels it depends on (``visible``)
    spans: tuple[tuple[tuple[int, int], ...], ...] = field(default=(), repr=False, compare=False)

    @property
    def is_global(self) -> bool:
        return self.stride == (0, 0) and self.padding == (0, 0) and self.size == self.input_size

    def _require_known(self) -> None:
        if self.unanalysed:
            raise FeatvisError(
                f"the field of '{self.layer}' is unknown: no rule for {'; '.join(self.unanalysed)}; "
                "describe the layer with featvis.register_rule"
            )

    def _require_spans(self) -> None:
        if not self.spans:
            self._require_known()

    def _unit(self, unit_yx: Sequence[int]) -> tuple[int, int]:
        y, x = shapes.pair(unit_yx, "unit")
        _, height, width = self.output_shape
        if not (0 <= y < height and 0 <= x < width):
            raise FeatvisError(
                f"unit ({y}, {x}) is outside layer '{self.layer}' ({height}x{width} units); "
                f"use 0 <= y < {height} and 0 <= x < {width}"
            )
        return y, x

    def region(self, unit_yx: Sequence[int], image_hw: Sequence[int] | None = None) -> Box:
        """The input box of unit ``(y, x)`` by the formula above, unclipped; ``.clip(h, w)`` clips it to the image.

        ``image_hw``: the size of the image the layer ran on, when it is not ``input_size`` (local
        fields do not depend on it; a global field covers that image). Units are checked against
        ``output_shape`` for ``input_size`` images. See ``visible`` for the exact pixels at borders.
        """
        self._require_known()
        y, x = self._unit(unit_yx) if image_hw is None else shapes.pair(unit_yx, "unit")
        image = self.input_size if image_hw is None else shapes.positive_pair(image_hw, "image size")
        bounds = []
        for axis, index in enumerate((y, x)):
            if self.stride[axis] == 0 and self.padding[axis] == 0 and self.size[axis] == self.input_size[axis]:
                bounds.append((0, image[axis]))  # the whole input, whatever its size
            else:
                start = self.stride[axis] * index - self.padding[axis]
                bounds.append((start, start + self.size[axis]))
        (y0, y1), (x0, x1) = bounds
        return Box(y0, x0, y1, x1)

    def visible(self, unit_yx: Sequence[int]) -> Box:
        """The bounding box of the input pixels unit ``(y, x)`` really depends on, for an ``input_size`` image.

        Inside the image it is ``region(unit)``; at the borders it also leaves out what the unit
        cannot see: windows reaching into padding, pixels past the last window of a strided layer
        (never read by any unit), reflected padding. A unit that sees nothing gives an empty box.
        """
        self._require_spans()
        (y0, y1), (x0, x1) = (self.spans[axis][index] for axis, index in enumerate(self._unit(unit_yx)))
        return Box(y0, x0, y1, x1) if y1 > y0 and x1 > x0 else Box(0, 0, 0, 0)

    def central_unit(self) -> tuple[int, int]:
        """The unit whose field is centred nearest the image centre (the middle unit when all see the same)."""
        if self.stride is None:
            return tuple((n - 1) // 2 for n in self.output_shape[1:])
        return tuple(min(max(round(((n - 1) / 2 - c) / s), 0), units - 1) if s else (units - 1) // 2
                     for n, c, s, units in zip(self.input_size, self.center0, self.stride, self.output_shape[1:]))

    def center(self, unit_yx: Sequence[int]) -> tuple[float, float]:
        """Input-space centre (pixel indices) of unit ``(y, x)``'s field."""
        self._require_known()
        y, x = shapes.pair(unit_yx, "unit")
        return self.stride[0] * y + self.center0[0], self.stride[1] * x + self.center0[1]

    def units_seeing(self, pixel_yx: Sequence[int]) -> Box:
        """The units of this layer that depend on input pixel ``(y, x)``: a half-open box of unit indices
        (the bounding box when dilation leaves gaps); empty when no unit sees the pixel."""
        self._require_spans()
        ranges = []
        for p, spans in zip(shapes.pair(pixel_yx, "pixel"), self.spans):
            seeing = [i for i, (start, stop) in enumerate(spans) if start <= p < stop]
            ranges.append((seeing[0], seeing[-1] + 1) if seeing else (0, 0))
        (y0, y1), (x0, x1) = ranges
        return Box(y0, x0, y1, x1) if y1 > y0 and x1 > x0 else Box(0, 0, 0, 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``layer``, ``size``, ``stride``, ``padding``, ``aligned``, ``output_shape``
        (as in ``featvis rf --json``), then ``path``, ``center0``, ``global``, ``unanalysed``."""

        def listed(pair: tuple | None) -> list | None:
            return list(pair) if pair is not None else None

        return {
            "layer": self.layer,
            "size": listed(self.size),
            "stride": listed(self.stride),
            "padding": listed(self.padding),
            "aligned": self.aligned,
            "output_shape": list(self.output_shape),
            "path": self.path,
            "center0": listed(self.center0),
            "global": self.is_global,
            "unanalysed": list(self.unanalysed),
        }


# --- user rules ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """The geometry of a sliding-window layer, per axis ``(h, w)`` (an int means both)."""

    kernel: int | tuple[int, int] = 1
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    dilation: int | tuple[int, int] = 1


#: Rule result for layers that act on each position separately (activations, 1x1 maps, norms).
POINTWISE = Window()
#: Rule result for layers whose every output sees the whole input (global pooling, attention).
GLOBAL = "global"

Rule = Callable[[nn.Module], "Window | str"]
_MODULE_RULES: dict[type, Rule] = {}


def register_rule(module_type: type, rule: Rule | None) -> None:
    """Teach featvis the geometry of your own layer type.

    ``rule(module)`` returns a ``Window`` (kernel, stride, padding, dilation), ``POINTWISE`` or
    ``GLOBAL``. Modules of that type are then one operation: what runs inside them is not
    inspected. ``register_rule(MyConv, lambda m: Window(m.k, m.s, m.p))``; ``None`` removes it.
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise FeatvisError(f"register_rule needs an nn.Module subclass, got {module_type!r}; pass the layer's class")
    if rule is None:
        _MODULE_RULES.pop(module_type, None)
    else:
        _MODULE_RULES[module_type] = rule


# --- the field of a tensor ----------------------------------------------------------------------
_NONE = 1 << 40  # "first pixel" of a unit that sees no pixel at all (its window lies in padding)


@dataclass(frozen=True, eq=False)
class _Axis:
    """Along one axis, unit i sees input pixels ``[stride*i + lo, stride*i + hi]`` (Araujo et al.);
    ``stride == 0`` is a constant axis, every unit seeing ``[lo, hi]``.

    ``first[i]``/``last[i]`` are the exact first and last pixel unit i depends on, border effects
    included: windows reaching into padding, pixels past the last window that no unit ever reads,
    dilated taps, reflect padding. Inside the image they equal the affine bounds.
    """

    stride: int
    lo: int
    hi: int
    first: np.ndarray
    last: np.ndarray

    @classmethod
    def pixels(cls, count: int) -> "_Axis":
        index = np.arange(count, dtype=np.int64)
        return cls(1, 0, 0, index, index.copy())

    def gather(self, index: np.ndarray, stride: int, lo: int, hi: int) -> "_Axis":
        """A new axis whose unit u combines old units ``index[u, :]`` (entries out of range are padding)."""
        index = index.reshape(len(index), -1)
        valid = (index >= 0) & (index < len(self.first))
        safe = index.clip(0, len(self.first) - 1)
        first = np.where(valid, self.first[safe], _NONE).min(axis=1)
        last = np.where(valid, self.last[safe], -_NONE).max(axis=1)
        return _Axis(stride, lo, hi, first, last)

    def window(self, kernel: int, stride: int, pad_before: int, dilation: int, units: int) -> "_Axis":
        taps = stride * np.arange(units)[:, None] - pad_before + dilation * np.arange(kernel)
        reach = dilation * (kernel - 1)
        lo, hi = self.lo - self.stride * pad_before, self.hi + self.stride * (reach - pad_before)
        return self.gather(taps, self.stride * stride, lo, hi)

    def reindex(self, index: np.ndarray, offset: int, step: int = 1) -> "_Axis":
        """Unit j becomes old unit ``index[j]``, about ``offset + step*j`` (slicing, cropping, padding)."""
        return self.gather(index, self.stride * step, self.lo + self.stride * offset, self.hi + self.stride * offset)

    def pooled(self) -> "_Axis":
        """All units merged into one (a global pool): it sees what any unit saw."""
        seen = self.first <= self.last
        lo, hi = (int(self.first[seen].min()), int(self.last[seen].max())) if seen.any() else (0, -1)
        return _Axis(0, lo, hi, np.array([lo if seen.any() else _NONE]), np.array([hi if seen.any() else -_NONE]))

    def covers(self, extent: int) -> bool:
        return self.stride == 0 and self.lo <= 0 and self.hi >= extent - 1


@dataclass(frozen=True, eq=False)
class _Local:
    """Field of a tensor: axis k (h, w) lives in tensor dim ``dims[k]`` (negative), None once pooled away."""

    dims: tuple[int | None, int | None]
    axes: tuple[_Axis, _Axis]
    aligned: bool = True
    irregular: tuple[str, ...] = ()  # operations whose windows differ between units: no single (r, S, P)

    def positive_dims(self, ndim: int) -> list[int | None]:
        return [None if d is None else d % ndim for d in self.dims]

    def covers(self, input_size: tuple[int, int]) -> bool:
        return all(a.covers(n) for a, n in zip(self.axes, input_size))


@dataclass(frozen=True, eq=False)
class _Merged:
    """Both spatial axes flattened into the last dim: units no longer have a position."""

    local: _Local

    def pooled(self) -> _Local:
        return _Local((None, None), tuple(a.pooled() for a in self.local.axes), self.local.aligned)  # regular again


@dataclass(frozen=True)
class _Unknown:
    names: tuple[str, ...]


class _Op:
    """One intercepted call: its name, arguments, result, and the fields of its tensor inputs."""

    def __init__(self, tracer: "_Tracer", func: Any, args: tuple, kwargs: dict, out: Any):
        self.tracer, self.args, self.kwargs, self.out = tracer, args, kwargs, out
        self.name = _op_name(func)
        self.where = tracer.stack[-1]
        self.inputs = [(t, tracer.fields[t]) for t in _tensors((args, kwargs)) if t in tracer.fields]

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        return self.args[index] if len(self.args) > index else self.kwargs.get(name, default)

    @property
    def source(self) -> torch.Tensor:
        """The tensor the operation acts on: its first argument (or first tracked tensor)."""
        first = self.args[0] if self.args else None
        return first if isinstance(first, torch.Tensor) else self.inputs[0][0]

    @property
    def state(self) -> Any:
        """The field of ``source``, or the union of all tracked inputs when it is not tracked."""
        fields = self.tracer.fields
        return fields[self.source] if self.source in fields else _union(self, self.inputs)

    def unknown(self, why: str = "") -> _Unknown:
        return _Unknown((f"{self.where} ({self.name}{': ' + why if why else ''})",))


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    if name.startswith("__") and name.endswith("__"):  # __getitem__ -> getitem, __iadd__ -> add
        name = name[2:-2]
        if name not in _RULES and name[:1] in ("r", "i") and name[1:] in _RULES:
            name = name[1:]
    return name[:-1] if name.endswith("_") and name[:-1] in _RULES else name  # add_ -> add


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _union(op: _Op, inputs: Sequence[tuple[torch.Tensor, Any]]) -> Any:
    """Field of an element-wise combination (with broadcasting) of these tensors."""
    states = [state for _, state in inputs]
    unknown = tuple(dict.fromkeys(name for s in states if isinstance(s, _Unknown) for name in s.names))
    if unknown:
        return _Unknown(unknown)
    if any(isinstance(s, _Merged) for s in states):
        return states[0] if all(s is states[0] for s in states) else op.unknown("combines a flattened map with other fields")
    axes, dims, aligned = [], [], all(s.aligned for s in states)
    irregular = tuple(dict.fromkeys(name for s in states for name in s.irregular))
    for k, extent in enumerate(op.tracer.input_size):
        parts = [(s.axes[k], s.dims[k], t.shape) for t, s in inputs]
        first = np.minimum.reduce(np.broadcast_arrays(*(a.first for a, _, _ in parts)))
        last = np.maximum.reduce(np.broadcast_arrays(*(a.last for a, _, _ in parts)))
        constant = [a for a, _, _ in parts if a.stride == 0]
        moving = [(a, d, shape) for a, d, shape in parts if a.stride]
        if any(a.covers(extent) for a in constant):  # one input sees everything: so does the result
            axes.append(_Axis(0, 0, extent - 1, first, last))
        elif constant and moving:
            return op.unknown("combines a pooled field with a local one")
        elif constant:
            axes.append(_Axis(0, min(a.lo for a in constant), max(a.hi for a in constant), first, last))
        else:
            if len({shape[d] if d is not None else 1 for _, d, shape in moving}) > 1:  # no dim: a single position
                return op.unknown("broadcasts a field across positions")
            strides = {a.stride for a, _, _ in moving}
            if len(strides) > 1:
                return op.unknown(f"merges maps with different strides {sorted(strides)}")
            if len({d for _, d, _ in moving}) > 1:
                return op.unknown("merges maps whose spatial axes are in different dims")
            aligned &= len({a.lo + a.hi for a, _, _ in moving}) == 1  # all paths share the centre
            axes.append(_Axis(strides.pop(), min(a.lo for a, _, _ in moving), max(a.hi for a, _, _ in moving), first, last))
        dims.append(next((d for _, d, _ in parts if d is not None), None))
    return _Local(tuple(dims), tuple(axes), aligned, irregular if any(a.stride for a in axes) else ())


# --- rules: the field of an operation's result --------------------------------------------------
def _pointwise(op: _Op) -> Any:
    return _union(op, op.inputs)


def _independent(op: _Op) -> None:
    """Results that do not depend on the input's values (zeros_like, new_empty...)."""
    return None


def _window(op: _Op, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> Any:
    state = op.state
    if isinstance(state, _Unknown):
        return state
    if isinstance(state, _Merged):
        return op.unknown("slides a window over a flattened map")
    units = next(_tensors(op.out)).shape[-2:]
    if state.dims != (-2, -1):
        if all(a.stride == 0 for a in state.axes):  # every unit already sees the same pixels
            axes = tuple(_Axis(0, a.lo, a.hi, np.full(n, a.first.min()), np.full(n, a.last.max()))
                         for a, n in zip(state.axes, units))
            return _Local((-2, -1), axes, state.aligned)  # regular again
        return op.unknown("its window runs over non-spatial dims")
    axes = tuple(a.window(*geometry) for a, *geometry in zip(state.axes, kernel, stride, padding, dilation, units))
    return replace(state, axes=axes)


def _conv2d(op: _Op) -> Any:
    kernel = tuple(op.arg(1, "weight").shape[-2:])
    stride = shapes.positive_pair(op.arg(3, "stride", 1), "stride")
    dilation = shapes.positive_pair(op.arg(5, "dilation", 1), "dilation")
    top, _, left, _ = shapes.conv_padding(op.arg(4, "padding", 0), kernel, stride, dilation)  # "same" included
    return _window(op, kernel, stride, (top, left), dilation)


def _pool2d(kernel_at: int, padding_at: int | None, dilation_at: int | None) -> Callable[[_Op], Any]:
    """max/avg/lp pools: the argument positions of kernel_size (stride follows it), padding, dilation."""

    def rule(op: _Op) -> Any:
        kernel = shapes.positive_pair(op.arg(kernel_at, "kernel_size"), "kernel size")
        stride = shapes.pool_stride(op.arg(kernel_at + 1, "stride"), kernel)
        padding = shapes.pair(op.arg(padding_at, "padding", 0), "padding") if padding_at else (0, 0)
        dilation = shapes.pair(op.arg(dilation_at, "dilation", 1), "dilation") if dilation_at else (1, 1)
        return _window(op, kernel, stride, padding, dilation)

    return rule


def _adaptive_pool(op: _Op) -> Any:
    state = op.state
    out = next(_tensors(op.out))
    if isinstance(state, _Unknown) or isinstance(state, _Local) and all(a.stride == 0 for a in state.axes):
        return state
    if not isinstance(state, _Local) or state.dims != (-2, -1):
        return op.unknown("pools non-spatial dims")
    axes, irregular = [], state.irregular
    for axis, n, o in zip(state.axes, op.source.shape[-2:], out.shape[-2:]):
        if o == n:
            axes.append(axis)
        elif o == 1:
            axes.append(axis.pooled())
        elif n % o == 0:
            axes.append(axis.window(n // o, n // o, 0, 1, o))
        else:  # unit i pools [floor(i*n/o), ceil((i+1)*n/o)): sizes and steps vary, exact bounds remain
            starts, stops = np.arange(o) * n // o, -(-(np.arange(o) + 1) * n // o)
            taps = starts[:, None] + np.arange(int((stops - starts).max()))
            axes.append(axis.gather(np.where(taps < stops[:, None], taps, -1), axis.stride, axis.lo, axis.hi))
            irregular += (f"{op.where} ({op.name}: {n} positions to {o} use windows of different sizes)",)
    return replace(state, axes=tuple(axes), irregular=tuple(dict.fromkeys(irregular)))


def _reduce(op: _Op, dims: Sequence[int] | None, keepdim: bool) -> Any:
    """A reduction over ``dims`` (None: all): spatial axes among them become constant axes."""
    state, ndim = op.state, op.source.dim()
    reduced = set(range(ndim)) if dims is None else {d % ndim for d in dims}
    if isinstance(state, _Merged):
        if ndim - 1 not in reduced:
            return state  # the flattened positions stay in the last dim
        state = state.pooled()
    if not isinstance(state, _Local):
        return state
    positive = state.positive_dims(ndim)
    axes = tuple(a.pooled() if d in reduced else a for a, d in zip(state.axes, positive))
    out_ndim = ndim if keepdim else ndim - len(reduced)
    new_dims = []
    for d in positive:
        if d is None or (d in reduced and not keepdim):
            new_dims.append(None)
        else:
            new_dims.append((d if keepdim else d - sum(r < d for r in reduced)) - out_ndim)
    return _Local(tuple(new_dims), axes, state.aligned, state.irregular if any(a.stride for a in axes) else ())


def _reduction(dim_at: int = 1, keepdim_at: int = 2) -> Callable[[_Op], Any]:
    """mean, sum, max, norm...: the argument positions of dim and keepdim."""

    def rule(op: _Op) -> Any:
        if isinstance(op.arg(1, "other"), torch.Tensor):  # torch.max(a, b) is element-wise
            return _pointwise(op)
        dim = op.arg(dim_at, "dim", op.kwargs.get("axis"))
        dims = None if dim is None or dim == () or dim == [] else ([dim] if isinstance(dim, int) else list(dim))
        return _reduce(op, dims, bool(op.arg(keepdim_at, "keepdim", False)))

    return rule


def _along(position: int, default: int) -> Callable[[_Op], Any]:
    """softmax, normalize, cumsum: values mix along one dim whose size stays."""

    def rule(op: _Op) -> Any:
        dim = op.arg(position, "dim", default)
        return _reduce(op, None if dim is None else [dim], keepdim=True)

    return rule


def _last_dims(count: Callable[[_Op], int]) -> Callable[[_Op], Any]:
    """linear, layer_norm: values mix over the last ``count`` dims."""

    def rule(op: _Op) -> Any:
        ndim = op.source.dim()
        return _reduce(op, list(range(ndim - count(op), ndim)), keepdim=True)

    return rule


def _per_sample_norm(op: _Op) -> Any:
    """group_norm, instance_norm: statistics over every position of a sample."""
    return _reduce(op, list(range(2, op.source.dim())), keepdim=True)


def _cat(op: _Op) -> Any:
    tensors = list(op.arg(0, "tensors"))
    ndim = tensors[0].dim()
    stacking = op.name == "stack"
    dim = op.arg(1, "dim", 0) % (ndim + stacking)
    inputs = [(t, op.tracer.fields[t]) for t in tensors if t in op.tracer.fields]
    if not stacking and any(isinstance(s, _Local) and dim in s.positive_dims(ndim) for _, s in inputs):
        return op.unknown("concatenates along a spatial dim")
    state = _union(op, inputs)
    return _moved(op, state, ndim, lambda d: d + (d >= dim)) if stacking else state


def _moved(op: _Op, state: Any, ndim: int, move: Callable[[int], int | None]) -> Any:
    """Dims rearranged without changing values: ``move`` maps an input dim to its output dim."""
    out_ndim = next(_tensors(op.out)).dim()
    if isinstance(state, _Merged):
        return state if move(ndim - 1) == out_ndim - 1 else op.unknown("moves a flattened map's features")
    if not isinstance(state, _Local):
        return state
    dims = [None if d is None else move(d) for d in state.positive_dims(ndim)]
    if any(new is None and old is not None for new, old in zip(dims, state.dims)):
        return op.unknown("drops a spatial dim")
    return replace(state, dims=tuple(None if d is None else d - out_ndim for d in dims))


def _unsqueeze(op: _Op) -> Any:
    ndim = op.source.dim()
    dim = op.arg(1, "dim") % (ndim + 1)
    return _moved(op, op.state, ndim, lambda d: d + (d >= dim))


def _squeeze(op: _Op) -> Any:
    shape, ndim = op.source.shape, op.source.dim()
    dim = op.arg(1, "dim")
    candidates = range(ndim) if dim is None else ([dim] if isinstance(dim, int) else dim)
    dims = [d % ndim for d in candidates if shape[d] == 1]
    return _reduce(op, dims, keepdim=False) if dims else op.state


def _permute(op: _Op) -> Any:
    ndim = op.source.dim()
    if op.name == "permute":
        order = list(op.args[1:]) if len(op.args) > 2 or isinstance(op.arg(1, "dims"), int) else list(op.arg(1, "dims"))
    elif op.name == "t":
        order = list(range(ndim - 2)) + [ndim - 1, ndim - 2] if ndim >= 2 else [0]
    elif op.name in ("movedim", "moveaxis"):
        source, target = op.arg(1, "source"), op.arg(2, "destination")
        source, target = ([source], [target]) if isinstance(source, int) else (list(source), list(target))
        placed = {t % ndim: s % ndim for s, t in zip(source, target)}
        rest = iter(d for d in range(ndim) if d not in placed.values())
        order = [placed[d] if d in placed else next(rest) for d in range(ndim)]
    else:  # transpose, swapaxes, swapdims
        a, b = op.args[1] % ndim, op.args[2] % ndim
        order = list(range(ndim))
        order[a], order[b] = b, a
    order = [d % ndim for d in order]
    return _moved(op, op.state, ndim, order.index)


def _reshape(op: _Op) -> Any:
    """view/reshape/flatten: spatial dims survive when the sizes from the first spatial dim on are kept."""
    state, src, out = op.state, op.source, next(_tensors(op.out))
    if isinstance(state, _Merged):
        return state if out.shape[-1] == src.shape[-1] else op.unknown("reshapes a flattened map")
    if not isinstance(state, _Local):
        return state
    positive = [d for d in state.positive_dims(src.dim()) if d is not None]
    if not positive:
        return state
    first = min(positive)
    tail = tuple(src.shape[first:])
    if out.dim() >= len(tail) and tuple(out.shape[out.dim() - len(tail):]) == tail:
        return state  # the trailing dims, spatial ones included, are untouched
    units = tuple(src.shape[d] if d is not None else 1 for d in state.positive_dims(src.dim()))
    if units == (1, 1):
        return replace(state, dims=(None, None))  # one position: its field is the tensor's
    if out.dim() <= first + 1 and tuple(out.shape[:-1]) == tuple(src.shape[: out.dim() - 1]):
        return _Merged(state)  # positions (and what follows them) flattened into the last dim
    return op.unknown("reshapes spatial dims")


def _getitem(op: _Op) -> Any:
    state, src = op.state, op.source
    if not isinstance(state, _Local):
        return state if isinstance(state, _Unknown) else op.unknown("indexes a flattened map")
    index = op.arg(1, "index")
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (torch.Tensor, list, bool)) for i in index):
        return op.unknown("advanced indexing")
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    items: list = []
    for item in index:
        items.extend([slice(None)] * (src.dim() - consumed) if item is Ellipsis else [item])
    items.extend([slice(None)] * (src.dim() - sum(1 for i in items if i is not None)))
    spatial = state.positive_dims(src.dim())
    axes, dims, in_dim, out_dim = list(state.axes), [None, None], 0, 0
    for item in items:
        if item is not None and in_dim in spatial:
            k = spatial.index(in_dim)
            if not isinstance(item, slice):
                if axes[k].stride:
                    return op.unknown("picks one row or column of a map")
                axes[k] = axes[k].reindex(np.array([item % src.shape[in_dim]]), 0)
            else:
                start, stop, step = item.indices(src.shape[in_dim])
                axes[k], dims[k] = axes[k].reindex(np.arange(start, stop, step), start, step), out_dim
        out_dim += item is None or isinstance(item, slice)
        in_dim += item is not None
    out_ndim = op.out.dim()
    return replace(state, dims=tuple(None if d is None else d - out_ndim for d in dims), axes=tuple(axes))


def _setitem(op: _Op) -> Any:
    """``x[index] = value`` (in place): fine along channels, unknown when it writes part of a map."""
    state, src = op.state, op.source
    index = op.arg(1, "index")
    if isinstance(state, _Local):
        spatial = [d for d in state.positive_dims(src.dim()) if d is not None]
        if len(index if isinstance(index, tuple) else (index,)) > min(spatial, default=src.dim()):
            return op.unknown("writes into part of a map")  # the index reaches a spatial dim
    return _union(op, op.inputs)


def _narrow(op: _Op) -> Any:
    state, ndim = op.state, op.source.dim()
    dim = op.arg(1, "dim") % ndim
    if isinstance(state, _Local) and dim in state.positive_dims(ndim):
        k = state.positive_dims(ndim).index(dim)
        axes = list(state.axes)
        start = int(op.arg(2, "start")) % op.source.shape[dim]
        axes[k] = axes[k].reindex(start + np.arange(int(op.arg(3, "length"))), start)
        return replace(state, axes=tuple(axes))
    return state


def _pad(op: _Op) -> Any:
    state, ndim = op.state, op.source.dim()
    if not isinstance(state, _Local):
        return state
    pads, axes, spatial = list(op.arg(1, "pad")), list(state.axes), state.positive_dims(ndim)
    mode = op.arg(2, "mode", "constant")
    for pair_index in range(len(pads) // 2):  # (left, right, top, bottom, ...) from the last dim backwards
        dim = ndim - 1 - pair_index
        if dim in spatial:
            k = spatial.index(dim)
            before, after = pads[2 * pair_index], pads[2 * pair_index + 1]
            axes[k] = axes[k].reindex(_padded_index(op.source.shape[dim], before, after, mode), -before)
    return replace(state, axes=tuple(axes))


def _padded_index(count: int, before: int, after: int, mode: str) -> np.ndarray:
    """Which old unit each unit of a padded (or, with negative pads, cropped) axis is; -1 for constant padding."""
    kept = np.arange(max(-before, 0), count - max(-after, 0))
    widths = (max(before, 0), max(after, 0))
    if mode == "constant":
        return np.pad(kept, widths, constant_values=-1)
    return np.pad(kept, widths, mode={"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode])


def _split(op: _Op) -> Any:
    state, ndim = op.state, op.source.dim()
    dim = (op.arg(1, "dim", 0) if op.name == "unbind" else op.arg(2, "dim", 0)) % ndim
    if isinstance(state, _Local) and dim in state.positive_dims(ndim):
        return op.unknown("splits a map spatially")
    return _moved(op, state, ndim, lambda d: None if d == dim else d - (d > dim)) if op.name == "unbind" else state


def _flip(op: _Op) -> Any:
    state, ndim = op.state, op.source.dim()
    dims = op.arg(1, "dims")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if isinstance(state, _Local) and any(d % ndim in state.positive_dims(ndim) for d in dims):
        return op.unknown("flips a map spatially")
    return state  # flipping channels (RGB -> BGR) keeps every position


def _expand(op: _Op) -> Any:
    state, src, out = op.state, op.source, next(_tensors(op.out))
    if isinstance(state, _Local):
        for d, axis in zip(state.dims, state.axes):
            if d is not None and axis.stride and src.shape[d] != out.shape[d]:
                return op.unknown("repeats a map spatially")
    return state


_POINTWISE = """
add sub rsub mul div true_divide floor_divide truediv floordiv neg pos abs exp exp2 log log2 log10 log1p expm1 pow
sqrt rsqrt square sigmoid tanh relu relu6 hardtanh clamp clip clamp_min clamp_max maximum minimum fmax fmin where gelu
silu mish hardswish hardsigmoid softplus elu selu celu leaky_relu rrelu prelu logsigmoid softsign tanhshrink threshold
hardshrink softshrink dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout batch_norm
local_response_norm contiguous clone detach to type float double half bfloat16 cpu cuda requires_grad masked_fill sign
reciprocal erf sin cos lerp addcmul addcdiv copy type_as nan_to_num
""".split()
_INDEPENDENT = """
zeros_like ones_like empty_like full_like rand_like randn_like randint_like new_zeros new_ones new_empty new_full new_tensor
"""
_REDUCTIONS = "mean sum amax amin max min logsumexp prod median nansum nanmean argmax argmin all any"

_RULES: dict[str, Callable[[_Op], Any]] = {
    **dict.fromkeys(_POINTWISE, _pointwise),
    **dict.fromkeys(_INDEPENDENT.split(), _independent),
    **dict.fromkeys(_REDUCTIONS.split(), _reduction()),
    "norm": _reduction(2, 3), "std": _reduction(1, 3), "var": _reduction(1, 3),
    "conv2d": _conv2d,
    "max_pool2d": _pool2d(1, 3, 4),
    "max_pool2d_with_indices": _pool2d(1, 3, 4),
    "avg_pool2d": _pool2d(1, 3, None),
    "lp_pool2d": _pool2d(2, None, None),
    "adaptive_avg_pool2d": _adaptive_pool,
    "adaptive_max_pool2d": _adaptive_pool,
    "adaptive_max_pool2d_with_indices": _adaptive_pool,
    "softmax": _along(1, -1), "log_softmax": _along(1, -1), "softmin": _along(1, -1), "cumsum": _along(1, -1),
    "normalize": _along(2, 1),
    "linear": _last_dims(lambda op: 1),
    "layer_norm": _last_dims(lambda op: len(op.arg(1, "normalized_shape"))),
    "group_norm": _per_sample_norm, "instance_norm": _per_sample_norm,
    **dict.fromkeys(("cat", "concat", "concatenate", "stack"), _cat),
    "unsqueeze": _unsqueeze, "squeeze": _squeeze,
    **dict.fromkeys(("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t"), _permute),
    **dict.fromkeys(("view", "reshape", "flatten", "view_as", "reshape_as"), _reshape),
    "getitem": _getitem, "setitem": _setitem, "narrow": _narrow, "pad": _pad,
    **dict.fromkeys(("split", "chunk", "tensor_split", "unbind"), _split),
    "flip": _flip, "expand": _expand, "expand_as": _expand,
}


def _module_rule(op: _Op, rule: Rule, module: nn.Module) -> Any:
    """Apply a user rule to a module treated as one operation."""
    geometry = rule(module)
    if geometry == GLOBAL:
        out = next(_tensors(op.out))
        units = tuple(out.shape[-2:]) if out.dim() >= 3 else (1, 1)
        axes = tuple(_Axis(0, 0, n - 1, np.zeros(u, np.int64), np.full(u, n - 1)) for n, u in zip(op.tracer.input_size, units))
        return _Local((-2, -1) if out.dim() >= 3 else (None, None), axes)
    if not isinstance(geometry, Window):
        raise FeatvisError(f"the rule for {type(module).__name__} returned {geometry!r}; return a Window, POINTWISE or GLOBAL")
    kernel = shapes.positive_pair(geometry.kernel, "kernel")
    stride = shapes.positive_pair(geometry.stride, "stride")
    padding = shapes.pair(geometry.padding, "padding")
    dilation = shapes.positive_pair(geometry.dilation, "dilation")
    return _window(op, kernel, stride, padding, dilation)


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
                op = _Op(self, func, args, kwargs, out)
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
    """Run the model once on a blank image; the field and output shape of every module that ran.

    The run uses shape-only "meta" tensors (no arithmetic, so milliseconds for any model);
    a model that needs real values (``.item()``, numpy) is run for real instead. With ``origin``
    (a module path) fields are measured on that module's output map instead of the image, along
    the paths through it only, and only modules that finish after it are recorded.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            try:
                return _trace_once(model, size, meta=True, origin=origin)
            except Exception:  # noqa: BLE001 - any failure on meta tensors: retry with real ones
                return _trace_once(model, size, meta=False, origin=origin)
    except RuntimeError as exc:
        raise forward_failed(model.name, size, exc) from None
    finally:
        for module, training in modes.items():
            module.training = training


def _trace_once(model: FeatvisModel, size: tuple[int, int], meta: bool,
                origin: str | None = None) -> dict[str, tuple[Any, tuple[int, ...]]]:
    tracer = _Tracer(size)
    records: dict[str, tuple[Any, tuple[int, ...]]] = {}
    pending: list[_Op | None] = []  # inputs of the user-rule modules running now

    def before(path: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            tracer.stack.append(path)
            if type(module) in _MODULE_RULES:
                pending.append(_Op(tracer, type(module), inputs, {}, None) if not tracer.opaque else None)
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
            if path == origin and path not in records and isinstance(output, torch.Tensor) and output.dim() >= 3:
                tracer.fields.clear()  # from here on, fields are measured on this map, along paths through it
                records.clear()
                tracer.input_size = tuple(output.shape[-2:])
                tracer.fields[output] = _Local((-2, -1), tuple(_Axis.pixels(n) for n in output.shape[-2:]))
            if path not in records and isinstance(output, torch.Tensor):
                records[path] = (tracer.fields.get(output), tuple(output.shape))

        return hook

    parameter = next((p for p in model.net.parameters() if p.is_floating_point()), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = torch.device("meta") if meta else model.mean.device
    image = torch.zeros(1, 3, *size, dtype=dtype, device=device)
    tracer.fields[image] = _Local((-2, -1), (_Axis.pixels(size[0]), _Axis.pixels(size[1])))
    handles = []
    try:
        for path, module in model.net.named_modules():
            if path:
                handles.append(module.register_forward_pre_hook(before(path)))
                handles.append(module.register_forward_hook(after(path)))
        with tracer:
            if meta:
                tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
                shapes_only = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
                torch.func.functional_call(model, shapes_only, (image,))
            else:
                model(image)
    finally:
        for handle in handles:
            handle.remove()
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
    paths = [model.resolve(name) for name in names] if names is not None else None
    records = _trace(model, size)
    if names is None:
        names = paths = [path for path in model.layer_names() if path in records]
    missing = [name for name, path in zip(names, paths) if path not in records]
    if missing:
        raise FeatvisError(
            f"layer(s) {', '.join(missing)} did not run (or did not output a tensor) in a forward pass of {model.name}; "
            "choose layers the model uses"
        )
    return [_result(name, path, *records[path], size) for name, path in zip(names, paths)]


def receptive_field(model: nn.Module, layer: str, input_size: int | Sequence[int] | None = None) -> ReceptiveField:
    """The receptive field of one layer (see ``receptive_fields``)."""
    return receptive_fields(model, [layer], input_size)[0]


make_callable(__name__, "receptive_field")  # featvis.receptive_field(...) calls it; the module's names stay reachable
def relative_field(model: nn.Module, source: str, target: str, input_size: int | Sequence[int] | None = None) -> ReceptiveField:
    """The receptive field of layer ``target`` measured in units of layer ``source``'s output map.

    Only paths through ``source`` count (a skip connection around it is a constant here), and
    ``input_size`` in the result is ``source``'s map size for an image of ``input_size``. A
    ``target`` that does not run after ``source`` or does not depend on it is refused.
    """
    model = as_model(model)
    size = shapes.positive_pair(input_size if input_size is not None else model.input_size, "input size")
    source_path, target_path = model.resolve(source), model.resolve(target)
    records = _trace(model, size, origin=source_path)
    if source_path not in records or len(records[source_path][1]) != 4:
        raise FeatvisError(f"layer '{source}' did not run or has no spatial map (C x H x W) in {model.name}; "
                           "choose a convolutional layer as the source")
    source_shape = records[source_path][1]
    if target_path not in records or records[target_path][0] is None:
        raise FeatvisError(f"layer '{target}' is not downstream of '{source}' in {model.name} (its output does not "
                           f"depend on '{source}'); choose a target that '{source}' feeds")
    return _result(target, target_path, *records[target_path], tuple(source_shape[-2:]))
