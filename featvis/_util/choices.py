"""Option values shared by the library and the command line, importable without torch.

The CLI builds its parser (``featvis --help``, argument errors) from these names alone, so
they live here rather than in the modules that use them (which import torch, captum and
matplotlib); those modules re-export them under their old names.
"""

from __future__ import annotations

#: Saliency methods (``featvis.saliency``) and their display names.
METHODS: dict[str, str] = {
    "saliency": "vanilla gradient",
    "ixg": "input x gradient",
    "ig": "integrated gradients",
    "smoothgrad": "SmoothGrad",
    "guided": "guided backprop",
    "deconv": "deconvolution",
    "gradcam": "Grad-CAM",
    "guided-gradcam": "guided Grad-CAM",
    "occlusion": "occlusion",
}
#: Methods whose sign carries evidence (for or against the class); the others are shown as magnitude.
SIGNED = frozenset({"ixg", "ig", "occlusion"})
GUIDED = frozenset({"guided", "deconv", "guided-gradcam"})
LAYERED = frozenset({"gradcam", "guided-gradcam"})
#: Methods that score regions, not colour channels: their attribution is [1, H, W]; all others give [3, H, W].
REGIONAL = frozenset({"gradcam", "occlusion"})

#: How maps are drawn (``featvis.core.figures``).
OVERLAYS = ("heat", "blend", "signed")
#: Filter scaling (``featvis.inspect.filters``): each filter to its own range, or all to one.
NORMALIZE = ("filter", "shared")
#: The model's number format while optimising images (``featvis.render``).
PRECISIONS = ("auto", "float32", "bfloat16")
#: Images per optimisation of ``featvis.render``.
RENDER_BATCH = 16
#: Channels per unit of gallery work (one render call, one manifest update) and top patches per channel.
GALLERY_BATCH = 8
GALLERY_PATCHES = 8
