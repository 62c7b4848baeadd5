"""Batch-1 latency as every runtime row reports it (standard library and NumPy only: edge workers use it too)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

WARMUP_RUNS = 5


def time_call(call: Callable[[], object], runs: int, warmup: int = WARMUP_RUNS) -> dict[str, float]:
    """Median and 90th percentile (ms) of ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "median_ms": round(statistics.median(times), 3),
        "p90_ms": round(float(np.percentile(times, 90)), 3),
        "runs": runs,
    }
