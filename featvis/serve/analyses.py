"""The analyses behind a unit page and a photo page, computed by the background tasks on the
server's second copy of the model: circuits (expanded weights, featvis.circuits), the effective
receptive field (featvis.receptive_field.effective), and a photo's classification, saliency and `explain`
building blocks. Each writes its figures atomically into the cache and returns plain data.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .._util.errors import FeatvisError
from .._util.fileio import atomic_write_text
from ..circuits import expanded_weights
from ..circuits.connections import channel_wise, rank
from ..core.figures import save_figure
from ..core.images import save_image
from ..explain import explain, explanation_page
from ..models.wrapper import FeatvisModel, prepare_image
from ..receptive_field.effective import effective_field_figure, effective_receptive_field
from ..saliency import saliency, saliency_figure
from .units import ModelInfo

ERF_SAMPLES = 8  # noise images for the effective field: enough for its shape, quick on a CPU


class Circuits:
    """Each unit's strongest inputs and outputs by expanded weight; one matrix per layer pair, kept.

    The other end of a circuit is the nearest layer whose channels mix with this one's: layers
    joined channel by channel (a ReLU, batch norm, pool or identity, as between every convolution
    of a ``Sequential`` CNN and its activation) are passed over, since they would show only the
    same unit again with weight 1."""

    def __init__(self, model: FeatvisModel, info: ModelInfo, k: int):
        self.model, self.info, self.k = model, info, k
        self._weights: dict[tuple[str, str], torch.Tensor | str] = {}
        self._lock = threading.Lock()

    def _pair(self, source: str, target: str) -> torch.Tensor | str:
        with self._lock:
            if (source, target) not in self._weights:
                try:
                    self._weights[source, target] = expanded_weights(self.model, source, target)
                except FeatvisError as exc:  # e.g. layers on parallel branches
                    self._weights[source, target] = str(exc)
            return self._weights[source, target]

    def _mixing(self, a: str, b: str) -> bool:
        """Whether the pair (``a`` before ``b``) mixes channels (or cannot be expanded at all)."""
        weights = self._pair(a, b)
        return not isinstance(weights, torch.Tensor) or not channel_wise(weights)

    def _across(self, layer: str, incoming: bool) -> tuple[str | None, torch.Tensor | str | None]:
        """The nearest mixing layer before (``incoming``) or after ``layer`` and the weights of the pair.

        An input layer is taken at the start of its channel-wise chain, as the Circuits thread names
        mixed3b (not the max pool after it) as mixed4a's input, so both ends of a circuit agree."""
        step = self.info.source_of if incoming else self.info.target_of
        other = step(layer)
        for _ in range(len(self.info.rows)):
            if other is None or (self._mixing(other, layer) if incoming else self._mixing(layer, other)):
                break
            other = step(other)
        if other is None:
            return None, None
        for _ in range(len(self.info.rows) if incoming else 0):
            before = step(other)
            if before is None or self._mixing(before, other) or not isinstance(self._pair(before, layer), torch.Tensor):
                break
            other = before
        return other, self._pair(other, layer) if incoming else self._pair(layer, other)

    def connections(self, layer: str, channel: int) -> dict:
        """``{"unit", "source", "target", "inputs", "outputs", "problems"}``, as ``featvis circuit --json`` lists them."""
        (source, incoming), (target, outgoing) = self._across(layer, True), self._across(layer, False)
        problems = [value for value in (incoming, outgoing) if isinstance(value, str)]
        inputs = rank(incoming[channel], source, self.k) if isinstance(incoming, torch.Tensor) else []
        outputs = rank(outgoing[:, channel], target, self.k) if isinstance(outgoing, torch.Tensor) else []
        return {"unit": f"{layer}:{channel}", "source": source, "target": target, "problems": problems,
                "inputs": [c.to_dict() for c in inputs], "outputs": [c.to_dict() for c in outputs]}


def effective_field(model: FeatvisModel, layer: str, png: Path) -> dict:
    """Luo et al.'s effective field of the layer's central unit (noise inputs), its figure saved as ``png``."""
    erf = effective_receptive_field(model, layer, samples=ERF_SAMPLES)
    save_figure(effective_field_figure(erf, model.name), png, dpi=80)
    return erf.to_dict()


@dataclass(frozen=True)
class PhotoSettings:
    """How a photo is explained: the layer, icons' steps and size, NMF groups, seed, precision."""

    layer: str
    steps: int
    size: int
    groups: int
    seed: int
    precision: str

    def to_json(self) -> dict:
        return {"layer": self.layer, "steps": self.steps, "size": self.size, "groups": self.groups, "seed": self.seed,
                "precision": self.precision}


def analyse_photo(model: FeatvisModel, photo: torch.Tensor, out: Path, settings: PhotoSettings, top: int = 5) -> dict:
    """Classify the photo, its saliency (vanilla gradient) and its building blocks at ``settings.layer``;
    writes ``input.png``, ``saliency.png`` and ``explain.html`` into ``out``."""
    classes = [{"index": i, "label": label, "prob": prob} for i, label, prob in model.classify([photo], top=top)[0]]
    save_image(prepare_image(photo, model.input_size)[0], out / "input.png")
    result = saliency(model, photo, "saliency")
    save_figure(saliency_figure(result), out / "saliency.png", dpi=80)
    expl = explain(model, photo, settings.layer, groups=settings.groups, earlier=None, steps=max(settings.steps, 1),
                   size=settings.size, icons=settings.steps > 0, seed=settings.seed, precision=settings.precision,
                   progress=False)
    atomic_write_text(out / "explain.html", explanation_page(model, expl, f"{model.name}: why '{expl.label}'? ({expl.layer})"))
    return {"classes": classes, "saliency": {"method": "saliency", "target": result.label},
            "explain": {"label": expl.label, "target": expl.target, "prob": expl.prob, "layer": expl.layer,
                        "total": expl.total, "groups": [float(v) for v in expl.groups.attribution.tolist()],
                        "channels": [int(c) for c in expl.channels], "values": [float(v) for v in expl.values]}}
