"""The ground every analysis stands on: activations at named layers, and pixels in and out.

- ``probe``: ``Probe``/``capture`` (hooks, early exit, concat layers), ``model_input``, ``spatial_layers``.
- ``layer_table``: a model's layers with output shapes (``featvis layers``).
- ``plan``: which layers and channels a job covers, and this process's shard of them (``--shard i/N``).
- ``images``: ``load_image``/``save_image``/``as_image`` within the pixel limit (``max_pixels``).
- ``figures``: matplotlib ``Figure`` helpers and ``save_figure`` (PNG/SVG/PDF, reproducible bytes).
- ``shapes``: convolution and pooling output-size arithmetic, as PyTorch computes it.

Nothing is imported here: each module is imported where it is used, so the CLI starts fast.
"""
