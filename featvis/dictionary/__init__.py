"""Sparse dictionaries of a layer (features, not only neurons) and their layer ``LAYER_features``.

- `sae`: `Dictionary` (encode, decode, save), `load_dictionary`, `FeatureLayer`;
- `train`: the TopK autoencoder (Gao et al. 2024) and the NMF baseline;
- `build`: `train_dictionary`, one streaming pass and the training, under torchrun too;
- `metrics`: fraction of variance unexplained, L0, dead features, loss recovered;
- `attach`: `attach_dictionary`, a model with the features as a layer.
"""

from .attach import attach_dictionary
from .build import train_dictionary
from .sae import Dictionary, FeatureLayer, features_layer_name, load_dictionary

__all__ = ["Dictionary", "FeatureLayer", "attach_dictionary", "features_layer_name", "load_dictionary", "train_dictionary"]
