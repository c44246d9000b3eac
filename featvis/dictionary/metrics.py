"""What the field reports of a dictionary: how well it reconstructs the layer, and what the model loses.

- ``fvu``: fraction of variance unexplained, ``sum ||x - x_hat||^2 / sum ||x - mean||^2`` over the vectors sampled
  from held-out images (every 10th), ``l0`` the mean number of active features per vector there;
- ``dead``: features active on none of the training vectors;
- ``agreement`` and ``loss_recovered``, over photos, with the layer's output replaced by its reconstruction:
  the share of photos whose top-1 class stays the original prediction, and ``1 - (CE_rec - CE) / (CE_zero -
  CE)``, the increase in cross-entropy against the original predictions as a fraction of the increase from
  zero-ablating the layer, taken from one (the usual "loss recovered"; 1 is lossless, 0 as bad as nothing).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..core.sites import site_modules
from ..examples.source import loader
from ..models.wrapper import FeatvisModel
from .sae import Dictionary

CHUNK = 8192  # vectors encoded at once


@torch.no_grad()
def reconstruction(dictionary: Dictionary, x: torch.Tensor, train: torch.Tensor) -> dict[str, float | int]:
    """``fvu`` and ``l0`` of ``dictionary`` on the vectors ``x`` [S, C]; ``dead`` on the training vectors ``train``."""
    error, active = 0.0, 0
    for f, rows, recon in _encoded(dictionary, x):
        error += float((rows - recon).pow(2).sum())
        active += int((f > 0).sum())
    fired = torch.zeros(dictionary.features, dtype=torch.bool)
    for f, _, _ in _encoded(dictionary, train):
        fired |= (f > 0).any(0).flatten()
    variance = float((x - x.mean(0)).pow(2).sum()) or 1.0
    return {"fvu": error / variance, "l0": active / max(1, len(x)), "dead": int((~fired).sum())}


def _encoded(dictionary: Dictionary, x: torch.Tensor):
    """(features, vectors, reconstructions) of ``x`` in chunks."""
    layer = dictionary.layer_module()
    for start in range(0, len(x), CHUNK):
        rows = x[start : start + CHUNK, :, None, None].float()
        f = layer(rows)
        yield f, rows, layer.decode(f)


@torch.no_grad()
def model_loss(model: FeatvisModel, dictionary: Dictionary, site: str, paths: Sequence[str], *, batch: int,
               workers: int) -> dict[str, float | None]:
    """``agreement`` and ``loss_recovered`` over the photos ``paths`` (None where the model gives no class scores)."""
    layer = dictionary.layer_module().to(model.mean.device)
    replacements: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
        "original": None, "reconstructed": lambda out: layer.decode(layer(out)).to(out.dtype), "zero": torch.zeros_like}
    ce = dict.fromkeys(replacements, 0.0)
    agree = count = 0
    with site_modules(model, [site]) as modules:
        for item in loader(list(paths), range(len(paths)), model.input_size, batch, workers):
            if not len(item.indices):
                continue
            x = item.images.to(model.mean.device)
            logits = {name: _run(model, modules[site], x, replace) for name, replace in replacements.items()}
            if logits["original"].dim() != 2:
                return {"agreement": None, "loss_recovered": None}
            target = logits["original"].argmax(1)
            for name, values in logits.items():
                ce[name] += float(F.cross_entropy(values.float(), target, reduction="sum"))
            agree += int((logits["reconstructed"].argmax(1) == target).sum())
            count += len(target)
    if not count:
        return {"agreement": None, "loss_recovered": None}
    lost = ce["zero"] - ce["original"]
    recovered = 1.0 - (ce["reconstructed"] - ce["original"]) / lost if lost > 0 else None
    return {"agreement": agree / count, "loss_recovered": recovered}


def _run(model: FeatvisModel, module, x: torch.Tensor, replace) -> torch.Tensor:
    if replace is None:
        return model(x)
    handle = module.register_forward_hook(lambda _m, _i, out: replace(out))
    try:
        return model(x)
    finally:
        handle.remove()
