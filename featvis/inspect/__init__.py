"""Looking straight at a layer: its weights as pictures and its activations on a photo.

- ``filters``: ``filter_images``/``filter_grid`` (first-layer kernels as RGB, deeper ones per channel).
- ``feature_maps``: ``feature_maps``, ``feature_map_grid`` (the top channels on a photo),
  ``feature_map_overlay`` (one channel over the photo, placed at exact receptive-field centres:
  ``to_input_space``).
"""

from .feature_maps import feature_map_grid, feature_map_overlay, feature_maps, to_input_space, top_channels
from .filters import conv_layer, filter_grid, filter_images, rgb_kernels

__all__ = ["conv_layer", "feature_map_grid", "feature_map_overlay", "feature_maps", "filter_grid", "filter_images",
           "rgb_kernels", "to_input_space", "top_channels"]
