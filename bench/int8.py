"""int8 on this CPU: edgec int8 vs edgec fp32 vs onnxruntime fp32 vs onnxruntime int8, same process.

    .venv/bin/python bench/int8.py [--models resnet18,mobilenetv2] [--threads 2] [--calib 4]
                                   [--search fast --budget 60] [--integer-only]

Per model: export the zoo model (fp32 ONNX), quantize it with onnxruntime's ``quantize_static``
(QDQ, uint8 activations, per-channel symmetric int8 weights, minmax calibration on a few
synthetic N(0, 1) samples: the latency does not depend on the calibration), compile both with
edgec (the QDQ model becomes integer kernels), then time the four engines in interleaved blocks
(``edgec.report.latency``). onnxruntime runs the fp32 model and the same QDQ model with
ORT_ENABLE_ALL (its QDQ fusion turns the QDQ graph into its int8 kernels). Also reports how
close edgec int8 is to onnxruntime int8 (max |diff| in output quanta, share of exact outputs).
A markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from edgec import api, models, verify
from edgec.quant import quantize_qdq
from edgec.report import latency

DEFAULT = "resnet18,mobilenetv2"


def quantize(source: Path, out: Path, samples: int, activation: str = "uint8") -> Path:
    """The QDQ model of ``source``, calibrated (minmax) on ``samples`` synthetic inputs."""
    model = onnx.load(source)
    name = model.graph.input[0].name
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    data = [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(samples)]
    onnx.save(quantize_qdq(model, data, activation=activation), out)
    return out


def output_quantum(qdq: onnx.ModelProto) -> float:
    """The scale of the output DequantizeLinear (one quantum of the int8 output)."""
    out = qdq.graph.output[0].name
    node = next(n for n in qdq.graph.node if out in n.output)
    init = {i.name: i for i in qdq.graph.initializer}
    return float(onnx.numpy_helper.to_array(init[node.input[1]]))


def bench_one(name: str, workdir: Path, args) -> dict:
    source = workdir / f"{name}.onnx"
    if not source.exists():
        models.export(name, source)
    qsource = workdir / f"{name}.qdq.onnx"
    if not qsource.exists():
        print(f"{name}: quantize_static ...", file=sys.stderr)
        quantize(source, qsource, args.calib)
    compiled, compile_s = {}, {}
    for kind, path in (("fp32", source), ("int8", qsource)):
        print(f"{name}: edgec compile {kind} ...", file=sys.stderr)
        t0 = time.perf_counter()
        result = api.compile(path, workdir / f"{name}-{kind}", force=True, threads=args.threads,
                             bench=False, search=args.search, tuning_db=workdir / "tuning.db",
                             search_budget_s=args.budget,
                             integer_only=kind == "int8" and args.integer_only)  # fmt: skip
        compile_s[kind] = time.perf_counter() - t0
        compiled[kind] = (api.load(result.output, args.threads), result.report)
    feeds = verify.random_inputs(compiled["fp32"][0].inputs, 0)
    sessions = {k: verify.ort_session(p, optimize=True, threads=args.threads)
                for k, p in (("fp32", source), ("int8", qsource))}  # fmt: skip
    engines = {
        "edgec int8": compiled["int8"][0]._runtime.prepare(list(feeds.values())),
        "edgec fp32": compiled["fp32"][0]._runtime.prepare(list(feeds.values())),
        "onnxruntime int8": lambda: sessions["int8"].run(None, feeds),
        "onnxruntime fp32": lambda: sessions["fp32"].run(None, feeds),
    }
    print(f"{name}: timing 4 engines (interleaved) ...", file=sys.stderr)
    stats = latency.measure(engines, runs=args.runs, budget_s=args.budget_timing)
    ours = compiled["int8"][0](**feeds)
    theirs = sessions["int8"].run(None, feeds)[0]
    got = next(iter(ours.values()))
    quanta = np.abs(got.astype(np.float64) - theirs) / output_quantum(onnx.load(qsource))
    p50 = {k: v["p50_ms"] for k, v in stats.items() if isinstance(v, dict) and "p50_ms" in v}
    report = compiled["int8"][1]
    return {
        "model": name, "p50_ms": p50, "compile_s": compile_s,
        "noisy": any(v.get("noisy") for v in stats.values() if isinstance(v, dict)),
        "int8_vs_ort_int8": p50["edgec int8"] / p50["onnxruntime int8"],
        "int8_vs_ort_fp32": p50["edgec int8"] / p50["onnxruntime fp32"],
        "max_quanta_vs_ort_int8": float(quanta.max()),
        "exact_vs_ort_int8": float(np.mean(quanta < 0.5)),
        "float_ops": len(report.get("int8", {}).get("float_ops", [])),
        "integer_ops": report.get("int8", {}).get("integer_ops"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=int, default=4, help="synthetic calibration samples")
    ap.add_argument("--search", default="none", choices=["none", "fast", "full"])
    ap.add_argument("--budget", type=float, default=None, help="search budget, seconds")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--budget-timing", type=float, default=20.0)
    ap.add_argument(
        "--integer-only",
        action="store_true",
        help="compile the QDQ model with --integer-only (no float op may remain)",
    )
    ap.add_argument("--workdir", type=Path, help="keep models/artifacts here")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            rows.append(bench_one(name, workdir, args))
    print(f"p50 ms, {args.threads} threads, interleaved blocks; onnxruntime ORT_ENABLE_ALL; "
          f"edgec --search {args.search}\n")  # fmt: skip
    print("| model | edgec int8 | edgec fp32 | ORT int8 | ORT fp32 | int8 / ORT int8 | "
          "int8 / ORT fp32 | vs ORT int8: max quanta, exact | float ops |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p = r["p50_ms"]
        flag = " (noisy)" if r["noisy"] else ""
        print(f"| {r['model']} | {p['edgec int8']:.2f} | {p['edgec fp32']:.2f} | "
              f"{p['onnxruntime int8']:.2f} | {p['onnxruntime fp32']:.2f} | "
              f"{r['int8_vs_ort_int8']:.2f}x{flag} | {r['int8_vs_ort_fp32']:.2f}x | "
              f"{r['max_quanta_vs_ort_int8']:.0f}, {r['exact_vs_ort_int8']:.0%} | "
              f"{r['float_ops']} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return rows


if __name__ == "__main__":
    main()
