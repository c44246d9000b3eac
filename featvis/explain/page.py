"""The explanation as pictures: matplotlib figures and one self-contained HTML page.

The page inlines every image as a ``data:`` URI and its CSS, so it opens from disk or an e-mail
with nothing loaded from the network; all text (labels, layer and file names) is escaped by
`featvis._util.html`. Maps are drawn over the photo at the units' receptive-field centres
(`featvis.inspect.feature_maps.to_input_space`), never stretched.
"""

from __future__ import annotations

import base64

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .._util.html import Markup, document, join, tag
from ..core.figures import TITLE_SIZE, add_colorbar, figure_bytes, new_figure, show_image, show_map
from ..core.images import png_bytes
from ..inspect.feature_maps import to_input_space
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel
from ..receptive_field import receptive_field
from .blocks import Explanation, Groups
from .grid import compose_grid

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;padding:1em 1.5em;
color:#222;background:#fafafa}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.15em;margin:1.4em 0 .4em}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.card{background:#fff;border:1px solid #ddd;border-radius:4px;padding:4px;text-align:center;font-size:.8em}
.card img{display:block;width:112px;height:112px;object-fit:contain}
.wide img{max-width:100%}
table{border-collapse:collapse;font-size:.85em}td,th{padding:3px 8px;border-bottom:1px solid #e4e4e4;text-align:right}
th img{width:56px;height:56px;display:block}
.muted{color:#777}
"""


def data_uri(png: bytes) -> str:
    """A PNG as an inline ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def grid_image(expl: Explanation) -> torch.Tensor:
    """The activation grid: each rendered position's icon at its receptive-field centre on the photo."""
    return compose_grid(expl.image, expl.grid_icons, expl.centres, expl.stride, cell=expl.grid_step)


def attribution_figure(model: FeatvisModel, expl: Explanation) -> Figure:
    """The photo with the dictionary position's receptive field (box, clipped) and centre (cross),
    and the signed spatial attribution."""
    fig = new_figure(8, 4)
    ax_photo, ax_map = fig.subplots(1, 2)
    size = tuple(expl.image.shape[-2:])
    show_image(ax_photo, expl.image, f"{expl.label} (p = {expl.prob:.2f})")
    box = receptive_field(model, expl.layer, input_size=size).region(expl.position).clip(*size)
    ax_photo.add_patch(Rectangle((box.x0 - 0.5, box.y0 - 0.5), box.width, box.height, fill=False, color="yellow", lw=1.5))
    cy, cx = expl.centres[expl.position].tolist()
    ax_photo.plot([cx], [cy], marker="+", color="yellow", markersize=14, mew=2)
    values = to_input_space(model, expl.layer, expl.attribution.float(), size)
    mappable = show_map(ax_map, values, "signed", title=f"gradient x activation at {expl.layer}")
    add_colorbar(fig, mappable, ax_map, "logit contribution per pixel of the map")
    fig.suptitle(f"Σ positions {float(expl.attribution.sum()):.3f} = total {expl.total:.3f}", fontsize=TITLE_SIZE)
    return fig


def groups_figure(model: FeatvisModel, expl: Explanation) -> Figure:
    """Each neuron group's spatial map over the photo, titled with its attribution to the target."""
    groups = expl.groups
    fig = new_figure(2.2 * len(groups.maps), 2.6)
    axes = fig.subplots(1, len(groups.maps), squeeze=False)[0]
    size = tuple(expl.image.shape[-2:])
    for j, ax in enumerate(axes):
        values = to_input_space(model, expl.layer, groups.maps[j].float(), size)
        show_map(ax, values, "blend", image=expl.image, clip=None, title=f"group {j}: {float(groups.attribution[j]):+.2f}")
    return fig


def _img(png: bytes, alt: str) -> Markup:
    return tag("img", src=data_uri(png), alt=alt)


def _card(image: torch.Tensor | None, *lines: str) -> Markup:
    """An icon (when rendered) above lines of text."""
    picture = _img(png_bytes(image), lines[0]) if image is not None else None
    return tag("div", picture, *[tag("div", line) for line in lines], class_="card")


@analysis
def explanation_page(model: FeatvisModel, expl: Explanation, title: str) -> str:
    """The whole explanation as one HTML page (see the module docstring)."""
    groups = expl.groups
    icons = groups.icons or [None] * len(groups.maps)
    summary = (f"{expl.model}, layer {expl.layer}: target '{expl.label}' (class {expl.target}, p = {expl.prob:.3f}, "
               f"logit {expl.logit:.3f}). Linear approximation (gradient x activation): total {expl.total:.4f}; "
               f"sum over positions {float(expl.attribution.sum()):.4f}; sum over groups "
               f"{float(groups.attribution.sum()):.4f} (residual of the factorisation {expl.residual:+.4f}).")
    dictionary = [_card(icon, f"channel {c}", f"{v:.2f}")
                  for c, v, icon in zip(expl.channels, expl.values, expl.channel_icons or [None] * len(expl.channels))]
    body = [
        tag("h1", title), tag("p", summary),
        tag("h2", "Spatial attribution"), tag("div", _img(figure_bytes(attribution_figure(model, expl)), "attribution"), class_="wide"),
        tag("h2", f"Semantic dictionary at position {expl.position[0]},{expl.position[1]} (yellow cross)"),
        tag("div", dictionary, class_="row"),
        tag("h2", "Activation grid"),
        tag("p", f"{len(expl.grid_icons)} positions, each icon at its receptive field's centre.", class_="muted"),
        tag("div", _img(png_bytes(grid_image(expl)), "activation grid"), class_="wide") if expl.grid_icons else None,
        tag("h2", f"Neuron groups (NMF, {len(groups.maps)} groups, relative error {groups.nmf.relative_error:.3f})"),
        tag("div", [_card(icon, f"group {j}", f"attribution {float(groups.attribution[j]):+.3f}") for j, icon in enumerate(icons)],
            class_="row"),
        tag("div", _img(figure_bytes(groups_figure(model, expl)), "group maps"), class_="wide"),
        _flow_table(expl) if expl.earlier is not None else None,
    ]
    return document(title, *body, css=CSS)


def _flow_table(expl: Explanation) -> Markup:
    """Rows: the earlier layer's groups; columns: this layer's; cells: attribution (gradient x factored activation)."""
    before, after = expl.earlier, expl.groups

    def head(g: Groups, j: int) -> Markup:
        icon = _img(png_bytes(g.icons[j]), f"group {j}") if g.icons else None
        return join(icon, f"{g.layer} {j}")

    rows = [tag("tr", tag("th", ""), [tag("th", head(after, j)) for j in range(len(after.maps))])]
    for i in range(len(before.maps)):
        rows.append(tag("tr", tag("th", head(before, i)), [tag("td", f"{float(v):+.3f}") for v in expl.flow[i]]))
    return join(tag("h2", f"From {before.layer}'s groups to {after.layer}'s"), tag("table", rows))
