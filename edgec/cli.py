"""The ``edgec`` command: a thin click layer over edgec.api."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import click
import numpy as np

from edgec import artifact, targets
from edgec.errors import EdgecError, ExitCode, InvalidInputError

EXIT_CODES = """\b
Exit codes:
  0  success
  1  verification or a gate failed
  2  bad usage or invalid input (missing file, not ONNX, bad shape spec, unknown target)
  3  model not supported (every unsupported op is listed with its node names)
  4  internal error (a bug: rerun with --debug and report the traceback)"""


class _Context:
    def __init__(self, debug: bool, quiet: bool):
        self.debug, self.quiet = debug, quiet
        self.t0 = time.perf_counter()

    def log(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"[{time.perf_counter() - self.t0:6.1f}s] {message}", err=True)


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
    "--budget, biggest kernels first; full = every candidate, the top 3 timed again. Results "
    "are cached (--tuning-db). MetaSchedule is out of scope for now.",
)
@click.option(
    "--budget",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Time limit of the search [fast: 120; full: none].",
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
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout.")
@click.pass_obj
def compile(obj: _Context, model, output, target, input_shapes, force, skip_pass, only_pass,
            no_verify, verify_input, tolerance, threads, no_bench, bench_runs, bench_budget,
            seed, search, budget, tuning_db, conv_algo, as_json) -> None:  # fmt: skip
    """Compile MODEL.onnx into a deployable artifact directory OUT/.

    With --search fast|full, each kernel's schedule is chosen by timing its candidates on this
    machine (Ctrl-C stops the search and compiles with the best found so far)."""
    from edgec import api, frontend
    from edgec.errors import VerificationError
    from edgec.report.summary import summary

    try:
        result = api.compile(
            model, output, target=target, input_shapes=frontend.parse_input_shapes(input_shapes),
            force=force, skip_passes=skip_pass, only_passes=only_pass,
            verify_result=not no_verify, verify_inputs=_load_inputs(verify_input) or None,
            tolerance=tolerance, threads=threads, bench=not no_bench, bench_runs=bench_runs,
            bench_budget_s=bench_budget, seed=seed, search=search, search_budget_s=budget,
            tuning_db=tuning_db, conv_algo=conv_algo, log=obj.log,
        )  # fmt: skip
    except VerificationError as e:
        if as_json and e.report:
            click.echo(json.dumps(e.report, indent=2, default=artifact._jsonable))
        raise
    if as_json:
        click.echo(json.dumps(result.report, indent=2, default=artifact._jsonable))
    else:
        click.echo(summary(result.report))
        s = result.report.get("search", {})
        if s.get("mode", "none") != "none":
            click.echo(f"  search:    {_search_summary(s)}")


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
@click.option("--json", "as_json", is_flag=True, help="Print the latency report as JSON.")
@click.pass_obj
def bench(obj: _Context, artifact_dir, runs, budget, threads, no_reference, as_json) -> None:
    """Measure the latency of an artifact (and of onnxruntime on its model)."""
    from edgec import api

    obj.log(f"measuring {artifact_dir} ...")
    result = api.bench(artifact_dir, threads=threads, runs=runs, budget_s=budget,
                       reference=not no_reference)  # fmt: skip
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
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


@cli.command("targets")
def targets_cmd() -> None:
    """List the compilation targets."""
    for t in targets.TARGETS:
        click.echo(f"{t.name:16s} {t.description}")
    for alias, name in targets.ALIASES.items():
        click.echo(f"{alias:16s} alias of {name}")


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
    """The tuning cache of --search (kernel timings per machine)."""


_TUNING_DB = click.option(
    "--tuning-db", type=click.Path(dir_okay=False), default=None, metavar="PATH",
    help="Tuning cache [$EDGEC_TUNING_DB, else $XDG_CACHE_HOME/edgec/tuning.db].",
)  # fmt: skip


@cache.command("info")
@_TUNING_DB
@click.option("--json", "as_json", is_flag=True, help="Print the information as JSON.")
def cache_info(tuning_db, as_json) -> None:
    """Where the tuning cache is, how many entries it has and its size."""
    from edgec import search

    info = _cache_call(search.cache_info, tuning_db)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"path:    {info['path']}{'' if info['exists'] else ' (not created yet)'}")
    click.echo(f"entries: {info['entries']}")
    click.echo(f"size:    {info['size_bytes'] / 1024:.1f} KiB")
    for v in info.get("by_version", []):
        click.echo(f"  {v['entries']:6d}  edgec {v['edgec']}, tvm {v['tvm']}, {v['cpu']}")


@cache.command("clear")
@_TUNING_DB
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(tuning_db, yes) -> None:
    """Delete every entry of the tuning cache."""
    from edgec import search

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
