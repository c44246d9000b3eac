"""How each operation moves a field: ``register_rule`` with ``Window``/``POINTWISE``/``GLOBAL`` for your
own layer types, and one rule per torch function (``_RULES``) for everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._util.errors import FeatvisError
from ..core import shapes
from .field import _Axis, _Local, _Merged, _Op, _tensors, _union, _Unknown


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


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    if name.startswith("__") and name.endswith("__"):  # __getitem__ -> getitem, __iadd__ -> add
        name = name[2:-2]
        if name not in _RULES and name[:1] in ("r", "i") and name[1:] in _RULES:
            name = name[1:]
    return name[:-1] if name.endswith("_") and name[:-1] in _RULES else name  # add_ -> add


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
