"""The circuit figure of the Circuits articles: a unit's feature visualization in the middle, its
strongest inputs on the left and outputs on the right, each with its own visualization and its
spatial expanded weight on a diverging red (excitatory) / blue (inhibitory) scale centred on zero."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from ..core.figures import SIGNED_CMAP, add_colorbar, new_figure, show_image, style_panel
from .connections import Connection, Connections


def _side(fig: Figure, cells, connections: list[Connection], images: dict[tuple[str, int], torch.Tensor],
          image_column: int, map_column: int, label: str) -> None:
    """One side's rows (visualization, weight map) with a shared colour scale and its colour bar."""
    if not connections:
        return
    limit = max(float(c.map.abs().max()) for c in connections) or 1.0
    axes, mappable = [], None
    for row, connection in enumerate(connections):
        show_image(fig.add_subplot(cells[row, image_column]), images[(connection.layer, connection.channel)],
                   f"{connection.layer}:{connection.channel}")
        ax = fig.add_subplot(cells[row, map_column])
        mappable = ax.imshow(connection.map.float().numpy(), cmap=SIGNED_CMAP, vmin=-limit, vmax=limit,
                             interpolation="nearest")
        style_panel(ax, f"|w| {connection.strength:.3g}  Σ {connection.sum:+.3g}")
        axes.append(ax)
    add_colorbar(fig, mappable, axes, label)


def circuit_figure(connections: Connections, unit_image: torch.Tensor, images: dict[tuple[str, int], torch.Tensor],
                   title: str | None = None) -> Figure:
    """The figure for ``connections``; ``images`` maps (layer, channel) of every connection to its
    feature visualization [3, H, W], ``unit_image`` is the unit's own."""
    rows = max(len(connections.inputs), len(connections.outputs), 1)
    both = bool(connections.inputs) and bool(connections.outputs)
    centre = 2 if connections.inputs else 0
    fig = new_figure(9.0 if both else 6.0, 1.25 * rows + 0.9)
    ratios = [1, 1] * bool(connections.inputs) + [max(2.0, rows / 2)] + [1, 1] * bool(connections.outputs)
    cells = fig.add_gridspec(rows, len(ratios), width_ratios=ratios)
    _side(fig, cells, connections.inputs, images, 0, 1, "weight (inputs)")
    show_image(fig.add_subplot(cells[:, centre]), unit_image, connections.unit)
    _side(fig, cells, connections.outputs, images, centre + 2, centre + 1, "weight (outputs)")
    sides = " and ".join(name for name, side in (("inputs (left)", connections.inputs), ("outputs (right)", connections.outputs)) if side)
    fig.suptitle(title or f"{connections.unit}: strongest {sides or 'connections'} by expanded weight", fontsize=12)
    return fig
