"""GPU lowering (CUDA, OpenCL): TVM's dlight default GPU schedules, and offline CUDA checks.

edgec's schedule templates are CPU-only. For GPUs the kernels get dlight's default rules
(Matmul, GEMV, Reduction, GeneralReduction, Fallback). Tensor-core tensorization segfaults in
TVM 0.27 (fp16/int8 matmuls, ../shared/docs/tvm.md B.2), so every kernel is marked
``dlight.do_not_tensorize`` and gets shared-memory tiling instead.

A CUDA library embeds CUDA C that the TVM runtime compiles when it loads it on the GPU machine;
``validate_cuda`` compiles that source to cubin with nvcc here, so a broken kernel fails at
compile time, not on the device.
"""

from __future__ import annotations

import os
import time

from edgec.errors import VerificationError


def _pipeline(tgt):
    from tvm.relax import backend

    if tgt.kind.name == "cuda":
        return backend.cuda.pipeline
    return backend.gpu_generic.pipeline


def build(mod, tgt):
    """Compile a Relax module (from ``to_relax``) for a GPU target (``tvm.target.Target``)."""
    import tvm
    from tvm.relax import transform
    from tvm.s_tir import dlight as dl

    pipe = _pipeline(tgt)
    with tgt:
        mod = transform.DecomposeOpsForInference()(mod)
        mod = transform.CanonicalizeBindings()(mod)
        mod = tvm.transform.Sequential(
            pipe.library_dispatch_passes(tgt)
            + [
                transform.LegalizeOps(),
                transform.AnnotateTIROpPattern(),
                transform.FoldConstant(),
                transform.FuseOps(),
                transform.FuseTIR(),
            ]
        )(mod)
        mod = _do_not_tensorize(mod)
        mod = dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
            dl.gpu.Fallback(),
        )(mod)  # fmt: skip
    lower = tvm.transform.Sequential(pipe.dataflow_lower_passes(tgt) + pipe.finalize_passes(tgt))
    return tvm.compile(mod, target=tgt, relax_pipeline=lower)


def _do_not_tensorize(mod):
    from tvm import tirx

    for gv, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc):
            mod[gv] = func.with_attr("dlight.do_not_tensorize", True)
    return mod


def device_sources(executable, kind: str) -> list[str]:
    """The device code (CUDA C / OpenCL C) embedded in an executable."""
    found, fmt = [], {"opencl": "cl"}.get(kind, kind)

    def walk(module) -> None:
        if module.kind == kind:
            found.append(module.inspect_source(fmt))
        for sub in module.imports:
            walk(sub)

    walk(executable.mod)
    return [s for s in found if s]


def validate_cuda(executable, arch: str) -> dict:
    """Compile the library's CUDA C to cubin with nvcc (offline: no GPU needed)."""
    import tvm
    from tvm.support import nvcc

    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    sources = device_sources(executable, "cuda")
    if not sources:
        raise VerificationError("the CUDA build produced no device code")
    t0 = time.perf_counter()
    cubin_bytes = 0
    with tvm.target.Target({"kind": "cuda", "arch": arch}):
        for src in sources:
            try:
                cubin = nvcc.compile_cuda(src, target_format="cubin", arch=arch, compiler="nvcc")
                cubin_bytes += len(cubin)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else "nvcc failed"
                raise VerificationError(f"nvcc rejected the generated CUDA code: {first}") from e
    return {
        "method": f"nvcc -cubin -arch={arch} of the embedded CUDA C (offline, no GPU)",
        "passed": True,
        "source_bytes": sum(len(s) for s in sources),
        "cubin_bytes": cubin_bytes,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def gpu_present(kind: str) -> bool:
    """Whether this machine has a usable GPU of ``kind`` ("cuda", "opencl") for the runtime."""
    import tvm

    try:
        return bool(tvm.device(kind, 0).exist)
    except Exception:  # noqa: BLE001 - a missing driver raises various errors: no GPU
        return False


def runtime(library):
    """The artifact loaded on CUDA GPU 0 (its CUDA C is compiled by nvcc when it loads)."""
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    import tvm.support.nvcc  # noqa: F401 - registers the load-time CUDA compile callback

    from edgec.lower import Runtime

    return Runtime(library, device="cuda")
