"""Lowering through Apache TVM (Relax): the only part of edgec that imports tvm.

``build`` imports the static-shape ONNX graph into Relax, runs the ``zero`` pipeline (legalize,
constant folding, operator fusion) plus dlight's CPU reduction rules, and compiles for the target.
``Runtime`` loads an exported library into a Relax VM and runs it on numpy arrays.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from edgec._imports import import_without_torch
from edgec.errors import UnsupportedModelError
from edgec.lower import build_cache
from edgec.targets import Target

# x86 SIMD features that a CPU name implies but a VM may mask: disabled explicitly when the host
# lacks them, so a "znver4" guest without AVX-512 does not get AVX-512 code.
_X86_SIMD = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl",
    "avx512vnni", "avx512bf16", "avx512ifma", "avx512vbmi", "avx512vbmi2", "avx512bitalg",
    "avx512vpopcntdq", "avx512fp16", "avxvnni", "amx-tile", "amx-int8", "amx-bf16",
)  # fmt: skip
_ONNX_DOMAINS = ("", "ai.onnx")


def _tvm():
    os.environ.setdefault("TVM_LOG_DEBUG", "0")
    return import_without_torch("tvm")


def tvm_version() -> str:
    return _tvm().__version__


def host_cpu() -> dict:
    """LLVM's name for this CPU and the SIMD features it really has (as LLVM detects them)."""
    import tvm_ffi

    _tvm()
    name = str(tvm_ffi.get_global_func("tvm.codegen.llvm.GetHostCPUName")())
    features = tvm_ffi.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()
    have = {str(k) for k, v in features.items() if bool(v)}
    return {
        "mcpu": name,
        "mattr": [f"-{f}" for f in _X86_SIMD if f in features and f not in have],
        "simd": sorted(f for f in _X86_SIMD if f in have),
    }


def host_can_run(target: Target) -> bool:
    """Whether code for ``target`` executes on this machine (architecture and CPU features)."""
    if not target.runs_here:
        return False
    if not target.requires:
        return True
    import tvm_ffi

    _tvm()
    features = tvm_ffi.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()
    return all(f in features and bool(features[f]) for f in target.requires)


def target_json(target: Target, threads: int) -> dict:
    """The TVM target (JSON dict form) for an edgec target."""
    mcpu, mattr = target.mcpu, list(target.mattr)
    if mcpu == "host":
        host = host_cpu()
        mcpu, mattr = host["mcpu"], mattr + host["mattr"]
    spec: dict = {"kind": "llvm", "mtriple": target.mtriple, "mcpu": mcpu, "num-cores": threads}
    if mattr:
        spec["mattr"] = mattr
    if target.device == "cuda":
        return {"kind": "cuda", "arch": target.gpu, "host": spec}
    if target.device == "opencl":
        return {"kind": "opencl", "device": target.gpu, "host": spec}
    return spec


def _convert_map() -> Mapping:
    _tvm()
    from tvm.relax.frontend.onnx import onnx_frontend

    return onnx_frontend._get_convert_map()


def _all_nodes(graph: onnx.GraphProto, prefix: str = ""):
    for node in graph.node:
        yield prefix, node
        for attr in node.attribute:
            subgraphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
            for sub in subgraphs:
                yield from _all_nodes(sub, f"{prefix}{node.name or node.op_type}/")


def unsupported_nodes(model: onnx.ModelProto) -> list[dict]:
    """Every node TVM's ONNX importer has no converter for (all of them, not only the first)."""
    from edgec.lower import importer
    from edgec.quant.ivit import DOMAIN as EDGEC_DOMAIN
    from edgec.quant.ivit import OPS as EDGEC_OPS

    known = set(_convert_map()) | set(importer.CONVERTED) | {"Constant", "If"}
    found = importer.unsupported_types(model)
    types, consts = importer.value_types(model.graph), importer.constants(model.graph)
    for prefix, node in _all_nodes(model.graph):
        if node.domain == EDGEC_DOMAIN and node.op_type in EDGEC_OPS:
            continue  # I-ViT integer nodes: converted by edgec.lower.ivit
        if (
            node.domain not in _ONNX_DOMAINS
            or node.op_type not in known
            or importer.declined(node, types, consts)
        ):
            found.append(
                {
                    "op_type": node.op_type,
                    "domain": node.domain or "ai.onnx",
                    "node": prefix + (node.name or f"<unnamed {node.op_type}>"),
                    "reason": importer.declined(node, types, consts)
                    or "no converter in TVM's importer",
                }
            )
    return found


def check_supported(model: onnx.ModelProto) -> None:
    nodes = unsupported_nodes(model)
    if nodes:
        by_op: dict[str, list[str]] = {}
        for n in nodes:
            key = n["op_type"] if n["domain"] == "ai.onnx" else f"{n['domain']}.{n['op_type']}"
            by_op.setdefault(key, []).append(n["node"])
        reasons = {n["op_type"]: n.get("reason", "") for n in nodes}
        lines = [
            f"  {op} ({len(names)}): {', '.join(names)} [{reasons.get(op.split('.')[-1], '')}]"
            for op, names in by_op.items()
        ]
        raise UnsupportedModelError(
            f"the model uses {len(by_op)} unsupported op type(s) in {len(nodes)} node(s):\n"
            + "\n".join(lines),
            nodes,
        )


def to_relax(model: onnx.ModelProto):
    """Import an ONNX model into a Relax IRModule (weights as constants)."""
    check_supported(model)
    _tvm()
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from edgec.lower import importer

    converters = contextlib.nullcontext()
    if any(node.domain == "ai.edgec" for _, node in _all_nodes(model.graph)):
        from edgec.lower import ivit  # I-ViT integer nodes (edgec.quant.ivit)

        converters = ivit.converters()
    try:
        with warnings.catch_warnings(), importer.converters(model), converters:
            warnings.simplefilter("ignore")
            return from_onnx(model, keep_params_in_input=False)
    except (
        tvm.error.OpNotImplemented,
        tvm.error.OpAttributeUnImplemented,
        NotImplementedError,
    ) as e:
        raise UnsupportedModelError(f"TVM's ONNX importer does not support this model: {e}") from e
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError,
            AssertionError) as e:  # fmt: skip
        # (TVM 0.27 has no tvm.error.TVMError: its FFI errors are RuntimeError subclasses)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(f"TVM's ONNX importer failed on this model: {first}") from e


def vector_lanes(target: Target) -> int:
    """fp32 lanes of the widest SIMD register the target's code may use."""
    if target.arch != "x86_64":
        return 4  # NEON
    import tvm_ffi

    tvm = _tvm()
    tgt = tvm.target.Target(target_json(target, 1))
    has = tvm_ffi.get_global_func("target.llvm_cpu_has_feature")
    return 16 if has("avx512f", tgt) else 8 if has("avx2", tgt) else 4


def build(
    model: onnx.ModelProto,
    target: Target,
    threads: int,
    *,
    schedule: bool = True,
    choose: Callable | None = None,
    tune: Callable | None = None,
    conv_algo: str = "auto",
    conv_plan: list | None = None,
    integer_only: bool = False,
    quant: dict | None = None,
    layout: str = "nchw",
    layout_report: dict | None = None,
):
    """Compile to a Relax executable for ``target``; returns it and one record per kernel.

    With ``schedule`` (the default) every kernel gets edgec's schedule templates, weights are
    re-laid-out for them at compile time, and erf/exp/tanh use TVM's vectorizable fast-math
    forms. Without it, TVM's plain lowering (unscheduled loops).

    The knobs of each kernel are the template's default unless ``choose(kernel_name, info,
    space, default) -> knobs`` picks others (``schedules.apply_all``'s hook). ``tune(tasks,
    target_json) -> choose`` is called first with every kernel (``measure.Task``) when given:
    the latency-measured search (``edgec.search.Search``).

    ``conv_algo`` (``conv_algos.CHOICES``) forces a convolution algorithm on every conv layer it
    applies to, or (``auto``, with ``tune``) lets the search choose per layer; the plan (a
    ``conv_algos.Plan``) is appended to ``conv_plan`` when given, for the report.

    ``layout="nhwc"`` converts the convolutions of a float model (and the ops between them) to
    NHWC before fusion (``conv_nhwc.convert``; QDQ models stay NCHW); ``layout_report`` (a dict)
    receives the layout applied and, when the conversion fell back to NCHW, why.
    """
    tvm = _tvm()
    from tvm import relax
    from tvm.relax import transform
    from tvm.s_tir import dlight

    from edgec.lower import int8_arm, qdq, schedules

    with qdq.onnx_node_names() as names:
        mod = to_relax(model)
    nhwc = layout == "nhwc" and not qdq.has_qdq(mod)
    signed = int8_arm.has_sdot(target_json(target, threads))  # int8 activations for sdot
    mod = qdq.lower(mod, integer_only, quant, names, signed_conv=signed)
    tgt = tvm.target.Target(target_json(target, threads))
    if target.device != "cpu":  # GPU: dlight's default schedules (edgec.lower.gpu)
        from edgec.lower import gpu

        return gpu.build(mod, tgt), []
    records: list[dict] = []
    with tgt:
        mod = transform.DecomposeOpsForInference()(mod)
        mod = transform.CanonicalizeBindings()(mod)
        if nhwc:
            from edgec.lower import conv_nhwc

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                converted = conv_nhwc.convert(mod)
            for w in caught:  # (recorded for the report, shown all the same)
                warnings.warn(w.message, w.category, stacklevel=2)
            if layout_report is not None:
                layout_report["layout"] = "nchw" if converted is mod else "nhwc"
                if converted is mod and caught:
                    layout_report["layout_fallback"] = str(caught[-1].message)
            mod = converted
        if schedule:
            mod = transform.FastMathTransform()(mod)
        plan = None
        if schedule and (conv_algo != "auto" or tune is not None or conv_plan is not None):
            from edgec.lower import conv_algos

            lanes = vector_lanes(target)
            plan = conv_algos.Plan(conv_algo, lanes, target_json(target, threads))
            mod, tuned = plan.lower(mod, relax.get_pipeline("zero"), tune)
            choose, tune = tuned or choose, None
            if conv_plan is not None:
                conv_plan.append(plan)
        else:
            mod = relax.get_pipeline("zero")(mod)
        if schedule:
            from edgec.lower.traffic import kernel_bytes

            traffic = kernel_bytes(mod)  # before scheduling: the buffers as computed
            lanes = vector_lanes(target)
            if tune is not None:
                from edgec.lower import measure

                choose = tune(measure.kernel_tasks(mod, lanes), target_json(target, threads))
            if choose is None:
                mod, records = schedules.apply_all(mod, lanes)
            else:
                mod, records = schedules.apply_all(mod, lanes, choose=choose)
            for record in records:
                record["bytes"] = traffic.get(record["kernel"])
            if plan is not None:
                plan.annotate(records)
            if _layout_rewrites(mod):  # (the pass fails on some scatter kernels otherwise)
                mod = transform.SplitLayoutRewritePreproc()(mod)
            mod = transform.LiftTransformParams()(mod)
            mod = transform.FoldConstant()(mod)
        else:
            mod = dlight.ApplyDefaultSchedule(dlight.cpu.GEMV(), dlight.cpu.Reduction())(mod)
    try:
        return _compile(mod, tgt, target), records
    except tvm.error.InternalError as e:
        if "has not been computed" not in str(e):  # VMShapeLower: a symbolic shape
            raise
        # a shape that depends on tensor values (e.g. a Range of a computed length)
        raise UnsupportedModelError(
            "the model has data-dependent shapes, which TVM cannot compile here: "
            + str(e).strip().splitlines()[0][:200]
        ) from e


class Library:
    """What ``build`` returns: TVM's executable, or the build cache's copy of its library."""

    def __init__(self, executable=None, cached: Path | None = None, key: str | None = None):
        self.executable, self.cached, self.key = executable, cached, key

    def module(self):
        """A module ``relax.VirtualMachine`` accepts (the cached library loaded if need be)."""
        if self.executable is not None:
            return self.executable
        return _tvm().runtime.load_module(str(self.cached))

    def export_library(self, path: str, **kwargs) -> None:
        if self.cached is not None:
            shutil.copyfile(self.cached, path)
            return
        self.executable.export_library(path, **kwargs)
        if self.key is not None:
            build_cache.store(self.key, Path(path))


def _compile(mod, tgt, target: Target) -> Library:
    """``tvm.compile``, unless the build cache holds the library of this exact module."""
    tvm = _tvm()
    if not build_cache.enabled():
        return Library(tvm.compile(mod, target=tgt))
    import tvm_ffi

    key = build_cache.key(tvm_ffi.structural_hash(mod), str(tgt), _linker(target), tvm.__version__)
    cached = build_cache.lookup(key)
    if cached is not None:
        return Library(cached=cached)
    return Library(tvm.compile(mod, target=tgt), key=key)


def _linker(target: Target) -> str:
    """How the library will be linked, for the build cache key (the triple names the toolchain)."""
    return f"cross:{target.mtriple}" if target.cross else "native"


def _layout_rewrites(mod) -> bool:
    """Whether any kernel has weights to re-lay-out (``layout_free_buffers``)."""
    from tvm import tirx

    return any(
        isinstance(f, tirx.PrimFunc) and f.attrs is not None and "layout_free_buffers" in f.attrs
        for f in mod.functions.values()
    )


def export(executable, path: Path, target: Target, compiler: str | None = None) -> None:
    """Write the executable (or ``Library``) as a shared library the TVM runtime can load,
    linked by ``compiler`` (a cross g++ or the NDK's clang++; default: the host's, or the GNU
    cross g++)."""
    if compiler is None and not target.cross:
        executable.export_library(str(path))
    else:
        from tvm.support import cc

        compiler = compiler or f"{target.mtriple.split('-')[0]}-linux-gnu-g++"
        executable.export_library(str(path), fcompile=cc.cross_compiler(compiler))


def set_threads(threads: int) -> int:
    """Size TVM's CPU thread pool; returns the size it reports.

    TVM's default is half the logical CPUs on x86 (it assumes hyper-threading), i.e. one thread
    on a 2-vCPU machine. Mode -3 ("threads share all listed cores") sets the count exactly
    without pinning threads to single cores.
    """
    import tvm_ffi

    _tvm()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    threads = threads if threads > 0 else len(cpus) or os.cpu_count() or 1
    cpus = cpus or list(range(threads))
    tvm_ffi.get_global_func("runtime.config_threadpool")(-3, threads, [str(c) for c in cpus])
    return int(tvm_ffi.get_global_func("runtime.NumThreads")())


class Runtime:
    """A compiled model loaded into a Relax VM; call with arrays in input order."""

    def __init__(
        self, library: Path | None, threads: int = 0, device: str = "cpu", *, executable=None
    ):
        """Load ``library``; or run ``executable`` (``build``'s result) in-process, unexported."""
        tvm = _tvm()
        from tvm import relax

        set_threads(threads)
        self._tvm = tvm
        self._device = tvm.device(device, 0)
        if isinstance(executable, Library):
            executable = executable.module()
        code = executable if executable is not None else tvm.runtime.load_module(str(library))
        self._vm = relax.VirtualMachine(code, self._device)
        self._main = self._vm["main"]

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        args = [self._tvm.runtime.tensor(_c_array(a), self._device) for a in arrays]
        return [t.numpy() for t in _flatten(self._main(*args))]

    def prepare(self, arrays: Sequence[np.ndarray]):
        """A zero-argument callable running the model on pre-uploaded inputs (for timing)."""
        args = [self._tvm.runtime.tensor(_c_array(a), self._device) for a in arrays]
        return lambda: self._main(*args)


def _flatten(value) -> list:
    if hasattr(value, "numpy"):
        return [value]
    return [t for item in value for t in _flatten(item)]


def _c_array(a) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    return np.asarray(a, order="C")
