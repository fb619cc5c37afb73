"""I-ViT integer kernels: hand-computed cases, bit-exactness with a float64 re-implementation of
the official PyTorch simulation, error bounds vs the float ops (docs ivit.md 2 and 5), overflow
edges."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from edgec.quant import intops as I

RNG = np.random.default_rng(20261121)


def mantissa8(s: float) -> float:
    """A scale with an 8-bit mantissa: ``fl(fl(I*S)/S) == I``, as the official modules need."""
    m, e = math.frexp(s)
    return math.ldexp(round(m * 256) / 256, e)


# ------------------------------------------------ the official simulation, float64 (ivit.md 5)


def _official_exp(x_int, s, n):
    x_int = x_int + np.floor(x_int / 2) - np.floor(x_int / 2**4)
    x0 = np.floor(-1.0 / s)
    x_int = np.maximum(x_int, n * x0)
    q = np.floor(x_int / x0)
    r = x_int - x0 * q
    e = r / 2 - x0
    return np.clip(np.floor(e * 2.0 ** (n - q)), 0, None)


def official_shiftmax(x, s, out_bit):
    x_int = x / s
    x_int = x_int - x_int.max(-1, keepdims=True)
    e = _official_exp(x_int, s, 15)
    total = np.minimum(e.sum(-1, keepdims=True), 2**31 - 1)
    factor = np.floor((2**31 - 1) / total)
    return np.floor(e * factor / 2 ** (31 - out_bit + 1))


def official_gelu(x, s, out_bit=8):
    pre = x / s
    s_sig = s * 1.702
    m = pre.max(-1, keepdims=True)
    e = _official_exp(pre - m, s_sig, 23)
    e_m = _official_exp(-m, s_sig, 23)
    total = np.minimum(e + e_m, 2**31 - 1)
    factor = np.floor((2**31 - 1) / total)
    sig = np.floor(e * factor / 2 ** (31 - out_bit + 1))
    return pre * sig


def official_layernorm(x, s, gamma, beta):
    dim_sqrt = np.float32(np.sqrt(np.float32(x.shape[-1])))
    x_int = x / s
    y = x_int - np.round(x_int.mean(-1, keepdims=True))
    var = (y**2).sum(-1, keepdims=True)
    k = 2.0**16
    for _ in range(10):
        k = np.floor((k + np.floor(var / k)) / 2)
    factor = np.floor((2**31 - 1) / k)
    y = np.floor(y * factor / 2)
    unit = np.float64(dim_sqrt) / 2**30
    return y + np.floor((beta / gamma) / unit)


def official_requant(acc, s_in, s_out, bits, identity=None, s_id=None):
    ratio = np.float64(s_in) / np.float64(np.float32(s_out))
    m, e = np.frexp(ratio)
    b = np.floor(m * 2.0**31 + 0.5)  # Decimal ROUND_HALF_UP, m > 0
    out = np.round(acc * b / 2.0 ** (31 - e))
    if identity is not None:
        m1, e1 = np.frexp(np.float64(s_id) / np.float64(np.float32(s_out)))
        out = out + np.round(identity * np.floor(m1 * 2.0**31 + 0.5) / 2.0 ** (31 - e1))
    n = 2 ** (bits - 1) - 1
    return np.clip(out, -n - 1, n)


# ------------------------------------------------ hand-computed cases


def test_shift_exp_hand():
    assert I.shift_exp(0, -20, 15) == 20 * 2**15
    # p = -20 - 10 + 2 = -28, q = 1, r = -8, e = ((-8 + 40) << 14) >> 1
    assert I.shift_exp(-20, -20, 15) == 262144
    assert I.shift_exp(-(10**6), -20, 15) == 20 * 2**15 >> 15  # floored at 2^-15


def test_shiftmax_hand():
    out, scale = I.shiftmax(np.array([[0, -20]]), 0.05)
    # e = [655360, 262144], f = (2^31-1) // 917504 = 2340, out = f*e >> 16
    assert out.tolist() == [[23400, 9360]] and scale == 2.0**-15
    out8, scale8 = I.shiftmax(np.array([[0, -20]]), 0.05, out_bits=8)
    assert out8.tolist() == [[23400 >> 8, 9360 >> 8]] and scale8 == 2.0**-7


def test_shift_gelu_hand():
    # x0 = floor(-1 / 0.1702) = -6; e = [6*2^23, 10*2^20], e_m = 10*2^20
    # f = [35, 102], sig = [105, 63]
    y, scale = I.shift_gelu(np.array([[10, 0]]), 0.1)
    assert y.tolist() == [[1050, 0]] and scale == 0.1 / 128
    y, _ = I.shift_gelu(np.array([[-10, 0]]), 0.1)
    assert y.tolist() == [[-10 * ((35 * 10 * 2**20) >> 24), 0]]  # sig(-1.7) from the same e


def test_requantize_hand():
    b, c = np.int64(2**30), np.int64(32)  # ratio 1/4
    acc = np.array([5, 6, 10, -6, -10, 1000])
    assert I.requantize(acc, b, c, 8).tolist() == [1, 2, 2, -2, -2, 127]
    assert I.requantize(acc, b, c, 8, rounding="up").tolist() == [1, 2, 3, -1, -2, 127]
    assert I.requantize([-1000], b, c, 8).tolist() == [-128]


def test_dyadic():
    b, c = I.dyadic(0.3)
    assert (b, c) == (1288490189, 32) and abs(b / 2.0**c - 0.3) < 1e-10
    b, c = I.dyadic([1e-12, -0.7, 0.75])
    assert b.tolist() == [0, -1503238554, 1610612736] and c.tolist() == [1, 31, 31]
    with pytest.raises(ValueError):
        I.dyadic(2.0**31)


def test_isqrt_hand():
    v = np.array([100, 1000, 4096, 10**4, 2**18, 0])
    assert I.isqrt_newton(v).tolist() == [64, 68, 83, 108, 512, 64]  # ivit.md 2.4
    exact = [math.isqrt(int(t)) for t in v]
    got = I.isqrt_newton(v, "bitlen")
    assert all(g - e in (0, 1) for g, e in zip(got.tolist(), exact, strict=True))


def test_layernorm_hand():
    out, scale = I.i_layernorm(np.array([[1, 2, 3, 4]]), np.ones(4), np.zeros(4))
    # mean 2.5 -> 2 (half even), y = [-1, 0, 1, 2], var = 6, k = 64, f = 33554431
    assert out.tolist() == [[-16777216, 0, 16777215, 33554431]]
    assert np.allclose(scale, 2.0**-29)


def test_round_div_half_even():
    totals = np.array([5, 7, -5, -7, 6, 9])
    assert I.round_div(totals, 2).tolist() == [2, 4, -2, -4, 3, 4]


# ------------------------------------------------ bit-exact with the official simulation


@pytest.mark.parametrize("s", [0.021, 0.052, 0.113])
@pytest.mark.parametrize("out_bits", [16, 8])
def test_shiftmax_official(s, out_bits):
    s = mantissa8(s)
    x = RNG.integers(-128, 128, (64, 197))
    x[0] = -128  # constant row
    x[1, 1:] = -128  # one peak
    got, scale = I.shiftmax(x, s, out_bits)
    want = official_shiftmax(x * s, s, out_bits)
    assert np.array_equal(got, want.astype(np.int64)) and scale == 2.0 ** -(out_bits - 1)


@pytest.mark.parametrize("s", [0.027, 0.043, 0.081])
def test_shift_gelu_official(s):
    s = mantissa8(s)
    x = RNG.integers(-128, 128, (64, 768))
    x[0] = RNG.integers(-128, -20, 768)  # all-negative row: -max > 0
    x[1] = -128
    got, scale = I.shift_gelu(x, s)
    assert np.array_equal(got, official_gelu(x * s, s).astype(np.int64)) and scale == s / 128


def test_layernorm_official():
    s = mantissa8(0.013)
    c = 384
    x = RNG.integers(-3000, 3000, (32, c)) + RNG.integers(-5000, 5000, (32, 1))
    x[:, 7] *= 5  # outlier channel
    x[0] = RNG.integers(-4, 5, c)  # var < 2^18: unconverged Newton
    gamma = RNG.uniform(0.2, 2.0, c) * RNG.choice([-1, 1], c)
    beta = RNG.normal(0, 1, c)
    got, scale = I.i_layernorm(x, gamma, beta)
    assert np.array_equal(got, official_layernorm(x * s, s, gamma, beta).astype(np.int64))
    assert np.allclose(scale, float(np.sqrt(np.float32(c))) / 2**30 * gamma)


def test_requant_official():
    s_in, s_out = 0.00731 * RNG.uniform(0.5, 2, 192), 0.0417
    acc = RNG.integers(-(2**21), 2**21, (300, 192))
    b, c = I.requant_params(s_in, s_out)
    want = official_requant(acc, s_in, s_out, 8)
    assert np.array_equal(I.requantize(acc, b, c, 8), want.astype(np.int64))
    # residual: each branch rescaled and rounded on its own, then summed and clipped
    ident = RNG.integers(-(2**15), 2**15, (300, 192))
    s_a, s_x, s_o = 0.00123, 0.000977, 0.00211
    b_a, c_a = I.requant_params(s_a, s_o)
    b_x, c_x = I.requant_params(s_x, s_o)
    got = I.residual_add(ident[::-1], b_a, c_a, ident, b_x, c_x, 16)
    want = official_requant(ident[::-1], s_a, s_o, 16, ident, s_x)
    assert np.array_equal(got, want.astype(np.int64))


# ------------------------------------------------ error bounds vs float (ivit.md 5)


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _gelu(v):
    return 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))


@pytest.mark.parametrize(
    ("s", "bound", "mass"), [(0.02, 1.0e-2, 0.05), (0.05, 2.0e-2, 0.025), (0.1, 2.5e-2, 0.015)]
)
def test_shiftmax_vs_float(s, bound, mass):
    # lost mass: floor of f = (2^31-1) // sum (coarse when many keys are near the max) and of
    # each output (< 197 / 2^15)
    x = np.clip(np.round(RNG.normal(0, 2.0 / s, (24, 197))), -128, 127).astype(np.int64)
    out, scale = I.shiftmax(x, s)
    err = np.abs(out * scale - _softmax(x * s))
    assert err.max() < bound and err.mean() < 3e-4
    assert np.abs((out * scale).sum(-1) - 1).max() < mass


@pytest.mark.parametrize("s", [0.02, 0.05, 0.15, 0.25])
def test_shiftmax_shift_for_coarse_logits(s):
    x = np.clip(np.round(RNG.normal(0, 3 / s, (64, 17))), -128, 127).astype(np.int64)
    ref = _softmax(x * s)
    shift, n = I.shiftmax_params(s)
    assert -I.shift_exp_x0(s / 2**shift) * 2**n <= 2**20
    out, scale = I.shiftmax(x, s, shift=shift, n=n)
    err = np.abs(out * scale - ref).max()
    assert err < 0.02  # official (shift 0, n 15): 0.045 at S = 0.15 (x0 = -7 for 1/S = 6.67)
    if s >= 0.15:
        plain, _ = I.shiftmax(x, s)
        assert np.abs(plain * scale - ref).max() > 2 * err


@pytest.mark.parametrize(("s", "bound", "precise"), [(0.03, 0.25, 0.05), (0.05, 0.25, 0.055)])
def test_shift_gelu_vs_float(s, bound, precise):
    x = RNG.integers(-128, 128, (16, 768))
    want = _gelu(x * s)
    y, scale = I.shift_gelu(x, s)
    assert np.abs(y * scale - want).max() < bound
    y, scale = I.shift_gelu(x, s, division_bits=62)
    assert np.abs(y * scale - want).max() < precise
    y, scale = I.shift_gelu(x, s, division_bits=62, offset="element")
    assert np.abs(y * scale - want).max() < precise


def test_shift_gelu_exponent_floor():
    # S = 0.08, rows spanning int8: both exponentials of the official form hit 2^-23 for the
    # most negative x (sigma = 0.5 instead of 0); the per-element offset does not.
    s, x = 0.08, RNG.integers(-128, 128, (16, 768))
    want = _gelu(x * s)
    y, scale = I.shift_gelu(x, s)
    assert np.abs(y * scale - want).max() > 1.0
    y, scale = I.shift_gelu(x, s, offset="element")
    assert np.abs(y * scale - want).max() < 0.35
    y, scale = I.shift_gelu(x, s, division_bits=62, offset="element")
    assert np.abs(y * scale - want).max() < 0.09


def test_layernorm_vs_float():
    c = 384
    x = RNG.normal(0, 2000, (16, c)) + RNG.normal(0, 3000, (16, 1))
    x[:, 5] *= 8
    x = np.round(x).astype(np.int64)
    gamma, beta = np.ones(c), np.zeros(c)
    out, scale = I.i_layernorm(x, gamma, beta)
    ref = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    assert np.abs(out * scale - ref).max() < 3e-3


def test_requant_exact_rounding():
    acc = RNG.integers(-(2**31) + 1, 2**31, 10**5)
    ratio = 0.000123456
    b, c = I.dyadic(ratio)
    exact = [round(Fraction(int(a) * int(b), 2 ** int(c))) for a in acc]  # half even, exact
    assert np.array_equal(I.requantize(acc, b, c, 32), np.array(exact, dtype=np.int64))


# ------------------------------------------------ overflow edges


def test_shiftmax_long_rows_and_large_inputs():
    # 4096 equal keys: the row sum (2^31+) is clamped, no wrap-around
    x = np.zeros((2, 4096), dtype=np.int64)
    out, _ = I.shiftmax(x, 0.05)
    want = official_shiftmax(x * 0.05, 0.05, 16)
    assert np.array_equal(out, want.astype(np.int64)) and out.min() > 0
    # int16 logits: exponents floored at n*x0
    x = RNG.integers(-(2**15), 2**15, (4, 197))
    s = mantissa8(0.003)
    out, scale = I.shiftmax(x, s)
    assert np.array_equal(out, official_shiftmax(x * s, s, 16).astype(np.int64))


def test_shift_gelu_negative_rows_large_scale():
    # S = 0.5: -max = 128 would shift by > 63 bits; the cap keeps the official result
    s = 0.5
    x = np.array([[-128, -100, -128], [-1, -2, -3]])
    y, _ = I.shift_gelu(x, s)
    assert np.array_equal(y, official_gelu(x * s, s).astype(np.int64))
    y62, _ = I.shift_gelu(x, s, division_bits=62)
    assert np.all(y62 <= 0)


def test_layernorm_small_variance():
    c = 192
    x = RNG.integers(-3, 4, (8, c))  # var ~ C*4 << 2^18
    gamma, beta = np.ones(c), np.zeros(c)
    ref = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    fixed, scale = I.i_layernorm(x, gamma, beta)
    bitlen, _ = I.i_layernorm(x, gamma, beta, sqrt_start="bitlen")
    # the fixed start 2^16 under-normalizes (documented); bitlen is right up to sqrt's floor
    assert (fixed * scale).std(-1).max() < 0.5
    assert np.abs((bitlen * scale).std(-1) - 1).max() < 0.05
    assert np.abs(bitlen * scale - ref).max() < 0.25  # integer mean: <= 0.5 / sigma_I
    # huge variance: int16 extremes, var ~ C*2^30 > 2^32 stays exact in int64
    x = np.where(RNG.random((4, c)) < 0.5, -(2**15), 2**15 - 1)
    out, scale = I.i_layernorm(x, gamma, beta)
    ref = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    assert np.abs(out * scale - ref).max() < 3e-3
