"""int8 matmul kernels on this CPU: the ``int8_matmul`` template (u8 x s8 dot-product
micro-kernel) vs the generic ``matmul`` template on the same fused integer kernel, and
onnxruntime int8 on the same one-op QDQ MatMul model.

    .venv/bin/python bench/int8_matmul.py [--shapes deit] [--rounds 5] [--threads 2] [--space]
        [--target x86_64]
    .venv/bin/python bench/int8_matmul.py --model deit.onnx [--threads 2] [--runs 40]

Per shape ``M x K @ K x N`` (DeiT-tiny's Linear layers by default, batch 1): a QDQ model
``DequantizeLinear -> MatMul(constant int8 weight) -> QuantizeLinear`` is lowered by
``edgec.lower.qdq`` to one fused kernel (int32 matmul, offset add, dyadic requantization).
That kernel is timed as deployed (weights pre-packed, ``edgec.lower.measure``) with the generic
template's default knobs ("before"), int8_matmul's default and, with ``--space``, the best of
int8_matmul's whole knob space. Engines alternate in ``--rounds`` rounds; medians are reported.
onnxruntime (ORT_ENABLE_ALL, its QDQ fusion to int8 kernels) runs the whole one-op model, so
its time includes the requantization too. Every int8_matmul candidate's outputs are checked
equal to the generic template's.

With ``--model`` (e.g. ``edgec zoo export deit_tiny -o deit.onnx``), whole models instead: the
model compiled ``--int8 --calib synthetic`` (default knobs) with and without int8_matmul (the
generic template then schedules those kernels, as before it existed) and in fp32, timed in
interleaved blocks (``edgec.report.latency``) with onnxruntime on the int8 artifact's QDQ model
and on the fp32 model (ORT_ENABLE_ALL). Markdown to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgec import api, lower, targets, verify
from edgec.lower import measure, qdq, schedules
from edgec.report import latency

SHAPES = {  # name -> [(label, M, K, N)]
    "deit": [("qkv", 197, 192, 576), ("proj", 197, 192, 192), ("fc1", 197, 192, 768),
             ("fc2", 197, 768, 192)],
    "head": [("fc 512->1000", 1, 512, 1000)],
}  # fmt: skip


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def qdq_matmul(m: int, k: int, n: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    inits = {
        "sx": np.array(0.05, np.float32), "zx": np.array(120, np.uint8), "w": w,
        "sw": rng.uniform(0.001, 0.01, n).astype(np.float32), "zw": np.zeros(n, np.int8),
        "so": np.array(0.5, np.float32), "zo": np.array(128, np.uint8),
    }  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wf"], axis=1),
        helper.make_node("MatMul", ["xf", "wf"], ["yf"]),
        helper.make_node("QuantizeLinear", ["yf", "so", "zo"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "mm",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, m, k])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, m, n])],
        [numpy_helper.from_array(v, name) for name, v in inits.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def matmul_task(model: onnx.ModelProto, target: targets.Target, template: str) -> measure.Task:
    """The model's fused matmul kernel as a search task scheduled by ``template``."""
    tvm = lower._tvm()
    from tvm import relax
    from tvm.relax import transform

    with qdq.onnx_node_names() as names:
        mod = lower.to_relax(model)
    mod = qdq.lower(mod, True, {}, names)
    with tvm.target.Target(lower.target_json(target, 1)):
        mod = transform.DecomposeOpsForInference()(mod)
        mod = transform.CanonicalizeBindings()(mod)
        mod = relax.get_pipeline("zero")(mod)
        (gv,) = [g for g in mod.functions if "matmul" in g.name_hint]
        func = mod[gv]
        tpl = measure._template(template)
        info = tpl.match(func)
        info["constants"] = schedules.constant_params(mod).get(gv.name_hint, set())
        lanes = lower.vector_lanes(target)
        default = tpl.default(info, lanes)
        space = [default] + [k for k in tpl.space(info, lanes) if k != default]
    return measure.Task(
        name=gv.name_hint, template=template, info=info, space=space, default=default,
        flops=info["flops"], calls=1, workload="", func=func,
    )  # fmt: skip


def ort_time(model: onnx.ModelProto, x: np.ndarray, threads: int, seconds: float = 0.3) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sess.run(None, {"x": x})
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        best = min(best, time.perf_counter() - t0)
    return best


def bench_shape(label, m, k, n, target, args) -> dict:
    model = qdq_matmul(m, k, n)
    before = matmul_task(model, target, "matmul")
    after = matmul_task(model, target, "int8_matmul")
    tgt = lower.target_json(target, args.threads)
    want = measure.outputs(before, before.default, tgt)
    candidates = after.space if args.space else [after.default]
    for knobs in candidates:  # bit-exact with the generic kernel
        got = measure.outputs(after, knobs, tgt)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)), knobs
    best = after.default
    if args.space:
        scores = {
            measure.canonical(kn): measure.measure(after, kn, tgt, repeat=1) for kn in candidates
        }
        best = min(candidates, key=lambda kn: scores[measure.canonical(kn)])
        log(f"{label}: best of {len(candidates)} knob sets {best}")
    x = np.random.default_rng(1).integers(0, 256, (1, m, k)).astype(np.uint8)
    runs: dict[str, list[float]] = {}
    engines = {
        "generic matmul": lambda: measure.measure(before, before.default, tgt, repeat=1),
        "int8_matmul default": lambda: measure.measure(after, after.default, tgt, repeat=1),
        "int8_matmul best": lambda: measure.measure(after, best, tgt, repeat=1),
        "onnxruntime int8": lambda: ort_time(model, x, args.threads),
    }
    if not args.space:
        del engines["int8_matmul best"]
    for _ in range(args.rounds):
        for name, run in engines.items():
            runs.setdefault(name, []).append(run())
    ms = {name: statistics.median(v) * 1e3 for name, v in runs.items()}
    log(f"{label}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()))
    return {"label": label, "m": m, "k": k, "n": n, "ms": ms, "best": best,
            "default": after.default, "gops": 2 * m * k * n / 1e9}  # fmt: skip


@contextlib.contextmanager
def without_int8_matmul():
    """The template registry as before int8_matmul: its kernels go to the generic template."""
    saved = schedules.TEMPLATES
    schedules.TEMPLATES = tuple(t for t in saved if t.name != "int8_matmul")
    try:
        yield
    finally:
        schedules.TEMPLATES = saved


def bench_model(source: Path, args) -> None:
    with tempfile.TemporaryDirectory(prefix="edgec-int8mm-") as tmp:
        work = Path(tmp)
        common = {"threads": args.threads, "bench": False, "verify_result": False,
                  "html_report": False, "bundle": False}  # fmt: skip
        builds = {
            "edgec int8": ({"int8": True, "calib": "synthetic"}, contextlib.nullcontext()),
            "edgec int8 without int8_matmul": (
                {"int8": True, "calib": "synthetic"}, without_int8_matmul()
            ),
            "edgec fp32": ({}, contextlib.nullcontext()),
        }  # fmt: skip
        engines, feeds, outputs = {}, None, {}
        for i, (label, (options, context)) in enumerate(builds.items()):
            log(f"compile {label} ...")
            with context:
                api.compile(source, work / str(i), force=True, **common, **options)
            model = api.load(work / str(i), args.threads)
            if feeds is None:
                feeds = verify.random_inputs(model.inputs, 0)
            engines[label] = model._runtime.prepare([feeds[s.name] for s in model.inputs])
            outputs[label] = model(**feeds)
        same = all(
            np.array_equal(a, b)
            for a, b in zip(outputs["edgec int8"].values(),
                            outputs["edgec int8 without int8_matmul"].values(), strict=True)
        )  # fmt: skip
        log(f"int8 outputs with and without int8_matmul identical: {same}")
        sessions = {
            "onnxruntime int8": verify.ort_session(work / "0" / "model.onnx", optimize=True,
                                                   threads=args.threads),
            "onnxruntime fp32": verify.ort_session(source, optimize=True, threads=args.threads),
        }  # fmt: skip
        for label, session in sessions.items():
            engines[label] = lambda s=session: s.run(None, feeds)
        log("timing (interleaved) ...")
        r = latency.measure(engines, runs=args.runs, budget_s=args.budget_timing)
    base = r["edgec int8"]["p50_ms"]
    print(f"{source.name}, {args.threads} threads, p50 ms (interleaved blocks); int8 outputs "
          f"with and without int8_matmul identical: {same}\n")  # fmt: skip
    print("| engine | p50 ms | vs edgec int8 |")
    print("|---|---|---|")
    for label, stats in r.items():
        noisy = " (noisy)" if stats["noisy"] else ""
        print(f"| {label} | {stats['p50_ms']:.2f}{noisy} | {stats['p50_ms'] / base:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="deit", help=f"comma list of {sorted(SHAPES)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", default="x86_64")
    parser.add_argument("--space", action="store_true", help="also time every knob set")
    parser.add_argument("--model", type=Path, help="whole model instead (ONNX, fp32)")
    parser.add_argument("--runs", type=int, default=40, help="--model: timed calls per engine")
    parser.add_argument("--budget-timing", type=float, default=30.0, help="--model: seconds")
    args = parser.parse_args()
    if args.model is not None:
        bench_model(args.model, args)
        return
    target = targets.get(args.target)
    measure.prepare(args.threads)
    rows = [bench_shape(*s, target, args) for name in args.shapes.split(",") for s in SHAPES[name]]
    engines = list(rows[0]["ms"])
    print(
        f"| layer | M x K x N | {' | '.join(engines)} | generic / int8_matmul | ORT / int8_matmul |"
    )
    print("|---" * (len(engines) + 4) + "|")
    for r in rows:
        ms = r["ms"]
        cells = " | ".join(f"{ms[e]:.3f} ({r['gops'] * 1e3 / ms[e]:.0f} GOP/s)" for e in engines)
        ours = min(v for e, v in ms.items() if e.startswith("int8_matmul"))
        ratios = f"{ms['generic matmul'] / ours:.1f}x | {ms['onnxruntime int8'] / ours:.2f}x"
        print(f"| {r['label']} | {r['m']}x{r['k']}x{r['n']} | {cells} | {ratios} |")
    print()
    for r in rows:
        print(f"- {r['label']}: default {r['default']}, best {r['best']}")


if __name__ == "__main__":
    main()
