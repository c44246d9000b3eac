"""Short reprs for result objects: a notebook cell that ends in a result shows its fields and the
shapes of its tensors, not thousands of pixel values."""

from __future__ import annotations

import dataclasses
from typing import Any

MAX_ITEMS = 6  # list/dict items shown before "... N more"


def short(value: Any) -> str:
    """One short line for ``value``: tensors and arrays by shape and dtype, floats to 4 digits,
    long lists and dicts cut after `MAX_ITEMS` items."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype") and len(shape) > 0:
        kind = type(value).__name__.lower().replace("ndarray", "array")
        return f"{kind}[{', '.join(map(str, shape))}] {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > 0:
        items = [short(v) for v in value[:MAX_ITEMS]]
        more = [f"... {len(value) - MAX_ITEMS} more"] if len(value) > MAX_ITEMS else []
        text = ", ".join(items + more)
        return f"[{text}]" if isinstance(value, list) else f"({text}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict) and value:
        items = [f"{k!r}: {short(v)}" for k, v in list(value.items())[:MAX_ITEMS]]
        more = [f"... {len(value) - MAX_ITEMS} more"] if len(value) > MAX_ITEMS else []
        return "{" + ", ".join(items + more) + "}"
    return repr(value)


def short_repr(self: Any) -> str:
    """``Class(field=value, ...)`` of a dataclass, each value as `short` writes it (use as ``__repr__``)."""
    fields = ", ".join(f"{f.name}={short(getattr(self, f.name))}" for f in dataclasses.fields(self) if f.repr)
    return f"{type(self).__name__}({fields})"
