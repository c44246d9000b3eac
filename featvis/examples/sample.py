"""Activation vectors sampled at random positions of every image: what atlases and dictionaries learn from.

A consumer of the streaming pass (featvis.examples.stream). The positions of image ``i`` depend only on
the seed and ``i``, so a sharded or resumed pass samples exactly the vectors an uninterrupted one does,
and the rows of the shards, put in image order, are the rows of one process.
"""

from __future__ import annotations

import torch

from .source import Batch


class PositionSampler:
    """Activation vectors at ``per_image`` random positions of every image (output "act"), with its predicted class
    (from "logits", where given) and attribution (from "attribution", where given)."""

    def __init__(self, channels: int, rows: int, per_image: int, seed: int):
        self.per_image, self.seed = per_image, seed
        self.vectors = torch.zeros(rows, channels)
        self.image = torch.full((rows,), -1, dtype=torch.int64)
        self.label = torch.full((rows,), -1, dtype=torch.int64)
        self.weight = torch.ones(rows)
        self.count = 0

    def positions(self, index: int, height: int, width: int) -> torch.Tensor:
        """The sampled (y, x) of image ``index``: a function of the seed and the index alone."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        flat = torch.randint(0, height * width, (self.per_image,), generator=generator)
        return torch.stack([flat // width, flat % width], dim=1)

    def update(self, batch: Batch, outputs: dict[str, torch.Tensor]) -> None:
        act = outputs["act"].float().cpu()
        for row, index in enumerate(batch.indices):
            where = self.positions(index, act.shape[2], act.shape[3])
            span = slice(self.count, self.count + len(where))
            self.vectors[span] = act[row, :, where[:, 0], where[:, 1]].t()
            self.image[span] = index
            if "logits" in outputs:
                self.label[span] = int(outputs["logits"][row].argmax())
            if "attribution" in outputs:
                self.weight[span] = outputs["attribution"][row].float().cpu()[where[:, 0], where[:, 1]]
            self.count += len(where)

    def state(self) -> dict:
        return {"vectors": self.vectors, "image": self.image, "label": self.label, "weight": self.weight,
                "count": torch.tensor(self.count)}

    def load(self, state: dict) -> None:
        if state["vectors"].shape != self.vectors.shape:
            raise ValueError("checkpoint holds another sample size")
        self.vectors, self.image, self.label, self.weight = state["vectors"], state["image"], state["label"], state["weight"]
        self.count = int(state["count"])
