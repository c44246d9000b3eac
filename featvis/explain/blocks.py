"""`explain`: the building blocks of interpretability for one photo, in one call.

Olah et al., "The Building Blocks of Interpretability" (Distill 2018), explain a decision at a
hidden layer by combining what the units detect (feature visualization) with how much each part
of the photo counts for the class (attribution):

- **semantic dictionary**: at one position, the channels that fire most, as pictures with values;
- **activation grid**: every position's activation vector visualized (``direction_neuron``) and
  drawn at its receptive field's centre on the photo;
- **neuron groups**: the activations factored by NMF into a few groups, each with its spatial
  map, a visualization of its channel direction and its attribution to the target;
- **spatial attribution**: gradient x activation per position and per group (completeness
  reported), and from an earlier layer's groups to this layer's.

Every icon of the page is optimised in one `featvis.optvis.render` call, so the engine batches them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .._util.errors import FeatvisError
from .._util.progress import progress_bar
from ..core.probe import Probe, model_input, spatial_layers
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model
from ..optvis import Objective, RenderSettings, channel, direction_neuron, render
from ..optvis.settings import EXPLAIN_ICONS
from ..saliency import resolve_target
from .attribution import group_flow, layer_activations, logit_gradient
from .grid import unit_centres
from .nmf import NMFResult, nmf

#: cosine-similarity exponent of the icons' direction objectives (rewards the direction, not just magnitude)
COSSIM_POW = 1.0
#: how many mixed blocks back the earlier layer of the group flow lies by default (mixed4a for mixed4d)
EARLIER_BLOCKS = 3


@dataclass
class Groups:
    """A layer's neuron groups: ``directions`` [k, C] (unit vectors in channel space) and ``maps``
    [k, h, w] (how far each position's activation reaches along them: ``maps[j] ⊗ directions[j]``
    is group j's part of the activations), ``nmf`` the raw factorisation, ``attribution`` [k] to
    the target (None for the earlier layer) and ``icons`` (one per group, None without rendering)."""

    layer: str
    maps: torch.Tensor
    directions: torch.Tensor
    nmf: NMFResult
    attribution: torch.Tensor | None = None
    icons: list[torch.Tensor] | None = None


@dataclass
class Explanation:
    """Everything `explain` found; ``to_dict()`` gives it as JSON, `featvis.explain.page` as HTML.

    ``image`` [3, S, S] is the model's input; ``acts`` and ``grad`` [C, h, w] the layer's
    activations and the target logit's gradient; ``attribution`` [h, w] = Σ_c grad · acts;
    ``total`` = grad · acts as one dot product (the linear approximation of logit - logit at zero
    activation). ``position``/``channels``/``values``: the semantic dictionary; ``centres``
    [h, w, 2] the receptive-field centres of the grid; ``grid_icons`` {(y, x): icon}.
    """

    model: str
    layer: str
    image: torch.Tensor
    target: int
    label: str
    prob: float
    logit: float
    acts: torch.Tensor
    grad: torch.Tensor
    attribution: torch.Tensor
    total: float
    groups: Groups
    position: tuple[int, int]
    channels: list[int]
    values: list[float]
    centres: torch.Tensor
    stride: tuple[int, int]
    earlier: Groups | None = None
    flow: torch.Tensor | None = None
    channel_icons: list[torch.Tensor] | None = None
    grid_icons: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    grid_step: int = 1
    steps: int = 0
    precision: str | None = None  # the icons' number format, as rendered (None: no icons)

    @property
    def residual(self) -> float:
        """The part of ``total`` the groups leave out (the attribution of ``acts - W H``)."""
        return self.total - float(self.groups.attribution.sum())

    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-ready (maps as nested lists at the layer's resolution)."""
        def groups(g: Groups) -> dict[str, Any]:
            return {"layer": g.layer, "nmf": {"error": g.nmf.error, "relative_error": g.nmf.relative_error,
                                              "iterations": g.nmf.iterations},
                    "groups": [{"index": j, **({"attribution": float(g.attribution[j])} if g.attribution is not None else {}),
                                "map": g.maps[j].tolist(), "direction": g.directions[j].tolist(),
                                "top_channels": g.directions[j].topk(min(5, g.directions.shape[1])).indices.tolist()}
                               for j in range(len(g.maps))]}

        mine = groups(self.groups)
        result = {
            "model": self.model, "layer": self.layer, "steps": self.steps, "precision": self.precision,
            "target": {"index": self.target, "label": self.label, "prob": self.prob, "logit": self.logit},
            "groups": mine["groups"], "nmf": mine["nmf"],
            "attribution": {"sum": float(self.attribution.sum()), "total": self.total,
                            "groups_sum": float(self.groups.attribution.sum()), "residual": self.residual,
                            "map": self.attribution.tolist()},
            "dictionary": {"position": list(self.position), "center": self.centres[self.position].tolist(),
                           "channels": [{"channel": c, "value": v} for c, v in zip(self.channels, self.values)]},
            "grid": {"shape": list(self.acts.shape[1:]), "stride": list(self.stride), "step": self.grid_step,
                     "centers": self.centres.tolist(), "rendered": [list(p) for p in self.grid_icons]},
        }
        if self.earlier is not None:
            result["flow"] = {"from_layer": self.earlier.layer, **groups(self.earlier), "matrix": self.flow.tolist()}
        return result


@analysis
def explain(
    model: torch.nn.Module,
    image: torch.Tensor,
    layer: str = "mixed4d",
    *,
    target: int | str | None = None,
    groups: int = 6,
    top: int = 6,
    position: tuple[int, int] | None = None,
    earlier: str | None = "auto",
    settings: RenderSettings | None = None,
    steps: int | None = None,
    size: int | None = None,
    grid_step: int = 1,
    icons: bool = True,
    batch: int | None = None,
    seed: int | None = None,
    precision: str | None = None,
    progress: bool = True,
) -> Explanation:
    """Explain ``model``'s score for ``target`` (label or index; default top-1) on ``image`` [3, H, W] at ``layer``.

    ``groups``: NMF groups (``seed`` fixes them); ``top``: channels in the semantic dictionary at
    ``position`` (row, column of the layer; default the strongest, largest activation norm);
    ``earlier``: layer whose groups are attributed to ``layer``'s ("auto": ``EARLIER_BLOCKS``
    top-level blocks back, skipped where its activations go negative; None: skip). Icons: rendered
    with ``settings`` (default `EXPLAIN_ICONS`: 80 px; ``steps``, ``size``, ``seed`` and ``precision``
    override its fields; the seed also fixes the NMF);
    ``grid_step`` n renders every n-th grid position per axis (from n // 2, icons n units wide);
    ``icons=False`` skips rendering; ``batch`` goes to `featvis.optvis.render`.
    """
    model = as_model(model)
    settings = (settings or EXPLAIN_ICONS).replace(steps=steps, size=size, seed=seed, precision=precision)
    seed = settings.seed
    x = model_input(model, image)
    index, label, prob = resolve_target(model, x, target)
    acts = layer_activations(model, x, layer)
    c, h, w = acts.shape
    _check_counts(layer, acts, groups, top, grid_step)
    where = _position(acts, position, layer)
    with progress_bar(4, "explain", "stages", enabled=progress) as bar:  # attribution, groups, flow, fields; then icons
        logit, grad = logit_gradient(model, x, layer, acts, index)
        grad = grad.cpu()  # the numbers are small: from here on everything but the model runs on the CPU
        bar.update(1)
        mine = _groups(model, x, layer, acts, groups, seed)
        mine.attribution = torch.einsum("chw,kc,khw->k", grad.double(), mine.directions, mine.maps)
        bar.update(1)
        earlier_layer = _earlier_layer(model, x, layer, earlier)
        before = flow = None
        earlier_acts = layer_activations(model, x, earlier_layer) if earlier_layer is not None else None
        if earlier == "auto" and earlier_acts is not None and bool((earlier_acts < 0).any()):
            earlier_layer = None  # "auto" takes only a layer NMF can factor (after an activation)
        if earlier_layer is not None:
            c1, h1, w1 = earlier_acts.shape
            before = _groups(model, x, earlier_layer, earlier_acts, min(groups, c1, h1 * w1), seed)
            flow = group_flow(model, x, earlier_layer, earlier_acts, before.nmf.W, before.nmf.H, layer, mine.directions)
        bar.update(1)
        acts = acts.cpu()
        values, chosen = acts[:, where[0], where[1]].topk(min(top, c))
        centres, stride = unit_centres(model, layer, tuple(x.shape[-2:]))
        bar.update(1)
    result = Explanation(
        model=model.name, layer=layer, image=x[0].cpu(), target=index, label=label, prob=prob, logit=logit,
        acts=acts, grad=grad, attribution=(grad.double() * acts.double()).sum(0),
        total=float(torch.dot(grad.double().flatten(), acts.double().flatten())), groups=mine, position=where,
        channels=chosen.tolist(), values=values.tolist(), centres=centres, stride=stride, earlier=before, flow=flow,
    )
    if icons:
        _render_icons(model, result, grid_step, settings, batch=batch, progress=progress)
    return result


def _check_counts(layer: str, acts: torch.Tensor, groups: int, top: int, grid_step: int) -> None:
    c, h, w = acts.shape
    if not 1 <= groups <= min(c, h * w):
        raise FeatvisError(f"{groups} groups asked but '{layer}' has {c} channels and {h * w} positions; "
                           f"use --groups 1..{min(c, h * w)}")
    if top < 1 or grid_step < 1:
        raise FeatvisError(f"top and grid step must be at least 1, got top={top}, grid step={grid_step}")


def _position(acts: torch.Tensor, position: tuple[int, int] | None, layer: str) -> tuple[int, int]:
    """The dictionary's position: the one given (checked), else the largest activation norm."""
    _, h, w = acts.shape
    if position is None:
        flat = int(acts.norm(dim=0).flatten().argmax())
        return divmod(flat, w)
    y, x = (int(v) for v in position)
    if not (0 <= y < h and 0 <= x < w):
        raise FeatvisError(f"position {y},{x} is outside {layer}'s {h}x{w} map; use 0..{h - 1},0..{w - 1}")
    return y, x


def _groups(model: FeatvisModel, x: torch.Tensor, layer: str, acts: torch.Tensor, k: int, seed: int) -> Groups:
    """NMF of the activations as positions x channels; maps [k, h, w], directions [k, C]."""
    c, h, w = acts.shape
    if bool((acts < 0).any()):
        after = _non_negative_after(model, x, layer)
        hint = f"(e.g. {after}, the first layer after it in {model.name} that has none)" if after else \
            (f"(no later layer of {model.name} is one: a ReLU applied as a function, F.relu, is no layer; make the "
             f"one after '{layer}' an nn.ReLU module to explain it)")
        raise FeatvisError(f"'{layer}' has negative activations, which NMF cannot factor; use a layer whose activations "
                           f"are never negative {hint}")
    result = nmf(acts.reshape(c, h * w).T, k, seed=seed)
    norms = result.H.norm(dim=1).clamp_min(1e-12)
    return Groups(layer, (result.W * norms).T.reshape(k, h, w), result.H / norms[:, None], result)


def _non_negative_after(model: FeatvisModel, x: torch.Tensor, layer: str) -> str | None:
    """The first layer with a spatial map after ``layer`` whose activations on ``x`` are all >= 0 (after a ReLU)."""
    order = spatial_layers(model, x)
    last = model.parts(layer)[-1]
    later = order[order.index(last) + 1:] if last in order else []
    if not later:
        return None
    with Probe(model, later) as probe, torch.no_grad():
        acts = probe(x)
    found = next((path for path in later if bool((acts[path] >= 0).all())), None)
    aliases = model.aliases_of(found) if found else []
    return aliases[0] if aliases else found


def _earlier_layer(model: FeatvisModel, x: torch.Tensor, layer: str, earlier: str | None) -> str | None:
    """``earlier`` checked to run before ``layer``; for "auto" the top-level block ``EARLIER_BLOCKS``
    before ``layer``'s (by its Lucid alias when it has one), None when there is none."""
    if earlier is None:
        return None
    order = spatial_layers(model, x)
    if earlier != "auto":
        first, last = model.parts(earlier)[-1], model.parts(layer)[0]
        if first not in order or order.index(first) >= order.index(last):
            raise FeatvisError(f"the earlier layer '{earlier}' must be a spatial layer that runs before '{layer}'; "
                               "choose one from `featvis layers MODEL`")
        return earlier
    top = model.parts(layer)[0].split(".")[0]
    blocks = [path for path in order if "." not in path]
    if top not in blocks or blocks.index(top) == 0:
        return None
    path = blocks[max(blocks.index(top) - EARLIER_BLOCKS, 0)]
    aliases = [alias for alias in model.aliases_of(path) if not alias.endswith("pre_relu")]
    return aliases[0] if aliases else path


def _render_icons(model: FeatvisModel, result: Explanation, grid_step: int, settings: RenderSettings, **options: Any) -> None:
    """All icons in one `render` call: dictionary channels, this layer's groups, the earlier layer's, the grid."""
    layer = result.layer
    objectives = [channel(layer, n) for n in result.channels]
    sets = [result.groups] + ([result.earlier] if result.earlier is not None else [])
    for g in sets:
        for j, vector in enumerate(g.directions):
            objectives.append(_named(direction_neuron(g.layer, vector.float(), cossim_pow=COSSIM_POW), f"group {j} of {g.layer}"))
    _, h, w = result.acts.shape
    start = grid_step // 2  # sampled positions centred in the blocks of units their wide icons cover
    positions = [(y, x) for y in range(start, h, grid_step) for x in range(start, w, grid_step)
                 if float(result.acts[:, y, x].norm()) > 0]
    objectives += [_named(direction_neuron(layer, result.acts[:, y, x], cossim_pow=COSSIM_POW), f"{layer}@{y},{x}")
                   for y, x in positions]
    results = render(model, objectives, settings, natural=False, strict=False, **options)  # a dead unit keeps its icon
    if len(results) != len(objectives) or any(r.interrupted for r in results):
        raise KeyboardInterrupt  # Ctrl-C while rendering: no half-made explanation
    images = [r.image for r in results]
    k = len(result.channels)
    result.channel_icons, images = images[:k], images[k:]
    for g in sets:
        g.icons, images = images[: len(g.directions)], images[len(g.directions):]
    result.grid_icons, result.grid_step, result.steps = dict(zip(positions, images)), grid_step, min(r.steps for r in results)
    result.precision = "bfloat16" if all(r.precision == "bfloat16" for r in results) else "float32"


def _named(objective: Objective, name: str) -> Objective:
    objective.name = name
    return objective
