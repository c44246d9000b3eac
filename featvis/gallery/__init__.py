"""Static galleries of whole models: resumable, shardable, self-contained HTML.

``make_gallery(model, "mixed3a,mixed4a", "out/", channels="0:16")`` renders each channel's
feature visualization (plus, optionally, negatives, a diversity set and top photo patches) and
the first-layer filters into ``out/``; ``rebuild_index("out/")`` rebuilds the HTML from the
manifests of every shard. See featvis.gallery.job for how work is skipped and shared.
"""

from ..core.plan import parse_channels, parse_shard, shard_from_env, slug
from .job import GalleryReport, make_gallery, model_fingerprint, rebuild_index

__all__ = [
    "GalleryReport",
    "make_gallery",
    "model_fingerprint",
    "parse_channels",
    "parse_shard",
    "rebuild_index",
    "shard_from_env",
    "slug",
]
