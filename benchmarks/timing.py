"""Timing helpers shared by the benchmark scripts (run as `python benchmarks/bench_*.py`)."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def call_times(fn: Callable[[], object], repeat: int) -> list[float]:
    """Seconds of ``repeat`` timed calls of ``fn``, after one untimed warm-up call
    (allocator, oneDNN kernels and lazy imports settle in the warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """Fastest of ``repeat`` timed calls, after one warm-up call (seconds)."""
    return min(call_times(fn, repeat))


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    """Median of ``repeat`` timed calls, after one warm-up call (seconds)."""
    return statistics.median(call_times(fn, repeat))
