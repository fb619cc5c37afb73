"""Per-kernel time of a compiled model, from the Relax VM's instrument hook.

CPU kernels run synchronously, so the time between the hook's before/after calls is the kernel's
time (plus a small constant overhead per call, which is why the sum exceeds the model latency).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence

import numpy as np


def profile(runtime, arrays: Sequence[np.ndarray], reps: int = 10) -> list[dict]:
    """Run the model ``reps`` times; per kernel: ms per inference, calls per inference, share."""
    vm = runtime._vm
    total: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    started: dict[str, float] = {}

    def instrument(func, name, before, ret, *args):
        if before:
            started[name] = time.perf_counter()
        else:
            total[name] += time.perf_counter() - started.pop(name)
            calls[name] += 1
        return 0

    run = runtime.prepare(arrays)
    run()  # warm-up, uninstrumented
    vm.set_instrument(instrument)
    try:
        for _ in range(reps):
            run()
    finally:
        vm.set_instrument(lambda *a: 0)
    whole = sum(total.values()) or 1.0
    rows = [
        {"kernel": k, "ms": v / reps * 1e3, "calls": calls[k] // reps, "share": v / whole}
        for k, v in total.items()
    ]
    return sorted(rows, key=lambda r: -r["ms"])
