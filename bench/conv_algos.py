"""Convolution algorithms on this CPU: every conv layer of ResNet-18, RepVGG-A0 (deploy) and
MobileNetV2 with each algorithm, and whole-model latency with and without im2win / Winograd.

    .venv/bin/python bench/conv_algos.py [--models resnet18,repvgg_a0_deploy,mobilenetv2]
        [--budget 240] [--rounds 5] [--threads 2] [--json out.json] [--int8]

Per model: one ``--search fast`` (``--budget`` seconds) over every algorithm variant's kernels
(``conv_algos.VARIANTS``; that is what ``--conv-algo auto`` does), which picks each variant's
best knobs per kernel. Then per conv kernel, the best kernel of every variant is timed again in
``--rounds`` interleaved rounds (variants alternate; the median counts), as deployed (weights
pre-transformed). GFLOP/s = the direct convolution's 2 x MACs / ms, for every algorithm.
Whole models: artifacts built from the same search results (no new measurement) with
``auto``, auto without im2win, auto without Winograd and ``direct``, timed with onnxruntime in
interleaved blocks (edgec.report.latency). Markdown tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edgec import frontend, lower, models, passes, targets, verify
from edgec.lower import conv_algos, measure
from edgec.report import latency
from edgec.search import Search

DEFAULT = "resnet18,repvgg_a0_deploy,mobilenetv2"
WHOLE = {  # artifact -> variants auto may use
    "auto": conv_algos.VARIANTS,
    "auto without im2win": tuple(v for v in conv_algos.VARIANTS if v[0] != "im2win"),
    "auto without winograd": tuple(v for v in conv_algos.VARIANTS if v[0] != "winograd"),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Replay:
    """A ``tune`` hook that measures nothing: the choices of a finished search."""

    def __init__(self, search: Search):
        self.search = search

    def __call__(self, tasks, target):
        self.search.adopt(tasks)
        return self.search.choose


@contextlib.contextmanager
def variants(allowed):
    saved = conv_algos.VARIANTS
    conv_algos.VARIANTS = allowed
    try:
        yield
    finally:
        conv_algos.VARIANTS = saved


def load(name: str, workdir: Path, int8: bool = False):
    """The zoo model after edgec's passes; ``int8``: its QDQ model instead (onnxruntime's
    quantize_static, uint8 activations, 4 synthetic calibration samples: the latency does not
    depend on them), whose convs edgec lowers to integer kernels (direct or im2win)."""
    source = workdir / f"{name}.onnx"
    if not source.exists():
        models.export(name, source)
    if int8:
        import numpy as np
        import onnx

        from edgec.quant import quantize_qdq

        qdq = workdir / f"{name}.qdq.onnx"
        if not qdq.exists():
            fp32 = onnx.load(source)
            spec = frontend.import_model(source, {}).inputs
            rng = np.random.default_rng(0)
            samples = [{i.name: rng.standard_normal(i.shape).astype(np.float32) for i in spec}
                       for _ in range(4)]  # fmt: skip
            onnx.save(quantize_qdq(fp32, samples), qdq)
        source = qdq
    imported = frontend.import_model(source, {})
    if int8:
        return source, imported, imported.model
    optimized, _ = passes.run_pipeline(imported.model, passes.select((), ()))
    return source, imported, optimized


def layer_rows(plan, search, target: dict, rounds: int) -> list[dict]:
    """Per distinct conv kernel: every variant's best kernel, timed in interleaved rounds."""
    groups: dict[tuple, dict] = {}
    for lay in plan.layers:
        if not lay.get("tried"):
            continue
        key = tuple(t.get("kernel") for t in lay["tried"])
        groups.setdefault(key, {"layers": [], "layer": lay})["layers"].append(lay["layer"])
    rows = []
    for n, group in enumerate(groups.values(), 1):
        lay = group["layer"]
        entries = [t for t in lay["tried"] if t.get("kernel") in plan.tasks]
        timers = [_timer(plan.tasks[t["kernel"]], search, target) for t in entries]
        times: dict[int, list[float]] = {i: [] for i in range(len(entries))}
        for _ in range(rounds):  # interleaved: every variant once per round
            for i, timer in enumerate(timers):
                if timer is not None:
                    times[i].append(timer() * 1e3)
        spec = lay["spec"]
        algos = []
        for i, t in enumerate(entries):
            ms = statistics.median(times[i]) if times[i] else None
            algos.append({**t, "ms": ms, "gflops": spec.flops / ms / 1e6 if ms else None})
        ok = [a for a in algos if a["ms"] and "rejected" not in a]
        winner = min(ok, key=lambda a: a["ms"]) if ok else None
        rows.append({"layers": group["layers"], "shape": spec.label(), "algos": algos,
                     "winner": winner and _label(winner), "chosen": _label(lay)})  # fmt: skip
        log(f"  conv {n}/{len(groups)} {spec.label()}: winner {rows[-1]['winner']}")
    return rows


def _timer(task, search, target: dict):
    """A zero-argument callable timing one call of the task's best candidate as deployed
    (built once; the fastest of 3 runs of >= 10 ms each); None when it does not build."""
    import numpy as np
    import tvm

    w = search.by_kernel.get(task.name)
    knobs = (w.best if w is not None and w.best else None) or task.default
    try:
        lib, func = measure._timed_lib(task, knobs, tvm.target.Target(target))
    except Exception as e:  # noqa: BLE001 - a failing variant is reported, not fatal
        log(f"  {task.name}: {type(e).__name__}: {str(e)[-200:]}")
        return None
    dev = tvm.cpu(0)
    args = [tvm.runtime.tensor(a, dev) for a in measure._arrays(func, 0)]
    evaluator = lib.time_evaluator("main", dev, number=1, repeat=3, min_repeat_ms=10)
    return lambda: float(np.min(evaluator(*args).results))


def _label(entry: dict) -> str:
    opt = entry.get("option")
    return entry["algo"] if opt is None else f"{entry['algo']}-{opt}"


def bench_model(name: str, workdir: Path, args) -> dict:
    tgt = targets.get("x86_64")
    source, imported, optimized = load(name, workdir, args.int8)
    search = Search("fast", budget_s=args.budget, tuning_db=workdir / "tuning.db",
                    threads=args.threads, log=log)  # fmt: skip
    built, plans = {}, []
    log(f"{name}: search over every algorithm variant ({args.budget:g} s)")
    built["auto"], _ = lower.build(optimized, tgt, args.threads, tune=search, conv_algo="auto",
                                   conv_plan=plans)  # fmt: skip
    plan = plans[0]
    for label, allowed in list(WHOLE.items())[1:]:
        with variants(allowed):
            built[label], _ = lower.build(optimized, tgt, args.threads, tune=Replay(search),
                                          conv_algo="auto")  # fmt: skip
    built["direct"], _ = lower.build(optimized, tgt, args.threads, tune=Replay(search),
                                     conv_algo="direct")  # fmt: skip
    target = lower.target_json(tgt, args.threads)
    lower.set_threads(args.threads)
    log(f"{name}: per-layer timing, {args.rounds} interleaved rounds")
    rows = layer_rows(plan, search, target, args.rounds)
    for label, ex in built.items():
        lower.export(ex, _artifact(workdir, name, label), tgt)
    whole, errors = time_whole(name, source, imported, workdir, args)
    return {"model": name, "layers": rows, "whole": whole, "errors": errors,
            "chosen": plan.summary()["chosen"], "search": search.summary()}  # fmt: skip


def _artifact(workdir: Path, name: str, label: str) -> Path:
    return workdir / f"{name}-{label.replace(' ', '_')}.so"


def time_whole(name: str, source: Path, imported, workdir: Path, args):
    """The model's artifacts (auto, without im2win, without Winograd, direct) and onnxruntime,
    timed in interleaved blocks; each artifact's error vs onnxruntime on one random input."""
    feeds = verify.random_inputs(imported.inputs, 0)
    arrays = [feeds[s.name] for s in imported.inputs]
    expected = list(verify.reference_outputs(imported.model, feeds).values())[0]
    engines, errors = {}, {}
    for label in [*WHOLE, "direct"]:
        runtime = lower.Runtime(_artifact(workdir, name, label), args.threads)
        got = runtime.run(arrays)[0]
        errors[label] = conv_algos.relative_error(got, expected)
        engines[label] = runtime.prepare(arrays)
    session = verify.ort_session(source, optimize=True, threads=args.threads)
    engines["onnxruntime"] = lambda: session.run(None, feeds)
    log(f"{name}: whole-model timing (interleaved)")
    return latency.measure(engines, runs=args.runs, budget_s=args.budget_timing), errors


def _mb(n) -> str:
    return f"{n / 2**20:.2f}" if n else "0"


def print_tables(results: list[dict], args) -> None:
    print(
        f"Per conv kernel (layers with the same shape and epilogue share a row): ms = median "
        f"of {args.rounds} interleaved rounds, GFLOP/s of the direct conv's FLOPs, MB = "
        "transformed input / all workspace; `-` = not applicable (falls back to direct).\n"
    )
    for r in results:
        print(f"#### {r['model']}\n")
        heads = [_label({"algo": a, "option": o}) for a, o in conv_algos.VARIANTS]
        print("| layers | conv | " + " | ".join(f"{h} ms (GFLOP/s)" for h in heads)
              + " | im2win / im2col MB | winner | auto chose |")  # fmt: skip
        print("|---" * (len(heads) + 5) + "|")
        for row in r["layers"]:
            by = {_label(a): a for a in row["algos"]}
            cells = []
            for h in heads:
                a = by.get(h)
                if a is None or a["ms"] is None:
                    cells.append("-")
                else:
                    mark = " rejected" if "rejected" in a else ""
                    cells.append(f"{a['ms']:.3f} ({a['gflops']:.0f}){mark}")
            win, col = by.get("im2win-nhwc"), by.get("im2col")
            mem = (f"{_mb(win['transformed_input_bytes'])} / {_mb(col['transformed_input_bytes'])}"
                   if win and col else "-")  # fmt: skip
            layers = ",".join(map(str, row["layers"]))
            print(f"| {layers} | {row['shape']} | " + " | ".join(cells)
                  + f" | {mem} | {row['winner']} | {row['chosen']} |")  # fmt: skip
        print()
    print("Whole models (p50 ms of interleaved blocks, same process; error = max|edgec - ORT| / "
          "max|ORT| on one random input):\n")  # fmt: skip
    print("| model | " + " | ".join(["auto", "auto without im2win", "auto without winograd",
                                     "direct", "onnxruntime"]) + " | auto chose |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in results:
        w = r["whole"]
        cells = []
        for k in ("auto", "auto without im2win", "auto without winograd", "direct", "onnxruntime"):
            noisy = " (noisy)" if w[k]["noisy"] else ""
            err = f", err {r['errors'][k]:.1e}" if k in r["errors"] else ""
            cells.append(f"{w[k]['p50_ms']:.2f}{noisy}{err}")
        chose = ", ".join(f"{k} {v}" for k, v in sorted(r["chosen"].items()))
        print(f"| {r['model']} | " + " | ".join(cells) + f" | {chose} |")


def without_search(names: list[str], workdir: Path, args) -> None:
    """``--search none``: ``auto`` (the heuristic: Winograd for big 3x3 stride-1 convs) vs
    ``direct`` vs onnxruntime, interleaved; prints a table."""
    from edgec import api

    print("| model | auto ms | direct ms | onnxruntime ms | auto / direct |")
    print("|---|---|---|---|---|")
    for name in names:
        source, imported, _ = load(name, workdir, args.int8)
        feeds = verify.random_inputs(imported.inputs, 0)
        engines = {}
        for algo in ("auto", "direct"):
            out = workdir / f"none-{name}-{algo}"
            api.compile(source, out, force=True, bench=False, threads=args.threads,
                        conv_algo=algo)  # fmt: skip
            model = api.load(out, args.threads)
            engines[algo] = model._runtime.prepare([feeds[s.name] for s in model.inputs])
        session = verify.ort_session(source, optimize=True, threads=args.threads)
        engines["onnxruntime"] = lambda s=session, f=feeds: s.run(None, f)
        r = latency.measure(engines, runs=args.runs, budget_s=args.budget_timing)
        cells = [f"{r[k]['p50_ms']:.2f}{' (noisy)' if r[k]['noisy'] else ''}" for k in r]
        ratio = r["auto"]["p50_ms"] / r["direct"]["p50_ms"]
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=240.0, help="search budget per model, s")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per conv kernel")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--budget-timing", type=float, default=20.0)
    ap.add_argument("--workdir", type=Path, help="keep models, artifacts and the tuning cache")
    ap.add_argument(
        "--int8",
        action="store_true",
        help="the models' QDQ form: int8 convs, direct vs im2win (vs onnxruntime int8)",
    )
    ap.add_argument("--json", type=Path, help="write the results (and read them: --tables)")
    ap.add_argument("--tables", action="store_true", help="only print the tables of --json")
    ap.add_argument("--search-none", action="store_true",
                    help="only compare auto and direct without a search (--workdir)")  # fmt: skip
    ap.add_argument("--retime", action="store_true",
                    help="time the whole-model artifacts in --workdir again")  # fmt: skip
    args = ap.parse_args()
    if args.search_none:
        args.workdir.mkdir(parents=True, exist_ok=True)
        without_search(args.models.split(","), args.workdir, args)
        return
    if args.tables or args.retime:
        results = json.loads(args.json.read_text())
        for r in results if args.retime else []:  # the kept artifacts, timed again
            source, imported, _ = load(r["model"], args.workdir, args.int8)
            r["whole"], r["errors"] = time_whole(r["model"], source, imported, args.workdir, args)
            args.json.write_text(json.dumps(results, indent=2, default=str))
        print_tables(results, args)
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            results.append(bench_model(name, workdir, args))
            if args.json:
                args.json.write_text(json.dumps(results, indent=2, default=str))
    print_tables(results, args)


if __name__ == "__main__":
    main()
