"""A running top-k per channel that never grows: each image offers its strongest unit per channel.

The order is (activation descending, image index ascending); image indices follow the sorted
path list, so ties are broken by path and the kept set does not depend on how the images were
batched, sharded or resumed. NaN activations rank below everything.
"""

from __future__ import annotations

import torch


class TopK:
    """The ``k`` best (value, image index, unit) per channel of a ``channels``-channel layer."""

    def __init__(self, channels: int, k: int):
        self.k = int(k)
        self.values = torch.full((channels, k), float("-inf"))
        self.index = torch.full((channels, k), torch.iinfo(torch.int64).max, dtype=torch.int64)
        self.units = torch.zeros((channels, k, 2), dtype=torch.int64)

    def update(self, values: torch.Tensor, units: torch.Tensor, index: torch.Tensor) -> None:
        """Offer ``values`` [B, C] at ``units`` [B, C, 2] of images ``index`` [B]."""
        values = torch.nan_to_num(values.float(), nan=float("-inf")).t().cpu()
        all_values = torch.cat([self.values, values], dim=1)
        all_index = torch.cat([self.index, index.view(1, -1).expand(values.shape[0], -1).cpu()], dim=1)
        all_units = torch.cat([self.units, units.transpose(0, 1).cpu()], dim=1)
        by_index = torch.argsort(all_index, dim=1, stable=True)
        by_value = torch.argsort(torch.gather(all_values, 1, by_index), dim=1, descending=True, stable=True)
        order = torch.gather(by_index, 1, by_value)[:, : self.k]
        self.values = torch.gather(all_values, 1, order)
        self.index = torch.gather(all_index, 1, order)
        self.units = torch.gather(all_units, 1, order.unsqueeze(-1).expand(-1, -1, 2))

    def entries(self, channel: int) -> list[tuple[float, int, tuple[int, int]]]:
        """(value, image index, (y, x)) of ``channel``, best first; unfilled slots left out."""
        found = self.values[channel] > float("-inf")
        return [(float(v), int(i), (int(u[0]), int(u[1])))
                for v, i, u in zip(self.values[channel][found], self.index[channel][found], self.units[channel][found])]

    def state(self) -> dict[str, torch.Tensor]:
        return {"values": self.values, "index": self.index, "units": self.units}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        if state["values"].shape != self.values.shape or state["units"].shape != self.units.shape:
            raise ValueError("checkpoint top-k shape differs")
        self.values, self.index, self.units = state["values"], state["index"], state["units"]


def peaks(act: torch.Tensor, negative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel, the strongest (``negative``: most negative, negated) unit: values [B, C]
    and (y, x) [B, C, 2]; the first in row-major order among equals. A layer without space is one unit (0, 0)."""
    act = act.float()
    if negative:
        act = -act
    if act.dim() == 2:
        return act, torch.zeros(*act.shape, 2, dtype=torch.int64, device=act.device)
    best, where = act.flatten(2).max(dim=2)
    return best, torch.stack([where // act.shape[3], where % act.shape[3]], dim=-1)
