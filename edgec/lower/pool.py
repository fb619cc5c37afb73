"""2-D max pooling (NCHW, any dtype): a row kernel, separable, vector loads only.

Relax legalizes ``MaxPool`` into a padding block and a ``pool_max`` reduction over the window.
``Generic`` parallelizes its outer loops and vectorizes the output row, but a strided window
(ResNet's 3x3 stride-2 pool after the stem) makes every vector load a gather, which TVM's
codegen emits lane by lane. This template generates the kernel again: per output row (``N * C
* Ho`` rows split over the threads)

1. the column maxima of the ``kh`` input rows the window covers (rows outside the input are
   skipped: padding takes no part in a max) go to a row buffer ``r`` in L1, between
   ``left`` and the right padding filled with the padding value (the dtype's lowest, or the
   quantized zero point the import used: whatever the padding block writes; a window over
   padded rows starts from it too, so a padding above the values is honoured as TOPI does);
2. ``out[x] = max_v r[x * sw + v]``: for each tap ``v`` one contiguous load of ``sw * lanes``
   elements, its every ``sw``-th lane picked by a ``Shuffle`` (a two-source permute, not a
   gather). The row tail runs as one vector overlapping the previous one (max is idempotent).

Exact (a max of the same elements). Knob ``vec``: lanes per output vector.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.script import tirx as T

Knobs = dict


def _schedules():
    from edgec.lower import schedules  # (schedules imports this module for its registry)

    return schedules


def _decline(why: str) -> Exception:
    return _schedules().Decline(why)


def _linear(index, var) -> tuple[int, object]:
    """(coefficient of ``var``, the rest) of an index linear in ``var``: a window's stride or
    dilation, and the padding's offset."""
    from tvm.sym import detect_linear_equation

    coeff, const = detect_linear_equation(index, [var])
    return int(coeff), const


class MaxPool:
    """``pool_max`` over a 2-D window of an NCHW tensor, after an optional constant padding."""

    name = "max_pool"

    def match(self, func: tirx.PrimFunc) -> dict:
        sch = s_tir.Schedule(func)
        blocks = _schedules()._blocks(sch)
        if not blocks or blocks[-1]["name"] != "pool_max":
            raise _schedules().NotMine("not a max pool")
        if len(blocks) > 2 or (len(blocks) == 2 and blocks[0]["name"] != "pad_temp"):
            raise _decline(f"max pool fused with other blocks: {[b['name'] for b in blocks]}")
        pool = sch.get(blocks[-1]["block"])
        if len(pool.iter_vars) != 6 or len(func.params) != 2:
            raise _decline("not a 2-D pool of one NCHW input")
        n, c, ho, wo, kh, kw = (int(iv.dom.extent) for iv in pool.iter_vars)
        ivs = [iv.var for iv in pool.iter_vars]
        index = pool.reads[0].region
        (sh, _), (dh, _) = _linear(index[2].min, ivs[2]), _linear(index[2].min, ivs[4])
        (sw, _), (dw, _) = _linear(index[3].min, ivs[3]), _linear(index[3].min, ivs[5])
        if (dh, dw) != (1, 1):
            raise _decline(f"dilation {dh}x{dw}")
        shape = [int(d) for d in func.params[0].shape]
        dtype = str(func.params[0].dtype)
        if min(shape[3], wo) < 2:
            raise _decline(f"rows of {shape[3]} -> {wo}: no vector to fill")
        top = left = 0
        init = pool.init.value if pool.init is not None else None
        pad = init
        if len(blocks) == 2:
            value = sch.get(blocks[0]["block"]).body.value
            if not (isinstance(value, tvm.ir.Call) and value.op.name == "prim.if_then_else"):
                raise _decline("padding block is not a constant padding")
            _, inner, pad = value.args
            load = inner if isinstance(inner, tvm.ir.expr.TensorLoad) else None
            if load is None or not isinstance(pad, tirx.FloatImm | tirx.IntImm):
                raise _decline("padding of a computed value or with a computed constant")
            pivs = [iv.var for iv in sch.get(blocks[0]["block"]).iter_vars]
            top = -int(_linear(load.indices[2], pivs[2])[1])
            left = -int(_linear(load.indices[3], pivs[3])[1])
        if not all(isinstance(v, tirx.FloatImm | tirx.IntImm) for v in (init, pad)):
            raise _decline("the pool's initial value is not a constant")
        return {
            "shape": shape, "out": [n, c, ho, wo], "dtype": dtype, "kh": kh, "kw": kw,
            "sh": sh, "sw": sw, "top": top, "left": left, "pad": pad.value, "init": init.value,
            "flops": 0,
        }  # fmt: skip

    def space(self, info: dict, lanes: int) -> list[Knobs]:
        per = 32 // _bytes(info["dtype"])  # a ymm
        out = [self.default(info, lanes)] + [{"vec": v} for v in (per, 2 * per, 4 * per)]
        return list({tuple(sorted(k.items())): k for k in out}.values())

    def default(self, info: dict, lanes: int) -> Knobs:
        return {"vec": 64 // _bytes(info["dtype"])}  # a zmm of outputs

    def apply(self, func: tirx.PrimFunc, info: dict, knobs: Knobs) -> tirx.PrimFunc:
        return max_pool_func(info, int(knobs["vec"]))


def _pow2_at_most(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def _bytes(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def max_pool_func(info: dict, vec: int) -> tirx.PrimFunc:
    n, c, h, w = info["shape"]
    _, _, ho, wo = info["out"]
    kh, kw, sh, sw, top, left = (info[k] for k in ("kh", "kw", "sh", "sw", "top", "left"))
    dtype = info["dtype"]
    lanes = _pow2_at_most(min(vec, wo))  # legal vector widths: LLVM scalarizes odd ones
    tiles = -(-wo // lanes)
    cols = _pow2_at_most(min(vec * sw, w))  # the vertical pass's vector
    ctiles = -(-w // cols)
    width = max(wo * sw + kw, left + w)  # the row buffer: every tap's last load fits
    width = -(-width // cols) * cols
    pick = [j * sw for j in range(lanes)]  # every sw-th lane of a load
    pad, lowest = tirx.const(info["pad"], dtype), tirx.const(info["init"], dtype)
    rows = n * c * ho
    # rows per task: their vertical maxima are stored before any is read back (a load
    # straddling stores still in flight would wait for them: store forwarding fails)
    batch = next(b for b in (8, 7, 6, 5, 4, 3, 2, 1) if ho % b == 0)

    @T.prim_func(private=True, s_tir=True)
    def kernel(
        a: T.Buffer((T.int64(n), T.int64(c), T.int64(h), T.int64(w)), dtype),
        out: T.Buffer((T.int64(n), T.int64(c), T.int64(ho), T.int64(wo)), dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):  # noqa: SIM117 - TVMScript wants one block per `with`
            with T.sblock("max_pool_rows"):
                T.reads(a[0:n, 0:c, 0:h, 0:w])
                T.writes(out[0:n, 0:c, 0:ho, 0:wo])
                x = T.decl_buffer((n * c, h, w), dtype, data=a.data)
                y = T.decl_buffer((rows, wo), dtype, data=out.data)
                for blk in T.parallel(rows // batch):
                    r = T.alloc_buffer((batch, width), dtype)
                    acc = T.alloc_buffer((lanes,), dtype)
                    col = T.alloc_buffer((cols,), dtype)
                    for b, jo in T.grid(batch, width // cols):
                        for j in T.vectorized(cols):
                            r[b, jo * cols + j] = pad
                    for b, io in T.grid(batch, ctiles):  # the last tile overlaps: max is idempotent
                        for i in T.vectorized(cols):  # a window over padded rows sees `pad`
                            col[i] = T.if_then_else(
                                (blk * batch + b) % ho * sh < top
                                or (blk * batch + b) % ho * sh + kh > h + top,
                                pad,
                                lowest,
                            )
                        for u in range(
                            T.max(0, top - (blk * batch + b) % ho * sh),
                            T.min(kh, h + top - (blk * batch + b) % ho * sh),
                        ):
                            for i in T.vectorized(cols):
                                col[i] = T.max(
                                    col[i],
                                    x[
                                        (blk * batch + b) // ho,
                                        (blk * batch + b) % ho * sh - top + u,
                                        T.min(io * cols, w - cols) + i,
                                    ],
                                )
                        for i in T.vectorized(cols):
                            r[b, left + T.min(io * cols, w - cols) + i] = col[i]
                    for b, t in T.grid(batch, tiles):
                        for j in T.vectorized(lanes):
                            acc[j] = lowest
                        for v in T.unroll(kw):
                            acc[T.Ramp(0, 1, lanes)] = T.max(
                                acc[T.Ramp(0, 1, lanes)],
                                T.Shuffle([r[b, T.Ramp(T.min(t * lanes, wo - lanes) * sw + v, 1,
                                                       sw * lanes)]], pick),
                            )  # fmt: skip
                        for j in T.vectorized(lanes):
                            y[blk * batch + b, T.min(t * lanes, wo - lanes) + j] = acc[j]

    return kernel


TEMPLATE = MaxPool()
