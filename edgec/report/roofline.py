"""The roofline of a compiled model: each kernel's achieved GFLOP/s against what it could reach.

A kernel of arithmetic intensity I (FLOPs per byte of compulsory traffic, ``lower.traffic``) is
bounded by min(peak GFLOP/s, I x memory bandwidth): compute-bound above the ridge point
(peak / bandwidth FLOP/byte), memory-bound below it. ``roof_fraction`` = achieved / that bound is
the kernel's efficiency gap (1.0: on the roof).
"""

from __future__ import annotations

__all__ = ["annotate", "ridge"]


def ridge(peak: dict, bandwidth: dict) -> float:
    """The arithmetic intensity (FLOP/byte) where the memory roof meets the compute peak."""
    return peak["gflops"] / bandwidth["gbps"]


def annotate(kernels: list[dict], peak: dict, bandwidth: dict) -> None:
    """Add ``intensity``, ``roof_gflops``, ``bound`` and (when profiled) ``roof_fraction`` to every
    kernel with FLOPs and known bytes."""
    for k in kernels:
        if not (k.get("flops") and k.get("bytes")):
            continue
        k["intensity"] = k["flops"] / k["bytes"]
        memory_roof = k["intensity"] * bandwidth["gbps"]
        k["roof_gflops"] = min(peak["gflops"], memory_roof)
        k["bound"] = "memory" if memory_roof < peak["gflops"] else "compute"
        if k.get("gflops"):
            k["roof_fraction"] = k["gflops"] / k["roof_gflops"]
