"""Dataset examples at scale: each channel's top images over a photo collection of any size.

``dataset_examples(model, "photos/", "mixed4c", "out/", k=9)`` streams the photos once through a
DataLoader (decoding in worker processes), keeps a running top-k per channel, and writes JSON
per layer plus each example's crop (the unit's exact receptive field) as PNG. Resumable after a
kill, shardable (``shard=(i, N)`` or torchrun's RANK/WORLD_SIZE), merged by ``merge_examples``.
The same streaming pass (featvis.examples.stream) feeds the activation atlas
(``activation_atlas``, featvis.examples.atlas, Carter et al. 2019): both are passes over a collection.
"""

from .atlas import Atlas, activation_atlas
from .collection import sample_collection
from .engine import ExamplesResult, dataset_examples, merge_examples, photo_examples

__all__ = ["Atlas", "ExamplesResult", "activation_atlas", "dataset_examples", "merge_examples", "photo_examples", "sample_collection"]
