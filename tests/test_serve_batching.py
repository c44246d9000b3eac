"""The serve queue's batch size against a brute-force search: for a render call costing ``a + c * b``
seconds for ``b`` images, the size it picks gives a mean wait within 5% of the best any size gives, on a
CPU-like cost (each image costs about as much as a call: batch nothing), a GPU-like one (a call costs
20x an image: batch) and between; before two sizes are measured it explores (one image, then the largest)."""

from __future__ import annotations

import pytest

from featvis.serve.batching import BatchSizer


def mean_wait(a: float, c: float, n: int, b: int) -> float:
    """n images served in turn in batches of b (the last one partial): the mean time each one finishes."""
    clock, total, left = 0.0, 0.0, n
    while left:
        size = min(b, left)
        clock += a + c * size
        total += clock * size
        left -= size
    return total / n


@pytest.mark.parametrize("a, c", [(0.05, 1.0), (1.0, 0.05), (0.5, 0.5), (2.0, 0.01), (0.2, 0.1)],
                         ids=["cpu", "gpu", "even", "launch-bound", "between"])
@pytest.mark.parametrize("n", [1, 2, 8, 32])
def test_the_chosen_batch_waits_least(a, c, n):
    sizer = BatchSizer(most=16)
    assert sizer.size(n) == 1  # nothing measured: one image (the first picture a page asks for, soonest)
    sizer.add(1, a + c)
    assert sizer.size(n) == min(n, 16)  # then the largest batch, for a second size
    for b in (4, 16):
        sizer.add(b, a + c * b)
    fitted = sizer.fit()
    assert fitted == pytest.approx((a, c), rel=1e-6, abs=1e-9)
    chosen = sizer.size(n)
    best = min(mean_wait(a, c, n, b) for b in range(1, 17))
    assert 1 <= chosen <= min(n, 16)
    assert mean_wait(a, c, n, chosen) <= best * 1.05, (chosen, [round(mean_wait(a, c, n, b), 3) for b in range(1, 17)])


def test_a_flat_cost_batches_everything():
    sizer = BatchSizer(most=8)
    for b in (1, 8):
        sizer.add(b, 3.0)
    assert sizer.size(20) == 8 and sizer.size(3) == 3
