"""The effective receptive field (Luo, Li, Urtasun & Zemel, "Understanding the Effective Receptive
Field in Deep Convolutional Neural Networks", NeurIPS 2016).

The theoretical field says which pixels a unit *can* see; the effective field says how much each
pixel actually moves it: the gradient of the layer's centre unit (all channels) with respect to
the input, its magnitude averaged over many inputs (uniform noise, or real photos). Luo et al.
showed it is roughly Gaussian and fills only a fraction of the theoretical field, a fraction that
shrinks as networks get deeper (the effective field grows like sqrt(n) with n layers, the
theoretical one like n).

The effective size reported is the side of the smallest square, centred on the unit's field,
that holds ``mass`` (95%) of the gradient magnitude; ``std`` is the Gaussian fit by moments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from .._util.errors import FeatvisError
from .._util.reprs import short_repr
from ..core.figures import PANEL_TITLE_SIZE, TITLE_SIZE, add_colorbar, new_figure, show_map
from ..core.probe import Probe, model_input
from ..models.modes import analysis
from ..models.wrapper import as_model
from .result import Box, ReceptiveField
from .tracer import receptive_field

__all__ = ["EffectiveField", "effective_receptive_field", "effective_field_figure"]


@dataclass(frozen=True)
class EffectiveField:
    """The effective receptive field of the centre unit of one layer."""

    layer: str
    unit: tuple[int, int]  # the unit measured (nearest the image centre)
    gradient: torch.Tensor  # [H, W]: mean over inputs of |d unit / d pixel|, summed over colour channels
    theoretical: ReceptiveField
    source: str  # "noise" or "photos"
    inputs: int  # how many images were averaged
    mass: float  # share of the gradient the effective size holds

    __repr__ = short_repr  # the gradient's shape, not its values

    @property
    def center(self) -> tuple[float, float]:
        """Input-space centre of the unit's theoretical field (pixel indices)."""
        if self.theoretical.stride in (None, (0, 0)):  # no single formula: the centre of what it sees
            return self.theoretical.visible(self.unit).center
        return self.theoretical.center(self.unit)

    @property
    def half_width(self) -> float:
        """Half the side of the smallest square around ``center`` holding ``mass`` of the gradient."""
        grad = self.gradient.double()
        ys, xs = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in grad.shape), indexing="ij")
        distance = torch.maximum((ys - self.center[0]).abs(), (xs - self.center[1]).abs()).flatten()
        order = distance.argsort()
        cumulative = grad.flatten()[order].cumsum(0)
        inside = int(torch.searchsorted(cumulative, self.mass * cumulative[-1]))
        return float(distance[order][min(inside, len(order) - 1)])

    @property
    def size(self) -> float:
        """Effective size: the side (px) of that square."""
        return 2 * self.half_width + 1

    @property
    def box(self) -> Box:
        """That square, in pixel bounds (half-open), unclipped."""
        (cy, cx), half = self.center, self.half_width
        return Box(round(cy - half), round(cx - half), round(cy + half) + 1, round(cx + half) + 1)

    @property
    def std(self) -> tuple[float, float]:
        """Standard deviation (px) of the gradient mass around ``center`` along y and x: a Gaussian fit by moments."""
        grad = self.gradient.double()
        total = grad.sum()
        spread = []
        for axis, centre in enumerate(self.center):
            marginal = grad.sum(1 - axis)
            offsets = torch.arange(len(marginal), dtype=torch.float64) - centre
            spread.append(float((marginal * offsets**2).sum() / total) ** 0.5)
        return spread[0], spread[1]

    @property
    def fraction(self) -> float:
        """Effective size over theoretical size (along y; the field clipped to the image)."""
        theory = self.theoretical.visible(self.unit)
        return self.size / max(theory.height, 1)

    def to_dict(self) -> dict:
        theory = self.theoretical.visible(self.unit)
        return {
            "layer": self.layer,
            "unit": list(self.unit),
            "effective_size": round(self.size, 2),
            "mass": self.mass,
            "std": [round(s, 3) for s in self.std],
            "theoretical_size": list(self.theoretical.size) if self.theoretical.size else None,
            "theoretical_visible": [theory.height, theory.width],
            "fraction": round(self.fraction, 4),
            "source": self.source,
            "inputs": self.inputs,
        }


@analysis
def effective_receptive_field(
    model: nn.Module,
    layer: str,
    images: Sequence[torch.Tensor] | None = None,
    *,
    samples: int = 32,
    input_size: int | None = None,
    mass: float = 0.95,
    seed: int = 0,
    batch: int = 8,
) -> EffectiveField:
    """Luo et al.'s effective field of ``layer``'s centre unit, with the model's own weights.

    ``images``: photos ([3, H, W] in [0, 1], resized and centre-cropped like for classification);
    without them, ``samples`` images of uniform noise in [0, 1] (seeded by ``seed``) of
    ``input_size`` pixels (default the model's). ``mass`` sets the share of the gradient the
    effective size holds.
    """
    fmodel = as_model(model)
    if not 0 < mass < 1:
        raise FeatvisError(f"mass must be between 0 and 1 (e.g. 0.95), got {mass}")
    size = int(input_size or fmodel.input_size)
    if images is not None:
        images = list(images)
        if not images:
            raise FeatvisError("no images given; pass photos, or none for noise")
        inputs = torch.cat([model_input(fmodel, image) for image in images])
        if inputs.shape[-1] != size or inputs.shape[-2] != size:
            inputs = F.interpolate(inputs, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        source = "photos"
    else:
        if samples < 1:
            raise FeatvisError(f"samples must be at least 1, got {samples}")
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.rand(samples, 3, size, size, generator=generator)
        source = "noise"
    theory = receptive_field(fmodel, layer, input_size=size)
    if theory.unanalysed and not theory.spans:
        theory.region((0, 0))  # raises the error that names what featvis cannot analyse
    unit = theory.central_unit()
    total = torch.zeros(size, size, dtype=torch.float64)
    with Probe(fmodel, [layer], early_exit=True, detach=False) as probe:
        for start in range(0, len(inputs), batch):
            x = inputs[start : start + batch].to(fmodel.mean.device).requires_grad_(True)
            act = probe(x)[layer]
            target = act[:, :, unit[0], unit[1]] if act.dim() == 4 else act
            (grad,) = torch.autograd.grad(target.sum(), x)  # samples are independent: one backward for the batch
            total += grad.abs().sum(1).sum(0).double().cpu()
    return EffectiveField(layer, unit, (total / len(inputs)).float(), theory, source, len(inputs), mass)


def effective_field_figure(erf: EffectiveField, model_name: str = "") -> Figure:
    """The effective field as a heat map with the theoretical field (cyan) and the effective square
    (white) drawn on it, beside its profile through the centre against the theoretical extent."""
    fig = new_figure(10.0, 4.4)
    map_ax, profile_ax = fig.subplots(1, 2, width_ratios=[1.0, 1.2])
    mappable = show_map(map_ax, erf.gradient, "heat", clip=99.9, title=f"mean |gradient| of unit {erf.unit}")
    add_colorbar(fig, mappable, map_ax, "mean |gradient|")
    theory = erf.theoretical.visible(erf.unit)
    for box, colour, label in ((theory, "cyan", "theoretical"), (erf.box, "white", f"effective ({erf.mass:.0%})")):
        map_ax.add_patch(Rectangle((box.x0 - 0.5, box.y0 - 0.5), box.width, box.height, fill=False, edgecolor=colour,
                                   linewidth=1.4, linestyle="-" if colour == "cyan" else "--", label=label))
    map_ax.legend(loc="lower right", fontsize=7, framealpha=0.6)

    grad = erf.gradient.double().numpy()
    cy, cx = erf.center
    for axis, (name, colour) in enumerate((("rows (y)", "tab:blue"), ("columns (x)", "tab:orange"))):
        marginal = grad.sum(axis=1 - axis)
        offsets = np.arange(len(marginal)) - (cy, cx)[axis]
        profile_ax.plot(offsets, marginal / marginal.sum(), color=colour, label=f"gradient mass along {name}")
    half_theory = (theory.y0 - cy, theory.y1 - 1 - cy)
    r = erf.theoretical.size[0] if erf.theoretical.size else "?"
    profile_ax.axvspan(*half_theory, color="cyan", alpha=0.15, label=f"theoretical field ({r} px)")
    profile_ax.axvline(-erf.half_width, color="grey", linestyle="--")
    profile_ax.axvline(erf.half_width, color="grey", linestyle="--", label=f"effective size {erf.size:.0f} px")
    profile_ax.set_xlabel("offset from the unit's centre (px)", fontsize=PANEL_TITLE_SIZE)
    profile_ax.set_ylabel("share of gradient mass", fontsize=PANEL_TITLE_SIZE)
    profile_ax.tick_params(labelsize=7)
    profile_ax.legend(fontsize=7)
    profile_ax.set_title(f"std {erf.std[0]:.1f} x {erf.std[1]:.1f} px (Gaussian fit)", fontsize=PANEL_TITLE_SIZE)
    name = f"{model_name} " if model_name else ""
    fig.suptitle(f"{name}{erf.layer}: effective field {erf.size:.0f} px ({erf.fraction:.0%} of the theoretical "
                 f"{theory.height} px), mean over {erf.inputs} {erf.source}", fontsize=TITLE_SIZE)
    return fig
