"""ONNX's backend node tests compiled by edgec for x86_64, compared with their stored outputs.

    .venv/bin/python bench/coverage.py [--jobs 2] [--only REGEX] [--json out.json] [--write-doc]

Each case goes through edgec's own path: pin the input shapes from the test data, infer shapes,
run the default rewrite passes, ``lower.build`` (schedule templates, no search) and run the
executable in the TVM VM (not exported: the g++ link would double the time). A case ends as one of:

* ``pass``: every output has the stored shape and dtype and matches within the test's own
  rtol/atol (NaN where the test has NaN);
* ``unsupported``: edgec refuses it cleanly (UnsupportedModelError, exit code 3);
* ``mismatch`` (a wrong answer), ``error`` (any other exception), ``crash`` (the worker process
  died, e.g. a segfault) or ``timeout``: bugs to fix.

Cases run in worker processes (one TVM import per worker, many cases each); a worker that
crashes or hangs is replaced and only its current case is charged. ``--write-doc`` regenerates
docs/COVERAGE.md (pass fraction per op).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import multiprocessing as mp
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "COVERAGE.md"
STATUSES = ("pass", "unsupported", "mismatch", "error", "crash", "timeout")
BAD = ("mismatch", "error", "crash", "timeout")
CASE_TIMEOUT_S = 120.0
# ops whose handling edgec.lower.importer / converters change (the before/after table)
BASELINE_OPS = (
    "Resize", "Upsample", "BatchNormalization", "LayerNormalization", "Dropout",
    "ConvTranspose", "BitShift", "IsInf", "Mod", "Pow", "TopK", "ReduceMax", "ReduceMin", "Cast",
    "NonMaxSuppression", "RoiAlign", "SpaceToDepth", "RMSNormalization", "Tile", "Attention",
)  # fmt: skip


def load_cases(only: str | None = None, ops: Iterable[str] | None = None) -> list[dict]:
    """The node cases as plain picklable dicts (name, op, model bytes, data, rtol, atol),
    optionally only names matching the regex ``only`` and cases about ``ops``."""
    from onnx.backend.test.loader import load_node_model_tests

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        tests = load_node_model_tests()
    pattern = re.compile(only) if only else None
    cases = []
    for t in tests:
        if pattern and not pattern.search(t.name):
            continue
        if ops is not None and op_of(t.name, t.model) not in ops:
            continue
        cases.append(
            {
                "name": t.name,
                "op": op_of(t.name, t.model),
                "model": t.model.SerializeToString(),
                "data": t.data_sets,
                "rtol": t.rtol,
                "atol": t.atol,
            }
        )
    return cases


def op_of(name: str, model: onnx.ModelProto) -> str:
    """The op a node test is about: the longest ONNX op name that starts the test name
    (``test_reduce_log_sum_exp_*`` is ReduceLogSumExp), else the graph's first node."""
    key = name.removeprefix("test_").replace("_", "").lower()
    ops = _op_names()
    best = max((op for op in ops if key.startswith(op.lower())), key=len, default=None)
    return best or (model.graph.node[0].op_type if model.graph.node else "?")


@functools.cache
def _op_names() -> set[str]:
    return {s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain == ""}


def run_case(case: dict) -> dict:
    """Compile and run one case in this process; returns {"status", "detail"}."""
    from edgec import frontend, lower, passes, targets
    from edgec.errors import EdgecError, UnsupportedModelError

    model = onnx.ModelProto.FromString(case["model"])
    try:
        specs = frontend.graph_inputs(model)
        non_tensor = [v.name for v in list(specs) + list(model.graph.output)
                      if not v.type.HasField("tensor_type")]  # fmt: skip
        if non_tensor:  # sequence / optional IO: edgec compiles tensor graphs only
            raise UnsupportedModelError(f"non-tensor graph inputs/outputs: {non_tensor}")
        for raw_inputs, raw_expected in case["data"]:
            inputs, expected = [_array(a) for a in raw_inputs], [_array(a) for a in raw_expected]
            baked, inputs = bake_parameters(
                model, dict(zip([v.name for v in specs], inputs, strict=False))
            )
            if any(a.size == 0 for a in inputs):
                raise UnsupportedModelError("zero-size input (edgec pins positive dims only)")
            shapes = {
                v.name: a.shape for v, a in zip(frontend.graph_inputs(baked), inputs, strict=False)
            }
            static = frontend.infer_shapes(frontend.pin_input_shapes(baked, shapes))
            lower.check_supported(static)
            optimized, _ = passes.run_pipeline(static, passes.PASSES)
            tgt = targets.get("x86_64")
            executable, _ = lower.build(optimized, tgt, 1)
            # run in-process (export is a g++ link per case, the slowest step here)
            actual = lower.Runtime(None, 1, executable=executable).run(list(inputs))
            problem = compare(actual, expected, case["rtol"], case["atol"])
            if problem:
                return {"status": "mismatch", "detail": problem}
    except UnsupportedModelError as e:
        nodes = sorted({f"{n['op_type']}: {n.get('reason', '')}" for n in e.nodes})
        return {"status": "unsupported", "detail": "; ".join(nodes) or first_line(e)}
    except EdgecError as e:
        return {"status": "error", "detail": f"{type(e).__name__}: {first_line(e)}"}
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.lineno}"
        return {"status": "error", "detail": f"{type(e).__name__} at {where}: {first_line(e)}"}
    return {"status": "pass", "detail": ""}


# Formal input names (ONNX schemas) that exporters write as constants: axes, pads, shapes,
# Resize's roi/scales/sizes, TopK's K, ... A node test feeds them as graph inputs; edgec
# compiles static graphs, so they are baked in as initializers (the data inputs stay inputs).
PARAMETERS = frozenset(
    ("roi", "scales", "sizes", "pads", "constant_value", "axes", "K", "starts", "ends", "steps",
     "shape", "repeats", "split", "depth", "axis", "output_shape", "indices_shape", "size",
     "max_output_boxes_per_class", "iou_threshold", "score_threshold")
)  # fmt: skip


def bake_parameters(model: onnx.ModelProto, feeds: dict) -> tuple[onnx.ModelProto, list]:
    """``model`` with graph inputs consumed in a PARAMETERS role turned into initializers;
    returns it and the remaining inputs' arrays in graph order."""
    roles: dict[str, set[str]] = collections.defaultdict(set)
    for node in model.graph.node:
        try:
            schema = onnx.defs.get_schema(node.op_type, _opset(model), node.domain)
        except onnx.defs.SchemaError:
            continue
        formal = [i.name for i in schema.inputs]
        for i, name in enumerate(node.input):
            if name:
                roles[name].add(formal[min(i, len(formal) - 1)] if formal else "")
    bake = {n for n in feeds if roles[n] and roles[n] <= PARAMETERS}
    if not bake:
        return model, list(feeds.values())
    model = onnx.ModelProto.FromString(model.SerializeToString())
    kept = [v for v in model.graph.input if v.name not in bake]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(onnx.numpy_helper.from_array(feeds[n], n) for n in bake)
    return model, [a for n, a in feeds.items() if n not in bake]


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _array(value) -> np.ndarray:
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    return np.asarray(value)


def run_baseline_case(case: dict) -> dict:
    """``run_case`` with TVM's importer alone: edgec.lower.importer's converters, declined ops
    and type checks switched off (the "before" column of docs/COVERAGE.md)."""
    from edgec.lower import importer

    importer.CONVERTED = ()
    importer.declined = lambda node, types, consts=None: None
    importer.unsupported_types = lambda model: []
    importer.converters = contextlib.nullcontext
    return run_case(case)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def compare(actual: list, expected: list, rtol: float, atol: float) -> str:
    """'' when every output matches; else what differs first."""
    if len(actual) != len(expected):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        a, e = np.asarray(a), np.asarray(e)
        if a.shape != e.shape:
            return f"output {i}: shape {a.shape}, expected {e.shape}"
        if a.dtype != e.dtype:
            return f"output {i}: dtype {a.dtype}, expected {e.dtype}"
        if e.dtype.kind in "fc":
            ok = np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
        else:
            ok = a == e
        if not ok.all():
            bad = int((~ok).sum())
            diff = np.abs(a.astype(np.float64) - e.astype(np.float64))
            worst = float(np.nanmax(diff)) if diff.size else 0.0
            return f"output {i}: {bad}/{ok.size} elements differ (max abs diff {worst:.3g})"
    return ""


def _worker(conn, runner: Callable[[dict], dict]) -> None:
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)  # TVM's importer prints to stdout
    os.dup2(devnull, 1)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        while True:
            case = conn.recv()
            if case is None:
                return
            t0 = time.perf_counter()
            result = runner(case)
            result["seconds"] = round(time.perf_counter() - t0, 2)
            conn.send(result)


class _Slot:
    """One worker process and the case it is running."""

    def __init__(self, ctx, runner: Callable[[dict], dict]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, runner), daemon=True)
        self.proc.start()
        child.close()
        self.case: dict | None = None
        self.started = 0.0

    def give(self, case: dict) -> None:
        self.case, self.started = case, time.perf_counter()
        self.conn.send(case)

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()


def run_all(
    cases: list[dict],
    jobs: int,
    progress=None,
    runner: Callable[[dict], dict] = run_case,
    timeout_s: float = CASE_TIMEOUT_S,
) -> list[dict]:
    """Run ``cases`` in ``jobs`` worker processes; one result dict per case, in case order.
    ``runner`` (a module-level function, for the spawned workers) runs one case."""
    ctx = mp.get_context("spawn")
    todo = collections.deque(range(len(cases)))
    results: list[dict | None] = [None] * len(cases)
    slots = [_Slot(ctx, runner) for _ in range(min(jobs, len(cases)))]
    busy: dict[int, int] = {}  # slot index -> case index

    def finish(idx: int, result: dict) -> None:
        case = cases[idx]
        results[idx] = {"name": case["name"], "op": case["op"], **result}
        if progress:
            progress(results[idx], sum(r is not None for r in results), len(cases))

    try:
        while todo or busy:
            for s, slot in enumerate(slots):
                if s not in busy and todo:
                    busy[s] = todo.popleft()
                    slot.give(cases[busy[s]])
            ready = mp.connection.wait([slots[s].conn for s in busy] + [slots[s].proc.sentinel
                                        for s in busy], timeout=1.0)  # fmt: skip
            now = time.perf_counter()
            for s in list(busy):
                slot, idx = slots[s], busy[s]
                if slot.conn in ready or slot.conn.poll():
                    try:
                        result = slot.conn.recv()
                    except EOFError:
                        result = None
                    if result is not None:
                        finish(idx, result)
                        del busy[s]
                        continue
                if not slot.proc.is_alive() or now - slot.started > timeout_s:
                    dead = not slot.proc.is_alive()
                    code = slot.proc.exitcode
                    slot.stop()
                    status = "crash" if dead else "timeout"
                    detail = f"worker exit code {code}" if dead else f"over {timeout_s:g} s"
                    finish(idx, {"status": status, "detail": detail,
                                 "seconds": round(now - slot.started, 2)})  # fmt: skip
                    del busy[s]
                    slots[s] = _Slot(ctx, runner)
    finally:
        for slot in slots:
            with contextlib.suppress(BrokenPipeError, OSError):
                slot.conn.send(None)
            slot.proc.join(timeout=5)
            slot.stop()
    return [r for r in results if r is not None]


def per_op(results: list[dict]) -> dict[str, collections.Counter]:
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in results:
        table[r["op"]][r["status"]] += 1
    return dict(sorted(table.items()))


def totals(results: list[dict]) -> collections.Counter:
    return collections.Counter(r["status"] for r in results)


def markdown(
    results: list[dict], seconds: float, jobs: int, command: str, baseline: list[dict]
) -> str:
    """docs/COVERAGE.md: totals, edgec's importer layer before/after, then one row per op."""
    tot = totals(results)
    n = len(results)
    lines = [
        "# Coverage: ONNX backend node tests",
        "",
        f"Generated by `{command}` (onnx {onnx.__version__}, {n} cases, "
        f"{jobs} worker process(es), {seconds:.0f} s on the shared 2-core machine).",
        "",
        "Each case of `onnx.backend.test.loader.load_node_model_tests()` is compiled by edgec for "
        "`x86_64` (import, default passes, `lower.build` with the schedule templates, run in "
        "the TVM VM) and compared with the outputs stored in the test, within the test's own "
        "rtol/atol. `unsupported` = edgec refused it cleanly (UnsupportedModelError, exit code 3); "
        "`mismatch`, `error`, `crash`, `timeout` are bugs. Inputs in a parameter role (axes, "
        "pads, shapes, Resize's roi/scales/sizes, TopK's K: `PARAMETERS`) are baked into the "
        "graph as initializers, as exporters write them (edgec compiles static graphs); cases "
        "with zero-size inputs count as unsupported (edgec pins positive dims only). Each "
        "case runs in a worker process, so a crash costs only that case.",
        "",
        "| status | cases | fraction |",
        "|---|---:|---:|",
    ]
    lines += [f"| {s} | {tot[s]} | {tot[s] / n:.1%} |" for s in STATUSES if n]
    if baseline:
        lines += _before_after(results, baseline)
    lines += ["", "## Per op", "", "| op | cases | pass | unsupported | bad | pass fraction |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for op, c in per_op(results).items():
        total = sum(c.values())
        bad = sum(c[s] for s in BAD)
        lines.append(
            f"| {op} | {total} | {c['pass']} | {c['unsupported']} | {bad} | "
            f"{c['pass'] / total:.0%} |"
        )
    bads = [r for r in results if r["status"] in BAD]
    if bads:
        lines += [
            "",
            "## Cases that fail (bugs)",
            "",
            "| case | status | detail |",
            "|---|---|---|",
        ]
        lines += [f"| {r['name']} | {r['status']} | {_cell(r['detail'])} |" for r in bads]
    lines += PPOCR
    reasons = collections.Counter(
        _reason(r["detail"]) for r in results if r["status"] == "unsupported"
    )
    lines += ["", "## Why cases are unsupported", "", "| reason | cases |", "|---|---:|"]
    lines += [f"| {_cell(k)} | {v} |" for k, v in reasons.most_common()]
    return "\n".join(lines) + "\n"


PPOCR = [
    "",
    "## Real models: PP-OCR",
    "",
    "`.venv/bin/python -m pytest tests/realworld/test_ppocr.py` compiles rapidocr-onnxruntime "
    "1.4.4's PP-OCRv4 det (1x3x320x640) and rec (6x3x48x900) and PP-OCR mobile v2 cls "
    "(6x3x48x192) models for x86_64 (weights in Constant nodes, symbolic dims pinned to the "
    "shapes the pipeline feeds), verifies each against onnxruntime on the real pipeline inputs, "
    "and runs rapidocr's OCR pipeline on scikit-image's page.png once with its onnxruntime "
    "sessions and once with the edgec-compiled models: the same 6 lines of text must come out "
    "(scores within 1e-3). Opset 12's Resize in the detector goes through "
    "edgec.lower.converters.Resize.",
]


def _before_after(results: list[dict], baseline: list[dict]) -> list[str]:
    ops = sorted({r["op"] for r in baseline})
    after, before = per_op([r for r in results if r["op"] in ops]), per_op(baseline)
    lines = [
        "",
        "## edgec's importer layer: before / after",
        "",
        "The ops that edgec.lower.converters and edgec.lower.importer change, run again with "
        "TVM 0.27's ONNX importer alone (`run_baseline_case`). Bad = mismatch + error + crash "
        "+ timeout: a wrong answer or a failure that is not a clean refusal.",
        "",
        "| op | cases | pass before | pass after | unsupported before | unsupported after "
        "| bad before | bad after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for op in ops:
        b, a = before.get(op, collections.Counter()), after.get(op, collections.Counter())
        bad_b, bad_a = (sum(c[s] for s in BAD) for c in (b, a))
        lines.append(
            f"| {op} | {sum(a.values())} | {b['pass']} | {a['pass']} | {b['unsupported']} "
            f"| {a['unsupported']} | {bad_b} | {bad_a} |"
        )
    tb, ta = totals(baseline), totals([r for r in results if r["op"] in ops])
    lines.append(
        f"| **all of these** | {sum(ta.values())} | {tb['pass']} | {ta['pass']} "
        f"| {tb['unsupported']} | {ta['unsupported']} | {sum(tb[s] for s in BAD)} "
        f"| {sum(ta[s] for s in BAD)} |"
    )
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:160]


def _reason(detail: str) -> str:
    """Unsupported details grouped (numbers masked)."""
    return re.sub(r"\d+", "N", detail)[:120]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--only", help="regex on case names (e.g. '^test_(resize|pad)')")
    ap.add_argument("--json", type=Path, help="write every case's result here")
    ap.add_argument("--write-doc", action="store_true", help=f"regenerate {DOC.relative_to(ROOT)}")
    ap.add_argument("--from-json", type=Path, help="take the results from a --json file")
    ap.add_argument(
        "--baseline-ops",
        default=",".join(BASELINE_OPS),
        help="ops to run again with TVM's importer alone, for the doc's before/after table",
    )
    args = ap.parse_args(argv)

    cases = load_cases(args.only)
    print(f"{len(cases)} cases, {args.jobs} workers", file=sys.stderr)
    t0 = time.perf_counter()

    def progress(r: dict, done: int, total: int) -> None:
        mark = "" if r["status"] in ("pass", "unsupported") else f" {r['detail']}"
        print(f"[{done}/{total}] {r['name']}: {r['status']} ({r['seconds']} s){mark}",
              file=sys.stderr, flush=True)  # fmt: skip

    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        results, seconds = saved["results"], saved["seconds"]
        results = [r for r in results if r["name"] in {c["name"] for c in cases}]
    else:
        results = run_all(cases, args.jobs, progress)
        seconds = time.perf_counter() - t0
    tot = totals(results)
    print(" ".join(f"{s}={tot[s]}" for s in STATUSES) + f" in {seconds:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "results": results}, indent=1))
    if args.write_doc:
        ops = set(args.baseline_ops.split(",")) if args.baseline_ops else set()
        again = [c for c in cases if c["op"] in ops]
        print(f"before/after: {len(again)} cases with TVM's importer alone", file=sys.stderr)
        baseline = run_all(again, args.jobs, progress, runner=run_baseline_case)
        cmd = ".venv/bin/python bench/coverage.py --write-doc"
        DOC.write_text(markdown(results, seconds, args.jobs, cmd, baseline))
        print(f"wrote {DOC}")
    return 1 if any(tot[s] for s in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())
