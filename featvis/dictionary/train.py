"""Training a sparse dictionary on sampled activation vectors: a TopK autoencoder, or NMF as a baseline.

TopK (Gao et al. 2024): the vectors are scaled to unit mean square per channel; the decoder starts
as random unit directions, the encoder as its transpose, ``b_dec`` at the vectors' mean; minibatch
Adam on the normalised reconstruction error, with decoder rows renormalised after every step. A
feature that has not fired for ``dead_after`` vectors is *dead*: Gao et al.'s auxiliary loss (weight
1/32) trains the ``k_aux`` most active dead features to reconstruct what the live ones miss, which
brings them back. Every process of a torch.distributed job (torchrun; gloo on CPU) takes its share of
each global minibatch and DDP averages the gradients, so N processes train the dictionary one
process would, up to float rounding.

NMF: `featvis.explain.nmf` on the (non-negative) vectors; its components, scaled to unit norm, are the
decoder, and the encoder is their least-squares inverse (ReLU, TopK): a baseline without training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .._util.errors import FeatvisError
from .._util.progress import progress_bar
from .sae import top_k

AUX_WEIGHT = 1 / 32
NMF_ITERATIONS = 300


@dataclass(frozen=True)
class TrainSettings:
    """How a dictionary is trained: ``features`` (N), ``k`` active, ``steps`` of ``batch`` vectors at
    learning rate ``lr``; ``seed`` draws the start and the minibatches."""

    features: int
    k: int
    steps: int = 2000
    batch: int = 1024
    lr: float = 1e-3
    seed: int = 0


class TopKAutoencoder(nn.Module):
    """The TopK SAE being trained, on vectors scaled to unit mean square (see the module docstring)."""

    def __init__(self, channels: int, settings: TrainSettings, mean: torch.Tensor):
        super().__init__()
        generator = torch.Generator().manual_seed(settings.seed)
        decoder = torch.randn(settings.features, channels, generator=generator, dtype=mean.dtype)
        decoder /= decoder.norm(dim=1, keepdim=True)
        self.k, self.k_aux = settings.k, max(1, channels // 2)
        self.decoder = nn.Parameter(decoder)
        self.encoder = nn.Parameter(decoder.clone())
        self.encoder_bias = nn.Parameter(torch.zeros(settings.features, dtype=mean.dtype))
        self.decoder_bias = nn.Parameter(mean.clone())

    def forward(self, x: torch.Tensor, dead: torch.Tensor, variance: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, which features fired in ``x``); ``dead`` [N] bool selects the features the auxiliary loss trains."""
        z = (x - self.decoder_bias) @ self.encoder.T + self.encoder_bias
        f = top_k(z, self.k)
        error = x - (f @ self.decoder + self.decoder_bias)
        loss = error.pow(2).sum(1).mean() / variance
        if bool(dead.any()):
            hidden = z.masked_fill(~dead, float("-inf"))
            aux = top_k(hidden, min(self.k_aux, int(dead.sum()))) @ self.decoder  # top_k maps the -inf to 0
            loss = loss + AUX_WEIGHT * (error.detach() - aux).pow(2).sum(1).mean() / variance
        return loss, (f > 0).any(0)


def train_topk(x: torch.Tensor, settings: TrainSettings, *, progress: bool = True) -> dict[str, torch.Tensor]:
    """A TopK dictionary of the vectors ``x`` [S, C] (every process of a distributed job passes the same ``x``):
    ``encoder`` [N, C], ``encoder_bias`` [N], ``decoder`` [N, C] (unit rows), ``decoder_bias`` [C], in ``x``'s units."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    batch = max(world, settings.batch - settings.batch % world)  # every process takes the same share
    scale = float(x.pow(2).mean().sqrt()) or 1.0
    x = x / scale
    variance = float((x - x.mean(0)).pow(2).sum(1).mean()) or 1.0
    sae = TopKAutoencoder(x.shape[1], settings, x.mean(0))
    model = nn.parallel.DistributedDataParallel(sae) if world > 1 else sae
    optimizer = torch.optim.Adam(sae.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    order, at = torch.randperm(len(x), generator=generator), 0
    last_fired = torch.zeros(settings.features, dtype=torch.int64)
    dead_after = max(len(x), 10 * batch) // batch  # steps: one pass over the vectors (ten batches at least)
    with progress_bar(settings.steps, "training", "step", enabled=progress and rank == 0) as bar:
        for step in range(1, settings.steps + 1):
            if at + batch > len(order):
                order, at = torch.randperm(len(x), generator=generator), 0
            rows = order[at : at + batch][rank::world]
            at += batch
            loss, fired = model(x[rows], step - last_fired > dead_after, variance)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if world > 1:
                fired = fired.to(torch.int64)
                dist.all_reduce(fired)
            last_fired[fired.bool()] = step
            with torch.no_grad():
                sae.decoder /= sae.decoder.norm(dim=1, keepdim=True).clamp(min=1e-12)
            bar.update(1)
    with torch.no_grad():
        return {"encoder": sae.encoder.detach().clone(), "encoder_bias": sae.encoder_bias.detach() * scale,
                "decoder": sae.decoder.detach().clone(), "decoder_bias": sae.decoder_bias.detach() * scale}


def train_nmf(x: torch.Tensor, settings: TrainSettings) -> dict[str, torch.Tensor]:
    """The NMF baseline (see the module docstring) of the non-negative vectors ``x`` [S, C]."""
    from ..explain.nmf import nmf

    if bool((x < 0).any()):
        raise FeatvisError("--method nmf needs a layer whose activations are never negative (after a ReLU); "
                           "use --method topk, or the layer after the activation")
    if settings.features > min(x.shape):
        raise FeatvisError(f"NMF finds at most min(samples, channels) = {min(x.shape)} components; lower --features "
                           "or use --method topk for an overcomplete dictionary")
    components = nmf(x, settings.features, seed=settings.seed, max_iter=NMF_ITERATIONS).H.float()
    decoder = components / components.norm(dim=1, keepdim=True).clamp(min=1e-12)
    encoder = torch.linalg.pinv(decoder).T.contiguous()
    return {"encoder": encoder, "encoder_bias": torch.zeros(len(decoder)), "decoder": decoder,
            "decoder_bias": torch.zeros(x.shape[1])}
