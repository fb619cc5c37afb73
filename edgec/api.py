"""The Python entry points: ``compile``, ``load`` and ``bench``.

result = edgec.compile("model.onnx", "out/", target="x86_64")
model = edgec.load("out/")
outputs = model(input=x)          # dict of numpy arrays by output name
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx

from edgec import artifact, frontend, passes, targets, verify
from edgec.errors import InvalidInputError, VerificationError
from edgec.frontend import TensorSpec
from edgec.report import latency

__all__ = [
    "CompileResult", "CompiledModel", "OptimizeResult", "bench", "compile", "load", "optimize",
    "versions",
]  # fmt: skip

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def versions() -> dict[str, str]:
    import onnxruntime

    from edgec import __version__, lower

    return {
        "edgec": __version__,
        "tvm": lower.tvm_version(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclasses.dataclass
class CompileResult:
    output: Path
    manifest: dict
    report: dict


class _Steps:
    """Times the compile steps and reports each to the log as it starts and ends."""

    def __init__(self, log: Log):
        self.log, self.seconds = log, {}

    def __call__(self, name: str, what: str):
        return _Step(self, name, what)


class _Step:
    def __init__(self, steps: _Steps, name: str, what: str):
        self.steps, self.name, self.what = steps, name, what

    def __enter__(self):
        self.steps.log(f"{self.what} ...")
        self.t0 = time.perf_counter()

    def __exit__(self, exc_type, *_):
        dt = time.perf_counter() - self.t0
        self.steps.seconds[self.name] = round(dt, 3)
        if exc_type is None:
            self.steps.log(f"{self.what}: done in {dt:.1f} s")


def compile(  # noqa: A001 - the verb users expect: edgec.compile
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    target: str = "x86_64",
    input_shapes: Mapping[str, Iterable[int]] | None = None,
    force: bool = False,
    skip_passes: Iterable[str] = (),
    only_passes: Iterable[str] = (),
    verify_result: bool = True,
    verify_inputs: Mapping[str, np.ndarray] | None = None,
    tolerance: float | None = None,
    threads: int = 0,
    bench: bool = True,
    bench_runs: int = 50,
    bench_budget_s: float = 10.0,
    seed: int = 0,
    search: str = "none",
    search_budget_s: float | None = None,
    tuning_db: str | os.PathLike | None = None,
    integer_only: bool = False,
    log: Log = _quiet,
) -> CompileResult:
    """Compile an ONNX model into a deployable artifact directory ``output``.

    ``search`` picks each kernel's schedule knobs: ``none`` (the templates' defaults), ``fast``
    (latency-measured on this machine within ``search_budget_s``, 120 s by default) or ``full``
    (every candidate); results are cached in ``tuning_db`` (see ``edgec.search``).

    A QDQ model (quantize/dequantize ops) is lowered to integer kernels (precision ``int8``;
    report ``int8`` and ``float_ops``); ``integer_only`` makes any float op left between input
    quantize and output dequantize an error (FloatOpsError, exit code 1).

    Raises InvalidInputError (bad input), UnsupportedModelError (ops TVM cannot lower) or
    VerificationError (results differ from onnxruntime beyond ``tolerance``); in every error case
    ``output`` is left untouched.
    """
    out = Path(output)
    tgt = targets.get(target)
    artifact.check_destination(out, force)
    pipeline = passes.select(skip_passes, only_passes)
    threads = threads or default_threads()
    precision = "fp32"
    tuner, search_report = _tuner(tgt, search, search_budget_s, tuning_db, threads, log)
    given_tolerance = tolerance
    step = _Steps(log)

    from edgec import lower

    with step("import", f"import {model}"):
        shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
        imported = frontend.import_model(model, shapes)
        lower.check_supported(imported.model)  # fail early, listing every unsupported node
    with step("passes", f"passes ({', '.join(p.name for p in pipeline) or 'none'})"):
        optimized, pass_reports = passes.run_pipeline(imported.model, pipeline, seed=seed)
    with step("build", f"build for {tgt.name}" + (f" (search {search})" if tuner else "")):
        quant: dict = {}
        executable, kernels = lower.build(
            optimized, tgt, threads, tune=tuner, integer_only=integer_only, quant=quant
        )
    if quant:
        precision = "int8"
        log(
            f"int8: {quant['integer_ops']} quantized op(s) lowered to integer kernels, "
            f"{len(quant['float_ops'])} float op(s) left between quantize and dequantize"
        )
    tolerance = verify.TOLERANCE[precision] if given_tolerance is None else given_tolerance
    if tuner is not None:
        search_report = tuner.summary()
        tuner.annotate(kernels)
        log(_search_line(search_report))

    with artifact.staging(out, force) as tmp:
        with step("export", "export library"):
            lower.export(executable, tmp / artifact.LIBRARY, tgt)
            artifact.save_onnx(optimized, tmp / artifact.ONNX)
        manifest = {
            "format": artifact.FORMAT,
            "library": artifact.LIBRARY,
            "onnx": artifact.ONNX,
            "inputs": [s.to_json() for s in imported.inputs],
            "outputs": [s.to_json() for s in imported.outputs],
            "target": {**tgt.to_json(), "tvm": lower.target_json(tgt, threads)},
            "threads": threads,
            "precision": precision,
            "source": {
                "path": str(Path(model).resolve()),
                "sha256": imported.source_sha256,
                "opset": imported.opset,
                "producer": _producer(imported.model),
                "nodes": len(imported.model.graph.node),
            },
            "passes": pass_reports,
            "versions": versions(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        report: dict = {
            "format": "edgec.report/1",
            "model": Path(model).name,
            "target": tgt.name,
            "precision": precision,
            "threads": threads,
            "passes": pass_reports,
            "kernels": kernels,
            "search": search_report,
        }
        if quant:
            report["int8"] = quant
            report["float_ops"] = quant["float_ops"]
        runnable = tgt.runs_here and lower.host_can_run(tgt)
        if verify_result and not runnable:
            report["verification"] = {"skipped": f"target {tgt.name} cannot run on this machine"}
        elif verify_result:
            with step("verify", "verify against onnxruntime"):
                report["verification"] = _verify(
                    tmp, imported, verify_inputs, tolerance, seed, threads
                )
            if not report["verification"]["passed"]:
                raise VerificationError(_verification_message(report["verification"]), report)
        else:
            report["verification"] = {"skipped": "--no-verify"}
        if bench and runnable:
            with step("bench", "measure latency (edgec vs onnxruntime)"):
                report["latency"] = _bench(
                    tmp / artifact.LIBRARY, imported.model, imported.inputs, threads,
                    runs=bench_runs, budget_s=bench_budget_s, seed=seed,
                )  # fmt: skip
            with step("profile", "per-kernel profile"):
                report["peak"], report["profile"] = _profile_kernels(
                    report["kernels"], tmp / artifact.LIBRARY, imported.inputs, threads, seed
                )
        report["timings_s"] = step.seconds
        artifact.write_json(tmp / artifact.MANIFEST, manifest)
        artifact.write_json(tmp / artifact.REPORT, report)
    log(f"wrote {out}")
    return CompileResult(out, manifest, report)


def _tuner(tgt, mode: str, budget_s, tuning_db, threads: int, log: Log):
    """The search for ``lower.build`` (None for ``none``) and the report section until it ran."""
    from edgec import lower
    from edgec.search import MODES, Search

    if mode not in MODES:
        raise InvalidInputError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
    if budget_s is not None and budget_s <= 0:
        raise InvalidInputError(f"the search budget must be positive, not {budget_s:g} s")
    section = {"mode": mode, "budget_s": None, "seconds": 0.0, "kernels_measured": 0,
               "candidates_tried": 0, "cache_hits": 0}  # fmt: skip
    if mode == "none":
        return None, section
    if not (tgt.runs_here and lower.host_can_run(tgt)):
        log(f"search skipped: code for {tgt.name} cannot run on this machine (default knobs)")
        return None, {**section, "skipped": f"target {tgt.name} cannot run on this machine"}
    return Search(mode, budget_s=budget_s, tuning_db=tuning_db, threads=threads, log=log), section


def _search_line(s: dict) -> str:
    budget = f" of {s['budget_s']:g}" if s.get("budget_s") else ""
    return (
        f"search {s['mode']}: {s['seconds']:.1f}{budget} s, {s['kernels_measured']} kernel(s) "
        f"measured ({s['candidates_tried']} candidates), {s['cache_hits']} from the cache"
        + (" [interrupted]" if s.get("interrupted") else "")
    )


def _producer(model: onnx.ModelProto) -> str:
    return f"{model.producer_name} {model.producer_version}".strip()


def _verify(
    lib_dir: Path,
    imported: frontend.ImportedModel,
    given: Mapping[str, np.ndarray] | None,
    tolerance: float,
    seed: int,
    threads: int,
) -> dict:
    if given:
        verify.check_inputs(imported.inputs, given)
        feeds, source = dict(given), "--verify-input"
    else:
        feeds, source = verify.random_inputs(imported.inputs, seed), f"random (seed {seed})"
    expected = verify.reference_outputs(imported.model, feeds)
    from edgec import lower

    runtime = lower.Runtime(lib_dir / artifact.LIBRARY, threads)
    actual = runtime.run([feeds[s.name] for s in imported.inputs])
    metrics = verify.compare_all(dict(zip(expected, actual, strict=True)), expected)
    worst = verify.worst(metrics)
    return {
        "inputs": source,
        "reference": "onnxruntime (graph optimizations off) on the source model",
        "tolerance": tolerance,
        "passed": bool(worst["scaled_err"] <= tolerance),
        "outputs": metrics,
        "max_abs_err": max(m.get("max_abs_err", np.inf) for m in metrics.values()),
        "max_rel_err": max(m.get("max_rel_err", np.inf) for m in metrics.values()),
        "min_cosine": min(m.get("cosine", -1.0) for m in metrics.values()),
        "scaled_err": worst["scaled_err"],
    }


def _verification_message(v: dict) -> str:
    lines = [f"verification failed: outputs differ from onnxruntime (tolerance {v['tolerance']:g})"]
    for name, m in v["outputs"].items():
        if "shape_mismatch" in m:
            lines.append(f"  {name}: shape {m['shape_mismatch'][0]} vs {m['shape_mismatch'][1]}")
        elif m.get("nonfinite_mismatch"):
            lines.append(f"  {name}: NaN/Inf where onnxruntime has finite values (or vice versa)")
        else:
            flag = "FAIL" if m["scaled_err"] > v["tolerance"] else "ok"
            lines.append(
                f"  {name}: scaled err {m['scaled_err']:.3g}, max abs err {m['max_abs_err']:.3g}, "
                f"cosine {m['cosine']:.6f} [{flag}]"
            )
    return "\n".join(lines)


def _bench(
    library: Path,
    model: onnx.ModelProto,
    inputs: list[TensorSpec],
    threads: int,
    *,
    runs: int,
    budget_s: float,
    seed: int,
) -> dict:
    from edgec import lower

    feeds = verify.random_inputs(inputs, seed)
    runtime = lower.Runtime(library, threads)
    session = verify.ort_session(model, optimize=True, threads=threads)
    run_edgec = runtime.prepare([feeds[s.name] for s in inputs])
    engines = {"edgec": run_edgec, "onnxruntime": lambda: session.run(None, feeds)}
    result = latency.measure(engines, runs=runs, budget_s=budget_s)
    ratio = result["edgec"]["p50_ms"] / result["onnxruntime"]["p50_ms"]
    return {
        "threads": threads,
        "method": latency.METHOD,
        "onnxruntime_config": "CPUExecutionProvider, ORT_ENABLE_ALL, same thread count",
        **result,
        "edgec_vs_onnxruntime_p50": ratio,
    }


def _profile_kernels(
    kernels: list[dict], library: Path, inputs: list[TensorSpec], threads: int, seed: int
) -> tuple[dict, dict]:
    """Time every kernel inside the model (VM instrument hook) and add to each kernel record:
    ms per inference, calls, achieved GFLOP/s and the fraction of this machine's measured peak."""
    from edgec import lower
    from edgec.lower.peak import cached_peak
    from edgec.lower.profile import profile

    peak = cached_peak(threads)
    feeds = verify.random_inputs(inputs, seed)
    rows = profile(lower.Runtime(library, threads), [feeds[s.name] for s in inputs], reps=3)
    by_name = {r["kernel"].removesuffix("_prepacked"): r for r in rows}
    for k in kernels:
        row = by_name.pop(k["kernel"], None)
        if row is None:
            continue
        k["profile_ms"], k["calls"] = row["ms"], row["calls"]
        if k.get("flops") and row["ms"] > 0:
            k["gflops"] = k["flops"] * row["calls"] / (row["ms"] * 1e6)
            k["peak_fraction"] = k["gflops"] / peak["gflops"]
    summary = {
        "reps": 3,
        "kernels_ms": sum(k.get("profile_ms", 0.0) for k in kernels),
        "other_ms": {name: r["ms"] for name, r in by_name.items()},  # VM builtins, allocation
        "top": [{"kernel": r["kernel"], "ms": r["ms"], "share": r["share"]} for r in rows[:5]],
    }
    return peak, summary


@dataclasses.dataclass
class OptimizeResult:
    output: Path
    passes: list[dict]
    nodes_before: int
    nodes_after: int


def optimize(
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    input_shapes: Mapping[str, Iterable[int]] | None = None,
    force: bool = False,
    skip_passes: Iterable[str] = (),
    only_passes: Iterable[str] = (),
    seed: int = 0,
    log: Log = _quiet,
) -> OptimizeResult:
    """Run edgec's verified rewrite passes and write the rewritten ONNX model to ``output``.

    The result has the pinned static input shapes, runs in onnxruntime and passes the full
    ``onnx.checker`` check; it is written to a temp file and renamed (never half-written).
    """
    out = Path(output)
    if out.exists() and not force:
        raise InvalidInputError(f"{out} already exists; pass --force to replace it")
    if out.is_dir():
        raise InvalidInputError(f"{out} is a directory; give a file name ending in .onnx")
    pipeline = passes.select(skip_passes, only_passes)
    step = _Steps(log)
    with step("import", f"import {model}"):
        shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
        imported = frontend.import_model(model, shapes)
    with step("passes", f"passes ({', '.join(p.name for p in pipeline) or 'none'})"):
        optimized, reports = passes.run_pipeline(imported.model, pipeline, seed=seed)
    onnx.checker.check_model(optimized, full_check=True)
    artifact.save_onnx(optimized, out)
    log(f"wrote {out}")
    return OptimizeResult(out, reports, len(imported.model.graph.node), len(optimized.graph.node))


class CompiledModel:
    """A compiled artifact loaded for inference: ``model(**inputs) -> {output name: array}``."""

    def __init__(self, path: str | os.PathLike, threads: int = 0):
        from edgec import lower

        self.path = Path(path)
        self.manifest = artifact.read_manifest(self.path)
        self.inputs = [TensorSpec.from_json(d) for d in self.manifest["inputs"]]
        self.outputs = [TensorSpec.from_json(d) for d in self.manifest["outputs"]]
        tgt = targets.get(self.manifest["target"]["name"])
        if not (tgt.runs_here and lower.host_can_run(tgt)):
            raise InvalidInputError(
                f"{self.path} was compiled for {tgt.name}, which cannot run on this machine"
            )
        self.threads = threads or self.manifest.get("threads", 0)
        self._runtime = lower.Runtime(self.path / self.manifest["library"], self.threads)

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        return self.run(inputs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        verify.check_inputs(self.inputs, inputs)
        outs = self._runtime.run([np.asarray(inputs[s.name]) for s in self.inputs])
        return {spec.name: arr for spec, arr in zip(self.outputs, outs, strict=True)}


def load(path: str | os.PathLike, threads: int = 0) -> CompiledModel:
    """Load an artifact directory written by :func:`compile`."""
    return CompiledModel(path, threads)


def bench(
    path: str | os.PathLike,
    *,
    threads: int = 0,
    runs: int = 50,
    budget_s: float = 10.0,
    seed: int = 0,
    reference: bool = True,
) -> dict:
    """Measure an artifact's latency, and onnxruntime's on the same model in the same run.

    onnxruntime runs the source model when it is still where it was compiled from (same sha256),
    else the artifact's optimized ``model.onnx``; the report says which.
    """
    model = load(path, threads)
    threads = model.threads
    feeds = verify.random_inputs(model.inputs, seed)
    engines = {"edgec": model._runtime.prepare([feeds[s.name] for s in model.inputs])}
    result: dict = {"threads": threads}
    if reference:
        source, which = _reference_model(model)
        session = verify.ort_session(source, optimize=True, threads=threads)
        engines["onnxruntime"] = lambda: session.run(None, feeds)
        result["onnxruntime_model"] = which
    result.update(latency.measure(engines, runs=runs, budget_s=budget_s))
    if reference:
        result["edgec_vs_onnxruntime_p50"] = (
            result["edgec"]["p50_ms"] / result["onnxruntime"]["p50_ms"]
        )
    return result


def _reference_model(model: CompiledModel) -> tuple[onnx.ModelProto | Path, str]:
    src = model.manifest["source"]
    path = Path(src["path"])
    if path.is_file():
        try:
            _, sha = frontend.load(path)
        except InvalidInputError:
            sha = None
        if sha == src["sha256"]:
            return path, f"source ({path})"
    return model.path / model.manifest["onnx"], "optimized model.onnx (source model not found)"
