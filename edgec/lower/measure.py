"""Measuring one kernel candidate: the TVM half of the latency-measured search (edgec.search).

A *task* is one scheduled PrimFunc of a model (a kernel) with its template, knobs space and
default. ``kernel_tasks`` lists them; ``measure`` applies one candidate's knobs, builds the
kernel on its own (``tvm.tirx.build``) and times it with ``time_evaluator`` on random inputs.

A candidate is built (50-100 ms for a conv) in one of two forms:

* ``measure``, as deployed, for timing: ``RemoveWeightLayoutRewriteBlock`` drops the
  weight-packing block (in the model it runs once, at compile time), so the kernel reads an
  already packed weight;
* ``outputs``, with the packing block, for checking: the parameters keep their logical layouts,
  so every candidate of a task runs on the *same* random inputs and its outputs can be compared
  with the default candidate's (packed layouts differ between candidates: their timed inputs
  cannot be shared).

Failures (a knob set the template declines, a build error) raise; the search scores them as
infinitely slow.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import platform
from pathlib import Path

import numpy as np

from edgec import host
from edgec.lower import _tvm, set_threads

REPEAT = 3  # timed repeats per candidate (the score is the fastest: noise only adds time)
MIN_REPEAT_MS = 25  # each repeat runs the kernel at least this long (TVM raises `number`)


@dataclasses.dataclass
class Task:
    """One kernel of a model, as the search sees it."""

    name: str  # the PrimFunc's name in the module
    template: str  # the template that schedules it (edgec.lower.schedules.TEMPLATES)
    info: dict  # the template's match() result
    space: list[dict]  # candidate knobs, the default first
    default: dict
    flops: int  # per call
    calls: int  # call sites in the model
    workload: str  # identity of the work: same workload, same best knobs (see workload_key)
    func: object = dataclasses.field(repr=False)  # the unscheduled tirx.PrimFunc


def canonical(knobs: dict) -> str:
    """A knob set as a stable string (dict order does not matter)."""
    return json.dumps(knobs, sort_keys=True, separators=(",", ":"))


def workload_key(func, template: str, space: list[dict], constants) -> str:
    """The PrimFunc's structural hash (stable across processes), with what else decides which
    candidates exist and apply: the template, its space, the parameters bound to constants."""
    import tvm_ffi

    _tvm()
    extra = json.dumps([template, [canonical(k) for k in space], sorted(constants)])
    digest = hashlib.sha256(extra.encode()).hexdigest()[:16]
    return f"{tvm_ffi.structural_hash(func) & (2**64 - 1):016x}-{digest}"


def kernel_tasks(mod, lanes: int) -> list[Task]:
    """The tasks of a Relax module after the ``zero`` pipeline: one per PrimFunc that a template
    schedules (with the default knobs; found by a dry run of ``schedules.apply_all`` on a copy)."""
    from edgec.lower import schedules

    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if _is_primfunc(f)}
    last: dict[str, tuple] = {}

    def record(name, info, space, default):
        last[name] = (info, list(space), default)  # the last call is the template that applied
        return default

    _, records = schedules.apply_all(mod.clone(), lanes, choose=record)
    calls = _call_counts(mod)
    tasks = []
    for rec in records:
        name = rec["kernel"]
        if rec.get("template") is None or name not in last:
            continue
        info, given, default = last[name]
        space = list({canonical(k): k for k in [default, *given]}.values())  # default first
        tasks.append(
            Task(
                name=name, template=rec["template"], info=info, space=space, default=default,
                flops=int(rec.get("flops") or 0), calls=calls.get(name, 1),
                workload=workload_key(
                    funcs[name], rec["template"], space, info.get("constants", ())
                ),
                func=funcs[name],
            )
        )  # fmt: skip
    return tasks


def _is_primfunc(func) -> bool:
    return isinstance(func, _tvm().tirx.PrimFunc)


def _call_counts(mod) -> dict[str, int]:
    tvm = _tvm()
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    counts: dict[str, int] = {}

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            name = expr.args[0].name_hint
            counts[name] = counts.get(name, 0) + 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def prepare(threads: int) -> int:
    """Size the thread pool of this process as the artifact will run (returns the size)."""
    return set_threads(threads)


def cpu_model() -> str:
    """The CPU, for the tuning-cache key: its marketing name and LLVM's name for it."""
    from edgec.lower import host_cpu

    name = host.cpu_name()
    if platform.machine() in ("x86_64", "AMD64", "i386", "i686"):
        name = f"{name} ({host_cpu()['mcpu']})"
    return name


@functools.cache
def versions() -> dict[str, str]:
    """edgec and TVM versions for the cache key. ``schedules`` is a hash of the template source,
    so timings recorded by other template code are not reused (stale while developing)."""
    from edgec import __version__
    from edgec.lower import schedules

    # every module with a template or a lowering the templates see
    names = ("conv_algos", "conv_nhwc", "im2col", "im2win", "int8", "int8_arm", "ivit", "norms",
             "winograd")  # fmt: skip
    modules = (schedules, *(importlib.import_module(f"edgec.lower.{n}") for n in names))
    source = b"".join(Path(m.__file__).read_bytes() for m in modules)
    return {
        "edgec": f"{__version__}+schedules.{hashlib.sha256(source).hexdigest()[:12]}",
        "tvm": _tvm().__version__,
    }


def _template(name: str):
    from edgec.lower import schedules

    for t in schedules.TEMPLATES:
        if t.name == name:
            return t
    raise KeyError(f"no schedule template named {name!r}")


def _written(func) -> list[int]:
    """Indices of the parameters the function writes (its outputs)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    writes = []

    def collect(block) -> None:
        stmt = sch.get(block)
        writes.extend(w.source for w in stmt.writes)
        for child in sch.get_child_blocks(block):
            collect(child)

    collect(sch.get_sblock("root"))
    return [i for i, p in enumerate(func.params) if any(p.same_as(w) for w in writes)]


def _arrays(func, seed: int, nan_outputs: tuple[int, ...] = ()) -> list[np.ndarray]:
    """Arrays for every parameter: floats uniform in [-1, 1) (NaN for ``nan_outputs``, so that an
    element a candidate forgets to write shows), integers and booleans zero (index inputs stay in
    bounds)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, param in enumerate(func.params):
        ty = getattr(param, "ty", None)
        if ty is None or not hasattr(ty, "shape"):
            raise TypeError(f"parameter {param} is not a buffer")
        shape = tuple(int(d) for d in ty.shape)
        dtype = np.dtype(str(ty.dtype))
        if dtype.kind == "f":
            if i in nan_outputs:
                arr = np.full(shape, np.nan, dtype)
            else:
                arr = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
        else:
            arr = np.zeros(shape, dtype)
        out.append(arr)
    return out


def _build(func, target):
    tvm = _tvm()
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.tirx.build(mod, target=target), mod


def _timed_lib(task: Task, knobs: dict, tgt):
    """The candidate built as deployed: the weight-packing block removed (it runs once at
    compile time in the model), so weights are read in their packed layout."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    tvm = _tvm()
    from edgec.lower import schedules

    scheduled = schedules.apply_knobs(_template(task.template), task.func, task.info, knobs)
    mod = tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")})
    with tgt:
        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm.tirx.build(mod, target=tgt), mod["main"]


def measure(
    task: Task,
    knobs: dict,
    target: dict,
    *,
    repeat: int = REPEAT,
    min_repeat_ms: int = MIN_REPEAT_MS,
    seed: int = 0,
) -> float:
    """Seconds per call of the task's kernel scheduled with ``knobs``, built for ``target`` (TVM
    target JSON) as deployed and timed on seeded random inputs: the fastest of ``repeat`` timed
    repeats of at least ``min_repeat_ms`` each, after one untimed call. Raises on any failure."""
    tvm = _tvm()
    lib, func = _timed_lib(task, knobs, tvm.target.Target(target))
    dev = tvm.cpu(0)
    args = [tvm.runtime.tensor(a, dev) for a in _arrays(func, seed)]
    timer = lib.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return float(np.min(timer(*args).results))


def outputs(task: Task, knobs: dict, target: dict, *, seed: int = 0) -> list[np.ndarray]:
    """The kernel's outputs with ``knobs`` on seeded random inputs in their logical layouts (the
    weight-packing block kept), to compare candidates of one task. Raises on any failure."""
    tvm = _tvm()
    tgt = tvm.target.Target(target)
    from edgec.lower import schedules

    scheduled = schedules.apply_knobs(_template(task.template), task.func, task.info, knobs)
    mod = tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")})
    with tgt:
        lib = tvm.tirx.build(mod, target=tgt)
    dev = tvm.cpu(0)
    written = _written(task.func)
    args = [tvm.runtime.tensor(a, dev) for a in _arrays(task.func, seed, tuple(written))]
    lib["main"](*args)
    return [args[i].numpy() for i in written]
