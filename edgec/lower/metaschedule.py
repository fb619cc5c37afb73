"""TVM MetaSchedule as a candidate source of ``--search full``.

For one kernel (the unscheduled PrimFunc of a search task), MetaSchedule's evolutionary search
samples and times ``trials`` schedules in worker processes (TVM's LocalBuilder/LocalRunner);
its best schedules come back as *knobs* ``{"metaschedule": TRACE}``, where TRACE is the schedule
trace as TVM JSON. Such knobs are ordinary candidates afterwards: ``edgec.search`` times them with
the same timer as the templates' candidates, checks their outputs against the default schedule,
and stores them in the tuning cache (the workload key is the PrimFunc's structural hash, so a
trace is only ever replayed on the function it was tuned for). ``apply`` replays a trace.

Workarounds for TVM 0.27 (../shared/docs/tvm.md section 4): ``tvm.s_tir.tensor_intrin`` parses
~500 TVMScript GPU intrinsics (35 s, minutes on a busy machine), imported by MetaSchedule's tune
context and by the builder's default build function: ``_cpu_tensor_intrin`` loads only the
x86/Arm ones, and ``_build`` replaces the build function; the database is kept in memory (no
JSON files). The cost model is XGBoost when ``xgboost`` is installed, else
"random" (the evolutionary search then samples without a learned model: fine for the small
per-kernel budgets used here).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import logging
import os
import sys
import tempfile
import types

from edgec.lower import _tvm

KEY = "metaschedule"
TRIALS = 16  # per kernel; each trial builds and times one schedule in a worker process
TOP_K = 2  # schedules handed back to the search


def available() -> str | None:
    """None when MetaSchedule can run here, else why not (a missing Python package)."""
    for module in ("psutil", "cloudpickle"):
        try:
            __import__(module)
        except ImportError:
            return f"MetaSchedule needs the Python package {module!r} (pip install {module})"
    return None


def cost_model() -> str:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


def _build(mod, target, _params):
    """MetaSchedule's default build minus its import of tvm.s_tir.tensor_intrin; as deployed
    (the weight-layout block removed, like ``edgec.lower.measure``)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _strategy(ms, trials: int):
    """Evolutionary search sized for a few dozen trials: TVM's defaults (a population of 512,
    4 genetic rounds) cost more CPU time than the trials themselves at this scale."""
    return ms.search_strategy.EvolutionarySearch(
        population_size=max(32, 4 * trials), init_min_unmeasured=max(8, trials),
        genetic_num_iters=2,
    )  # fmt: skip


def _cpu_tensor_intrin() -> None:
    """Register the CPU tensor intrinsics without the package's GPU ones (see the docstring)."""
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    package = types.ModuleType(name, "CPU tensor intrinsics only (edgec.lower.metaschedule)")
    package.__path__ = list(spec.submodule_search_locations or [])
    package.__package__ = name
    sys.modules[name] = package
    for sub in ("x86", "arm_cpu"):
        setattr(package, sub, importlib.import_module(f"{name}.{sub}"))


def tune(func, target: dict, *, trials: int = TRIALS, threads: int = 0, seed: int = 0) -> list:
    """MetaSchedule's best schedules of ``func`` for ``target`` (TVM target JSON), best first,
    as knobs. Raises when MetaSchedule fails (the search scores that as a failed candidate)."""
    reason = available()
    if reason:
        raise RuntimeError(reason)
    tvm = _tvm()
    _cpu_tensor_intrin()
    import tvm.s_tir.meta_schedule as ms

    if threads:
        os.environ["TVM_NUM_THREADS"] = str(threads)  # the runner's worker processes
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    tgt = tvm.target.Target(target)
    _quiet_logging()
    with (
        tempfile.TemporaryDirectory(prefix="edgec-ms-") as work_dir,
        contextlib.redirect_stdout(io.StringIO()),
    ):  # its console log (per-trial tables) would interleave with edgec's progress and --json
        db = ms.tune_tir(
            mod, tgt, work_dir, max_trials_global=trials, num_trials_per_iter=min(trials, 8),
            builder=ms.builder.LocalBuilder(f_build=_build, max_workers=1, timeout_sec=120),
            runner=ms.runner.LocalRunner(timeout_sec=60), database="memory",
            cost_model=cost_model(), seed=seed, strategy=_strategy(ms, trials),
        )  # fmt: skip
        records = db.get_top_k(db.commit_workload(mod), TOP_K)
    if not records:
        raise RuntimeError(f"MetaSchedule found no valid schedule in {trials} trials")
    return [{KEY: tvm.ir.save_json(r.trace.as_json())} for r in records]


def _quiet_logging() -> None:
    """MetaSchedule configures its logger on every run (logging.config.dictConfig) from the
    handlers it already has; one without a name (added by another logging set-up) breaks it."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)


def apply(func, trace: str):
    """``func`` scheduled by replaying a MetaSchedule trace (JSON from ``tune``)."""
    tvm = _tvm()
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    s_tir.schedule.Trace.apply_json_to_schedule(tvm.ir.load_json(trace), sch)
    return sch.mod["main"]


def label(knobs: dict) -> dict:
    """Knobs as the report shows them: a MetaSchedule trace by digest, not its JSON."""
    trace = knobs.get(KEY)
    if not isinstance(trace, str) or not trace:
        return knobs
    return {KEY: "trace sha256:" + hashlib.sha256(trace.encode()).hexdigest()[:12]}
