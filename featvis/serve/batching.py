"""How many queued images to render together, measured on the device the server runs on.

A render call of ``b`` images takes about ``T(b) = a + c * b`` seconds: ``a`` what a call costs whatever its
size (kernel launches, the model's fixed work), ``c`` what each image adds. On a GPU ``a`` dominates and a
batch of 8 costs little more than one; on a 2-core CPU ``a`` is small and a batch of 8 costs 8 single
renders, so batching only makes everyone wait for the slowest. With ``n`` images waiting and batches served
in turn, the mean wait is about ``(a + c b)(n / b + 1) / 2``, least at ``b = sqrt(a n / c)``. `BatchSizer`
fits ``a`` and ``c`` to the server's recent render calls (least squares) and answers that size, within
``1 .. most``; until it has seen two sizes it tries a single image (the first picture a page asks for
comes soonest), then the largest batch.
"""

from __future__ import annotations

import math
from collections import deque

#: render calls the fit remembers (the newest count: the layers asked for change over time)
HISTORY = 32


class BatchSizer:
    """Chooses each render call's batch size from measured call times (see module docstring)."""

    def __init__(self, most: int):
        self.most = max(1, int(most))
        self._calls: deque[tuple[int, float]] = deque(maxlen=HISTORY)

    def add(self, images: int, seconds: float) -> None:
        """A render call of ``images`` images took ``seconds``."""
        self._calls.append((int(images), float(seconds)))

    def fit(self) -> tuple[float, float] | None:
        """``(a, c)`` of ``T(b) = a + c b`` by least squares over the recent calls; None before two sizes."""
        sizes = [b for b, _ in self._calls]
        if len(set(sizes)) < 2:
            return None
        times = [t for _, t in self._calls]
        mean_b, mean_t = sum(sizes) / len(sizes), sum(times) / len(times)
        slope = sum((b - mean_b) * (t - mean_t) for b, t in self._calls) / sum((b - mean_b) ** 2 for b in sizes)
        return mean_t - slope * mean_b, slope

    def size(self, waiting: int) -> int:
        """The batch size for the next call with ``waiting`` images queued."""
        most = max(1, min(self.most, int(waiting)))
        fitted = self.fit()
        if fitted is None:
            tried = {b for b, _ in self._calls}
            return most if tried == {1} else 1  # explore: one image first, then the largest batch
        a, c = fitted
        if c <= 0:
            return most  # an image adds nothing measurable: batch all
        return max(1, min(most, round(math.sqrt(max(a, 0.0) * waiting / c))))

    def to_json(self) -> dict:
        fitted = self.fit()
        return {"call_seconds": round(fitted[0], 4), "image_seconds": round(fitted[1], 4)} if fitted else {}
