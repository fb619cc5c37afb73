"""edgec vs onnxruntime on this CPU: zoo models compiled with each search mode, same process.

    .venv/bin/python bench/cpu.py [--models resnet18,deit_tiny] [--search none,fast] [--threads 2]
                                  [--layouts nchw,nhwc]

Per model and search mode: compile (wall time) with each layout, then time the artifacts and
onnxruntime (ORT_ENABLE_ALL, same threads, on the source model) in interleaved blocks; report
p50s, the ratio and the achieved GFLOP/s. A markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from edgec import api, models, verify
from edgec.report import latency

DEFAULT = "resnet18,mobilenetv2,repvgg_a0,deit_tiny"
GFLOPS = {"resnet18": 3.628, "mobilenetv2": 0.602, "repvgg_a0": 3.025, "deit_tiny": 2.507,
          "mobileone_s0": 2.10, "slab_tiny": 0.80}  # fmt: skip  # 2 x MACs of the source model


def bench_one(name: str, search: str, workdir: Path, args, layouts=("auto",)) -> list[dict]:
    """One row per layout; every layout's artifact and onnxruntime are timed interleaved in the
    same blocks (on a busy machine only ratios measured together are comparable)."""
    source = workdir / f"{name}.onnx"
    if not source.exists():
        models.export(name, source)
    session = verify.ort_session(source, optimize=True, threads=args.threads)
    engines, rows = {}, {}
    for layout in layouts:
        out = workdir / f"{name}-{search}-{layout}"
        t0 = time.perf_counter()
        result = api.compile(source, out, force=True, threads=args.threads, bench=False,
                             layout=layout,
                             **({"search": search, "search_budget_s": args.budget,
                                 "tuning_db": args.tuning_db or workdir / "tuning.db"}
                                if search != "none" else {}))  # fmt: skip
        model = api.load(out, args.threads)
        feeds = verify.random_inputs(model.inputs, 0)
        engines[layout] = model._runtime.prepare([feeds[s.name] for s in model.inputs])
        rows[layout] = {
            "model": name, "search": search, "layout": result.report["layout"],
            "compile_s": time.perf_counter() - t0,
            "cosine": result.report["verification"].get("min_cosine"),
            "search_report": result.report.get("search"),
        }  # fmt: skip
    engines["onnxruntime"] = lambda: session.run(None, feeds)
    stats = latency.measure(engines, runs=args.runs, budget_s=args.budget_timing)
    o = stats["onnxruntime"]["p50_ms"]
    for layout, row in rows.items():
        e = stats[layout]["p50_ms"]
        row.update(edgec_ms=e, onnxruntime_ms=o, ratio=e / o,
                   gflops=GFLOPS.get(name, 0) / e * 1e3,
                   noisy=stats[layout]["noisy"] or stats["onnxruntime"]["noisy"])  # fmt: skip
    return list(rows.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT)
    ap.add_argument("--search", default="none,fast")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layouts", default="auto",
                    help="edgec --layout values, comma-separated (timed together)")  # fmt: skip
    ap.add_argument("--budget", type=float, default=120.0, help="search budget, seconds")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--budget-timing", type=float, default=15.0)
    ap.add_argument("--workdir", type=Path, help="keep models/artifacts here")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--tuning-db", type=Path, help="default: a fresh one (cold-cache search)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            for search in args.search.split(","):
                print(f"{name} --search {search} --layout {args.layouts} ...", file=sys.stderr)
                rows += bench_one(name, search, workdir, args, args.layouts.split(","))
    print(f"edgec vs onnxruntime 1.31 (ORT_ENABLE_ALL), {args.threads} threads, p50 of "
          "interleaved blocks\n")  # fmt: skip
    print(
        "| model | search | layout | compile s | edgec ms | onnxruntime ms | edgec/ORT | GFLOP/s "
        "| cosine |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        flag = " (noisy)" if r["noisy"] else ""
        print(f"| {r['model']} | {r['search']} | {r['layout']} | {r['compile_s']:.0f} | "
              f"{r['edgec_ms']:.2f} | {r['onnxruntime_ms']:.2f} | {r['ratio']:.2f}x{flag} | "
              f"{r['gflops']:.0f} | {r['cosine']:.6f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
