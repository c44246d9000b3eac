"""Circuits (Olah et al., Distill 2020): how a unit is built from the layer below and what it feeds.

- ``expanded_weights(model, source, target)`` -> float64 [C_target, C_source, kh, kw]: the
  linear map between two layers through any graph the receptive-field code follows
- ``top_connections(model, "mixed3b:12", "mixed3a", k, target=..., photos=...)`` -> ``Connections``
- ``weight_similarity(model, layer)`` -> ``WeightSimilarity``: channel families by their weights
- ``circuit_figure``: the unit's visualization between its inputs and outputs, with weight maps
"""

from .connections import Connection, Connections, top_connections
from .expanded import expanded_weights, linearized
from .families import WeightSimilarity, previous_layer, weight_similarity

__all__ = ["Connection", "Connections", "WeightSimilarity", "expanded_weights", "linearized", "previous_layer",
           "top_connections", "weight_similarity"]
