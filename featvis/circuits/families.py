"""Neuron families: a layer's channels grouped by what they read from the layer below.

Olah et al. ("An Overview of Early Vision in InceptionV1", Distill 2020) sort units into families
(curve detectors, line detectors, ...) whose members use similar weights. Here each channel of
``layer`` is described by its expanded weights from ``source`` (flattened), channels are compared
by cosine similarity, and average-linkage agglomerative clustering on the cosine distance (the
UPGMA of Sokal & Michener, 1958) orders them so that families sit next to each other and cuts
the tree into ``clusters`` groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._util.errors import FeatvisError
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model, split_call
from .expanded import expanded_weights

MAX_CHANNELS = 4096  # channels clustered at once (the distance matrix is channels^2)


@dataclass(frozen=True)
class WeightSimilarity:
    """``similarity[i, j]``: cosine similarity of channels i and j of ``layer`` by their expanded
    weights from ``source``; ``order``: channels in dendrogram order (families adjacent);
    ``labels[i]``: the family (0 .. clusters-1) of channel i."""

    layer: str
    source: str
    similarity: torch.Tensor
    order: list[int]
    labels: list[int]

    def families(self) -> list[list[int]]:
        """The channels of each family, in dendrogram order."""
        groups: dict[int, list[int]] = {}
        for channel in self.order:
            groups.setdefault(self.labels[channel], []).append(channel)
        return list(groups.values())


def previous_layer(model: FeatvisModel, layer: str) -> str:
    """The module that runs just before ``layer`` at its level of nesting (its previous sibling,
    else its parent's): ``inception3b`` -> ``inception3a``, ``layer2.0`` -> ``layer1``. A dictionary's
    features (`featvis.attach_dictionary`) come from their layer, and are no other module's previous one."""
    if layer in model.dictionaries:
        return model.dictionaries[layer].layer
    features = {model.resolve(name) for name in model.dictionaries}
    path = model.resolve(layer)
    if split_call(model.site(layer))[1] is not None:
        raise FeatvisError(f"layer '{layer}' is one call of a module that runs several times, so no module comes just "
                           "before it; name the source layer explicitly")
    while path:
        parent, _, name = path.rpartition(".")
        siblings = [n for n, _ in model.net.get_submodule(parent).named_children()
                    if (f"{parent}.{n}" if parent else n) not in features or n == name]
        position = siblings.index(name)
        if position > 0:
            return f"{parent}.{siblings[position - 1]}" if parent else siblings[position - 1]
        path = parent
    raise FeatvisError(f"layer '{layer}' has no layer before it; name the source layer explicitly")


def average_linkage(distance: np.ndarray, clusters: int) -> tuple[list[int], list[int]]:
    """UPGMA on a symmetric distance matrix: (leaf order, cluster label per item for ``clusters`` groups)."""
    n = len(distance)
    d = distance.astype(np.float64).copy()
    np.fill_diagonal(d, np.inf)
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    sizes = np.ones(n)
    alive = np.ones(n, dtype=bool)
    labels = list(range(n))
    for merged in range(n - 1):
        flat = int(np.argmin(d))  # merged-away rows and columns hold inf
        a, b = divmod(flat, n)
        a, b = min(a, b), max(a, b)
        row = (sizes[a] * d[a] + sizes[b] * d[b]) / (sizes[a] + sizes[b])  # Lance-Williams update
        d[a], d[:, a] = row, row
        d[a, a] = np.inf
        d[b], d[:, b] = np.inf, np.inf
        sizes[a] += sizes[b]
        alive[b] = False
        members[a] = members[a] + members.pop(b)
        if n - merged - 1 == clusters:
            labels = _labels(members, n)
    if clusters >= n:
        return list(range(n)), list(range(n))
    return members[int(np.flatnonzero(alive)[0])], labels if clusters > 1 else [0] * n


def _labels(members: dict[int, list[int]], n: int) -> list[int]:
    labels = [0] * n
    for label, group in enumerate(sorted(members.values(), key=min)):
        for item in group:
            labels[item] = label
    return labels


@analysis
def weight_similarity(model: nn.Module, layer: str, source: str | None = None, clusters: int = 8, *,
                      weights: torch.Tensor | None = None) -> WeightSimilarity:
    """Group ``layer``'s channels into ``clusters`` families by their expanded weights from
    ``source`` (default: the layer just before, see `previous_layer`); see the module docstring.
    ``weights``: ``expanded_weights(model, source, layer)`` when already computed."""
    fmodel = as_model(model)
    source = source or previous_layer(fmodel, layer)
    weights = expanded_weights(fmodel, source, layer) if weights is None else weights
    if len(weights) > MAX_CHANNELS:
        raise FeatvisError(f"layer '{layer}' has {len(weights)} channels; weight_similarity clusters at most {MAX_CHANNELS}")
    if clusters < 1:
        raise FeatvisError(f"clusters must be at least 1, got {clusters}")
    flat = weights.flatten(1)
    unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-300)
    similarity = unit @ unit.T
    order, labels = average_linkage((1 - similarity).clamp_min(0).numpy(), min(clusters, len(weights)))
    return WeightSimilarity(layer, source, similarity, order, labels)
