"""TVM kernels of the I-ViT ops: bit-exact with ``edgec.quant.intops`` on random integer inputs
at realistic scales, including the overflow edges (long rows, large |x|, var < 2^18, var > 2^32)."""

from __future__ import annotations

import numpy as np
import pytest

from edgec.quant import intops as I

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from edgec.lower import ivit  # noqa: E402

RNG = np.random.default_rng(20261121)
TARGET = {"kind": "llvm", "mcpu": "generic"}


def module(cases: list[tuple[str, np.ndarray, dict]]):
    """One Relax module holding every case's kernel (one input and one output each)."""
    bb = relax.BlockBuilder()
    xs = [relax.Var(f"x{i}", relax.TensorType(x.shape, str(x.dtype))) for i, (_, x, _) in
          enumerate(cases)]  # fmt: skip
    with bb.function("main", xs):
        with bb.dataflow():
            outs = [ivit.emit(bb, kind, v, **p) for v, (kind, _, p) in zip(xs, cases, strict=True)]
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    return bb.get()


def run_all(cases: list[tuple[str, np.ndarray, dict]]) -> list[np.ndarray]:
    """Compile ``module(cases)``; return each case's output."""
    ex = tvm.compile(module(cases), target=tvm.target.Target(TARGET))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    res = vm["main"](*[tvm.runtime.tensor(x) for _, x, _ in cases])
    return [r.numpy() for r in res]


def check(cases, expected):
    for (kind, _, params), got, want in zip(cases, run_all(cases), expected, strict=True):
        if want.dtype != np.int64:  # requantized codes: the exact code type
            assert got.dtype == want.dtype, (kind, params)
        assert np.array_equal(got.astype(np.int64), want.astype(np.int64)), (kind, params)


def test_shiftmax_bit_exact():
    logits = RNG.integers(-128, 128, (2, 3, 197, 197)).astype(np.int8)
    logits[0, 0, 0] = -128  # constant row
    logits[0, 0, 1, 1:] = -128  # one peak
    long_rows = np.zeros((2, 4096), np.int8)  # the row sum passes 2^31 - 1 and is clamped
    wide = RNG.integers(-(2**15), 2**15, (8, 197)).astype(np.int16)  # large |x|: exponent floor
    cases = [
        ("shiftmax", logits, {"scale": 0.052}),
        ("shiftmax", logits, {"scale": 0.021, "out_bits": 8}),
        ("shiftmax", long_rows, {"scale": 0.05}),
        ("shiftmax", wide, {"scale": 0.003}),
        ("shiftmax", logits, {"scale": 0.15, "shift": 4, "n": 12}),  # coarse logits, shifted
    ]
    check(cases, [I.shiftmax(x, **p)[0] for _, x, p in cases])


def test_shift_gelu_bit_exact():
    x = RNG.integers(-128, 128, (197, 768)).astype(np.int8)
    x[0] = RNG.integers(-128, -20, 768)  # all negative: -max > 0, shift > n
    x[1] = -128
    big = np.array([[-128, -100, -128], [-1, -2, -3]], np.int8)  # S = 0.5: capped exponent
    cases = [
        ("shift_gelu", x, {"scale": 0.043}),
        ("shift_gelu", x, {"scale": 0.081, "division_bits": 62}),
        ("shift_gelu", x, {"scale": 0.05, "offset": "element", "division_bits": 62}),
        ("shift_gelu", big, {"scale": 0.5}),
        ("shift_gelu", big, {"scale": 0.5, "division_bits": 62}),
    ]
    check(cases, [I.shift_gelu(x, **p)[0] for _, x, p in cases])


def test_layernorm_bit_exact():
    c = 384
    x = (RNG.integers(-3000, 3000, (64, c)) + RNG.integers(-5000, 5000, (64, 1))).astype(np.int16)
    x[:, 7] *= 5  # outlier channel
    x[0] = RNG.integers(-4, 5, c)  # var < 2^18: the fixed start does not converge
    x[1] = np.where(RNG.random(c) < 0.5, -(2**15), 2**15 - 1)  # var > 2^32 (int64 needed)
    x8 = RNG.integers(-128, 128, (16, 192)).astype(np.int8)
    gamma = RNG.uniform(0.2, 2.0, c) * RNG.choice([-1, 1], c)
    beta = RNG.normal(0, 1, c)
    g8, b8 = RNG.uniform(0.5, 1.5, 192), RNG.normal(0, 0.5, 192)
    cases = [
        ("layernorm", x, {"gamma": gamma, "beta": beta}),
        ("layernorm", x, {"gamma": gamma, "beta": beta, "sqrt_start": "bitlen"}),
        ("layernorm", x8, {"gamma": g8, "beta": b8, "sqrt_start": "bitlen", "shift": 16}),
    ]
    check(cases, [I.i_layernorm(x, **p)[0] for _, x, p in cases])


def test_fused_requantization():
    logits = RNG.integers(-128, 128, (4, 197)).astype(np.int8)
    h = RNG.integers(-128, 128, (4, 768)).astype(np.int8)
    x = RNG.integers(-(2**15), 2**15, (8, 192)).astype(np.int16)
    gamma, beta = RNG.uniform(0.5, 2, 192), RNG.normal(0, 1, 192)
    _, s_ln = I.layernorm_bias(gamma, beta, 192)
    rq_p = ivit.Requant.to_scale(2.0**-15, 1 / 255, -128, "int8")
    rq_g = ivit.Requant.to_scale(0.04 / 128, 0.021, 3, "uint8")
    rq_l = ivit.Requant.to_scale(s_ln, 0.031, -2, "int8")  # per channel
    cases = [
        ("shiftmax", logits, {"scale": 0.05, "requant": rq_p}),
        ("shift_gelu", h, {"scale": 0.04, "requant": rq_g}),
        ("layernorm", x, {"gamma": gamma, "beta": beta, "requant": rq_l}),
    ]
    want = [
        I.quantize_codes(I.shiftmax(logits, 0.05)[0], 2.0**-15, 1 / 255, -128, "int8"),
        I.quantize_codes(I.shift_gelu(h, 0.04)[0], 0.04 / 128, 0.021, 3, "uint8"),
        I.quantize_codes(I.i_layernorm(x, gamma, beta)[0], s_ln, 0.031, -2, "int8"),
    ]
    check(cases, want)


@pytest.mark.parametrize("knob", [("ivit_shiftmax", {"exp": "recompute"}),
                                  ("ivit_layernorm", {"var": "one_pass"})])  # fmt: skip
def test_every_knob_variant_bit_exact(knob):
    """The I-ViT schedule template (``ivit.Template``): each kernel's variants (the search's
    candidates) are in its space and bit-exact with intops, overflow edges included."""
    from edgec.lower import schedules

    kind, variant = knob
    c = 384
    x = (RNG.integers(-3000, 3000, (64, c)) + RNG.integers(-5000, 5000, (64, 1))).astype(np.int16)
    x[1] = np.where(RNG.random(c) < 0.5, -(2**15), 2**15 - 1)  # var > 2^32
    x8 = RNG.integers(-128, 128, (16, 192)).astype(np.int8)
    gamma, beta = RNG.uniform(0.2, 2.0, c), RNG.normal(0, 1, c)
    logits = RNG.integers(-128, 128, (3, 197, 197)).astype(np.int8)
    cases = {
        "ivit_shiftmax": [("shiftmax", logits, {"scale": 0.052}),
                          ("shiftmax", np.zeros((2, 4096), np.int8), {"scale": 0.05})],
        "ivit_layernorm": [("layernorm", x, {"gamma": gamma, "beta": beta}),
                           ("layernorm", x8, {"gamma": gamma[:192], "beta": beta[:192],
                                              "sqrt_start": "bitlen", "shift": 16})],
    }[kind]  # fmt: skip
    spaces = []

    def choose(name, info, space, default):
        spaces.append(space)
        assert default == space[0] and variant in space, space
        return variant

    target = tvm.target.Target(TARGET)
    with target:
        mod, records = schedules.apply_all(module(cases), 16, choose=choose)
    assert [r["template"] for r in records] == ["ivit"] * len(cases)
    assert all(r["knobs"] == variant for r in records), records
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(a) for _, a, _ in cases])
    want = [{"shiftmax": I.shiftmax, "layernorm": I.i_layernorm}[k](a, **p)[0]
            for k, a, p in cases]  # fmt: skip
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g.numpy().astype(np.int64), w.astype(np.int64))


def test_one_pass_variance_is_offered_only_when_it_fits():
    assert ivit.one_pass_fits(192, "int8", 16) and ivit.one_pass_fits(4096, "int16", 0)
    assert not ivit.one_pass_fits(4096, "int32", 0)
    with pytest.raises(ValueError, match="overflows int64"):
        ivit.layernorm_func(4, 4096, "int32", np.zeros(4096), var="one_pass")
