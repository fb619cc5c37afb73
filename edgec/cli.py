"""The ``edgec`` command: a thin click layer over edgec.api."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

import click
import numpy as np

from edgec import artifact, targets
from edgec.errors import EdgecError, ExitCode, GateError, InvalidInputError, UnsupportedModelError
from edgec.progress import Progress

EXIT_CODES = """\b
Exit codes:
  0  success
  1  verification or a gate failed
  2  bad usage or invalid input (missing file, not ONNX, bad shape spec, unknown target)
  3  model not supported (every unsupported op is listed with its node names)
  4  internal error (a bug: rerun with --debug and report the traceback)"""


class _Context:
    def __init__(self, debug: bool, quiet: bool):
        self.debug = debug
        self.log = Progress(quiet)  # progress and messages: stderr only


def _quiet_option(f):
    """``-q/--quiet`` after the command name too (``edgec compile ... --quiet``)."""

    def silence(ctx: click.Context, _param, value: bool) -> None:
        if value:
            ctx.find_object(_Context).log.quiet = True

    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=silence,
                        help="No progress messages on stderr.")(f)  # fmt: skip


@contextlib.contextmanager
def _stdout_reserved(reserved: bool):
    """With ``--json``, stdout carries only the JSON: anything else written to it meanwhile
    (Python prints, or C++ libraries writing to file descriptor 1) goes to stderr."""
    if not reserved:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _gate_options(f):
    """The CI gates of compile and bench (docs/ci.md); a violated one exits 1."""
    for name, kind, meta, text in reversed((
        ("--max-latency-ms", float, "MS", "Fail if edgec's p50 latency exceeds MS."),
        ("--max-p99-ms", float, "MS", "Fail if edgec's p99 latency exceeds MS."),
        ("--baseline", click.Path(), "OLD/", "A previous artifact (or its report.json) for "
         "--max-regression."),
        ("--max-regression", str, "PCT", "Fail if p50 grew more than PCT over --baseline "
         "[5%]."),
        ("--min-cosine", float, "C", "Fail if any output's cosine vs onnxruntime is below C."),
        ("--max-abs-err", float, "E", "Fail if the max abs error vs onnxruntime exceeds E."),
        ("--min-top1-agreement", float, "F", "Fail if the top-1 (argmax) agreement with "
         "onnxruntime is below F (0..1)."),
    )):  # fmt: skip
        f = click.option(name, type=kind, default=None, metavar=meta, help=text)(f)
    return f


def _make_gates(options: dict):
    from edgec.report.gates import Gates, parse_percent

    if options.get("max_regression") is not None:
        options = {**options, "max_regression": parse_percent(options["max_regression"])}
    return Gates(**options)


def _enforce_gates(report: dict) -> None:
    from edgec.report.gates import error_message, failed

    results = report.get("gates") or []
    if failed(results):
        raise GateError(error_message(results), report)


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgec")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """edgec: compile ONNX models into verified, fast TVM artifacts for edge targets."""
    ctx.obj = _Context(debug, quiet)


def _load_inputs(items: tuple[str, ...]) -> dict[str, np.ndarray]:
    from edgec import verify

    return verify.load_arrays(items)


def _input_shape_option(f):
    return click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        metavar="NAME=D1,D2,...",
        help="Static shape for an input with dynamic dims (repeatable).",
    )(f)


def _pass_options(f):
    f = click.option("--only-pass", multiple=True, metavar="NAME", help="Run only these passes.")(f)
    return click.option("--skip-pass", multiple=True, metavar="NAME", help="Do not run this pass.")(
        f
    )


_INT8_KEYS = ("int8", "calib", "calib_samples", "calib_method", "calib_preprocess", "dfq",
              "keep_float", "int8_min_cosine")  # fmt: skip


def _int8_options(f):
    """The --int8 options of compile (edgec.quant; keyword names match edgec.api.compile)."""
    options = [
        click.option("--int8", is_flag=True, help="Post-training int8 quantization (QDQ)."),
        click.option("--calib", metavar="PATH|synthetic", default=None,
                     help="Calibration data: a directory or .zip/.tar/.npz of .npy/.npz samples "
                     "(by input name) or images; 'synthetic' = random data (warned)."),
        click.option("--calib-samples", type=int, default=None, metavar="N",
                     help="Use the first N calibration samples [100; synthetic: 16]."),
        click.option("--calib-method", type=click.Choice(["minmax", "percentile", "entropy"]),
                     default="minmax", show_default=True,
                     help="onnxruntime calibrator for activation ranges."),
        click.option("--calib-preprocess", metavar="SPEC", default=None,
                     help="Images: size=224,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,"
                     "scale=1/255,layout=NCHW."),
        click.option("--dfq", is_flag=True,
                     help="Data-free quantization: ReLU6->ReLU, cross-layer equalization, bias "
                     "absorption and correction (without --calib: synthetic ranges, warned)."),
        click.option("--keep-float", default=None, metavar="auto|NODE,...",
                     help="Layers kept in fp32: 'auto' (measured sensitivity vs gain) or names."),
        click.option("--int8-min-cosine", type=float, default=None, metavar="C",
                     help="Accuracy floor: worst-sample cosine of the int8 artifact vs the fp32 "
                     "model [0.98]; below it the compile fails (exit 1)."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


@cli.command(epilog=EXIT_CODES)
@click.argument("model", metavar="MODEL.onnx")
@click.option("-o", "--output", required=True, metavar="OUT/", help="Artifact directory.")
@click.option("-t", "--target", default="x86_64", show_default=True, help="See `edgec targets`.")
@_input_shape_option
@click.option("--force", is_flag=True, help="Replace OUT/ if it exists.")
@_pass_options
@click.option("--no-verify", is_flag=True, help="Skip the comparison with onnxruntime.")
@click.option(
    "--verify-input",
    multiple=True,
    metavar="NAME=x.npy",
    help="Verify on these inputs instead of seeded random ones (or one .npz).",
)
@click.option(
    "--tolerance",
    type=float,
    default=None,
    help="Max allowed max|edgec-ort|/max|ort| per output [fp32: 1e-4].",
)
@click.option("--threads", type=int, default=0, help="CPU threads [all cores].")
@click.option("--no-bench", is_flag=True, help="Skip the latency measurement.")
@click.option("--bench-runs", type=int, default=50, show_default=True)
@click.option(
    "--bench-budget",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds of timing after which measurement stops (at least 5 runs).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random inputs.")
@click.option(
    "--search",
    type=click.Choice(["none", "fast", "full"]),
    default="none",
    show_default=True,
    help="Kernel knobs: none = template defaults; fast = time candidates on this machine within "
    "--budget, biggest kernels first; full = every candidate, the top 3 timed again, then "
    "TVM MetaSchedule on the costliest kernels while the budget lasts. Results are cached "
    "(--tuning-db).",
)
@click.option(
    "--budget",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Time limit of the search [fast: 120; full: 1200].",
)
@click.option(
    "--tuning-db",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PATH",
    help="Tuning cache [$EDGEC_TUNING_DB, else $XDG_CACHE_HOME/edgec/tuning.db, "
    "else ~/.cache/edgec/tuning.db].",
)
@click.option(
    "--conv-algo",
    type=click.Choice(["auto", "direct", "im2col", "im2win", "winograd"]),
    default="auto",
    show_default=True,
    help="Convolution algorithm: force one family where it applies (else direct), or auto = "
    "chosen per conv layer by the search's measured latency (with --search none: Winograd for "
    "3x3 stride-1 convs of >= 64 channels on >= 14x14 outputs, else direct).",
)
@click.option(
    "--layout",
    type=click.Choice(["auto", "nchw", "nhwc"]),
    default="auto",
    show_default=True,
    help="Activation layout of float convolutions: nchw (ONNX's), nhwc (channels innermost, "
    "vectorized over output channels) or auto = nhwc for models with depthwise convs (faster "
    "there), else nchw. int8 models stay nchw.",
)
@_int8_options
@click.option(
    "--integer-only",
    is_flag=True,
    help="QDQ models: fail (exit 1) if any float op is left between the input quantize and the "
    "output dequantize.",
)
@click.option(
    "--ndk",
    type=click.Path(file_okay=False),
    default=None,
    metavar="PATH",
    help="Android NDK for android-arm64 / opencl/adreno [$ANDROID_NDK_HOME].",
)
@click.option(
    "--no-bundle", is_flag=True, help="No deploy bundle (TVM runtime + edgec-run) in OUT/."
)
@click.option("--rpc", metavar="HOST:PORT", help="--search times candidates on this device.")
@click.option("--tracker", metavar="HOST:PORT", help="--search on a device of this tracker.")
@click.option("--key", default="", help="Device key at the tracker (with --tracker).")
@click.option("--no-html", is_flag=True, help="Do not write OUT/report.html.")
@_gate_options
@click.option("--json", "as_json", is_flag=True,
              help="Print report.json on stdout (nothing else goes to stdout).")  # fmt: skip
@_quiet_option
@click.pass_obj
def compile(obj: _Context, model, output, target, input_shapes, force, skip_pass, only_pass,
            no_verify, verify_input, tolerance, threads, no_bench, bench_runs, bench_budget,
            seed, search, budget, tuning_db, conv_algo, layout, integer_only, ndk, no_bundle,
            rpc, tracker, key, no_html, as_json, **options) -> None:  # fmt: skip
    """Compile MODEL.onnx into a deployable artifact directory OUT/.

    With --search fast|full, each kernel's schedule is chosen by timing its candidates on this
    machine (Ctrl-C stops the search and compiles with the best found so far).

    With gates (--max-latency-ms, --min-cosine, ...) a violated gate exits 1 after OUT/ is
    written (the artifact works; it is too slow or not accurate enough: see report.json gates)."""
    from edgec import api, frontend
    from edgec.check import unsupported_text
    from edgec.errors import VerificationError
    from edgec.report.summary import summary

    int8 = {k: options.pop(k) for k in _INT8_KEYS}
    gates = _make_gates(options)
    try:
        with _stdout_reserved(as_json):
            result = api.compile(
                model, output, target=target,
                input_shapes=frontend.parse_input_shapes(input_shapes), force=force,
                skip_passes=skip_pass, only_passes=only_pass, verify_result=not no_verify,
                verify_inputs=_load_inputs(verify_input) or None, tolerance=tolerance,
                threads=threads, bench=not no_bench, bench_runs=bench_runs,
                bench_budget_s=bench_budget, seed=seed, search=search, search_budget_s=budget,
                tuning_db=tuning_db, conv_algo=conv_algo, layout=layout,
                integer_only=integer_only, ndk=ndk,
                bundle=not no_bundle, rpc=rpc, tracker=tracker, key=key, gates=gates,
                html_report=not no_html, log=obj.log, **int8,
            )  # fmt: skip
    except VerificationError as e:
        if as_json and e.report:
            click.echo(json.dumps(e.report, indent=2, default=artifact._jsonable))
        raise
    except UnsupportedModelError as e:
        if not e.nodes:
            raise
        raise UnsupportedModelError(unsupported_text(e.nodes), e.nodes) from e
    for warning in result.report.get("warnings", []):  # e.g. --calib synthetic: loud
        click.secho(warning, fg="yellow", bold=True, err=True)
    if as_json:
        click.echo(json.dumps(result.report, indent=2, default=artifact._jsonable))
    else:
        click.echo(summary(result.report))
        if "accuracy" in result.report:
            click.echo(f"  int8:      {_int8_summary(result.report)}")
        s = result.report.get("search", {})
        if s.get("mode", "none") != "none":
            click.echo(f"  search:    {_search_summary(s)}")
        for g in result.report.get("gates", []):
            click.echo(f"  gate:      {g['message']}")
    _enforce_gates(result.report)


def _int8_summary(report: dict) -> str:
    a, q = report["accuracy"], report.get("quantization", {})
    top1 = f", top-1 agreement {a['top1_agreement']:.4f}" if "top1_agreement" in a else ""
    kept = q.get("kept_float") or []
    return (f"vs fp32 on {a['inputs']}: cosine {a['cosine']:.6f}{top1}; "
            f"{q.get('quantized_layers', 0)}/{q.get('layers', 0)} layers int8"
            + (f", float: {', '.join(kept)}" if kept else ""))  # fmt: skip


def _search_summary(s: dict) -> str:
    if "skipped" in s:
        return f"{s['mode']}, skipped ({s['skipped']})"
    budget = f" (budget {s['budget_s']:g} s)" if s.get("budget_s") else ""
    return (
        f"{s['mode']}{budget}: {s['seconds']:.1f} s, {s['kernels_measured']} kernel(s) measured, "
        f"{s['candidates_tried']} candidates, {s['cache_hits']} from the cache"
        + (", interrupted" if s.get("interrupted") else "")
    )


@cli.command(epilog=EXIT_CODES)
@click.argument("model", metavar="MODEL.onnx")
@click.option("-o", "--output", required=True, metavar="OUT.onnx", help="Rewritten model.")
@_input_shape_option
@click.option("--force", is_flag=True, help="Replace OUT.onnx if it exists.")
@_pass_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-pass report as JSON.")
@click.pass_obj
def optimize(obj: _Context, model, output, input_shapes, force, skip_pass, only_pass, seed,
             as_json) -> None:  # fmt: skip
    """Rewrite MODEL.onnx with edgec's verified passes into OUT.onnx (runs in any runtime).

    Input shapes are pinned (static) in OUT.onnx."""
    from edgec import api, frontend

    with _stdout_reserved(as_json):
        result = api.optimize(
            model, output, input_shapes=frontend.parse_input_shapes(input_shapes), force=force,
            skip_passes=skip_pass, only_passes=only_pass, seed=seed, log=obj.log,
        )  # fmt: skip
    if as_json:
        click.echo(json.dumps(result.passes, indent=2, default=artifact._jsonable))
        return
    click.echo(f"{model}: {result.nodes_before} -> {result.nodes_after} nodes")
    for p in result.passes:
        changed = ", ".join(f"{k} {v}" for k, v in p["stats"].items() if v)
        click.echo(f"  {p['name']:20s} {p['status']:10s} {changed}")
        if p.get("reason"):
            click.echo(f"  {'':20s} {p['reason']}")
        for reason in p["declined"]:
            click.echo(f"  {'':20s} declined: {reason}")


@cli.command(epilog=EXIT_CODES)
@click.argument("artifact_dir", metavar="OUT/")
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=x.npy",
    help="An input array (repeatable), or one .npz with arrays by input name.",
)
@click.option("-o", "--output", required=True, metavar="y.npz", help="Outputs, by name.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.option("--threads", type=int, default=0)
@click.pass_obj
def run(obj: _Context, artifact_dir, inputs, output, force, threads) -> None:
    """Run a compiled artifact on .npy inputs and write its outputs to an .npz."""
    from edgec import api

    out = Path(output)
    if out.exists() and not force:
        raise InvalidInputError(f"{out} already exists; pass --force to replace it")
    if out.suffix != ".npz":
        raise InvalidInputError(f"{out}: the output file must end in .npz")
    model = api.load(artifact_dir, threads)
    results = model.run(_load_inputs(inputs))
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=out.parent if str(out.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **results)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for name, arr in results.items():
        obj.log(f"{name}: {list(arr.shape)} {arr.dtype}")
    obj.log(f"wrote {out}")


@cli.command(epilog=EXIT_CODES)
@click.argument("artifact_dir", metavar="OUT/")
@click.option("--runs", type=int, default=50, show_default=True)
@click.option(
    "--budget",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds of timing after which measurement stops (at least 5 runs).",
)
@click.option("--threads", type=int, default=0, help="CPU threads [as compiled].")
@click.option("--no-reference", is_flag=True, help="Do not measure onnxruntime.")
@click.option("--verify", "verify_result", is_flag=True,
              help="Also compare outputs with onnxruntime (on with an accuracy gate).")  # fmt: skip
@_gate_options
@click.option("--rpc", metavar="HOST:PORT", help="Measure on this device (TVM RPC server).")
@click.option("--tracker", metavar="HOST:PORT", help="Measure on the free devices of a tracker.")
@click.option("--key", default="", help="Device key at the tracker (with --tracker).")
@click.option("--devices", type=int, default=0, help="Devices to use with --tracker [all free].")
@click.option(
    "--timeout", type=float, default=120.0, show_default=True, help="Seconds per device try."
)
@click.option("--retries", type=int, default=1, show_default=True, help="Retries per device.")
@click.option("--json", "as_json", is_flag=True, help="Print the latency report as JSON.")
@_quiet_option
@click.pass_obj
def bench(obj: _Context, artifact_dir, runs, budget, threads, no_reference, verify_result, rpc,
          tracker, key, devices, timeout, retries, as_json, **gate_options) -> None:  # fmt: skip
    """Measure the latency of an artifact (and of onnxruntime on its model).

    Gates (--max-latency-ms, --baseline, --min-cosine, ...) exit 1 when violated.

    With --rpc or --tracker the artifact runs on remote devices (`edgec device serve` on each
    board) and its outputs are checked against onnxruntime; one report per device."""
    from edgec import api
    from edgec.report.sections import accuracy_verdict

    gates = _make_gates(gate_options)
    if rpc or tracker:
        if gates.active:
            raise InvalidInputError("gates apply to local measurements; not with --rpc/--tracker")
        obj.log(f"measuring {artifact_dir} on remote devices ...")
        result = api.bench(artifact_dir, runs=runs, rpc=rpc, tracker=tracker, key=key,
                           devices=devices, timeout_s=timeout, retries=retries,
                           log=obj.log)  # fmt: skip
        click.echo(json.dumps(result, indent=2) if as_json else _remote_summary(result))
        if not result["devices"]:
            raise _Failed("no device returned a measurement")
        return
    with _stdout_reserved(as_json):
        step = obj.log.start(f"measuring {artifact_dir}")
        result = api.bench(artifact_dir, threads=threads, runs=runs, budget_s=budget,
                           reference=not no_reference, verify_result=verify_result,
                           gates=gates)  # fmt: skip
        step.stop()
    if as_json:
        click.echo(json.dumps(result, indent=2, default=artifact._jsonable))
        _enforce_gates(result)
        return
    if "verification" in result:
        click.echo(f"accuracy: {accuracy_verdict(result['verification'])}")
    for engine in ("edgec", "onnxruntime"):
        if engine in result:
            s = result[engine]
            click.echo(
                f"{engine:12s} p50 {s['p50_ms']:.3f} ms  p90 {s['p90_ms']:.3f}  p99 "
                f"{s['p99_ms']:.3f}  mean {s['mean_ms']:.3f} ± {s['stddev_ms']:.3f}  "
                f"({s['runs']} runs, {s['warmup']} warm-up{', NOISY' if s['noisy'] else ''})"
            )
    if "edgec_vs_onnxruntime_p50" in result:
        click.echo(
            f"edgec / onnxruntime (p50): {result['edgec_vs_onnxruntime_p50']:.2f}x "
            f"[{result['threads']} threads; onnxruntime ran {result['onnxruntime_model']}]"
        )
    for g in result.get("gates", []):
        click.echo(f"gate: {g['message']}")
    _enforce_gates(result)


@cli.command(epilog=EXIT_CODES)
@click.argument("artifact_dir", metavar="OUT/")
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(["md", "html", "json"]),
    default="md",
    show_default=True,
    help="md: for pull-request comments; html: with plots.",
)
@click.option("-o", "--output", default=None, metavar="FILE", help="Write here, not to stdout.")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
def report(artifact_dir, fmt, output, force) -> None:
    """Render an artifact's report.json (OUT/ or a report.json file) as Markdown, HTML or JSON."""
    from edgec.report import html, markdown
    from edgec.report.gates import load_report

    data = load_report(artifact_dir)
    if fmt == "json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        text = html.render(data) if fmt == "html" else markdown.render(data)
    if output is None:
        click.echo(text, nl=False)
        return
    out = Path(output)
    if out.exists() and not force:
        raise InvalidInputError(f"{out} already exists; pass --force to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else ".")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out)


@cli.command(epilog=EXIT_CODES)
@click.argument("old", metavar="OLD/")
@click.argument("new", metavar="NEW/")
@click.option(
    "--fail-on-regression",
    "fail_pct",
    is_flag=False,
    flag_value="5%",
    default=None,
    metavar="[PCT]",
    help="Exit 1 if latency p50/p99 grew more than PCT (default 5%), "
    "verification went from pass to fail, or top-1 agreement fell more than PCT points.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def diff(old, new, fail_pct, as_json) -> None:  # fmt: skip
    """Compare two artifacts' reports (or report.json / bench --json files): latency, kernels,
    accuracy."""
    from edgec.report import diff as diff_mod
    from edgec.report.gates import load_report, parse_percent

    threshold = parse_percent(fail_pct) if fail_pct is not None else 0.05
    rows = diff_mod.compare(load_report(old), load_report(new), threshold)
    bad = diff_mod.regressions(rows)
    if as_json:
        click.echo(json.dumps({"threshold": threshold, "rows": rows,
                               "regressions": len(bad)}, indent=2))  # fmt: skip
    else:
        click.echo(diff_mod.table(rows))
    if fail_pct is not None and bad:
        names = ", ".join(r["metric"] for r in bad)
        raise GateError(f"{len(bad)} regression(s) over {threshold:.1%}: {names}")


@cli.command(epilog=EXIT_CODES)
@click.argument("model", metavar="MODEL.onnx")
@click.option("-t", "--target", default="x86_64", show_default=True, help="See `edgec targets`.")
@_input_shape_option
@_pass_options
@click.option("--json", "as_json", is_flag=True, help="Print the matrix as JSON.")
@_quiet_option
@click.pass_obj
def check(obj: _Context, model, target, input_shapes, skip_pass, only_pass, as_json) -> None:
    """Op coverage of MODEL.onnx before compiling: which ops lower for the target, which passes
    would fire (run on a copy, nothing written); exit 3 if any op is unsupported."""
    from edgec import check as check_mod
    from edgec import frontend
    from edgec.errors import UnsupportedModelError

    with _stdout_reserved(as_json):
        step = obj.log.start(f"check {model} (passes on a copy)")
        result = check_mod.check(model, target, input_shapes=frontend.parse_input_shapes(
            input_shapes), skip_passes=skip_pass, only_passes=only_pass)  # fmt: skip
        step.stop()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(check_mod.text(result))
    if not result["supported"]:
        n = len(result["unsupported"])
        raise UnsupportedModelError(f"{n} node(s) cannot be lowered for {result['target']}")


class _Failed(EdgecError):
    exit_code = ExitCode.FAILED


def _remote_summary(result: dict) -> str:
    lines = [f"{result['target']} on {result['remote']}:"]
    for r in result["devices"]:
        s, d = r["edgec"], r["device"]
        v = r.get("verification", {})
        emulated = " [EMULATED: correctness only]" if d.get("emulated") else ""
        lines.append(
            f"  {d.get('cpu', '?')} ({d.get('arch', '?')}, {d.get('cores', '?')} cores, governor "
            f"{d.get('governor') or '?'}){emulated}: p50 {s['p50_ms']:.3f} ms  p90 "
            f"{s['p90_ms']:.3f}  p99 {s['p99_ms']:.3f}  mean {s['mean_ms']:.3f} ± "
            f"{s['stddev_ms']:.3f} ({s['runs']} runs{', NOISY' if s['noisy'] else ''}); "
            f"outputs {'match' if v.get('passed') else 'DIFFER from'} onnxruntime"
        )
    for f in result["failed"]:
        lines.append(f"  device {f['device']}: FAILED: {'; '.join(f['errors'])}")
    return "\n".join(lines)


@cli.group()
def device() -> None:
    """Devices for `edgec bench --rpc/--tracker`: RPC servers and a tracker."""


@device.command("serve")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=int, default=9090, show_default=True)
@click.option("--tracker", metavar="HOST:PORT", help="Register with this TVM RPC tracker.")
@click.option("--key", default="", help="Device key at the tracker (e.g. rk3588).")
@click.option(
    "--emulate",
    metavar="TARGET",
    help="Serve a foreign CPU target under qemu-user (e.g. arm64): correctness only.",
)
@click.option("--session-timeout", type=float, default=600.0, show_default=True)
@click.pass_obj
def device_serve(obj: _Context, host, port, tracker, key, emulate, session_timeout) -> None:
    """Run a TVM RPC server for edgec on this board (each session in edgec-run)."""
    import platform

    from edgec import deploy
    from edgec.lower import rpc

    addr = rpc.parse_address(tracker, "--tracker") if tracker else None
    here = {"x86_64": "x86_64", "aarch64": "arm64"}.get(platform.machine())
    if not emulate and here is None:
        raise InvalidInputError(f"no edgec target for this machine ({platform.machine()})")
    session = deploy.device_runner(targets.get(emulate or here), log=obj.log)
    rpc.serve(host, port, session, tracker=addr, key=key, session_timeout_s=session_timeout,
              log=obj.log)  # fmt: skip


@device.command("tracker")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=int, default=9190, show_default=True)
@click.pass_obj
def device_tracker(obj: _Context, host, port) -> None:
    """Run a TVM RPC tracker (boards register with `edgec device serve --tracker`)."""
    from edgec.lower import rpc

    rpc.tracker(host, port, log=obj.log)


@cli.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print the targets as JSON.")
def targets_cmd(as_json) -> None:
    """List the compilation targets and what each supports on this machine."""
    from edgec.deploy import toolchain
    from edgec.host import cpu_flags

    rows, flags = [], cpu_flags()
    for t in targets.TARGETS:
        can_run = all(f in flags for f in t.requires) if flags else None
        runs = t.support(can_run, emulator_found=toolchain.emulator(t) is not None)
        rows.append({**t.to_json(), "support": runs, "int8_dot": t.int8_dot or None})
    if as_json:
        click.echo(json.dumps({"targets": rows, "aliases": targets.ALIASES}, indent=2))
        return
    for t, row in zip(targets.TARGETS, rows, strict=True):
        click.echo(f"{t.name:17s} {t.description}")
        extra = f"; int8 dot products ({t.int8_dot})" if t.int8_dot else ""
        click.echo(f"{'':17s}   {row['support']}{extra}")
    for alias, name in targets.ALIASES.items():
        click.echo(f"{alias:17s} alias of {name}")


@cli.command("passes")
def passes_cmd() -> None:
    """List the rewrite passes, in pipeline order."""
    from edgec import passes

    for p in passes.PASSES:
        click.echo(f"{p.name:20s} {p.summary}")
    for p in passes.ON_REQUEST:
        click.echo(f"{p.name:20s} {p.summary} (on request: --only-pass)")


@cli.group()
def zoo() -> None:
    """The model zoo: PyTorch models (random init) for tests and benchmarks."""


@zoo.command("list")
def zoo_list() -> None:
    """List the zoo models."""
    from edgec import models

    for m in models.ZOO:
        click.echo(f"{m.name:20s} {m.kind:4s} {'x'.join(map(str, m.input_shape)):14s} "
                   f"{m.description}")  # fmt: skip


@zoo.command("export")
@click.argument("name")
@click.option("-o", "--output", required=True, metavar="model.onnx")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--dynamo", is_flag=True, help="Use torch.onnx's dynamo exporter.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.pass_obj
def zoo_export(obj: _Context, name, output, opset, dynamo, seed, force) -> None:
    """Export zoo model NAME to ONNX (needs the `models` extra: torch)."""
    from edgec import models

    try:
        models.get(name)  # unknown name: clear error before importing torch
    except ValueError as e:
        raise InvalidInputError(str(e)) from e
    if Path(output).exists() and not force:
        raise InvalidInputError(f"{output} already exists; pass --force to replace it")
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise InvalidInputError(
            "`edgec zoo export` needs torch: pip install 'edgec[models]'"
        ) from e
    obj.log(f"exporting {name} ...")
    path = models.export(name, output, opset=opset, dynamo=dynamo, seed=seed)
    obj.log(f"wrote {path}")


@cli.group()
def cache() -> None:
    """The tuning cache of --search (kernel timings per machine) and the build cache."""


_TUNING_DB = click.option(
    "--tuning-db", type=click.Path(dir_okay=False), default=None, metavar="PATH",
    help="Tuning cache [$EDGEC_TUNING_DB, else $XDG_CACHE_HOME/edgec/tuning.db].",
)  # fmt: skip


@cache.command("info")
@_TUNING_DB
@click.option("--json", "as_json", is_flag=True, help="Print the information as JSON.")
def cache_info(tuning_db, as_json) -> None:
    """Where the tuning and build caches are, how many entries they have and their size."""
    from edgec import search
    from edgec.lower import build_cache

    info = _cache_call(search.cache_info, tuning_db)
    info["builds"] = build_cache.info()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"path:    {info['path']}{'' if info['exists'] else ' (not created yet)'}")
    click.echo(f"entries: {info['entries']}")
    click.echo(f"size:    {info['size_bytes'] / 1024:.1f} KiB")
    for v in info.get("by_version", []):
        click.echo(f"  {v['entries']:6d}  edgec {v['edgec']}, tvm {v['tvm']}, {v['cpu']}")
    b = info["builds"]
    mib = b["size_bytes"] / 2**20
    click.echo(f"builds:  {b['entries']} libraries, {mib:.1f} MiB in {b['path']}")


@cache.command("clear")
@_TUNING_DB
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(tuning_db, yes) -> None:
    """Delete every entry of the tuning cache (and the build cache, unless --tuning-db)."""
    from edgec import search
    from edgec.lower import build_cache

    if not tuning_db and build_cache.info()["entries"]:
        if not yes and not _interactive():
            raise InvalidInputError("not a terminal: pass --yes to clear the caches")
        folder = build_cache.directory()
        if yes or click.confirm(f"Delete the build cache {folder}?", default=False):
            n = build_cache.clear()
            click.echo(f"{folder}: {n} librar{'y' if n == 1 else 'ies'} deleted")
    path = Path(tuning_db) if tuning_db else search.default_db_path()
    if not path.exists():
        click.echo(f"{path}: no tuning cache, nothing to clear")
        return
    if not yes:
        if not _interactive():
            raise InvalidInputError("not a terminal: pass --yes to clear the tuning cache")
        if not click.confirm(f"Delete every entry of {path}?", default=False):
            click.echo("left as is")
            return
    n = _cache_call(search.cache_clear, path)
    click.echo(f"{path}: {n} entr{'y' if n == 1 else 'ies'} deleted")


def _interactive() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, OSError, ValueError):
        return False


def _cache_call(fn, path):
    import sqlite3

    try:
        return fn(path)
    except (OSError, sqlite3.Error) as e:
        raise InvalidInputError(f"tuning cache {path or 'default'}: {e}") from e


def main() -> None:
    debug = "--debug" in sys.argv[1:] or os.environ.get("EDGEC_DEBUG") == "1"
    try:
        rc = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except EdgecError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"edgec: error: {e}", err=True)
        sys.exit(int(e.exit_code))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        if debug:
            traceback.print_exc()
        click.echo(
            f"edgec: internal error: {type(e).__name__}: {e}\n(rerun with --debug for the "
            "traceback, and please report it)",
            err=True,
        )
        sys.exit(int(ExitCode.INTERNAL))
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
