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

from edgec import artifact, deploy, frontend, passes, targets, verify
from edgec.errors import InvalidInputError, VerificationError
from edgec.frontend import TensorSpec
from edgec.report import latency
from edgec.report.gates import Gates
from edgec.report.gates import evaluate as evaluate_gates

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
        # A log with ``start`` (edgec.progress.Progress) shows the step live (spinner, elapsed).
        start = getattr(self.steps.log, "start", None)
        self.live = start(self.what) if start else None
        if self.live is None:
            self.steps.log(f"{self.what} ...")
        self.t0 = time.perf_counter()

    def __exit__(self, exc_type, *_):
        dt = time.perf_counter() - self.t0
        self.steps.seconds[self.name] = round(dt, 3)
        if self.live is not None:
            self.live.stop(ok=exc_type is None)
        elif exc_type is None:
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
    gates: Gates | None = None,
    html_report: bool = True,
    ndk: str | os.PathLike | None = None,
    bundle: bool = True,
    conv_algo: str = "auto",
    layout: str = "auto",
    integer_only: bool = False,
    int8: bool = False,
    calib: str | os.PathLike | None = None,
    calib_samples: int | None = None,
    calib_method: str = "minmax",
    calib_preprocess: str | None = None,
    dfq: bool = False,
    keep_float: str | Iterable[str] | None = None,
    int8_min_cosine: float | None = None,
    rpc: str | None = None,
    tracker: str | None = None,
    key: str = "",
    log: Log = _quiet,
) -> CompileResult:
    """Compile an ONNX model into a deployable artifact directory ``output``.

    ``search`` picks each kernel's schedule knobs: ``none`` (the templates' defaults), ``fast``
    (latency-measured on this machine within ``search_budget_s``, 120 s by default) or ``full``
    (every candidate); results are cached in ``tuning_db`` (see ``edgec.search``).
    ``conv_algo`` forces a convolution algorithm (direct, im2col, im2win, winograd) where it
    applies, or with ``auto`` lets the search choose per conv layer (without a search: Winograd
    for big 3x3 stride-1 convs, else direct; ``conv_algos.heuristic``).
    ``layout`` (``conv_nhwc.LAYOUTS``) is the activation layout of float convolutions: ``nchw``
    (ONNX's), ``nhwc`` (``edgec.lower.conv_nhwc``) or ``auto`` (``nhwc`` for models with
    depthwise convs, ``conv_nhwc.resolve``); int8 models and GPU targets stay NCHW.

    ``gates`` (``edgec.report.gates.Gates``) are evaluated into ``report["gates"]``; a violated
    gate does not stop the compile (the artifact is written): the caller decides (the CLI exits 1).
    ``html_report`` also writes ``report.html`` (plots; see ``edgec.report.html``).

    CPU targets get a deploy bundle in ``output`` (``bundle``; see ``edgec.deploy``): the TVM
    runtime for the target and ``edgec-run``. Code for another architecture is verified by running
    that bundle under qemu-user (correctness only); CUDA code is compiled to cubin with nvcc.
    ``ndk`` is the Android NDK for ``android-arm64`` (else $ANDROID_NDK_HOME). With ``rpc``
    (HOST:PORT) or ``tracker`` + ``key`` the search times candidates on that device.

    A QDQ model (quantize/dequantize ops) is lowered to integer kernels (precision ``int8``;
    report ``int8`` and ``float_ops``); ``integer_only`` makes any float op left between input
    quantize and output dequantize an error (FloatOpsError, exit code 1).

    ``int8=True`` quantizes the graph after the passes (``edgec.quant``): ``calib`` (a path, or
    ``"synthetic"``), ``calib_samples``, ``calib_method`` (minmax, percentile, entropy),
    ``calib_preprocess`` (images), ``dfq`` (data-free quantization), ``keep_float`` ("auto" or
    node names). Verification then measures accuracy against the fp32 model (worst-sample
    cosine >= ``int8_min_cosine``, default ``verify.MIN_COSINE["int8"]``) and the lowering
    against the QDQ model (scaled error <= ``tolerance``, default ``verify.TOLERANCE["int8"]``).

    Raises InvalidInputError (bad input), UnsupportedModelError (ops TVM cannot lower) or
    VerificationError (results differ from onnxruntime beyond ``tolerance``); in every error case
    ``output`` is left untouched.
    """
    out = Path(output)
    tgt = targets.get(target)
    artifact.check_destination(out, force)
    from edgec.deploy import toolchain

    compiler = toolchain.compiler(tgt, ndk) if tgt.cross else None  # missing tools: fail early
    pipeline = passes.select(skip_passes, only_passes)
    threads = threads or default_threads()
    int8_options = _int8_options(int8, calib, calib_samples, calib_method, calib_preprocess, dfq,
                                 keep_float)  # fmt: skip
    precision = "int8" if int8_options else "fp32"
    from edgec.lower import conv_algos, conv_nhwc

    conv_algos.check_choice(conv_algo)
    if layout not in conv_nhwc.LAYOUTS:
        raise InvalidInputError(
            f"unknown layout {layout!r}: use one of {', '.join(conv_nhwc.LAYOUTS)}"
        )
    remote = None
    if rpc or tracker:
        if search == "none":
            raise InvalidInputError("--rpc/--tracker on compile are for --search fast|full")
        from edgec.lower import rpc as rpc_lib

        remote = rpc_lib.remote_measure(rpc, tracker, key, compiler or "g++")
    tuner, search_report = _tuner(tgt, search, search_budget_s, tuning_db, threads, log, remote)
    given_tolerance = tolerance
    step = _Steps(log)

    from edgec import lower

    with step("import", f"import {model}"):
        shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
        imported = frontend.import_model(model, shapes)
        lower.check_supported(imported.model)  # fail early, listing every unsupported node
    with step("passes", f"passes ({', '.join(p.name for p in pipeline) or 'none'})"):
        optimized, pass_reports = passes.run_pipeline(imported.model, pipeline, seed=seed)
    quantized = None
    if int8_options is not None:
        from edgec import quant

        with step("quantize", "quantize to int8"):
            if verify_inputs:
                verify.check_inputs(imported.inputs, verify_inputs)
            layer_latency = None
            if int8_options.keep_float == "auto" and tgt.runs_here and lower.host_can_run(tgt):
                from edgec.lower.layer_latency import LayerLatency

                layer_latency = LayerLatency(optimized, tgt, threads)
            quantized = quant.quantize(
                optimized, imported.inputs, int8_options, source=imported.model,
                verify_samples=[dict(verify_inputs)] if verify_inputs else None, seed=seed,
                layer_latency=layer_latency, log=log,
            )  # fmt: skip
            optimized = quantized.model
    to_build, ivit_report = _ivit(optimized, seed, step)
    cpu_float = tgt.device == "cpu" and not int8_options  # (GPU builds ignore the layout)
    layout = conv_nhwc.resolve(layout, to_build) if cpu_float else "nchw"
    floor = ivit_report["min_cosine_required"] if ivit_report else None  # lowering check
    with step("build", f"build for {tgt.name}" + (f" (search {search})" if tuner else "")):
        plans: list = []
        lowered: dict = {}  # what the integer lowering did (edgec.lower.qdq)
        applied: dict = {"layout": "nchw"}  # the layout the build applied
        try:
            executable, kernels = lower.build(
                to_build, tgt, threads, tune=tuner, conv_algo=conv_algo, conv_plan=plans,
                integer_only=integer_only, quant=lowered, layout=layout, layout_report=applied,
            )  # fmt: skip
        finally:
            if remote is not None:
                remote.close()
    if lowered:
        precision = "int8"
        n_float = len(lowered["float_ops"])
        log(f"int8: {lowered['integer_ops']} quantized op(s) lowered to integer kernels, "
            f"{n_float} float op(s) left between quantize and dequantize")  # fmt: skip
    tolerance = verify.TOLERANCE[precision] if given_tolerance is None else given_tolerance
    if tuner is not None:
        search_report = tuner.summary()
        tuner.annotate(kernels)
        log(_search_line(search_report))

    with artifact.staging(out, force) as tmp:
        with step("export", "export library"):
            lower.export(executable, tmp / artifact.LIBRARY, tgt, compiler)
            artifact.save_onnx(optimized, tmp / artifact.ONNX)
        runnable = tgt.runs_here and lower.host_can_run(tgt)
        emulator = None if runnable else toolchain.emulator(tgt)
        bundle_section = None
        if tgt.device == "cpu" and (bundle or (verify_result and emulator)):
            with step("bundle", "deploy bundle (TVM runtime + edgec-run)"):
                bundle_section = deploy.bundle(tmp, tgt, compiler, log)
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
            "bundle": bundle_section if bundle else None,
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
            "conv_algos": plans[0].summary() if plans else {"conv_algo": conv_algo},
            **applied,
        }
        if quantized is not None:
            keys = ("format", "activations", "weights", "kept_float")
            manifest["quantization"] = {k: quantized.report[k] for k in keys}
            report["quantization"] = quantized.report
            report["accuracy"] = quantized.accuracy
            report["warnings"] = quantized.warnings
        if ivit_report:
            report["ivit"] = ivit_report
        if lowered:
            report["int8"] = lowered
            report["float_ops"] = lowered["float_ops"]
        foreign = verify_result and not runnable
        if foreign and emulator and bundle_section and "files" in bundle_section:
            what = f"verify under {tgt.emulator} against onnxruntime (emulated: correctness only)"
            with step("verify", what):
                report["verification"] = _verify(
                    tmp, imported, verify_inputs, tolerance, seed, threads,
                    run=deploy.emulated_runner(tmp, emulator),
                    reference=quantized.model if quantized is not None else None, min_cosine=floor,
                )  # fmt: skip
                report["verification"]["emulated"] = f"{tgt.emulator}: correctness only"
            report["latency"] = {"skipped": deploy.EMULATED_LATENCY}
            if not report["verification"]["passed"]:
                raise VerificationError(_verification_message(report["verification"]), report)
        elif foreign and tgt.device == "cuda":
            with step("verify", f"validate the CUDA code (nvcc, {tgt.gpu})"):
                report["verification"] = deploy.check_cuda(
                    executable, tgt, tmp / artifact.LIBRARY,
                    lambda lib_dir, run: _verify(
                        lib_dir, imported, verify_inputs, tolerance, seed, threads, run=run
                    ),
                )  # fmt: skip
            if not report["verification"].get("passed", True):
                raise VerificationError(_verification_message(report["verification"]), report)
        elif foreign:
            why = f" ({tgt.emulator} not found: make cross-toolchain)" if tgt.emulator else ""
            report["verification"] = {
                "skipped": f"target {tgt.name} cannot run on this machine{why}"
            }
        elif verify_result and quantized is not None:
            with step("verify", "verify int8 accuracy against the fp32 model"):
                report["verification"] = _verify_int8(
                    tmp, imported, quantized, given_tolerance, threads, floor, int8_min_cosine
                )
            if not report["verification"]["passed"]:
                raise VerificationError(_verification_message(report["verification"]), report)
        elif verify_result:
            with step("verify", "verify against onnxruntime"):
                report["verification"] = _verify(
                    tmp, imported, verify_inputs, tolerance, seed, threads, min_cosine=floor
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
                    int8_model=quantized.model if quantized is not None else None,
                )  # fmt: skip
            with step("profile", "per-kernel profile"):
                report["peak"], report["profile"] = _profile_kernels(
                    report["kernels"], tmp / artifact.LIBRARY, imported.inputs, threads, seed
                )
                report["bandwidth"] = _roofline(report["kernels"], report["peak"], threads)
        if gates is not None and gates.active:
            report["gates"] = evaluate_gates(report, gates)
        if html_report:
            with step("html", "write report.html"):
                _write_html(report, step.seconds, tmp, log)
        report["timings_s"] = step.seconds
        if bundle_section and not bundle:
            deploy.remove_bundle(tmp, bundle_section)
        artifact.write_json(tmp / artifact.MANIFEST, manifest)
        artifact.write_json(tmp / artifact.REPORT, report)
    log(f"wrote {out}")
    return CompileResult(out, manifest, report)


def _tuner(tgt, mode: str, budget_s, tuning_db, threads: int, log: Log, remote=None):
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
    if remote is not None:  # candidates timed on a device (edgec.lower.rpc.RemoteMeasure)
        search = Search(mode, budget_s=budget_s, tuning_db=tuning_db, threads=threads, log=log,
                        measurer=remote)  # fmt: skip
        return search, section
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
    run: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None,
    reference: onnx.ModelProto | None = None,
    min_cosine: float | None = None,
) -> dict:
    """Compare the artifact in ``lib_dir`` with onnxruntime running ``reference`` (default: the
    source model); ``run`` executes it (default: the TVM runtime in this process)."""
    if given:
        verify.check_inputs(imported.inputs, given)
        feeds, source = dict(given), "--verify-input"
    else:
        feeds, source = verify.random_inputs(imported.inputs, seed), f"random (seed {seed})"
    expected = verify.reference_outputs(reference or imported.model, feeds)
    from edgec import lower

    run = run or lower.Runtime(lib_dir / artifact.LIBRARY, threads).run
    actual = run([feeds[s.name] for s in imported.inputs])
    return _verification(expected, actual, source, tolerance, min_cosine)


def _verification(
    expected: dict, actual: list, source: str, tolerance: float, min_cosine: float | None = None
) -> dict:
    """The report's ``verification`` section: artifact outputs vs onnxruntime's. It passes when
    the scaled error is within ``tolerance``, or with ``min_cosine`` (I-ViT's integer ops, which
    approximate the float ones) when every output's cosine reaches it."""
    metrics = verify.compare_all(dict(zip(expected, actual, strict=True)), expected)
    top1 = {}
    for (name, ref), got in zip(expected.items(), actual, strict=True):
        agreement = verify.top1_agreement(got, ref)
        if agreement is not None:
            metrics[name]["top1_agreement"] = top1[name] = agreement
    worst = verify.worst(metrics)
    cosine = min(m.get("cosine", -1.0) for m in metrics.values())
    passed = worst["scaled_err"] <= tolerance if min_cosine is None else cosine >= min_cosine
    return {
        "inputs": source,
        "reference": "onnxruntime (graph optimizations off) on the source model",
        "tolerance": tolerance,
        **({"ivit_min_cosine_required": min_cosine} if min_cosine is not None else {}),
        "passed": bool(passed),
        "outputs": metrics,
        "max_abs_err": max(m.get("max_abs_err", np.inf) for m in metrics.values()),
        "max_rel_err": max(m.get("max_rel_err", np.inf) for m in metrics.values()),
        "min_cosine": min(m.get("cosine", -1.0) for m in metrics.values()),
        "scaled_err": worst["scaled_err"],
        **({"top1_agreement": min(top1.values())} if top1 else {}),
    }


def _ivit(model: onnx.ModelProto, seed: int, step) -> tuple[onnx.ModelProto, dict | None]:
    """On a quantized (QDQ) transformer graph, I-ViT's integer Softmax/GELU/LayerNorm/residual
    kernels replace the float islands (``edgec.quant.ivit``; the rewrite is checked against
    the QDQ model and reverted below ``ivit.MIN_COSINE``). Returns the model to build and the
    report entry (None when nothing was rewritten); the QDQ model stays the artifact's
    model.onnx and the reference, and the lowering is then checked by cosine (the integer ops
    approximate the float ones)."""
    ops = {n.op_type for n in model.graph.node}
    decomposed_layernorm = {"ReduceMean", "Sqrt"} <= ops
    transformer = ops & {"Softmax", "LayerNormalization", "Erf", "Gelu"} or decomposed_layernorm
    if "QuantizeLinear" not in ops or not transformer:
        return model, None
    from edgec.quant import ivit

    with step("ivit", "I-ViT integer-only softmax/GELU/LayerNorm"):
        rewritten, entry = ivit.apply(model, seed=seed)
    if entry["status"] == "unchanged":
        return model, None
    applied = entry["status"] == "applied"  # else "reverted": the QDQ model is built as it is
    entry["min_cosine_required"] = ivit.MIN_COSINE if applied else None
    return rewritten, entry


def _int8_options(int8, calib, calib_samples, calib_method, calib_preprocess, dfq, keep_float):
    """The checked --int8 options, or None for fp32 (where int8 options are an error)."""
    from edgec.quant import Int8Options

    given = {"calib": calib, "calib_samples": calib_samples, "calib_preprocess": calib_preprocess,
             "dfq": dfq or None, "keep_float": keep_float,
             "calib_method": None if calib_method == "minmax" else calib_method}  # fmt: skip
    if not int8:
        used = [k for k, v in given.items() if v is not None]
        if used:
            flags = ", ".join("--" + k.replace("_", "-") for k in used)
            raise InvalidInputError(f"{flags} only apply with --int8")
        return None
    if keep_float is not None and not isinstance(keep_float, str):
        keep_float = tuple(keep_float)
    options = Int8Options(
        calib=None if calib is None else str(calib), calib_samples=calib_samples,
        calib_method=calib_method, calib_preprocess=calib_preprocess, dfq=dfq,
        keep_float=keep_float,
    )  # fmt: skip
    options.check()
    return options


def _verify_int8(
    lib_dir: Path, imported, quantized, tolerance: float | None, threads: int,
    ivit_floor: float | None = None, min_cosine: float | None = None,
):  # fmt: skip
    """The artifact on the accuracy samples against (1) the QDQ model in onnxruntime, which it
    implements: scaled error <= ``tolerance`` (the lowering's error), and (2) the fp32 model:
    worst per-sample cosine >= ``min_cosine`` (default ``verify.MIN_COSINE["int8"]``: the
    quantization's error)."""
    from edgec import lower
    from edgec.quant import accuracy

    runtime = lower.Runtime(lib_dir / artifact.LIBRARY, threads)
    names = [s.name for s in imported.outputs]
    samples = quantized.samples[: verify.INT8_VERIFY_SAMPLES]

    def run(feeds):
        outs = runtime.run([feeds[s.name] for s in imported.inputs])
        return dict(zip(names, outs, strict=True))

    actual = accuracy.run_all(run, samples)
    qdq = accuracy.ort_runner(quantized.model)
    lowering = accuracy.compare(actual, accuracy.run_all(qdq, samples))
    vs_fp32 = accuracy.compare(actual, quantized.reference[: len(samples)])
    worst_lowering, worst_fp32 = accuracy.summary(lowering), accuracy.summary(vs_fp32)
    tolerance = verify.TOLERANCE["int8"] if tolerance is None else tolerance
    floor = verify.MIN_COSINE["int8"] if min_cosine is None else min_cosine
    return {
        "inputs": quantized.accuracy["inputs"] + f", first {len(samples)}",
        "reference": "the QDQ model.onnx in onnxruntime (optimizations off); accuracy: the fp32 "
        "model (after edgec's passes)",
        "tolerance": tolerance,
        "min_cosine_required": floor,
        "passed": bool(
            (
                worst_lowering["scaled_err"] <= tolerance
                if ivit_floor is None
                else worst_lowering["min_cosine"] >= ivit_floor
            )
            and worst_fp32["min_cosine"] >= floor
        ),  # fmt: skip
        **({"ivit_min_cosine_required": ivit_floor} if ivit_floor is not None else {}),
        "outputs": lowering,
        **worst_lowering,
        "vs_fp32": {**worst_fp32, "outputs": vs_fp32},
    }


def _verification_message(v: dict) -> str:
    floor = v.get("min_cosine_required")  # int8: accuracy against the fp32 model
    int8 = f"; int8: worst-sample cosine >= {floor:g} vs fp32" if floor else ""
    ivit = v.get("ivit_min_cosine_required")  # I-ViT integer ops: judged by cosine
    criterion = f"cosine >= {ivit:g}, I-ViT" if ivit else f"tolerance {v['tolerance']:g}"
    lines = [f"verification failed: outputs differ from onnxruntime ({criterion}{int8})"]
    for name, m in v.get("vs_fp32", {}).get("outputs", {}).items():
        flag = "FAIL" if m.get("min_cosine", -1.0) < floor else "ok"
        lines.append(f"  {name} vs fp32: worst-sample cosine {m.get('min_cosine', -1.0):.6f} "
                     f"[{flag}]")  # fmt: skip
    for name, m in v["outputs"].items():
        if "shape_mismatch" in m:
            lines.append(f"  {name}: shape {m['shape_mismatch'][0]} vs {m['shape_mismatch'][1]}")
        elif m.get("nonfinite_mismatch"):
            lines.append(f"  {name}: NaN/Inf where onnxruntime has finite values (or vice versa)")
        else:
            bad = m["cosine"] < ivit if ivit else m["scaled_err"] > v["tolerance"]
            flag = "FAIL" if bad else "ok"
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
    int8_model: onnx.ModelProto | None = None,
) -> dict:
    from edgec import lower

    feeds = verify.random_inputs(inputs, seed)
    runtime = lower.Runtime(library, threads)
    session = verify.ort_session(model, optimize=True, threads=threads)
    run_edgec = runtime.prepare([feeds[s.name] for s in inputs])
    engines = {"edgec": run_edgec, "onnxruntime": lambda: session.run(None, feeds)}
    if int8_model is not None:  # onnxruntime's int8 kernels on the same QDQ model
        int8_session = verify.ort_session(int8_model, optimize=True, threads=threads)
        engines["onnxruntime_int8"] = lambda: int8_session.run(None, feeds)
    result = latency.measure(engines, runs=runs, budget_s=budget_s)
    ratio = result["edgec"]["p50_ms"] / result["onnxruntime"]["p50_ms"]
    extra = {}
    if int8_model is not None:
        extra["edgec_vs_onnxruntime_int8_p50"] = (
            result["edgec"]["p50_ms"] / result["onnxruntime_int8"]["p50_ms"]
        )
    return {
        "threads": threads,
        "method": latency.METHOD,
        "onnxruntime_config": "CPUExecutionProvider, ORT_ENABLE_ALL, same thread count",
        **result,
        "edgec_vs_onnxruntime_p50": ratio,
        **extra,
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


def _write_html(report: dict, seconds: dict, directory: Path, log: Log) -> None:
    """report.html beside report.json; a plotting failure costs the page, never the artifact
    (``report["html_error"]`` says why)."""
    from edgec.report import html

    try:
        html.write({**report, "timings_s": seconds}, directory / html.FILE)
    except Exception as e:  # matplotlib or a report shape the renderer did not expect
        report["html_error"] = f"{type(e).__name__}: {e}"
        log(f"report.html not written: {report['html_error']}")


def _roofline(kernels: list[dict], peak: dict, threads: int) -> dict:
    """This machine's measured memory bandwidth; adds each kernel's place on the roofline."""
    from edgec.lower.peak import cached_bandwidth
    from edgec.report import roofline

    bandwidth = cached_bandwidth(threads)
    roofline.annotate(kernels, peak, bandwidth)
    return bandwidth


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
                f"{self.path} was compiled for {tgt.name}, which cannot run on this machine "
                "(on a device: edgec bench OUT --rpc HOST:PORT, or ./edgec-run in OUT/)"
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
    verify_result: bool = False,
    gates: Gates | None = None,
    rpc: str | None = None,
    tracker: str | None = None,
    key: str = "",
    devices: int = 0,
    timeout_s: float = 120.0,
    retries: int = 1,
    log: Log = _quiet,
) -> dict:
    """Measure an artifact's latency, and onnxruntime's on the same model in the same run.

    onnxruntime runs the source model when it is still where it was compiled from (same sha256),
    else the artifact's optimized ``model.onnx``; the report says which. ``verify_result`` (on
    whenever an accuracy gate is given) also compares the artifact's outputs with onnxruntime's
    (graph optimizations off) on seeded random inputs: ``verification``. ``gates`` are evaluated
    into ``gates`` (the caller decides what a violation means).

    With ``rpc`` (HOST:PORT) or ``tracker`` (HOST:PORT) + ``key`` the artifact runs on remote
    devices over TVM RPC instead (``edgec.lower.rpc.bench``; one report per device, outputs
    checked against onnxruntime).
    """
    if rpc or tracker:
        return _bench_remote(path, rpc, tracker, key, devices, runs, timeout_s, retries, seed, log)
    model = load(path, threads)
    threads = model.threads
    feeds = verify.random_inputs(model.inputs, seed)
    verification = None
    if verify_result or (gates is not None and gates.needs_verification):
        source, which = _reference_model(model)
        ref = onnx.load(source) if isinstance(source, Path) else source
        expected = verify.reference_outputs(ref, feeds)
        actual = model._runtime.run([feeds[s.name] for s in model.inputs])
        precision = model.manifest.get("precision", "fp32")
        verification = _verification(expected, actual, f"random (seed {seed})",
                                     verify.TOLERANCE.get(precision, 1e-4))  # fmt: skip
        verification["reference"] = f"onnxruntime (graph optimizations off) on the {which}"
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
    if verification is not None:
        result["verification"] = verification
    if gates is not None and gates.active:
        result["gates"] = evaluate_gates(result, gates)
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


def _bench_remote(path, rpc, tracker, key, devices, runs, timeout_s, retries, seed, log) -> dict:
    from edgec.lower import rpc as remote

    out = Path(path)
    manifest = artifact.read_manifest(out)
    specs = [TensorSpec.from_json(d) for d in manifest["inputs"]]
    feeds = verify.random_inputs(specs, seed)
    expected = verify.reference_outputs(onnx.load(out / manifest["onnx"]), feeds)

    def check(outputs: list[np.ndarray]) -> dict:
        section = {"reference": "onnxruntime on the artifact's model.onnx",
                   "inputs": f"random (seed {seed})"}  # fmt: skip
        if len(outputs) != len(expected):
            return {**section, "passed": False, "error": f"{len(outputs)} outputs"}
        metrics = verify.compare_all(dict(zip(expected, outputs, strict=True)), expected)
        worst = verify.worst(metrics)["scaled_err"]
        tolerance = verify.TOLERANCE[manifest.get("precision", "fp32")]
        return {**section, "scaled_err": worst, "tolerance": tolerance,
                "max_abs_err": max(m.get("max_abs_err", np.inf) for m in metrics.values()),
                "passed": bool(worst <= tolerance)}  # fmt: skip

    result = remote.bench(
        out / manifest["library"], [feeds[s.name] for s in specs], rpc=rpc, tracker_addr=tracker,
        key=key, devices=devices, runs=runs, timeout_s=timeout_s, retries=retries, check=check,
        expect_arch=manifest["target"]["arch"], log=log,
    )  # fmt: skip
    return {"target": manifest["target"]["name"], **result}
