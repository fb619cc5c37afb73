"""I-ViT integer kernels (Li & Gu, ICCV 2023): a numpy reference, int64 at run time.

Written from the specification in docs ivit.md (sections 1.2 and 2). Floats appear only in the
offline derivation of integer constants (``dyadic``, ``shift_exp_x0``, ``layernorm_bias``); every
kernel takes integer arrays and returns integers plus the real scale of its output.

Default semantics are bit-exact with the official PyTorch simulation evaluated in float64
(``tests/quant/test_intops.py`` re-implements it): half-even requantization, 16-bit Shiftmax
(n = 15), ShiftGELU with n = 23 and a 31-bit division, I-LayerNorm with a half-even mean and the
fixed Newton start 2^16. The documented alternatives are options:

* ``requantize(..., rounding="up")``: TVM/QNN's UPWARD rounding, ``(z*b + 2^(c-1)) >> c``.
* ``shiftmax(..., out_bits=8)``: the Swin / TVM-graph width (scale 2^-7).
* ``shift_gelu(..., division_bits=62)``: the higher-precision int64 division (max error vs GELU
  0.05 instead of 0.17-0.24).
* ``i_layernorm(..., sqrt_start="bitlen")``: the paper's start ``2^(bitlen(var)//2)``, exact for
  small variances where the fixed start under-normalizes (var < 2^18).

Extensions found necessary for calibrated (not QAT) 8-bit models, off by default:

* ``shift_gelu(..., offset="element")``: no row max; avoids sigma = 0.5 when both exponentials
  hit the 2^-n floor, and makes ShiftGELU a function of the input code alone.
* ``shiftmax(..., shift=, n=)`` (``shiftmax_params``): more bits for ``x0`` on coarse logits.
* ``i_layernorm(..., shift=)``: fractional bits for the mean and sqrt of 8-bit inputs.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MAX = 2**31 - 1
SHIFTMAX_N = 15  # exponent fractional bits, Shiftmax (official PyTorch)
SHIFTGELU_N = 23  # ShiftGELU
GELU_SIGMOID = 1.702  # GELU(x) ~ x * sigmoid(1.702 x)


# ---------------------------------------------------------------- offline constants (float)


def dyadic(ratio, bits: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """``ratio ~ b / 2^c`` with a ``bits``-bit multiplier: frexp, then round half away from 0.

    ``b`` lies in [2^(bits-1), 2^bits] in magnitude (sign of ``ratio``), ``c = bits - e``.
    Ratios so small that ``c > 62`` give ``(0, 1)``: for |z| < 2^31 the exact result rounds to
    0 anyway. Raises for ratios >= 2^(bits-1) (the shift would not be a right shift).
    """
    r = np.asarray(ratio, dtype=np.float64)
    m, e = np.frexp(r)
    b = np.sign(m) * np.floor(np.abs(m) * 2.0**bits + 0.5)
    c = bits - e.astype(np.int64)
    if np.any((c < 1) & (b != 0)):
        raise ValueError(f"requantization ratio too large for a right shift: {r.max()}")
    tiny = (c > 62) | (b == 0)
    b = np.where(tiny, 0, b).astype(np.int64)
    c = np.where(tiny, 1, c).astype(np.int64)
    return b, c


def requant_params(s_in, s_out: float) -> tuple[np.ndarray, np.ndarray]:
    """(b, c) for rescaling from ``s_in`` (scalar or per channel) to ``s_out``, as the official
    QuantAct does it: ``s_out`` is rounded to float32 first, ``s_in`` stays float64."""
    ratio = np.asarray(s_in, dtype=np.float64) / np.float64(np.float32(s_out))
    return dyadic(ratio)


def shift_exp_x0(scale: float) -> int:
    """``x0 = floor(-1 / scale)``: minus the integer that represents 1.0 in exponent units."""
    x0 = math.floor(-1.0 / float(scale))
    if x0 >= 0 or x0 < -(2**20):
        raise ValueError(f"scale {scale} out of range for shift-exp")
    return x0


def layernorm_bias(gamma, beta, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """I-LayerNorm's integer bias ``B[c] = floor((beta/gamma) / unit)`` and per-channel output
    scale ``unit * gamma``, ``unit = sqrt(C) / 2^30`` with sqrt(C) rounded to float32 as in the
    official code (its ``dim_sqrt`` is a float32 tensor)."""
    gamma = np.asarray(gamma, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if np.any(gamma == 0):
        raise ValueError("I-LayerNorm needs a nonzero gamma in every channel")
    unit = float(np.sqrt(np.float32(channels))) / 2**30
    return np.floor((beta / gamma) / unit).astype(np.int64), unit * gamma


# ---------------------------------------------------------------- run-time kernels (int64)


def _i64(x) -> np.ndarray:
    return np.asarray(x).astype(np.int64)


def round_shift(t: np.ndarray, c, rounding: str = "even") -> np.ndarray:
    """``round(t / 2^c)`` for int64 ``t`` and shifts ``c >= 1``: half to even or half up."""
    c = _i64(c)
    half = np.left_shift(np.int64(1), c - 1)
    up = np.right_shift(t + half, c)
    if rounding == "up":
        return up
    if rounding != "even":
        raise ValueError(f"rounding must be 'even' or 'up', not {rounding!r}")
    tie = (t & (np.left_shift(np.int64(1), c) - 1)) == half
    return up - (tie & ((up & 1) == 1))


def requantize(acc, b, c, bits: int, rounding: str = "even") -> np.ndarray:
    """Dyadic requantization ``clip(round(acc * b / 2^c), -2^(bits-1), 2^(bits-1) - 1)``.

    ``b``, ``c`` broadcast along the last axis (per channel) or are scalars; |acc| < 2^31.
    """
    out = round_shift(_i64(acc) * _i64(b), c, rounding)
    return np.clip(out, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def residual_add(a, b_a, c_a, x, b_x, c_x, bits: int = 16, rounding: str = "even") -> np.ndarray:
    """Residual add: each branch requantized to the output scale with its own (b, c), summed,
    then clipped (the official QuantAct with an identity input)."""
    s = round_shift(_i64(a) * _i64(b_a), c_a, rounding) + round_shift(
        _i64(x) * _i64(b_x), c_x, rounding
    )
    return np.clip(s, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def shift_exp(x, x0: int, n: int) -> np.ndarray:
    """``~ 2^n * exp(S x) / S`` for integer ``x <= 0`` (scale of the result: ``S / 2^n``).

    ``log2 e ~ 1.0111b`` by shifts, exponent floored at ``n * x0``, ``2^f ~ 1 + f/2`` on (-1, 0].
    Positive ``x`` (ShiftGELU's ``-max``) is allowed: the shift then exceeds ``n``.
    """
    x = _i64(x)
    p = x + (x >> 1) - (x >> 4)
    p = np.maximum(p, n * x0)
    q = p // x0  # x0 < 0: floor division, q <= n
    r = p - q * x0  # in (x0, 0]
    return ((r - 2 * x0) << (n - q)) >> 1  # floor((r/2 - x0) * 2^(n-q)), always > 0


def shiftmax_params(scale: float) -> tuple[int, int]:
    """(shift, n) for ``shiftmax`` on coarse logits: ``|x0|`` about 2^6..2^7 after the shift,
    ``n`` such that ``|x0| * 2^n <= 2^19`` (the official S = 0.05, n = 15 gives 2^19.3)."""
    shift = max(0, math.ceil(math.log2(64 * scale)))
    x0 = shift_exp_x0(scale / 2**shift)
    return shift, max(8, min(SHIFTMAX_N, 19 - math.ceil(math.log2(-x0))))


def exp_cap(x0: int, n: int, top: int) -> int:
    """Offline: the smallest ``t >= 0`` with ``shift_exp(t) >= top``.

    ShiftGELU clamps ``-max`` to it before ``shift_exp``: the sum is clamped to ``top`` anyway,
    so results are unchanged, and the left shift can no longer overflow int64 (the official
    float code computes ``2^(n-q)`` for any q). ``shift_exp`` is non-decreasing in ``t``.
    """

    def e(t: int) -> int:
        p = max(t + (t >> 1) - (t >> 4), n * x0)
        q = p // x0
        return ((p - q * x0 - 2 * x0) << (n - q)) >> 1

    lo, hi = 0, 1
    while e(hi) < top:
        lo, hi = hi, 2 * hi
    while lo < hi:  # e(hi) >= top
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if e(mid) < top else (lo, mid)
    return hi


def shiftmax(
    x, scale: float, out_bits: int = 16, axis: int = -1, n: int = SHIFTMAX_N, shift: int = 0
):
    """Integer softmax of ``x * scale`` along ``axis``; returns (out, 2^-(out_bits-1)).

    ``shift`` > 0 (an extension, 0 = official) runs on ``x << shift`` with scale
    ``scale / 2^shift``: ``x0 = floor(-1/S)`` then has more bits, which matters for coarse
    logits (S >= 0.1: |x0| <= 10, a 5 % exponent error). Pair it with a smaller ``n`` so that
    ``|x0| * 2^n`` (the largest exponential) stays near 2^19 and ``f`` keeps its precision.
    """
    x = np.moveaxis(_i64(x), axis, -1) << shift
    scale = scale / 2**shift
    x0 = shift_exp_x0(scale)
    e = shift_exp(x - x.max(axis=-1, keepdims=True), x0, n)
    s = np.minimum(e.sum(axis=-1, keepdims=True), INT32_MAX)
    f = INT32_MAX // s
    out = (f * e) >> (31 - (out_bits - 1))
    return np.moveaxis(out, -1, axis), 2.0 ** -(out_bits - 1)


def shift_gelu(
    x,
    scale: float,
    out_bits: int = 8,
    n: int = SHIFTGELU_N,
    division_bits: int = 31,
    offset: str = "row_max",
):
    """Integer GELU ``x * sigmoid(1.702 x)`` over the last axis; returns (y, scale * 2^-(k-1)).

    The sigmoid uses the row max ``m``: ``e^(z-m) / (e^(z-m) + e^(-m))``; 1.702 is folded into
    ``x0``. ``division_bits`` = 31 is the official precision; 62 divides in full int64.

    ``offset="row_max"`` is the official form. When ``1.702 S (max - x)`` and ``1.702 S max``
    both exceed ``n ln 2`` (e.g. S = 0.08 with a row spanning the int8 range) both exponentials
    hit the 2^-n floor and sigma = 0.5 instead of ~0: a large error for very negative x.
    ``offset="element"`` uses ``m = max(x, 0)`` per element (``e^min(z,0) / (e^min(z,0) +
    e^-max(z,0))``): one term is always e^0, no row reduction, no positive exponent.
    """
    x = _i64(x)
    x0 = shift_exp_x0(scale * GELU_SIGMOID)
    top = 2**division_bits - 1
    if offset == "row_max":
        m = x.max(axis=-1, keepdims=True)
        e = shift_exp(x - m, x0, n)
        e_m = shift_exp(np.minimum(-m, exp_cap(x0, n, min(top, 2**60))), x0, n)
    elif offset == "element":
        e = shift_exp(np.minimum(x, 0), x0, n)
        e_m = shift_exp(-np.maximum(x, 0), x0, n)
    else:
        raise ValueError(f"offset must be 'row_max' or 'element', not {offset!r}")
    s = np.minimum(e + e_m, top)
    f = top // s
    sig = (f * e) >> (division_bits - (out_bits - 1))
    return x * sig, scale * 2.0 ** -(out_bits - 1)


def isqrt_newton(v, start: str = "fixed", iterations: int = 10) -> np.ndarray:
    """I-LayerNorm's integer Newton iteration ``k = (k + v // k) >> 1`` for ``floor(sqrt(v))``.

    ``start="fixed"``: k0 = 2^16 (official; exact only for 2^18 <= v <~ 7e13);
    ``"bitlen"``: k0 = 2^(bitlen(v) // 2) (paper), with ``k >= 1`` kept so v = 0 stays finite.
    """
    v = _i64(v)
    if start == "fixed":
        k = np.full_like(v, 2**16)
    elif start == "bitlen":
        bitlen = np.zeros_like(v)
        w = v.copy()
        for step in (32, 16, 8, 4, 2, 1):  # integer bit length by binary search
            big = w >= (np.int64(1) << step)
            bitlen += np.where(big, step, 0)
            w = np.where(big, w >> step, w)
        bitlen += w  # w is 0 or 1 now
        k = np.int64(1) << (bitlen // 2)
    else:
        raise ValueError(f"sqrt start must be 'fixed' or 'bitlen', not {start!r}")
    for _ in range(iterations):
        k = np.maximum((k + v // k) >> 1, 1)
    return k


def round_div(total, count: int) -> np.ndarray:
    """``round_half_even(total / count)`` for int64 ``total`` and a positive ``count``."""
    q, r = np.divmod(_i64(total), count)  # floor division, 0 <= r < count
    twice = 2 * r
    return q + ((twice > count) | ((twice == count) & ((q & 1) == 1)))


def i_layernorm(x, gamma, beta, sqrt_start: str = "fixed", shift: int = 0):
    """Integer LayerNorm over the last axis; the input scale cancels.

    Returns (out, per-channel scale ``sqrt(C)/2^30 * gamma``). ``out = floor(y * f / 2) + B``
    with ``y = x - round(mean)``, ``f = (2^31 - 1) // isqrt(sum y^2)``.

    ``shift`` > 0 (an extension, 0 = official) normalizes ``x << shift`` instead: the rounded
    mean and the integer square root then carry ``shift`` fractional bits, which matters for
    8-bit inputs whose rows span few codes. Keep ``|x| << shift`` below 2^24 (var < 2^62).
    """
    x = _i64(x) << shift
    channels = x.shape[-1]
    bias, out_scale = layernorm_bias(gamma, beta, channels)
    y = x - round_div(x.sum(axis=-1, keepdims=True), channels)
    var = (y * y).sum(axis=-1, keepdims=True)
    f = INT32_MAX // isqrt_newton(var, sqrt_start)
    return ((y * f) >> 1) + bias, out_scale


def quantize_codes(v, s_in, s_out: float, zero_point: int, dtype: str) -> np.ndarray:
    """Integers ``v`` with scale ``s_in`` (scalar or per channel) as quantized codes of
    (``s_out``, ``zero_point``, ``dtype``): ``clip(round_half_even(v * b / 2^c) + zp)``."""
    b, c = dyadic(np.asarray(s_in, dtype=np.float64) / np.float64(s_out))
    info = np.iinfo(dtype)
    out = round_shift(_i64(v) * b, c) + int(zero_point)
    return np.clip(out, info.min, info.max).astype(dtype)
