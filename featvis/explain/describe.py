"""A short, honest description of a unit or a dictionary feature, from the model itself (no outside model).

Two kinds of evidence, both the model's own:

- **promotes**: the classes whose logits the unit raises most (`promoted_classes`: its summed gradient,
  the mean over the first photos, or through the linearized network where no photos are given);
- **seen as**: the classes the model predicts for the unit's top dataset examples (one streaming pass,
  `dataset_examples` without crops), counted.

Where a dictionary of the unit's layer is attached, a neuron also lists the features that load on it
(its polysemanticity count) and a feature the neurons it loads on (`Dictionary.loads`).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .._util.errors import FeatvisError
from ..core.images import load_image
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model
from .promotes import first_photos, promoted_classes

EXAMPLES = 9  # top dataset examples whose predicted classes are counted


@dataclass
class Description:
    """What a unit is, in the model's words: ``promotes`` [(index, label, value)], ``seen_as`` [(index, label,
    count of the ``examples``)]; ``loads`` the other side of an attached dictionary (features on a neuron,
    or neurons of a feature)."""

    unit: str
    promotes: list[tuple[int, str, float]]
    seen_as: list[tuple[int, str, int]] = field(default_factory=list)
    examples: int = 0
    loads: dict | None = None

    @property
    def text(self) -> str:
        words = "promotes " + ", ".join(label for _, label, value in self.promotes[:3] if value > 0) if \
            any(value > 0 for *_, value in self.promotes) else "promotes no class"
        if self.seen_as:
            words += "; its top photos are seen as " + ", ".join(f"{label} ({count}/{self.examples})"
                                                             for _, label, count in self.seen_as[:3])
        return words

    def to_dict(self) -> dict:
        return {"unit": self.unit, "description": self.text,
                "promotes": [{"index": i, "label": label, "value": value} for i, label, value in self.promotes],
                "seen_as": [{"index": i, "label": label, "count": count} for i, label, count in self.seen_as],
                "examples": self.examples, **({"dictionary": self.loads} if self.loads is not None else {})}


@analysis
def describe(model: nn.Module, units: Sequence[str], images: str | os.PathLike | None = None, *, top: int = 5,
             workers: int = 2, progress: bool = False) -> list[Description]:
    """A `Description` of each of ``units`` ("LAYER:CHANNEL"; ``LAYER_features:N`` for a dictionary feature),
    from ``images`` (a folder or a list file) where given, else from the linearized network alone."""
    from ..circuits.connections import parse_unit
    from ..examples import dataset_examples
    from ..examples.source import list_images

    fmodel = as_model(model)
    parsed = [parse_unit(fmodel, unit) for unit in units]
    paths = list_images(images) if images is not None else []
    photos = first_photos(images)
    descriptions = [Description(unit.strip(), promoted_classes(fmodel, layer, channel, photos, top=top), loads=loads_of(fmodel, layer, channel))
                    for unit, (layer, channel) in zip(units, parsed)]
    if paths:
        chosen: dict[str, list[int]] = {}
        for layer, channel in parsed:
            chosen.setdefault(layer, []).append(channel)
        with tempfile.TemporaryDirectory() as scratch:
            result = dataset_examples(fmodel, images, list(chosen), scratch, k=EXAMPLES, workers=workers, crops=False,
                                      shard=(0, 1), progress=progress,
                                      channels={layer: ",".join(map(str, sorted(set(c)))) for layer, c in chosen.items()})
        layers = result.summary["layers"]
        predicted = predictions(fmodel, {e["path"] for per in layers.values() for entries in per.values() for e in entries})
        for description, (layer, channel) in zip(descriptions, parsed):
            entries = layers[layer][str(channel)]
            description.examples = len(entries)
            description.seen_as = seen_as(fmodel, [e["path"] for e in entries], predicted, top)
    return descriptions


def predictions(model: FeatvisModel, paths: set[str] | Sequence[str]) -> dict[str, int]:
    """Each photo's top-1 class, as the model classifies it."""
    ordered = sorted(set(paths))
    predicted = {}
    for start in range(0, len(ordered), 16):
        chunk = ordered[start : start + 16]
        for path, top in zip(chunk, model.classify([load_image(p) for p in chunk], top=1)):
            predicted[path] = top[0][0]
    return predicted


def seen_as(model: FeatvisModel, paths: Sequence[str], predicted: dict[str, int] | None = None,
            top: int = 5) -> list[tuple[int, str, int]]:
    """The classes the model predicts for the photos ``paths`` (a unit's top examples), most frequent first."""
    predicted = predicted if predicted is not None else predictions(model, paths)
    counts = Counter(predicted[path] for path in paths)
    return [(i, model.label(i), n) for i, n in counts.most_common(top)]


@torch.no_grad()
def class_scores(model: FeatvisModel) -> bool:
    """Whether the model's output is class scores [N, classes] (what a description is in terms of)."""
    x = torch.zeros(1, 3, model.input_size, model.input_size, device=model.mean.device)
    return model(x).dim() == 2


def loads_of(model: FeatvisModel, layer: str, channel: int) -> dict | None:
    """For a neuron of a layer with an attached dictionary: the features that load on it and their count; for a
    feature: the neurons it loads on (strongest first). None where no dictionary is attached there."""
    if layer in model.concats:  # several modules' outputs: never a dictionary's layer
        return None
    for name, dictionary in model.dictionaries.items():
        if layer == name:
            weights, loads = dictionary.decoder[channel], dictionary.loads()[channel]
            neurons = _strongest(weights, loads)
            return {"layer": dictionary.layer, "neurons": neurons, "weights": [float(weights[c]) for c in neurons]}
        if model.site(layer) == model.site(dictionary.layer):
            if channel >= dictionary.channels:
                raise FeatvisError(f"channel {channel} is out of range for {layer} ({dictionary.channels} channels)")
            loads = dictionary.loads()[:, channel]
            return {"layer": name, "features": _strongest(dictionary.decoder[:, channel], loads),
                    "polysemanticity": int(loads.sum())}
    return None


def _strongest(weights: torch.Tensor, loads: torch.Tensor) -> list[int]:
    """The indices where ``loads`` holds, by the size of ``weights`` there, largest first."""
    return [int(i) for i in weights.abs().argsort(descending=True) if loads[i]]


__all__ = ["Description", "class_scores", "describe", "loads_of", "predictions", "seen_as"]
