"""The field a tensor carries along each axis (``_Axis``: stride and first/last pixel per unit), and the
union of fields where paths merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from .tracer import _Tracer


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

    def __init__(self, tracer: "_Tracer", name: str, args: tuple, kwargs: dict, out: Any):
        self.tracer, self.name, self.args, self.kwargs, self.out = tracer, name, args, kwargs, out
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
