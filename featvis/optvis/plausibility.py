"""Plausibility: how close an image's deep features are to those of natural photos (after Fel et al. 2023).

Fel et al. score a feature visualization by the similarity of its representation in the model's
last layer to the representations of natural images; featvis does the same with the photos it
has (the crops `natural_max` uses, `photo_crops`). The representation is the input of the
model's last ``nn.Linear`` (the pooled penultimate features of a classifier; the model's output
where it has no linear layer), centred on the natural crops' mean (post-ReLU features are all
positive, which would make every cosine similarity high). The score of an image is the mean
cosine similarity to its ``K`` most similar natural crops: near 1 for an image the model
represents like a photo, near 0 or below for one it sees as unlike any. The ratio to natural photos says how *strongly* a unit fires;
plausibility says how *natural* the image that makes it fire looks to the model.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model
from .fast_layers import fast_layers
from .precision import memory_format
from .natural import CHUNK, photo_crops, read_stored, store

K = 5
DEEP = "deep features"  # the user-cache name of the natural crops' features (no layer is named so)
_NATURAL: "weakref.WeakKeyDictionary[FeatvisModel, dict[int, torch.Tensor]]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def deep_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[N, D] features of ``images`` ([N, 3, H, W] in [0, 1], resized to the model's input size).

    Run channels-last with `fast_layers`' stand-ins, as rendering runs the model: on GoogLeNet
    about half the time of the plain forward pass (its max pools and LRNs), same values.
    """
    model = as_model(model)
    size = model.input_size
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.contiguous(memory_format=memory_format(model))
    linears = [m for m in model.net.modules() if isinstance(m, nn.Linear)]
    captured: list[torch.Tensor] = []
    handle = linears[-1].register_forward_pre_hook(lambda m, args: captured.append(args[0].flatten(1))) if linears else None
    try:
        with fast_layers(model):
            outputs = [model(x[i : i + CHUNK].to(model.mean.device)).flatten(1) for i in range(0, len(x), CHUNK)]
    finally:
        if handle is not None:
            handle.remove()
    return torch.cat(captured if linears else outputs).float().cpu()


def natural_features(model: nn.Module) -> torch.Tensor:
    """`deep_features` of every natural photo crop, cached per model and in the user cache (by weights)."""
    model = as_model(model)
    cache = _NATURAL.setdefault(model, {})
    size = model.input_size
    if size not in cache:
        cache[size] = read_stored(model, DEEP, size)
        if cache[size] is None:
            cache[size] = deep_features(model, photo_crops(size))
            store(model, DEEP, size, cache[size])
    return cache[size].cpu()


@analysis
def plausibility(model: nn.Module, images: torch.Tensor, k: int = K) -> list[float]:
    """Mean cosine similarity of each image's centred deep features to its ``k`` nearest natural crops'."""
    natural = natural_features(model)
    centre = natural.mean(0)
    similarity = F.normalize(deep_features(model, images) - centre, dim=1) @ F.normalize(natural - centre, dim=1).T
    return similarity.topk(min(k, natural.shape[0]), dim=1).values.mean(1).tolist()
