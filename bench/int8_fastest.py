"""Compiled artifacts and onnxruntime on one QDQ model: the fastest call of each, interleaved.

    .venv/bin/python bench/int8_fastest.py MODEL.qdq.onnx ARTIFACT [ARTIFACT ...]
                                           [--threads 1] [--calls 200] [--rounds 5]

On a shared machine a p50 moves with the other load (onnxruntime's spinning thread pool more
than edgec's); the fastest of many single calls is the one nobody preempted, so it compares
kernels rather than the load. Each round runs ``--calls`` calls of every engine in turn; the
table gives the fastest call and the median of each, and the ratio of fastest calls to
onnxruntime's (its QDQ model with ORT_ENABLE_ALL: its int8 kernels).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from edgec import api, verify


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("qdq", type=Path)
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    models = {str(a): api.load(a, args.threads) for a in args.artifacts}
    feeds = verify.random_inputs(next(iter(models.values())).inputs, 0)
    session = verify.ort_session(args.qdq, optimize=True, threads=args.threads)
    engines = {k: m._runtime.prepare(list(feeds.values())) for k, m in models.items()}
    engines["onnxruntime int8"] = lambda: session.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in engines}
    for fn in engines.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in engines.items():
            for _ in range(args.calls):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    ort = min(times["onnxruntime int8"])
    print(f"{args.threads} thread(s), {args.rounds} rounds x {args.calls} calls\n")
    print("| engine | fastest ms | p50 ms | fastest / ORT int8 |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts) * 1e3:.3f} | {np.median(ts) * 1e3:.3f} | "
              f"{min(ts) / ort:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
