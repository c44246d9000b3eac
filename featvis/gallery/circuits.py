"""Circuits in the gallery (``make_gallery(..., circuits=k)``, ``featvis gallery --circuits``).

Each rendered channel gets a ``circuits`` record: its ``k`` strongest inputs from the gallery
layer before it (for the first layer, the module just before it) and its ``k`` strongest outputs
to the gallery layer after it, by expanded weight (featvis.circuits). The expanded weights of a
layer pair are computed once per process. Channel pages list both sides: each connection's
visualization linked to its page when the gallery has one, and its spatial weight map drawn as
inline SVG on the red/blue scale of the circuit figures (no extra files, nothing to load).
"""

from __future__ import annotations

from typing import Callable

import torch
from matplotlib import colormaps
from matplotlib.colors import to_hex

from .._util.errors import FeatvisError
from .._util.html import Markup, tag
from ..circuits.connections import rank
from ..circuits.expanded import expanded_weights
from ..circuits.families import previous_layer
from ..core.figures import SIGNED_CMAP
from ..core.plan import Layer
from ..models.wrapper import FeatvisModel

MAP_PX = 72  # side of a weight map on a channel page


class CircuitPlanner:
    """For each gallery layer: the layer its inputs come from, the layer its outputs go to, and
    the expanded weights of both pairs (computed on first use)."""

    def __init__(self, model: FeatvisModel, layers: list[Layer], k: int, log: Callable[[str], None]):
        self.model, self.k, self.log = model, k, log
        ordered = sorted(layers, key=lambda layer: layer.order)
        self.sources: dict[str, str | None] = {}
        self.targets: dict[str, str | None] = {}
        for position, layer in enumerate(ordered):
            before = ordered[position - 1].name if position else _module_before(model, layer.name)
            self.sources[layer.path] = before
            self.targets[layer.path] = ordered[position + 1].name if position + 1 < len(ordered) else None
        self._weights: dict[tuple[str, str], torch.Tensor | None] = {}

    def weights(self, source: str | None, target: str | None) -> torch.Tensor | None:
        if source is None or target is None:
            return None
        if (source, target) not in self._weights:
            try:
                self.log(f"expanded weights {source} -> {target}")
                self._weights[source, target] = expanded_weights(self.model, source, target)
            except FeatvisError as exc:  # e.g. layers on parallel branches: no connections to show
                self.log(f"featvis: warning: no circuits from {source} to {target}: {exc}")
                self._weights[source, target] = None
        return self._weights[source, target]

    def settings(self, layer: Layer) -> dict:
        return {"source": self.sources[layer.path], "target": self.targets[layer.path], "k": self.k}

    def connections(self, layer: Layer, channel: int) -> dict:
        """The record's result: ``{"unit", "inputs", "outputs"}`` as in ``featvis circuit --json``."""
        source, target = self.sources[layer.path], self.targets[layer.path]
        incoming, outgoing = self.weights(source, layer.name), self.weights(layer.name, target)
        inputs = rank(incoming[channel], source, self.k) if incoming is not None else []
        outputs = rank(outgoing[:, channel], target, self.k) if outgoing is not None else []
        return {"unit": f"{layer.name}:{channel}", "inputs": [c.to_dict() for c in inputs],
                "outputs": [c.to_dict() for c in outputs]}


def _module_before(model: FeatvisModel, layer: str) -> str | None:
    try:
        return previous_layer(model, layer)
    except FeatvisError:
        return None


def weight_map(values: list[list[float]], limit: float) -> Markup:
    """A kernel as an inline SVG of coloured cells, red > 0 > blue, saturating at ``limit``."""
    rows, cols = len(values), len(values[0])
    cmap = colormaps[SIGNED_CMAP]
    cells = [tag("rect", x=x, y=y, width=1, height=1, fill=to_hex(cmap(0.5 + 0.5 * value / limit)))
             for y, row in enumerate(values) for x, value in enumerate(row)]
    return tag("svg", tag("title", f"{rows}x{cols} expanded weight"), cells, viewBox=f"0 0 {cols} {rows}",
               width=MAP_PX, height=MAP_PX, preserveAspectRatio="none", class_="wmap")


def circuit_sections(data: dict, thumb: Callable[[str, int], Markup | None]) -> list[Markup]:
    """The inputs and outputs sections of a channel page; ``thumb(layer, channel)`` is the linked
    visualization of a channel the gallery has, else None."""
    sections = []
    for side, title in (("inputs", "Strongest inputs from"), ("outputs", "Strongest outputs to")):
        connections = data[side]
        if not connections:
            continue
        limit = max(abs(v) for c in connections for row in c["map"] for v in row) or 1.0
        sections.append(tag("h2", f"{title} {connections[0]['layer']}"))
        cards = [tag("div", thumb(c["layer"], c["channel"]) or tag("div", f"{c['layer']}:{c['channel']}"),
                     weight_map(c["map"], limit),
                     tag("div", f"{c['layer']}:{c['channel']}"),
                     tag("div", f"|w| {c['strength']:.3g} · Σ {c['sum']:+.3g}", class_="muted"), class_="card")
                 for c in connections]
        sections.append(tag("div", cards, class_="grid circuits"))
    if sections:
        sections.insert(0, tag("p", "Connections by expanded weight (Olah et al. 2020: nonlinearities as the identity, "
                                    "max pools as averages); each map is the spatial weight, red excitatory, blue "
                                    "inhibitory, on one scale per side.", class_="muted"))
    return sections
