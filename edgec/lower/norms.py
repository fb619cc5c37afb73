"""Softmax and LayerNorm over the last axis (fp32): row kernels with vector accumulators.

Relax legalizes each into one fused kernel of several blocks (softmax: max, ``x - max``, exp,
sum, divide; layer norm: sum, mean, sum of squared deviations, normalize). ``Generic`` runs
their rows in parallel but vectorizes none of the reductions. These templates recognize the
blocks (by their TOPI names and shapes, last axis only) and generate the kernel again, one
parallel task per row, the row staying in L1 between its passes:

* every reduction over the row runs in ``vec`` vector accumulators over the first
  ``N // vec * vec`` elements, then a horizontal reduction and a scalar tail, so ``N`` need
  not be a multiple of the vector width (197, 50, 7);
* the elementwise passes (exp, normalize) are vectorized the same way, tail scalar;
* softmax's exponential is the one Relax used: TVM's ``fast_exp`` polynomial (what
  ``FastMathTransform`` made of it; same constants, same order) or ``exp``.

Knobs: ``vec`` (vector width: the target's lanes or half of them); softmax ``exp``: ``cache``
(exponentials written to the output, then scaled in place) or ``recompute`` (computed again
in the normalizing pass: no second read of the output); layer norm ``var``: ``two_pass`` (the
squared deviations summed after the mean, as Relax computes it) or ``one_pass`` (sum and sum
of squares in one read of the row, ``E[x^2] - mean^2``, as onnxruntime computes it).
"""

from __future__ import annotations

import math

from tvm import ir, s_tir, tirx
from tvm.script import tirx as T

from edgec.lower.schedules import Decline, Knobs, NotMine, _blocks

SOFTMAX_BLOCKS = ("T_softmax_maxelem", "T_softmax_delta", "T_softmax_expsum", "T_softmax_norm")
EXP_BLOCKS = {"T_fast_exp": "fast", "T_softmax_exp": "exact"}
F32_LOWEST = -3.4028234663852886e38


def _widths(lanes: int) -> list[int]:
    return [lanes, lanes // 2] if lanes >= 8 else [lanes]


def _full(buf: tirx.Buffer) -> tirx.BufferRegion:
    return tirx.BufferRegion(buf, [ir.Range(0, d) for d in buf.shape])


def _float32_params(func: tirx.PrimFunc) -> None:
    for p in func.params:
        if str(p.dtype) != "float32":
            raise Decline(f"{p.name} is {p.dtype}, not float32")


def _row_shape(extents: list[int]) -> tuple[int, int]:
    return math.prod(extents[:-1]), extents[-1]


def _param(func: tirx.PrimFunc, buffer) -> int:
    for i, p in enumerate(func.params):
        if p.same_as(buffer):
            return i
    raise Decline(f"{buffer.name} is not a function parameter")


def fast_exp(d):
    """TVM's ``fast_exp`` (topi/elemwise.h, what FastMathTransform emits), as a TIR expression:
    ``2^n * p(r)`` with ``n = round(x log2 e)``, a degree-7 polynomial on ``r = x - n ln 2``."""
    x = T.max(T.min(d, T.float32(88.376266479492188)), T.float32(-88.376258850097656))
    n = T.floor(x * T.float32(1.4426950216293335) + T.float32(0.5))
    r = x - n * T.float32(0.69314718246459961)
    poly = T.float32(0.00019875691214110702)
    for c in (0.0013981999363750219, 0.008333452045917511, 0.041665796190500259,
              0.1666666567325592, 0.5):  # fmt: skip
        poly = poly * r + T.float32(c)
    two_n = T.reinterpret("float32", T.shift_left(T.Cast("int32", n + T.float32(127.0)), 23))
    return T.max(two_n * (poly * r * r + r + T.float32(1.0)), d)


def exact_exp(d):
    return T.exp(d)


class Softmax:
    """``softmax(x, axis=-1)``: row max, exponentials and their sum, scale by 1 / sum."""

    name = "softmax"

    def match(self, func: tirx.PrimFunc) -> dict:
        sch = s_tir.Schedule(func)
        blocks = _blocks(sch)
        names = [b["name"] for b in blocks]
        if not names or names[-1] != "T_softmax_norm":
            raise NotMine("not a softmax")
        exp = [EXP_BLOCKS[n] for n in names if n in EXP_BLOCKS]
        if len(blocks) != 5 or [n for n in names if n not in EXP_BLOCKS] != list(SOFTMAX_BLOCKS):
            raise Decline(f"softmax fused with other blocks: {names}")
        _float32_params(func)
        norm = sch.get(blocks[-1]["block"])
        extents = blocks[-1]["extents"]
        axis = int(norm.annotations["axis"]) if "axis" in norm.annotations else -1
        if axis not in (-1, len(extents) - 1):
            raise Decline(f"softmax over axis {axis} of {len(extents)}: only the last axis")
        if len(func.params) != 2 or _param(func, blocks[0]["reads"][0]) != 0:
            raise Decline("not a softmax of one input")
        rows, width = _row_shape(extents)
        return {"shape": extents, "rows": rows, "width": width, "exp": exp[0], "flops": 0}

    def space(self, info: dict, lanes: int) -> list[Knobs]:
        widths = [v for v in _widths(lanes) if v <= info["width"]] or [lanes]
        return [self.default(info, lanes)] + [
            {"vec": v, "exp": e} for v in widths for e in ("cache", "recompute")
        ]

    def default(self, info: dict, lanes: int) -> Knobs:
        return {"vec": lanes, "exp": "cache"}

    def apply(self, func: tirx.PrimFunc, info: dict, knobs: Knobs) -> tirx.PrimFunc:
        if knobs.get("exp") not in ("cache", "recompute"):
            raise Decline(f"softmax exp must be cache or recompute, not {knobs.get('exp')!r}")
        exp_of = fast_exp if info["exp"] == "fast" else exact_exp
        return softmax_func(info["shape"], int(knobs["vec"]), knobs["exp"] == "cache", exp_of)


def softmax_func(shape: list[int], vec: int, cache: bool, exp_of) -> tirx.PrimFunc:
    rows, width = _row_shape(shape)
    main = width // vec * vec
    dims = [T.int64(d) for d in shape]

    @T.prim_func(private=True, s_tir=True)
    def kernel(a: T.Buffer(dims, "float32"), out: T.Buffer(dims, "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):  # noqa: SIM117 - TVMScript wants one block per `with`
            with T.sblock("softmax_rows"):
                T.reads(_full(a))
                T.writes(_full(out))
                x = T.decl_buffer((rows, width), "float32", data=a.data)
                y = T.decl_buffer((rows, width), "float32", data=out.data)
                for i in T.parallel(rows):
                    acc = T.alloc_buffer((vec,), "float32", scope="local")
                    m = T.alloc_buffer((1,), "float32", scope="local")
                    s = T.alloc_buffer((1,), "float32", scope="local")
                    for j in T.vectorized(vec):
                        acc[j] = T.float32(F32_LOWEST)
                    for ko in range(main // vec):
                        for j in T.vectorized(vec):
                            acc[j] = T.max(acc[j], x[i, ko * vec + j])
                    m[0] = T.float32(F32_LOWEST)
                    for j in range(vec):
                        m[0] = T.max(m[0], acc[j])
                    for k in range(main, width):
                        m[0] = T.max(m[0], x[i, k])
                    for j in T.vectorized(vec):
                        acc[j] = T.float32(0)
                    for ko in range(main // vec):
                        for j in T.vectorized(vec):
                            if cache:
                                y[i, ko * vec + j] = exp_of(x[i, ko * vec + j] - m[0])
                                acc[j] = acc[j] + y[i, ko * vec + j]
                            else:
                                acc[j] = acc[j] + exp_of(x[i, ko * vec + j] - m[0])
                    s[0] = T.float32(0)
                    for j in range(vec):
                        s[0] = s[0] + acc[j]
                    for k in range(main, width):
                        if cache:
                            y[i, k] = exp_of(x[i, k] - m[0])
                            s[0] = s[0] + y[i, k]
                        else:
                            s[0] = s[0] + exp_of(x[i, k] - m[0])
                    s[0] = T.float32(1) / s[0]
                    for ko in range(main // vec):
                        for j in T.vectorized(vec):
                            if cache:
                                y[i, ko * vec + j] = y[i, ko * vec + j] * s[0]
                            else:
                                y[i, ko * vec + j] = exp_of(x[i, ko * vec + j] - m[0]) * s[0]
                    for k in range(main, width):
                        if cache:
                            y[i, k] = y[i, k] * s[0]
                        else:
                            y[i, k] = exp_of(x[i, k] - m[0]) * s[0]

    return kernel
