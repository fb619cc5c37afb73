"""This machine's measured fp32 peak: what a well-scheduled TVM kernel reaches here.

``measure_peak`` builds a compute-bound fp32 matmul (960x1024x1024, ~2 GFLOP) with edgec's own
``matmul`` schedule template for a few register-block shapes, times each with TVM's
``time_evaluator`` and keeps the fastest (GFLOP/s of the best repeat): a practical "100 %" for
reports of achieved GFLOP/s, measured with the same compiler and the same thread pool as the
models. It takes a few seconds, so ``cached_peak`` keeps one result per (CPU model, LLVM CPU name,
threads) in ``$XDG_CACHE_HOME/edgec/peak.json`` (default ``~/.cache/edgec/peak.json``).

``measure_bandwidth`` is the memory roof beside it: a TVM-built, parallel, vectorized STREAM-style
"add" (c = a + b over arrays far larger than the caches), in GB/s of bytes read and written;
``cached_bandwidth`` keeps it in the same file. Together they make the roofline of the report:
a kernel of arithmetic intensity I (FLOPs per byte) can reach at most min(peak, I x bandwidth).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from edgec import host, targets
from edgec.lower import _tvm, host_cpu, set_threads, target_json, vector_lanes

# M divides by every row block tried, N by every column block: no padding or tail predicates.
M, N, K = 960, 1024, 1024
REPEAT = 5  # timed repeats per candidate; the best one counts
MIN_REPEAT_MS = 40  # each repeat runs the kernel at least this long
CACHE_VERSION = 1  # bump when the method changes: older cached results are then ignored
STREAM_N = 1 << 24  # floats per array of the bandwidth probe: 3 x 64 MiB, far beyond the caches
BANDWIDTH_VERSION = 1


def _native(threads: int):
    """(threads, vector lanes, TVM target) of this machine's edgec target, with TVM's thread pool
    sized to ``threads`` (0: all the cores this process may use)."""
    target = targets.get("x86_64") if platform.machine() == "x86_64" else None
    if target is None:
        raise RuntimeError(f"no native edgec target for {platform.machine()}")
    threads = set_threads(threads)
    return threads, vector_lanes(target), _tvm().target.Target(target_json(target, threads))


def _candidates(lanes: int) -> list[dict]:
    """Register blocks of mb rows x nb columns (accumulators: mb * nb / lanes vector registers,
    kept within the register file: 16 ymm with AVX2, 32 zmm with AVX-512)."""
    if lanes >= 16:
        return [
            {"mb": 6, "nb": 4 * lanes, "kb": 1},
            {"mb": 6, "nb": 2 * lanes, "kb": 4},
            {"mb": 8, "nb": 2 * lanes, "kb": 1},
        ]
    return [
        {"mb": 6, "nb": 2 * lanes, "kb": 1},
        {"mb": 6, "nb": 2 * lanes, "kb": 4},
        {"mb": 4, "nb": 3 * lanes, "kb": 1},
    ]


def _matmul_func():
    from tvm import te

    a = te.placeholder((M, K), "float32", "A")
    b = te.placeholder((K, N), "float32", "B")
    k = te.reduce_axis((0, K), "k")
    c = te.compute((M, N), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), "matmul")
    return te.create_prim_func([a, b, c])


def measure_peak(threads: int) -> dict:
    """fp32 GFLOP/s of the best TVM-built register-blocked matmul on ``threads`` threads (0: all
    the cores this process may use). Sizes TVM's thread pool to ``threads`` as a side effect."""
    from edgec.lower.schedules import Matmul

    tvm = _tvm()
    start = time.perf_counter()
    threads, lanes, tgt = _native(threads)
    func = _matmul_func()
    template = Matmul()
    info = {**template.match(func), "constants": set()}

    dev = tvm.cpu(0)
    rng = np.random.default_rng(0)
    args = [
        tvm.runtime.tensor(rng.uniform(-1, 1, shape).astype(np.float32), dev)
        for shape in ((M, K), (K, N), (M, N))
    ]
    flops = 2.0 * M * N * K
    best, best_knobs = float("inf"), None
    for knobs in _candidates(lanes):
        scheduled = template.apply(func, info, knobs)
        mod = tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")})
        lib = tvm.tirx.build(mod, target=tgt)
        lib["main"](*args)  # warm-up: page in, spin up the thread pool
        timer = lib.time_evaluator(
            "main", dev, number=1, repeat=REPEAT, min_repeat_ms=MIN_REPEAT_MS
        )
        seconds = min(timer(*args).results)
        if seconds < best:
            best, best_knobs = seconds, knobs
    cpu = host_cpu()["mcpu"]
    return {
        "gflops": round(flops / best / 1e9, 2),
        "threads": threads,
        "method": (
            f"TVM {tvm.__version__} fp32 matmul {M}x{N}x{K}, edgec matmul template "
            f"{json.dumps(best_knobs, sort_keys=True)}, llvm -mcpu={cpu}, best of "
            f"{REPEAT} repeats x {len(_candidates(lanes))} register blocks"
        ),
        "cpu": f"{host.cpu_name()} ({cpu})",
        "seconds": round(time.perf_counter() - start, 3),
    }


def cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir/peak.json``; by default in edgec's cache directory (``edgec.host``)."""
    return Path(cache_dir if cache_dir is not None else host.cache_dir()) / "peak.json"


def cache_key(threads: int) -> str:
    return f"v{CACHE_VERSION}|{host.cpu_name()}|{host_cpu()['mcpu']}|{threads}"


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def bandwidth_key(threads: int) -> str:
    return f"bandwidth-v{BANDWIDTH_VERSION}|{host.cpu_name()}|{host_cpu()['mcpu']}|{threads}"


def _valid(entry, value: str = "gflops") -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get(value), int | float)
        and entry[value] > 0
        and {"threads", "method", "cpu", "seconds"} <= set(entry)
    )


def cached_peak(threads: int, cache_dir: str | os.PathLike | None = None) -> dict:
    """``measure_peak(threads)``, measured once per machine: the result is kept per (CPU model,
    LLVM CPU name, threads) in a JSON file (see ``cache_path``), replaced atomically."""
    threads = threads if threads > 0 else set_threads(0)
    return _cached(cache_key(threads), "gflops", lambda: measure_peak(threads), cache_dir)


def cached_bandwidth(threads: int, cache_dir: str | os.PathLike | None = None) -> dict:
    """``measure_bandwidth(threads)``, measured once per machine, cached like ``cached_peak``."""
    threads = threads if threads > 0 else set_threads(0)
    return _cached(bandwidth_key(threads), "gbps", lambda: measure_bandwidth(threads), cache_dir)


def _cached(key: str, value: str, measure, cache_dir) -> dict:
    path = cache_path(cache_dir)
    entry = _load(path).get(key)
    if _valid(entry, value):
        return entry
    entry = measure()
    data = _load(path)  # re-read: another process may have added entries meanwhile
    data[key] = entry
    with contextlib.suppress(OSError):  # an unwritable cache only costs a re-measurement
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".peak.", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return entry


def measure_bandwidth(threads: int) -> dict:
    """Memory bandwidth in GB/s (1e9 bytes/s) of ``c = a + b`` on ``STREAM_N`` fp32 elements per
    array, counting 12 bytes per element (2 reads, 1 write: STREAM's convention; write-allocate
    traffic is not counted), parallel over ``threads`` threads, vectorized; best of ``REPEAT``."""
    from tvm import s_tir, te

    tvm = _tvm()
    start = time.perf_counter()
    threads, lanes, tgt = _native(threads)
    a = te.placeholder((STREAM_N,), "float32", "A")
    b = te.placeholder((STREAM_N,), "float32", "B")
    c = te.compute((STREAM_N,), lambda i: a[i] + b[i], "add")
    sch = s_tir.Schedule(te.create_prim_func([a, b, c]))
    (i,) = sch.get_loops(sch.get_sblock("add"))
    outer, inner = sch.split(i, [None, lanes * 64])
    sch.parallel(outer)
    _, vec = sch.split(inner, [None, lanes])
    sch.vectorize(vec)
    mod = tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")})
    lib = tvm.tirx.build(mod, target=tgt)
    dev = tvm.cpu(0)
    rng = np.random.default_rng(0)
    args = [
        tvm.runtime.tensor(rng.uniform(-1, 1, STREAM_N).astype(np.float32), dev) for _ in range(3)
    ]
    lib["main"](*args)  # warm-up: page in, spin up the thread pool
    timer = lib.time_evaluator("main", dev, number=1, repeat=REPEAT, min_repeat_ms=MIN_REPEAT_MS)
    seconds = min(timer(*args).results)
    return {
        "gbps": round(12.0 * STREAM_N / seconds / 1e9, 2),
        "threads": threads,
        "method": (
            f"TVM {tvm.__version__} fp32 c = a + b over 3 x {STREAM_N * 4 >> 20} MiB, parallel, "
            f"{lanes}-lane vectors, 12 bytes per element (STREAM convention), best of {REPEAT} "
            "repeats"
        ),
        "cpu": f"{host.cpu_name()} ({host_cpu()['mcpu']})",
        "seconds": round(time.perf_counter() - start, 3),
    }
