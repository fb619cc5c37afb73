"""TVM kernels for the I-ViT integer ops, bit-exact with ``edgec.quant.intops``.

Each kernel is one hand-scheduled PrimFunc over a 2-D ``[rows, width]`` view: rows in parallel,
per-row scalars (max, sum, mean, sqrt, reciprocal) in registers, the element loops plain and
branch-free so that LLVM vectorizes them. Constants (x0, n, shifts, multipliers) are baked in as
literals; per-channel vectors (LayerNorm bias, per-channel requant) are constant buffers.
``Template`` makes them a schedule template: the variants of a kernel (``exp`` for Shiftmax,
``var`` for I-LayerNorm), regenerated from their knobs, are candidates of the search.

An optional output requantization (``Requant``) turns a kernel into a whole QDQ island: integer
codes in, ``clip(round_half_even(v * b / 2^c) + zero_point)`` codes out. Kernels carry the
function attributes ``edgec.ivit`` (their name) and ``edgec.ivit_key`` (the generator of their
variants).
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
from tvm import relax, tirx
from tvm.script import tirx as T

from edgec.quant import intops

INT32_MAX = intops.INT32_MAX


@dataclasses.dataclass(frozen=True)
class Requant:
    """Output requantization: ``clip(round(v * b / 2^c) + zero_point, lo, hi)`` as ``dtype``.

    ``b``/``c`` are ints (per tensor) or 1-D arrays along the last axis (per channel)."""

    b: int | np.ndarray
    c: int | np.ndarray
    zero_point: int
    dtype: str  # "int8", "uint8", "int16", "int32"

    @property
    def bounds(self) -> tuple[int, int]:
        info = np.iinfo(self.dtype)
        return int(info.min), int(info.max)

    @property
    def per_channel(self) -> bool:
        return np.ndim(self.b) > 0

    @classmethod
    def to_scale(cls, s_in, s_out: float, zero_point: int, dtype: str) -> Requant:
        """Rescale from ``s_in`` (scalar or per channel) to ``s_out`` with dyadic constants."""
        b, c = intops.dyadic(np.asarray(s_in, dtype=np.float64) / np.float64(s_out))
        if np.ndim(b) == 0:
            return cls(int(b), int(c), int(zero_point), dtype)
        return cls(b.astype(np.int64), c.astype(np.int64), int(zero_point), dtype)


def _round_shift(t, c):
    """round_half_even(t / 2^c) for int64 t and int64 c >= 1 (TIR expression)."""
    one = T.int64(1)
    half = T.shift_left(one, c - one)
    up = T.shift_right(t + half, c)
    tie = T.bitwise_and(t, T.shift_left(one, c) - one) == half
    return up - T.Select(tirx.And(tie, T.bitwise_and(up, one) == one), one, T.int64(0))


def _requant_expr(v, rq: Requant, b=None, c=None):
    lo, hi = rq.bounds
    b = T.int64(int(rq.b)) if b is None else b
    c = T.int64(int(rq.c)) if c is None else c
    r = _round_shift(T.Cast("int64", v) * b, c) + T.int64(rq.zero_point)
    return T.Cast(rq.dtype, T.max(T.min(r, T.int64(hi)), T.int64(lo)))


def _finish(func: tirx.PrimFunc, name: str) -> tirx.PrimFunc:
    # op_pattern 8 = kOpaque: never fused, and Relax skips its pattern analysis (no blocks)
    func = func.with_attr("op_pattern", 8)
    return func.with_attr("global_symbol", name).with_attr("edgec.ivit", name)


def shiftmax_func(
    rows: int,
    width: int,
    in_dtype: str,
    scale: float,
    out_bits: int = 16,
    n: int = intops.SHIFTMAX_N,
    requant: Requant | None = None,
    shift: int = 0,
    exp: str = "cache",
) -> tirx.PrimFunc:
    """Shiftmax over the last axis (int32 inside; the row sum in int64, clamped to 2^31 - 1).

    Output: the ``out_bits`` codes as int32, or ``requant``'s codes. ``exp`` (a schedule knob):
    ``cache`` keeps the row's exponentials in a local buffer between the sum and the
    normalization, ``recompute`` computes them twice (less memory traffic for long rows)."""
    if exp not in ("cache", "recompute"):
        raise ValueError(f"Shiftmax exp must be 'cache' or 'recompute', not {exp!r}")
    cache = exp == "cache"
    x0 = intops.shift_exp_x0(scale / 2**shift)
    if -x0 * 2 ** (n + 1) > INT32_MAX:
        raise ValueError(f"Shiftmax: |x0| * 2^(n+1) exceeds int32 (scale {scale}, n {n})")
    if 2 * (2 ** (8 * np.dtype(in_dtype).itemsize) << shift) > INT32_MAX:
        raise ValueError(f"Shiftmax: {in_dtype} inputs shifted by {shift} exceed int32")
    floor_ = n * x0
    out_shift = 31 - (out_bits - 1)
    out_dtype = requant.dtype if requant else "int32"
    I32 = "int32"

    def shift_exp(d):
        """ShiftExp of int32 ``d <= 0`` (a TIR expression)."""
        p = T.max(d + T.shift_right(d, 1) - T.shift_right(d, 4), floor_)
        q = T.truncdiv(0 - p, -x0)  # p <= 0: floor(p / x0) = trunc(-p / -x0)
        return T.shift_right(T.shift_left(p - q * x0 - 2 * x0, n - q), 1)

    def cached(stored, recomputed):  # which exponential the normalization reads (parse time)
        return stored if cache else recomputed

    @T.prim_func(s_tir=True)
    def kernel(x: T.Buffer((rows, width), in_dtype), out: T.Buffer((rows, width), out_dtype)):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):  # noqa: SIM117 - TVMScript wants one block per `with`
            with T.sblock("ivit"):
                T.reads(x[0:rows, 0:width])
                T.writes(out[0:rows, 0:width])
                for i in T.parallel(rows):
                    m = T.alloc_buffer((1,), I32)
                    s = T.alloc_buffer((1,), "int64")
                    ex = T.alloc_buffer((width,), I32)  # the row's exponentials
                    m[0] = T.Cast(I32, x[i, 0])
                    for j in range(width):
                        m[0] = T.max(m[0], T.Cast(I32, x[i, j]))
                    s[0] = T.int64(0)
                    for j in range(width):
                        e = shift_exp(T.shift_left(T.Cast(I32, x[i, j]) - m[0], shift))
                        if cache:
                            ex[j] = e
                        else:
                            s[0] = s[0] + T.Cast("int64", e)
                    if cache:
                        for j in range(width):
                            s[0] = s[0] + T.Cast("int64", ex[j])
                    f = T.Cast(I32, T.floordiv(T.int64(INT32_MAX), T.min(s[0], T.int64(INT32_MAX))))
                    for j in range(width):
                        e = cached(
                            ex[j], shift_exp(T.shift_left(T.Cast(I32, x[i, j]) - m[0], shift))
                        )
                        v = T.shift_right(f * e, out_shift)
                        if requant is None:
                            out[i, j] = v
                        else:
                            out[i, j] = _requant_expr(v, requant)

    return _finish(kernel, "ivit_shiftmax")


def shift_gelu_func(
    rows: int,
    width: int,
    in_dtype: str,
    scale: float,
    zero_point: int = 0,
    out_bits: int = 8,
    n: int = intops.SHIFTGELU_N,
    division_bits: int = 31,
    offset: str = "row_max",
    requant: Requant | None = None,
) -> tirx.PrimFunc:
    """ShiftGELU over the last axis in int64 on ``x - zero_point``; output ``x * sigma`` as int32
    (scale ``scale * 2^-(out_bits-1)``) or ``requant``'s codes."""
    x0 = intops.shift_exp_x0(scale * intops.GELU_SIGMOID)
    top = 2**division_bits - 1
    cap = intops.exp_cap(x0, n, min(top, 2**60))
    floor_ = n * x0
    shift = division_bits - (out_bits - 1)
    out_dtype = requant.dtype if requant else "int32"
    row_max = {"row_max": True, "element": False}[offset]
    I64 = "int64"

    @T.prim_func(s_tir=True)
    def kernel(x: T.Buffer((rows, width), in_dtype), out: T.Buffer((rows, width), out_dtype)):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):  # noqa: SIM117 - TVMScript wants one block per `with`
            with T.sblock("ivit"):
                T.reads(x[0:rows, 0:width])
                T.writes(out[0:rows, 0:width])
                for i in T.parallel(rows):
                    m = T.alloc_buffer((1,), I64)
                    m[0] = T.int64(0)
                    if row_max:
                        m[0] = T.Cast(I64, x[i, 0])
                        for j in range(width):
                            m[0] = T.max(m[0], T.Cast(I64, x[i, j]))
                    for j in range(width):
                        xv = T.Cast(I64, x[i, j]) - T.int64(zero_point)
                        mm = T.Select(
                            T.bool(row_max), m[0] - T.int64(zero_point), T.max(xv, T.int64(0))
                        )
                        d = xv - mm
                        p = T.max(
                            d + T.shift_right(d, T.int64(1)) - T.shift_right(d, T.int64(4)), floor_
                        )
                        q = T.truncdiv(T.int64(0) - p, T.int64(-x0))
                        e = T.shift_right(T.shift_left(p - q * x0 - 2 * x0, n - q), T.int64(1))
                        dm = T.min(T.int64(0) - mm, T.int64(cap))
                        pm = T.max(
                            dm + T.shift_right(dm, T.int64(1)) - T.shift_right(dm, T.int64(4)),
                            floor_,
                        )
                        qm = T.floordiv(pm, T.int64(x0))
                        em = T.shift_right(T.shift_left(pm - qm * x0 - 2 * x0, n - qm), T.int64(1))
                        f = T.floordiv(T.int64(top), T.min(e + em, T.int64(top)))
                        y = xv * T.shift_right(f * e, T.int64(shift))
                        if requant is None:
                            out[i, j] = T.Cast("int32", y)
                        else:
                            out[i, j] = _requant_expr(y, requant)

    return _finish(kernel, "ivit_shift_gelu")


def layernorm_func(
    rows: int,
    channels: int,
    in_dtype: str,
    bias: np.ndarray,
    sqrt_start: str = "fixed",
    requant: Requant | None = None,
    shift: int = 0,
    var: str = "two_pass",
) -> tirx.PrimFunc:
    """I-LayerNorm over the last axis in int64: ``floor(y * f / 2) + B[c]`` (int64), or
    ``requant``'s codes (per channel: the output scale is per channel).

    ``var`` (a schedule knob): ``two_pass`` sums ``(x - mean)^2`` after the mean; ``one_pass``
    sums ``x`` and ``x^2`` together and takes ``sum x^2 - 2 mean sum x + C mean^2``: the same
    integer (an identity), valid while ``C * x^2`` fits int64 (``one_pass_fits``)."""
    if sqrt_start not in ("fixed", "bitlen"):
        raise ValueError(f"sqrt start must be 'fixed' or 'bitlen', not {sqrt_start!r}")
    if var not in ("two_pass", "one_pass"):
        raise ValueError(f"I-LayerNorm var must be 'two_pass' or 'one_pass', not {var!r}")
    if var == "one_pass" and not one_pass_fits(channels, in_dtype, shift):
        raise ValueError(f"one-pass variance overflows int64 ({channels} x {in_dtype} << {shift})")
    one_pass = var == "one_pass"
    bitlen = sqrt_start == "bitlen"
    out_dtype = requant.dtype if requant else "int64"
    rq = requant or Requant(0, 1, 0, "int64")
    I64 = "int64"

    @T.prim_func(s_tir=True)
    def kernel(
        x: T.Buffer((rows, channels), in_dtype),
        bias_int: T.Buffer((channels,), I64),
        rq_b: T.Buffer((channels,), I64),
        rq_c: T.Buffer((channels,), I64),
        out: T.Buffer((rows, channels), out_dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):  # noqa: SIM117 - TVMScript wants one block per `with`
            with T.sblock("ivit"):
                T.reads(
                    x[0:rows, 0:channels], bias_int[0:channels], rq_b[0:channels], rq_c[0:channels]
                )
                T.writes(out[0:rows, 0:channels])
                for i in T.parallel(rows):
                    acc = T.alloc_buffer((1,), I64)
                    sq = T.alloc_buffer((1,), I64)
                    var = T.alloc_buffer((1,), I64)
                    k = T.alloc_buffer((1,), I64)
                    w = T.alloc_buffer((1,), I64)
                    acc[0] = T.int64(0)
                    sq[0] = T.int64(0)
                    for j in range(channels):
                        xs = T.shift_left(T.Cast(I64, x[i, j]), T.int64(shift))
                        acc[0] = acc[0] + xs
                        if one_pass:
                            sq[0] = sq[0] + xs * xs
                    qm = T.floordiv(acc[0], T.int64(channels))
                    twice = 2 * (acc[0] - qm * channels)
                    mean = qm + T.Select(
                        twice > channels
                        or (twice == channels and T.bitwise_and(qm, T.int64(1)) == 1),
                        T.int64(1),
                        T.int64(0),
                    )
                    if one_pass:
                        var[0] = sq[0] - 2 * mean * acc[0] + T.int64(channels) * mean * mean
                    else:
                        var[0] = T.int64(0)
                        for j in range(channels):
                            y = T.shift_left(T.Cast(I64, x[i, j]), T.int64(shift)) - mean
                            var[0] = var[0] + y * y
                    if bitlen:
                        w[0] = var[0]
                        k[0] = T.int64(0)  # bit length by binary search
                        for t in T.unroll(6):
                            step = T.shift_left(T.int64(1), T.int64(5 - t))
                            if w[0] >= T.shift_left(T.int64(1), step):
                                k[0] = k[0] + step
                                w[0] = T.shift_right(w[0], step)
                        k[0] = T.shift_left(T.int64(1), T.floordiv(k[0] + w[0], T.int64(2)))
                    else:
                        k[0] = T.int64(65536)
                    for _t in T.unroll(10):
                        k[0] = T.max(
                            T.shift_right(k[0] + T.floordiv(var[0], k[0]), T.int64(1)), T.int64(1)
                        )
                    f = T.floordiv(T.int64(INT32_MAX), k[0])
                    for j in range(channels):
                        v = (
                            T.shift_right(
                                (T.shift_left(T.Cast(I64, x[i, j]), T.int64(shift)) - mean) * f,
                                T.int64(1),
                            )
                            + bias_int[j]
                        )
                        if requant is None:
                            out[i, j] = v
                        else:
                            out[i, j] = _requant_expr(v, rq, rq_b[j], rq_c[j])

    return _finish(kernel, "ivit_layernorm").with_attr("edgec.ivit_shift", shift)


def one_pass_fits(channels: int, in_dtype: str, shift: int) -> bool:
    """``channels * (x << shift)^2`` (and ``2 mean sum x``) within int64 for every input."""
    bits = np.dtype(in_dtype).itemsize * 8 + shift
    return 2 * bits + int(np.ceil(np.log2(max(channels, 2)))) + 1 <= 62


def layernorm_constants(channels: int, bias: np.ndarray, requant: Requant | None):
    """The constant arguments of ``layernorm_func``: B[c] and per-channel (b, c)."""
    rq = requant or Requant(0, 1, 0, "int64")
    b = np.broadcast_to(np.asarray(rq.b, np.int64), (channels,))
    c = np.broadcast_to(np.asarray(rq.c, np.int64), (channels,))
    return [np.asarray(bias, np.int64), np.ascontiguousarray(b), np.ascontiguousarray(c)]


# ---------------------------------------------------------------- Relax glue


def _rows(shape) -> tuple[int, int]:
    shape = [int(s) for s in shape]
    return int(np.prod(shape[:-1])), shape[-1]


def emit(bb: relax.BlockBuilder, kind: str, x: relax.Expr, **params) -> relax.Expr:
    """Emit an I-ViT kernel on ``x`` (any rank; the last axis is the row) into ``bb``.

    ``kind``: "shiftmax" | "shift_gelu" | "layernorm"; ``params`` are the keyword arguments of
    the matching ``*_func`` (``layernorm`` takes ``gamma``/``beta`` instead of ``bias``).
    Returns the output expression, shaped like ``x``.
    """
    ty = x.ty if hasattr(x, "ty") else x.struct_info
    shape = [int(s) for s in ty.shape]
    rows, width = _rows(shape)
    in_dtype = str(ty.dtype)
    flat = bb.emit(relax.op.reshape(x, (rows, width)))
    consts: list[relax.Expr] = []
    if kind == "shiftmax":

        def make(knobs):
            return shiftmax_func(rows, width, in_dtype, **params, **knobs)
    elif kind == "shift_gelu":

        def make(knobs):
            return shift_gelu_func(rows, width, in_dtype, **params, **knobs)
    elif kind == "layernorm":
        params = dict(params)
        bias, _ = intops.layernorm_bias(params.pop("gamma"), params.pop("beta"), width)

        def make(knobs):
            return layernorm_func(rows, width, in_dtype, bias, **params, **knobs)

        consts = [
            relax.const(a, "int64") for a in layernorm_constants(width, bias, params.get("requant"))
        ]
    else:
        raise ValueError(f"unknown I-ViT kernel {kind!r}")
    func = _keyed(make)
    out_dtype = _out_dtype(kind, params)
    gv = bb.add_func(func.without_attr("global_symbol"), f"ivit_{kind}")
    call = relax.call_tir(gv, [flat, *consts], relax.TensorType((rows, width), out_dtype))
    out = bb.emit(call)
    return bb.emit(relax.op.reshape(out, shape))


# ---------------------------------------------------------------- the schedule template

# kernel key (structural hash of its default form) -> knobs -> the kernel with those knobs
_MAKERS: dict[str, object] = {}


def _keyed(make) -> tirx.PrimFunc:
    import tvm_ffi

    func = make({})
    key = f"{tvm_ffi.structural_hash(func) & (2**64 - 1):016x}"
    _MAKERS[key] = make
    return func.with_attr("edgec.ivit_key", key)


def _space(kind: str, func: tirx.PrimFunc) -> list[dict]:
    if kind == "ivit_shiftmax":
        return [{"exp": "cache"}, {"exp": "recompute"}]
    if kind == "ivit_layernorm":
        x = func.params[0].ty
        rows_channels = [int(d) for d in x.shape]
        space = [{"var": "two_pass"}]
        shift = int(func.attrs["edgec.ivit_shift"])
        if one_pass_fits(rows_channels[1], str(x.dtype), shift):
            space.append({"var": "one_pass"})
        return space
    return [{}]


class Template:
    """The I-ViT kernels as a schedule template: each is generated again with its knobs
    (Shiftmax: exponentials cached or recomputed; I-LayerNorm: one- or two-pass variance;
    ShiftGELU: none), every variant bit-exact, so the latency-measured search times them like
    any kernel. Kernels not made by ``emit`` (no key) stay as they are."""

    name = "ivit"

    def match(self, func: tirx.PrimFunc) -> dict:
        from edgec.lower import schedules

        if func.attrs is None or "edgec.ivit" not in func.attrs:
            raise schedules.NotMine("not an I-ViT kernel")
        key = str(func.attrs["edgec.ivit_key"]) if "edgec.ivit_key" in func.attrs else ""
        kind = str(func.attrs["edgec.ivit"])
        return {"key": key, "kind": kind, "flops": 0, "space": _space(kind, func)}

    def space(self, info: dict, lanes: int) -> list[dict]:
        return info["space"] if info["key"] in _MAKERS else [{}]

    def default(self, info: dict, lanes: int) -> dict:
        return self.space(info, lanes)[0]

    def apply(self, func: tirx.PrimFunc, info: dict, knobs: dict) -> tirx.PrimFunc:
        if not knobs or info["key"] not in _MAKERS:
            return func
        new = _MAKERS[info["key"]](knobs).without_attr("global_symbol")
        return new.with_attr("edgec.ivit_key", info["key"])


TEMPLATE = Template()


def _out_dtype(kind: str, params: dict) -> str:
    rq = params.get("requant")
    if rq is not None:
        return rq.dtype
    return "int64" if kind == "layernorm" else "int32"


# ---------------------------------------------------------------- ai.edgec ONNX nodes -> Relax


def _numpy_const(expr) -> np.ndarray:
    for get in (lambda e: e.data, lambda e: e.value):
        try:
            return get(expr).numpy()
        except AttributeError:
            continue
    raise ValueError(f"expected a constant input, got {type(expr).__name__}")


def _relax_round_shift(bb: relax.BlockBuilder, t: relax.Expr, c) -> relax.Expr:
    """round_half_even(t / 2^c) on int64 tensors (c: int or per-channel array)."""
    c = np.asarray(c, np.int64)
    half = relax.const(np.left_shift(np.int64(1), c - 1), "int64")
    mask = relax.const(np.left_shift(np.int64(1), c) - 1, "int64")
    one = relax.const(1, "int64")
    up = bb.emit(relax.op.right_shift(relax.op.add(t, half), relax.const(c, "int64")))
    tie = relax.op.equal(relax.op.bitwise_and(t, mask), half)
    odd = relax.op.equal(relax.op.bitwise_and(up, one), one)
    return bb.emit(relax.op.subtract(up, relax.op.astype(relax.op.logical_and(tie, odd), "int64")))


def _relax_codes(bb, v: relax.Expr, s_in, a: dict) -> relax.Expr:
    """int64 ``v`` with scale ``s_in`` -> codes of (out_scale, out_zero_point, out_dtype)."""
    rq = Requant.to_scale(s_in, a["out_scale"], a["out_zero_point"], a["out_dtype"])
    t = relax.op.multiply(v, relax.const(np.asarray(rq.b, np.int64), "int64"))
    r = relax.op.add(_relax_round_shift(bb, bb.emit(t), rq.c), relax.const(rq.zero_point, "int64"))
    lo, hi = rq.bounds
    return bb.emit(relax.op.astype(relax.op.clip(r, lo, hi), rq.dtype))


def _centered(x: relax.Expr, zero_point: int) -> relax.Expr:
    return relax.op.subtract(relax.op.astype(x, "int64"), relax.const(zero_point, "int64"))


def convert_node(bb: relax.BlockBuilder, op: str, inputs: list, attrs: dict) -> relax.Expr:
    """Relax for one ``ai.edgec`` node (semantics: ``edgec.quant.ivit.run_node``)."""
    from edgec.quant import ivit as qivit

    a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    x = inputs[0]
    if op == "Shiftmax":
        rq = Requant.to_scale(
            2.0 ** -(a["out_bits"] - 1), a["out_scale"], a["out_zero_point"], a["out_dtype"]
        )
        return emit(
            bb, "shiftmax", x, scale=a["scale"], out_bits=a["out_bits"], requant=rq,
            n=a.get("n", intops.SHIFTMAX_N), shift=a.get("shift", 0),
        )  # fmt: skip
    if op == "ShiftGELU":
        if a["offset"] == "element":  # a function of the code alone: a table, exact
            table, first = qivit.gelu_table(a)
            idx = relax.op.subtract(relax.op.astype(x, "int32"), relax.const(first, "int32"))
            return bb.emit(relax.op.take(relax.const(table, a["out_dtype"]), idx, axis=0))
        rq = Requant.to_scale(
            a["scale"] * a["factor"] / 128, a["out_scale"], a["out_zero_point"], a["out_dtype"]
        )
        return emit(
            bb, "shift_gelu", x, scale=a["scale"], zero_point=a["zero_point"],
            division_bits=a["division_bits"], offset=a["offset"], requant=rq,
        )  # fmt: skip
    if op == "ILayerNorm":
        gamma, beta = _numpy_const(inputs[1]), _numpy_const(inputs[2])
        _, s_c = intops.layernorm_bias(gamma, beta, gamma.shape[-1])
        rq = Requant.to_scale(s_c, a["out_scale"], a["out_zero_point"], a["out_dtype"])
        return emit(
            bb, "layernorm", x, gamma=gamma, beta=beta, sqrt_start=a["sqrt_start"],
            shift=a.get("shift", 0), requant=rq,
        )  # fmt: skip
    if op == "Requantize":
        return _relax_codes(bb, bb.emit(_centered(x, a["zero_point"])), a["scale"], a)
    if op == "QAdd":
        parts = []
        for tag, inp in zip("ab", inputs, strict=True):
            rq = Requant.to_scale(a[f"{tag}_scale"], a["out_scale"], 0, "int64")
            t = bb.emit(relax.op.multiply(_centered(inp, a[f"{tag}_zero_point"]),
                                          relax.const(rq.b, "int64")))  # fmt: skip
            parts.append(_relax_round_shift(bb, t, rq.c))
        v = relax.op.add(
            relax.op.add(parts[0], parts[1]), relax.const(a["out_zero_point"], "int64")
        )
        info = np.iinfo(a["out_dtype"])
        return bb.emit(
            relax.op.astype(relax.op.clip(v, int(info.min), int(info.max)), a["out_dtype"])
        )
    raise ValueError(f"unknown ai.edgec op {op!r}")


class _Converter:
    """What TVM's ONNX importer expects of a converter class."""

    def __init__(self, op: str):
        self.op = op

    def get_converter(self, _opset: int):
        def convert(bb, inputs, attrs, _params):
            attrs = {k: v for k, v in attrs.items() if k != "tvm_custom"}
            return convert_node(bb, self.op, list(inputs), attrs)

        return convert


@contextlib.contextmanager
def converters():
    """Let TVM's ONNX importer convert the ``ai.edgec`` nodes while the context is active
    (0.27's ``from_onnx`` has no custom-converter argument; its table is patched)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    from edgec.quant.ivit import OPS

    original = onnx_frontend._get_convert_map

    def patched():
        table = dict(original())
        table.update({op: _Converter(op) for op in OPS})
        return table

    onnx_frontend._get_convert_map = patched
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original
