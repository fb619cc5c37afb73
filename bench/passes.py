"""onnxruntime latency of each zoo model before and after `edgec optimize`, in the same run.

    .venv/bin/python bench/passes.py [--models resnet18,repvgg_a0] [--threads 2] [--runs 30]

Both graphs run in onnxruntime (ORT_ENABLE_ALL, same threads) in interleaved rounds; the table
gives p50 latencies, the speed-up, the op counts before/after and the worst output error.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import onnx

from edgec import api, models, verify
from edgec.frontend import signature
from edgec.report import latency

DEFAULT = "resnet18,mobilenetv2,repvgg_a0,mobileone_s0,deit_tiny,slab_tiny"


def bench_model(name: str, workdir: Path, threads: int, runs: int, budget_s: float) -> dict:
    source = models.export(name, workdir / f"{name}.onnx")
    optimized_path = workdir / f"{name}.opt.onnx"
    result = api.optimize(source, optimized_path, force=True)
    before, after = onnx.load(source), onnx.load(optimized_path)
    feeds = verify.random_inputs(signature(after)[0], seed=0)
    sessions = {
        "before": verify.ort_session(before, optimize=True, threads=threads),
        "after": verify.ort_session(after, optimize=True, threads=threads),
    }
    outs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
    err = verify.compare(outs["after"], outs["before"])["scaled_err"]
    stats = latency.measure(
        {k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()},
        warmup=3, runs=runs, budget_s=budget_s,
    )  # fmt: skip
    return {
        "model": name,
        "before_ms": stats["before"]["p50_ms"],
        "after_ms": stats["after"]["p50_ms"],
        "speedup": stats["before"]["p50_ms"] / stats["after"]["p50_ms"],
        "noisy": stats["before"]["noisy"] or stats["after"]["noisy"],
        "scaled_err": err,
        "ops_before": dict(Counter(n.op_type for n in before.graph.node)),
        "ops_after": dict(Counter(n.op_type for n in after.graph.node)),
        "passes": {p["name"]: p["stats"] for p in result.passes if p["status"] == "applied"},
    }


def _ops(counts: dict, keys=("Conv", "BatchNormalization", "Add")) -> str:
    return " ".join(f"{k}:{counts.get(k, 0)}" for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--budget", type=float, default=20.0, help="timing seconds per model")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(f"{name} ...", file=sys.stderr)
            rows.append(bench_model(name, Path(tmp), args.threads, args.runs, args.budget))
    print(f"onnxruntime {args.threads} threads, ORT_ENABLE_ALL, p50 of interleaved blocks\n")
    print("| model | before ms | after ms | speed-up | ops before | ops after | max err |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        flag = " (noisy)" if r["noisy"] else ""
        print(f"| {r['model']} | {r['before_ms']:.2f} | {r['after_ms']:.2f} | "
              f"{r['speedup']:.2f}x{flag} | {_ops(r['ops_before'])} | {_ops(r['ops_after'])} | "
              f"{r['scaled_err']:.1e} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=float))


if __name__ == "__main__":
    main()
