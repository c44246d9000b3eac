"""Feature accentuation (Hamblin, Fel, Saha, Konkle & Alvarez, "Feature Accentuation: Revealing 'What'
Features Respond to in Natural Images", 2023): what in *this* photo drives a unit.

The optimisation starts from the photo and raises the unit while a penalty keeps the image close
to the photo in a chosen layer (by default the unit's own): with ``d`` the relative distance
``||A(x) - A(photo)|| / ||A(photo)||`` of the layer's activations, the score is
``objective - natural_max * (d / distance)^2``, so drifting ``distance`` away costs as much as the
best natural photo's activation. Both images see the same random transforms at every step, so
the penalty compares like with like. At the end each image is pulled back toward the photo
along the straight line between them (bisection) until ``d <= distance``: the result never
strays further than asked, measured without transforms at the rendering scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .._util.errors import FeatvisError
from .objectives import INPUT, Objective

SEED = "seed:"  # prefix of the photo's activations in the ``acts`` rendering passes to objectives
DEFAULT_DISTANCE = 0.5
BISECTION_STEPS = 10


@dataclass(frozen=True)
class Accentuation:
    """Accentuate a photo (rendering's start image) in ``layer`` (None: each objective's own first
    layer), keeping the relative distance there at most ``distance``."""

    layer: str | None = None
    distance: float = DEFAULT_DISTANCE

    def layer_for(self, objective: Objective) -> str:
        layer = self.layer or next((name for name in objective.layers if name != INPUT), None)
        if layer is None or objective.span != 1:
            raise FeatvisError(f"cannot accentuate '{objective.name}': it needs one image and a layer; "
                               "give a unit, channel or class spec, or --accentuate-layer")
        return layer

    def penalty(self, objective: Objective, scale: float) -> Objective:
        """``scale * (d / distance)^2`` per image, ``d`` against the photo's activations in ``acts``."""
        layer = self.layer_for(objective)

        def fn(acts):
            return scale * (relative_distance(acts[layer], acts[SEED + layer]) / self.distance) ** 2

        return Objective(fn, f"accentuation penalty in {layer}", (layer,))


def relative_distance(acts: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||acts - target|| / ||target||`` per image of a batch [B, ...]."""
    return (acts - target).flatten(1).norm(dim=1) / target.flatten(1).norm(dim=1).clamp_min(1e-12)


Features = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]  # images [B, 3, s, s] -> {layer: activations}


@torch.no_grad()
def pull_back(features: Features, images: torch.Tensor, photo: torch.Tensor, layers: list[str],
              limit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image moved toward the photo just enough that its distance (image b in ``layers[b]``) is at
    most ``limit``; returns (images, their distances). ``photo + t (image - photo)`` with the largest
    t in [0, 1] found by bisection. ``features`` gives the activations, without transforms."""
    target = features(photo)

    def distances(batch: torch.Tensor) -> torch.Tensor:
        ours = features(batch)
        return torch.stack([relative_distance(ours[layer][b : b + 1], target[layer])[0] for b, layer in enumerate(layers)]).cpu()

    far = distances(images)
    if bool((far <= limit).all()):
        return images, far
    low, high = (far <= limit).float(), torch.ones(len(images))  # images already close keep t = 1
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        ok = distances(photo + middle.to(photo).view(-1, 1, 1, 1) * (images - photo)) <= limit
        low, high = torch.where(ok, middle, low), torch.where(ok, high, middle)
    result = photo + low.to(photo).view(-1, 1, 1, 1) * (images - photo)
    return result, distances(result)
