"""One resumable streaming pass over a shard of an image list: decode in workers, forward, hand on, checkpoint.

What a pass keeps is its consumer's state (a running top-k, a bounded sample), so memory does not
grow with the number of images. Every forward pass sees exactly ``batch`` images (the last,
partial batch and unreadable images are padded with zeros and ignored), so an image's activations
do not depend on which images share its batch: sharded, resumed and uninterrupted runs agree.

Progress is checkpointed atomically at batch boundaries (at most every ``checkpoint_every``
seconds): the consumer's state, how many of the shard's images are done, how many were read,
and which were skipped, all in one file. A rerun with the same settings continues from it, so
no image is counted twice or skipped; a checkpoint for other settings, or one that cannot be
read, is ignored with a warning and the work redone.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

from .._util.fileio import atomic_output
from .._util.progress import progress_bar
from .source import Batch, loader


class Consumer(Protocol):
    """What a pass feeds: ``update(batch, outputs)`` per batch; ``state``/``load`` for checkpoints."""

    def update(self, batch: Batch, outputs: dict[str, torch.Tensor]) -> None: ...

    def state(self) -> dict: ...

    def load(self, state: dict) -> None: ...


@dataclass
class PassReport:
    """What a pass did: images read, unreadable ones as (path, reason), and whether it resumed."""

    read: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    resumed_at: int = 0
    seconds: float = 0.0


def _load_checkpoint(path: Path, digest: str) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "digest" not in state:
            raise ValueError("not a featvis checkpoint")
    except Exception as exc:
        warnings.warn(f"ignoring unreadable checkpoint {path} ({type(exc).__name__}); starting this shard over", stacklevel=3)
        return None
    if state["digest"] != digest:
        warnings.warn(f"ignoring checkpoint {path}: it was made with other settings or images; starting this shard over",
                      stacklevel=3)
        return None
    return state


def stream(paths: Sequence[str], indices: Sequence[int], size: int, forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
           consumer: Consumer, *, batch: int, workers: int, device: torch.device | str, checkpoint: Path, digest: str,
           checkpoint_every: float = 60.0, progress: bool = True, desc: str = "images") -> PassReport:
    """Run ``forward`` on the images ``indices`` of ``paths`` (prepared at ``size``) and feed ``consumer``.

    ``forward`` maps a padded batch [batch, 3, size, size] to named outputs; the consumer gets the
    rows of the real images only. The checkpoint file is kept after the pass (a finished pass
    resumes as finished); the caller removes it once the result is written.
    """
    report = PassReport()
    position = 0
    saved = _load_checkpoint(checkpoint, digest)
    if saved is not None:
        try:
            consumer.load(saved["consumer"])
            position, report.read = int(saved["position"]), int(saved["read"])
            report.skipped = [(str(p), str(e)) for p, e in saved["skipped"]]
        except Exception as exc:
            warnings.warn(f"ignoring checkpoint {checkpoint} ({exc}); starting this shard over", stacklevel=2)
            position, report.read, report.skipped = 0, 0, []
    report.resumed_at = position
    if position and progress:
        print(f"featvis: resuming {desc} at image {position} of {len(indices)} from {checkpoint}", file=sys.stderr)
    device = torch.device(device)
    pad = torch.zeros(batch, 3, size, size, device=device)
    start = last_save = time.perf_counter()
    bar = progress_bar(len(indices), desc, "img", enabled=progress, initial=position)  # plain lines in a log or pipe
    try:
        done = position
        for item in loader(paths, indices[position:], size, batch, workers, pin=device.type == "cuda"):
            count = len(item.indices)
            if count:
                x = pad.clone()
                x[:count] = item.images.to(device, non_blocking=True)
                outputs = forward(x)
                consumer.update(item, {name: out[:count] for name, out in outputs.items()})
            done += count + len(item.errors)
            report.read += count
            report.skipped.extend((paths[i], reason) for i, reason in item.errors)
            bar.update(count + len(item.errors))
            now = time.perf_counter()
            if now - last_save >= checkpoint_every or done == len(indices):
                save_checkpoint(checkpoint, digest, done, report, consumer)
                last_save = now
    finally:
        bar.close()
    report.seconds = time.perf_counter() - start
    return report


def save_checkpoint(path: Path, digest: str, position: int, report: PassReport, consumer: Consumer) -> None:
    """Write the pass's whole state in one atomic file."""
    state = {"digest": digest, "position": position, "read": report.read,
             "skipped": [[p, e] for p, e in report.skipped], "consumer": consumer.state()}
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
