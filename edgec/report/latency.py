"""Latency measurement: interleaved blocks over engines, percentiles per engine.

Engines run alternately so that slow drifts of the machine (frequency, another process) hit all
of them alike; ratios between engines measured in one call are what to trust. Engines are not
alternated call by call: a thread pool that just finished spin-waits on the cores (onnxruntime's
and TVM's both do), and on a small machine that doubles the other engine's latency. So each
engine gets a block of calls, after a short settle pause and one untimed call that re-warms its
caches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

SETTLE_S = 0.02  # pause before an engine's block: other pools' spinning threads go to sleep
BLOCK_S = 0.1  # aim for blocks of about this long (1 to 10 calls)
REWARM_BELOW_S = 0.05  # re-warm with an untimed call when a call is shorter than this

METHOD = (
    "interleaved blocks: per round and engine, a 20 ms settle pause, one untimed call (calls "
    "under 50 ms), then 1-10 timed calls"
)


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
        "samples_ms": [round(float(x), 6) for x in ms],  # in measurement order: the histogram
    }


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(
    engines: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 2,
    runs: int = 50,
    min_runs: int = 5,
    budget_s: float = 10.0,
    settle_s: float = SETTLE_S,
) -> dict[str, dict]:
    """Time each engine: ``warmup`` calls each, then rounds of interleaved blocks until every
    engine has ``runs`` timed calls, or ``budget_s`` seconds of timing are spent once every
    engine has at least ``min_runs``."""
    estimate = {}
    for name, fn in engines.items():
        estimate[name] = min((_timed(fn) for _ in range(warmup)), default=BLOCK_S)
    block = {n: int(min(10, max(1, BLOCK_S // max(e, 1e-6)))) for n, e in estimate.items()}
    samples: dict[str, list[float]] = {name: [] for name in engines}
    start = time.perf_counter()
    while any(len(s) < runs for s in samples.values()):
        for name, fn in engines.items():
            todo = min(block[name], runs - len(samples[name]))
            if todo <= 0:
                continue
            time.sleep(settle_s)
            if estimate[name] < REWARM_BELOW_S:
                fn()
            samples[name] += [_timed(fn) for _ in range(todo)]
        enough = all(len(s) >= min_runs for s in samples.values())
        if enough and time.perf_counter() - start > budget_s:
            break
    return {name: stats(s, warmup) for name, s in samples.items()}
