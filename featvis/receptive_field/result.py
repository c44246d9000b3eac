"""What a receptive field is: ``ReceptiveField`` (size, stride, padding, centres, the exact pixels a unit
sees) and ``Box``, a unit's field in input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .._util.errors import FeatvisError
from ..core import shapes


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


def union_field(layer: str, parts: Sequence[ReceptiveField]) -> ReceptiveField:
    """The field of a layer that joins ``parts`` along channels (a concat layer such as GoogLeNet's
    ``mixed3a_pre_relu``): the same units, each seeing the union of what its parts' units see.
    Parts must share the map size; parts with different strides (or unknown fields) leave it unanalysed."""
    shapes_hw = {part.output_shape[1:] for part in parts}
    if len(shapes_hw) != 1:
        raise FeatvisError(f"the parts of '{layer}' have different map sizes ({', '.join(f'{h}x{w}' for h, w in shapes_hw)}); "
                           "a concatenation along channels needs one")
    channels = sum(part.output_shape[0] for part in parts)
    first = parts[0]
    output_shape = (channels, *first.output_shape[1:])
    problems = tuple(name for part in parts for name in part.unanalysed)
    if not problems and len({part.stride for part in parts}) > 1:
        problems = (f"its parts have different strides ({', '.join(str(part.stride) for part in parts)})",)
    spans = tuple(tuple((min(unit[0] for unit in units), max(unit[1] for unit in units)) for units in zip(*axes))
                  for axes in zip(*(part.spans for part in parts))) if all(part.spans for part in parts) else ()
    if problems:
        return ReceptiveField(layer, layer, None, None, None, False, output_shape, None, first.input_size, problems, spans)
    lo = [min(-part.padding[a] for part in parts) for a in (0, 1)]
    hi = [max(part.size[a] - 1 - part.padding[a] for part in parts) for a in (0, 1)]
    return ReceptiveField(
        layer, layer,
        size=(hi[0] - lo[0] + 1, hi[1] - lo[1] + 1),
        stride=first.stride,
        padding=(-lo[0], -lo[1]),
        aligned=all(part.aligned for part in parts),
        output_shape=output_shape,
        center0=((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2),
        input_size=first.input_size,
        spans=spans,
    )
