"""Is a saliency map explaining the model, or just the photo? Two built-in checks.

- Cascading model-parameter randomization (Adebayo et al., "Sanity Checks for Saliency Maps",
  NeurIPS 2018): re-initialise the network block by block from the top (logits) down and
  compare each map with the trained model's by Spearman rank correlation (of the signed map
  and of its magnitude) and SSIM. A method that explains the model must change as the model
  is destroyed; Adebayo et al. found the vanilla gradient does and guided backprop barely does.
- Deletion / insertion (Petsiuk et al., "RISE", BMVC 2018): remove (or insert) pixels in the
  map's order of importance and record the class probability; a faithful map makes the
  probability fall fast (low deletion AUC) and rise fast (high insertion AUC).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from .._util.choices import GUIDED
from .._util.errors import FeatvisError
from .._util.progress import progress_bar
from .._util.reprs import short_repr
from ..core.figures import TITLE_SIZE, new_figure
from ..core.probe import model_input
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model
from .methods import SaliencyResult, attribute, check_method, describe, draw_saliency, guided_model, reduce_map, resolve_target

# --- similarity measures --------------------------------------------------------------------

def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    ends = np.append(starts[1:], values.size)
    group = np.repeat(np.arange(starts.size), ends - starts)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = ((starts + ends - 1) / 2.0)[group]
    return ranks


def spearman(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Spearman rank correlation of two equally shaped arrays (NaN when either is constant)."""
    x, y = (np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64).ravel() for v in (a, b))
    if x.shape != y.shape:
        raise FeatvisError(f"cannot correlate maps of {x.size} and {y.size} values; give maps of the same shape")
    rx, ry = _ranks(x) - (x.size - 1) / 2.0, _ranks(y) - (y.size - 1) / 2.0
    denominator = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denominator if denominator > 0 else float("nan")


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    window = torch.exp(-0.5 * (taps / sigma) ** 2)
    return window / window.sum()


def ssim(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004) of two 2-D maps.

    Gaussian window sigma 1.5 (11 taps), K1 = 0.01, K2 = 0.03, population statistics, averaged
    over the pixels whose window lies inside the image — the choices of scikit-image's
    ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``.
    """
    x, y = (torch.as_tensor(np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v), dtype=torch.float64)
            for v in (a, b))
    if x.dim() != 2 or x.shape != y.shape:
        raise FeatvisError(f"SSIM needs two 2-D maps of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    window = _gaussian_window()
    if min(x.shape) < window.numel():
        raise FeatvisError(f"SSIM needs maps of at least {window.numel()}x{window.numel()} pixels, got {tuple(x.shape)}")

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.conv2d(t[None, None], window.view(1, 1, -1, 1))
        return F.conv2d(t, window.view(1, 1, 1, -1))[0, 0]

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index.mean())


# --- cascading randomization ---------------------------------------------------------------

@dataclass
class SanityStep:
    """The map after randomizing ``depth`` blocks from the top, the last being ``layer``."""

    depth: int
    layer: str
    spearman: float
    spearman_abs: float
    ssim: float

    def to_dict(self) -> dict:
        """JSON-ready: NaN (an all-constant map) becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _blocks(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Children holding parameters; plain ``nn.Sequential`` containers are opened up (vgg's
    ``features``, resnet's ``layer4``), so every block is one layer or one designed unit."""
    blocks = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if type(child) in (nn.Sequential, nn.ModuleList):
            blocks.extend(_blocks(child, f"{path}."))
        elif any(True for _ in child.parameters()):
            blocks.append((path, child))
    return blocks


@torch.no_grad()
def execution_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Paths of ``model.net``'s blocks holding parameters (see ``_blocks``), in the order they first run."""
    fmodel = as_model(model)
    order: dict[str, None] = {}

    def record(name: str):
        def hook(module, inputs) -> None:
            order.setdefault(name)

        return hook

    handles = [child.register_forward_pre_hook(record(name)) for name, child in _blocks(fmodel.net)]
    try:
        fmodel(x)
    finally:
        for handle in handles:
            handle.remove()
    return list(order)


def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every parameter of ``module`` in place: Gaussian noise of the same std per tensor.

    Keeping each tensor's scale keeps activations in a sane range, so what the check measures is
    the loss of learned structure, not overflow or vanishing signal.
    """
    for param in module.parameters():
        std = float(param.std()) if param.numel() > 1 else 0.0
        std = std or float(param.abs().mean()) or 0.01
        noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        param.copy_(noise.to(param.device) * std)


def _normalized(values: torch.Tensor) -> torch.Tensor:
    peak = values.max()
    return values / peak if peak > 0 else values


@analysis
def cascading_randomization(
    model: nn.Module,
    image: torch.Tensor,
    method: str = "saliency",
    *,
    target: int | str | None = None,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = False,
    **options,
) -> list[SanityStep]:
    """Adebayo et al.'s cascading randomization: one ``SanityStep`` per randomized block.

    ``layers`` are randomized cumulatively in the order given (default: the blocks holding
    parameters, from the last to run down to the first; see ``execution_order``). Maps are compared with the
    trained model's for the same class: Spearman of the signed channel sum, Spearman and SSIM
    of the magnitude (SSIM on maps scaled to a peak of 1). ``options`` go to
    ``featvis.saliency.attribute`` (``layer`` for Grad-CAM stays fixed). ``progress``: a bar (plain
    lines in a log) over the randomized blocks.
    """
    fmodel = as_model(model)
    check_method(method)
    x = model_input(fmodel, image)
    index, _, _ = resolve_target(fmodel, x, target)
    order = list(layers) if layers is not None else execution_order(fmodel, x)[::-1]
    paths = [fmodel.resolve(layer) for layer in order]
    if not paths:
        raise FeatvisError(f"{fmodel.name} has no layers with parameters to randomize")
    reference = attribute(fmodel, x, method, index, **options)
    signed, magnitude = reduce_map(reference, absolute=False), reduce_map(reference, absolute=True)
    randomized: FeatvisModel = copy.deepcopy(fmodel)
    if method in GUIDED:  # prepare the ReLUs once: the preparation survives re-initialised weights
        randomized = guided_model(randomized)
    generator = torch.Generator().manual_seed(seed)
    steps = []
    with progress_bar(len(paths), "sanity check", "blocks", enabled=progress) as bar:
        for depth, (layer, path) in enumerate(zip(order, paths), start=1):
            with torch.no_grad():
                randomize_(randomized.net.get_submodule(path), generator)
            current = attribute(randomized, x, method, index, **options)
            current_magnitude = reduce_map(current, absolute=True)
            steps.append(SanityStep(
                depth=depth,
                layer=layer,
                spearman=spearman(signed, reduce_map(current, absolute=False)),
                spearman_abs=spearman(magnitude, current_magnitude),
                ssim=ssim(_normalized(magnitude), _normalized(current_magnitude)),
            ))
            bar.update(1)
    return steps


_CURVES = (("spearman", "o-", "Spearman"), ("spearman_abs", "s--", "Spearman |map|"), ("ssim", "^:", "SSIM |map|"))


def sanity_axes(ax, steps: Sequence[SanityStep], title: str | None = None) -> None:
    """Plot Spearman (signed, |map|) and SSIM against the randomized block on ``ax``."""
    labels = ["none"] + [step.layer for step in steps]
    depth = range(len(labels))
    lowest = 0.0
    for name, style, legend in _CURVES:
        values = [1.0] + [getattr(step, name) for step in steps]
        lowest = min([lowest] + [v for v in values if v == v])  # NaN (a constant map) is not drawn
        ax.plot(depth, values, style, label=legend, markersize=4)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_xticks(list(depth), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(min(-0.3, lowest - 0.05), 1.05)  # every point on the chart: similarities reach -1
    ax.set_ylabel("similarity to trained map", fontsize=8)
    ax.set_xlabel("randomized down to (cumulative, from the top)", fontsize=8)
    ax.legend(fontsize=7, loc="lower left")
    if title:
        ax.set_title(title, fontsize=9)


def sanity_figure(results: dict[str, Sequence[SanityStep]], title: str = "cascading randomization") -> Figure:
    """One panel per method: similarity to the trained model's map as blocks are randomized."""
    fig = new_figure(4.5 * len(results), 4.0)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (method, steps) in zip(axes, results.items()):
        sanity_axes(ax, steps, method)
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return fig


# --- deletion / insertion ------------------------------------------------------------------

@dataclass
class DeletionInsertion:
    """Probability of the class as pixels are deleted / inserted in the map's order, and the AUCs."""

    deletion_auc: float
    insertion_auc: float
    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor

    __repr__ = short_repr  # shapes, not curve values


def blurred(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """The insertion canvas: ``x`` [N, 3, H, W] under a Gaussian blur (sigma default 1/16 of the shorter side).

    RISE's own 11-tap blur leaves a 224 px photo recognisable (``inceptionv1`` still calls the
    blurred coffee photo 'espresso' at p ~ 0.93), so insertion would start near its end point;
    a blur of about 14 px at 224 removes the object's detail but keeps the layout and colours.
    """
    sigma = sigma or min(x.shape[-2:]) / 16
    radius = max(1, min(int(3 * sigma), min(x.shape[-2:]) - 1))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    window = torch.exp(-0.5 * (taps / sigma) ** 2)
    window = (window / window.sum()).view(1, 1, 1, -1).expand(x.shape[1], 1, 1, -1)
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, window, groups=x.shape[1])
    return F.conv2d(rows, window.transpose(-1, -2), groups=x.shape[1])


@analysis
@torch.no_grad()
def deletion_insertion(
    model: nn.Module,
    image: torch.Tensor,
    saliency_map: torch.Tensor,
    target: int | str | None = None,
    *,
    steps: int = 32,
    batch: int = 16,
) -> DeletionInsertion:
    """RISE deletion and insertion scores of a map [H, W] for the model input made from ``image``.

    Deletion sets pixels to black, most important first; insertion starts from a blurred
    copy (``blurred``) and restores the photo's pixels, most important first. Each curve has ``steps + 1``
    points (0 to 100 % of pixels); AUC is the trapezoid area under the class probability.
    """
    fmodel = as_model(model)
    x = model_input(fmodel, image)
    index, _, _ = resolve_target(fmodel, x, target)
    if tuple(saliency_map.shape) != tuple(x.shape[-2:]):
        raise FeatvisError(f"the map has shape {tuple(saliency_map.shape)} but the model input is {tuple(x.shape[-2:])}; "
                           "compute the map on the same input")
    if steps < 1:
        raise FeatvisError(f"deletion/insertion needs at least 1 step, got {steps}")
    pixels = saliency_map.numel()
    order = torch.argsort(saliency_map.flatten().to(x.device), descending=True, stable=True)
    counts = [round(k * pixels / steps) for k in range(steps + 1)]
    canvases = {"deletion": (x, torch.zeros_like(x)), "insertion": (blurred(x), x)}
    curves = {}
    for name, (start, finish) in canvases.items():
        probs = []
        for chunk in range(0, steps + 1, batch):
            masks = torch.zeros(len(counts[chunk : chunk + batch]), pixels, device=x.device)
            for row, count in enumerate(counts[chunk : chunk + batch]):
                masks[row, order[:count]] = 1.0
            masks = masks.view(-1, 1, *x.shape[-2:])
            probs.append(fmodel(start * (1 - masks) + finish * masks).softmax(dim=1)[:, index])
        curves[name] = torch.cat(probs).cpu()
    fractions = torch.tensor(counts, dtype=torch.float32) / pixels
    return DeletionInsertion(
        deletion_auc=float(torch.trapezoid(curves["deletion"], fractions)),
        insertion_auc=float(torch.trapezoid(curves["insertion"], fractions)),
        fractions=fractions,
        deletion=curves["deletion"],
        insertion=curves["insertion"],
    )


def report_figure(result: SaliencyResult, scores: DeletionInsertion,
                  sanity: Sequence[SanityStep] | None = None, overlay: str | None = None) -> Figure:
    """The map with its deletion/insertion curves and, when given, its cascading-randomization curves."""
    panels = 2 if sanity else 1
    fig = new_figure(8.0 + 4.0 * panels, 4.2)
    map_fig, score_fig = fig.subfigures(1, 2, width_ratios=[8.0, 4.0 * panels])
    draw_saliency(map_fig, result, overlay)
    axes = score_fig.subplots(1, panels, squeeze=False)[0]
    axes[0].plot(scores.fractions, scores.deletion, label=f"deletion (AUC {scores.deletion_auc:.3f})")
    axes[0].plot(scores.fractions, scores.insertion, label=f"insertion (AUC {scores.insertion_auc:.3f})")
    axes[0].set_xlabel("fraction of pixels removed / inserted", fontsize=8)
    axes[0].set_ylabel(f"p('{result.label}')", fontsize=8)
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(fontsize=7)
    axes[0].set_title("deletion / insertion", fontsize=9)
    if sanity:
        sanity_axes(axes[1], sanity, "cascading randomization")
    fig.suptitle(describe(result), fontsize=TITLE_SIZE)
    return fig


__all__ = [
    "report_figure",
    "DeletionInsertion",
    "SanityStep",
    "cascading_randomization",
    "deletion_insertion",
    "execution_order",
    "randomize_",
    "sanity_figure",
    "spearman",
    "ssim",
]
