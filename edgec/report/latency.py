"""Latency measurement: interleaved rounds over engines, percentiles per engine.

Engines are run alternately (one call each per round) so that machine noise (frequency, another
process) hits all of them alike; ratios between engines measured in one call are what to trust.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np


def stats(samples_s: list[float], warmup: int) -> dict:
    ms = np.asarray(samples_s) * 1e3
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": mean,
        "stddev_ms": std,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "runs": len(ms),
        "warmup": warmup,
        "noisy": bool(mean > 0 and std / mean > 0.1),  # coefficient of variation above 10 %
    }


def measure(
    engines: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 2,
    runs: int = 50,
    min_runs: int = 5,
    budget_s: float = 10.0,
) -> dict[str, dict]:
    """Time each engine: ``warmup`` calls, then up to ``runs`` interleaved rounds.

    Stops early once ``min_runs`` rounds are done and ``budget_s`` seconds have been spent timing.
    """
    for fn in engines.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in engines}
    start = time.perf_counter()
    for i in range(runs):
        for name, fn in engines.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
        if i + 1 >= min_runs and time.perf_counter() - start > budget_s:
            break
    return {name: stats(s, warmup) for name, s in samples.items()}
