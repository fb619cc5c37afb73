"""Memory traffic of each kernel, for the roofline: the bytes of its parameters.

Every kernel (PrimFunc) reads its input buffers and writes its output buffers at least once, so
the sum of their sizes is its compulsory traffic: a lower bound on the bytes it moves. FLOPs over
these bytes is the kernel's arithmetic intensity (an upper bound on the true one; a kernel that
re-reads data that no longer fits the caches moves more).
"""

from __future__ import annotations

import numpy as np

__all__ = ["kernel_bytes"]


def _size(param) -> int | None:
    shape, dtype = getattr(param, "shape", None), getattr(param, "dtype", None)
    if shape is None or dtype is None:
        return None
    try:
        return int(np.prod([int(d) for d in shape], dtype=np.int64)) * np.dtype(str(dtype)).itemsize
    except (TypeError, ValueError):  # a symbolic dim or an exotic dtype: unknown
        return None


def kernel_bytes(mod) -> dict[str, int]:
    """Compulsory bytes per kernel name: the summed sizes of its buffer parameters."""
    from tvm import tirx

    result = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        sizes = [_size(p) for p in func.params]  # TVM 0.27: params are buffers
        if sizes and all(s is not None for s in sizes):
            result[gv.name_hint] = sum(sizes)
    return result
