"""A/B: two or more compiled artifacts of one model and onnxruntime, timed in one process.

.venv/bin/python bench/ab.py BEFORE_DIR AFTER_DIR [...] [--threads 2] [--runs 200]

For a compiler change: compile the model with the old and the new code (two artifact dirs),
then time them here in interleaved blocks (edgec.report.latency.measure) on the same inputs,
with onnxruntime (ORT_ENABLE_ALL, the artifacts' model.onnx) in the same rounds. On a shared
machine the engines see the same load, so their ratios mean more than any one p50.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgec import api, verify
from edgec.report import latency


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--budget", type=float, default=60.0, help="timing budget, seconds")
    args = ap.parse_args()
    models = {f"{i}:{p.name}": api.load(p, args.threads) for i, p in enumerate(args.artifacts)}
    first = next(iter(models.values()))
    feeds = verify.random_inputs(first.inputs, 0)
    engines = {
        name: m._runtime.prepare([feeds[s.name] for s in m.inputs]) for name, m in models.items()
    }
    session = verify.ort_session(first.path / "model.onnx", optimize=True, threads=args.threads)
    engines["onnxruntime"] = lambda: session.run(None, feeds)
    stats = latency.measure(engines, runs=args.runs, budget_s=args.budget)
    base = stats[next(iter(models))]["p50_ms"]
    ort = stats["onnxruntime"]["p50_ms"]
    print("| engine | p50 ms | p90 ms | runs | vs first | vs onnxruntime |")
    print("|---|---|---|---|---|---|")
    for name, s in stats.items():
        noisy = " (noisy)" if s["noisy"] else ""
        print(f"| {name} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['runs']} | "
              f"{s['p50_ms'] / base:.2f}x | {s['p50_ms'] / ort:.2f}x{noisy} |")  # fmt: skip


if __name__ == "__main__":
    main()
