"""``train_dictionary``: sample a layer over a photo collection, train its dictionary, measure it, save it.

The sampling is one streaming pass (`featvis.examples.stream`, the engine of `featvis examples` and
`featvis atlas`: DataLoader workers, flat memory, a resumable checkpoint in the output folder), each
image giving the activation vectors at positions drawn from the seed and its index. Under torchrun
(RANK / WORLD_SIZE) every process samples its share of the images, the vectors are gathered in image
order (the rows one process samples), and the processes train one dictionary with DDP (gloo on CPU).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from .._util.errors import FeatvisError
from .._util.fileio import ensure_writable_dir
from ..core.plan import shard_from_env
from ..core.probe import Probe
from ..examples.sample import PositionSampler
from ..examples.source import check_loader_args, images_digest, list_images
from ..examples.stream import stream
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model, model_fingerprint
from .attach import base_fingerprint, layer_shape
from .metrics import model_loss, reconstruction
from .sae import MAX_NUMBERS, Dictionary, default_features, default_k
from .train import TrainSettings, train_nmf, train_topk

METHODS = ("topk", "nmf")
MAX_SAMPLES = 10_000_000
MIN_SAMPLES = 64
EVAL_IMAGES = 64  # held-out photos the model-loss metrics run on
EVAL_BATCH = 8  # photos per model-loss pass (three full forward passes each: memory does not grow with --image-batch)
HOLD_OUT = 10  # every 10th image (from the 10th) is held out of training, for the metrics
CHECKPOINT = ".samples-{rank}of{world}.ckpt"


@analysis
def train_dictionary(
    model: nn.Module,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    layer: str,
    features: int | None = None,
    k: int | None = None,
    samples: int = 50_000,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    *,
    method: str = "topk",
    steps: int = 2000,
    batch: int = 1024,
    lr: float = 1e-3,
    image_batch: int = 32,
    workers: int = 2,
    progress: bool = True,
) -> Dictionary:
    """A sparse dictionary of ``layer``'s activations over ``images`` (a folder, a list file, or a list of paths).

    ``features`` (default 4 per channel) directions, ``k`` active (default 32) per position, trained on
    ``samples`` vectors (`train_topk`: ``steps`` minibatches of ``batch`` vectors, Adam at ``lr``), or
    ``method="nmf"``, the baseline. Its ``info`` holds the metrics (`featvis.dictionary.metrics`) and how it
    was made; with ``out`` it is also saved there (`Dictionary.save`).
    """
    fmodel = as_model(model)
    if method not in METHODS:
        raise FeatvisError(f"unknown --method '{method}'; use one of {', '.join(METHODS)}")
    check_loader_args(image_batch, workers)
    paths = _paths(images)
    site = fmodel.site(layer)
    channels = _channels(fmodel, layer)
    features = int(features) if features is not None else default_features(channels)
    k = int(k) if k is not None else default_k(features)
    _check_sizes(features, k, int(samples), channels, method, int(steps), int(batch), float(lr))
    root = ensure_writable_dir(out) if out is not None else None
    rank, world = shard_from_env()
    started = _join(world)
    try:
        vectors, image, read = _sample(fmodel, paths, layer, channels, int(samples), seed, root, (rank, world), image_batch,
                                       workers, progress)
        held = held_out(len(paths))
        heldout_rows = held[image] if held.any() else torch.ones(len(image), dtype=torch.bool)
        x = vectors[~held[image]]
        if len(x) < max(MIN_SAMPLES, features if method == "topk" else 1):
            raise FeatvisError(f"only {len(x)} activation vectors from {read} readable images; a dictionary of {features} "
                               f"features needs at least {max(MIN_SAMPLES, features)}: give more photos or more --samples")
        settings = TrainSettings(features, k, int(steps), int(batch), float(lr), seed)
        tensors = train_topk(x, settings, progress=progress) if method == "topk" else train_nmf(x, settings)
        dictionary = Dictionary(layer, k=k, method=method, **tensors)
        dictionary.info = {"model": fmodel.name, "fingerprint": base_fingerprint(fmodel), "site": site,
                           "samples": len(vectors), "held_out": int(heldout_rows.sum()), "images": read, "seed": seed,
                           "steps": settings.steps, "batch": settings.batch, "lr": settings.lr, "processes": world,
                           **reconstruction(dictionary, vectors[heldout_rows], x),
                           **model_loss(fmodel, dictionary, site, evaluation_photos(paths), batch=EVAL_BATCH,
                                        workers=workers)}
        if root is not None and rank == 0:
            dictionary.save(root)
        if world > 1:
            dist.barrier()
        if root is not None:
            (root / CHECKPOINT.format(rank=rank, world=world)).unlink(missing_ok=True)
        return dictionary
    finally:
        if started:
            dist.destroy_process_group()


def held_out(count: int) -> torch.Tensor:
    """[count] bool: the images held out of training (every `HOLD_OUT`-th; none when there are fewer)."""
    index = torch.arange(count)
    return (index % HOLD_OUT == HOLD_OUT - 1) if count >= HOLD_OUT else torch.zeros(count, dtype=torch.bool)


def evaluation_photos(paths: Sequence[str]) -> list[str]:
    """The photos the model-loss metrics run on: the first `EVAL_IMAGES` held-out ones (all photos' first where none are)."""
    held = held_out(len(paths))
    return [p for p, h in zip(paths, held.tolist()) if h or not held.any()][:EVAL_IMAGES]


def _paths(images) -> list[str]:
    if isinstance(images, (list, tuple)):
        missing = [str(p) for p in images if not Path(p).is_file()]
        if missing or not images:
            raise FeatvisError(f"images: {missing[0] + ' does not exist' if missing else 'the list is empty'}; "
                               "give existing image files, a folder or a list file")
        return sorted(str(p) for p in images)
    return list_images(images)


def _channels(model: FeatvisModel, layer: str) -> int:
    shape = layer_shape(model, layer)
    if len(shape) != 3:
        raise FeatvisError(f"layer '{layer}' outputs shape {list(shape)}, without channels at positions; a "
                           "dictionary needs a convolutional layer [C, H, W] (`featvis layers` shows the shapes)")
    return shape[0]


def _check_sizes(features: int, k: int, samples: int, channels: int, method: str, steps: int, batch: int, lr: float) -> None:
    if not 2 <= features or features * channels > MAX_NUMBERS:
        raise FeatvisError(f"--features must be at least 2 and features x channels ({channels}) at most {MAX_NUMBERS}, got {features}")
    if not 1 <= k < features:
        raise FeatvisError(f"--k must be at least 1 and below --features ({features}), got {k}: K active of N features")
    if not MIN_SAMPLES <= samples <= MAX_SAMPLES or samples * channels > 4 * MAX_NUMBERS:
        raise FeatvisError(f"--samples must be between {MIN_SAMPLES} and {min(MAX_SAMPLES, 4 * MAX_NUMBERS // channels)} "
                           f"for {channels} channels, got {samples}")
    if method == "topk" and samples < features:
        raise FeatvisError(f"--samples ({samples}) is below --features ({features}): too few vectors to learn that many "
                           "features; raise --samples")
    if not 1 <= steps <= 10_000_000 or not 1 <= batch <= 1 << 20 or not 0 < lr < 1:
        raise FeatvisError(f"--steps must be 1..10000000, --batch 1..{1 << 20} and --lr in (0, 1); got {steps}, {batch}, {lr}")


def _join(world: int) -> bool:
    """Join torchrun's process group (gloo) when there are several processes; True if this call started it."""
    if world == 1 or dist.is_initialized():
        return False
    if "MASTER_ADDR" not in os.environ:
        raise FeatvisError("WORLD_SIZE > 1 without MASTER_ADDR/MASTER_PORT: start the processes with torchrun")
    dist.init_process_group("gloo")
    return True


def _sample(model: FeatvisModel, paths: list[str], layer: str, channels: int, samples: int, seed: int, root: Path | None,
            shard: tuple[int, int], batch: int, workers: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The sampled vectors [S, C] in image order (gathered from every process), each one's image index, and how
    many images were read."""
    rank, world = shard
    per_image = max(1, math.ceil(samples / len(paths)))
    mine = range(rank, len(paths), world)
    sampler = PositionSampler(channels, per_image * len(mine), per_image, seed)
    job = {"model": model_fingerprint(model), "layer": layer, "samples": samples, "seed": seed,
           "images": images_digest(paths), "input_size": model.input_size, "shard": [rank, world]}
    digest = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = (root or Path(scratch)) / CHECKPOINT.format(rank=rank, world=world)
        with torch.inference_mode(), Probe(model, [layer], early_exit=True) as probe:
            report = stream(paths, mine, model.input_size, lambda x: {"act": probe(x)[layer]}, sampler, batch=batch,
                            workers=workers, device=model.mean.device, checkpoint=checkpoint, digest=digest,
                            progress=progress and rank == 0, desc="sampling")
    x, image = sampler.vectors[: sampler.count], sampler.image[: sampler.count]
    read = report.read
    if world > 1:
        x, image, read = _gather(x, image, read)
    order = image.argsort(stable=True)
    return x[order], image[order], read


def _gather(x: torch.Tensor, image: torch.Tensor, read: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every process's rows, concatenated (torch.distributed all_gather; rows padded to the longest)."""
    world = dist.get_world_size()
    sizes = [torch.zeros(2, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(x), read]))
    longest = max(int(s[0]) for s in sizes)
    padded_x = torch.zeros(longest, x.shape[1])
    padded_x[: len(x)] = x
    padded_i = torch.full((longest,), -1, dtype=torch.int64)
    padded_i[: len(image)] = image
    xs = [torch.zeros_like(padded_x) for _ in range(world)]
    images = [torch.zeros_like(padded_i) for _ in range(world)]
    dist.all_gather(xs, padded_x)
    dist.all_gather(images, padded_i)
    keep = [slice(0, int(s[0])) for s in sizes]
    return (torch.cat([part[span] for part, span in zip(xs, keep)]), torch.cat([part[span] for part, span in zip(images, keep)]),
            sum(int(s[1]) for s in sizes))
