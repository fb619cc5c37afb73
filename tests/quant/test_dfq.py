"""Data-free quantization (edgec.quant.dfq): CLE exactness, ReLU6, bias absorption, bias
correction, the clipped-normal mean."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgec import frontend, passes
from edgec.quant import Int8Options, accuracy, dfq, quantize
from tests.conftest import make_model, run_ort
from tests.quant.conftest import model_path

RNG = np.random.default_rng(7)


def _chain(relu6: bool = False) -> onnx.ModelProto:
    """pointwise -> act -> depthwise 3x3 -> act -> pointwise (1x1, unpadded) -> Gemm-free head,
    with badly balanced channel ranges (what CLE fixes)."""
    act = "Clip (a, lo, hi)" if relu6 else "Relu (a)"
    act2 = "Clip (c, lo, hi)" if relu6 else "Relu (c)"
    w1 = RNG.standard_normal((8, 4, 1, 1)).astype(np.float32)
    w1 *= np.logspace(-2, 1, 8, dtype=np.float32)[:, None, None, None]  # ranges 0.01 .. 10
    return make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        chain (float[1,4,6,6] x) => (float[1,5,6,6] y) {{
            lo = Constant <value = float {{0.0}}> ()
            hi = Constant <value = float {{6.0}}> ()
            a = Conv <group = 1> (x, W1, B1)
            b = {act}
            c = Conv <group = 8, pads = [1, 1, 1, 1]> (b, W2, B2)
            d = {act2}
            y = Conv (d, W3, B3)
        }}
        """,
        W1=w1,
        B1=(RNG.standard_normal(8) * 0.5).astype(np.float32),
        W2=(RNG.standard_normal((8, 1, 3, 3)) * 0.3).astype(np.float32),
        B2=(RNG.standard_normal(8) * 0.3).astype(np.float32),
        W3=RNG.standard_normal((5, 8, 1, 1)).astype(np.float32),
        B3=RNG.standard_normal(5).astype(np.float32),
    )


def _ranges(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    w = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return w


def test_cle_is_exact_and_balances_ranges():
    model = _chain()
    pairs, _ = dfq.find_pairs(model)
    assert [(p.l1.output[0], p.l2.output[0]) for p in pairs] == [("a", "c"), ("c", "y")]
    stats = {}
    out, info = dfq.equalize(model, pairs, stats)
    feeds = {"x": RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)}
    want, got = run_ort(model, feeds)[0], run_ort(out, feeds)[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()  # exact up to fp32 rounding
    before, after = _ranges(model), _ranges(out)
    spread = lambda w: np.ptp(np.log(np.abs(w).reshape(w.shape[0], -1).max(1)))  # noqa: E731
    assert spread(before["W1"]) > 6  # ranges spread over 3 decades
    assert spread(after["W1"]) < 0.5 * spread(before["W1"])
    # converged: each pair's output-channel ranges of L1 equal the input-channel ranges of L2
    r1 = np.abs(after["W2"]).reshape(8, -1).max(1)  # dw: channel i plays both roles
    r2 = np.abs(after["W3"]).transpose(1, 0, 2, 3).reshape(8, -1).max(1)
    np.testing.assert_allclose(r1, r2, rtol=1e-3)
    assert info["iterations"] > 1


def test_relu6_replaced_only_in_pairs_then_equalized():
    model = _chain(relu6=True)
    probe = [{"x": RNG.standard_normal((1, 4, 6, 6)).astype(np.float32) * 0.1}]
    out, report = dfq.apply(model, bn={}, samples=probe, probe=probe)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Clip") == 0 and ops.count("Relu") == 2
    assert report["steps"]["relu6_to_relu"]["status"] == "applied"
    assert report["steps"]["cross_layer_equalization"]["status"] == "applied"


def test_bias_absorption_exact_on_the_data_it_saw():
    model = _chain()
    samples = [{"x": RNG.standard_normal((1, 4, 6, 6)).astype(np.float32) + 2} for _ in range(4)]
    pairs, _ = dfq.find_pairs(model)
    observed = {"c": np.full(8, 0.7)}  # dw -> relu -> 1x1: absorbable (no padding)
    out, done, declined = dfq.absorb_bias(model, pairs, {}, observed)
    assert done == ["c -> Relu -> y"]
    assert any("pads its input" in d for d in declined)  # pw -> relu -> padded dw: refused
    b2 = _ranges(out)["B2"]
    np.testing.assert_allclose(b2, _ranges(model)["B2"] - 0.7, rtol=1e-6)
    # a high bias (dw output > 0 on the data): absorbed from the real minima, exact on them
    for t in model.graph.initializer:
        if t.name == "B2":
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) + 3, "B2"))
    out, report = dfq.apply(model, bn={}, samples=samples, probe=samples)
    step = report["steps"]["bias_absorption"]
    assert step["status"] == "applied" and step["source"] == "calibration minima"
    assert step["change"]["scaled_err"] < 1e-5


def test_relu_mean_matches_monte_carlo():
    beta, gamma = np.array([-1.0, 0.0, 2.0, 0.5]), np.array([1.0, 2.0, 0.5, 0.0])
    z = np.random.default_rng(0).standard_normal((400_000, 1)) * gamma + beta
    np.testing.assert_allclose(dfq.relu_mean(beta, gamma), np.maximum(z, 0).mean(0), atol=6e-3)


def test_bn_stats_survive_the_fold():
    imported = frontend.import_model(model_path("digits_mobilenet"), {})
    stats = dfq.bn_stats(imported.model)
    assert len(stats) == 8  # every Conv has its BN
    folded, _ = passes.run_pipeline(imported.model, passes.select())
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    assert set(stats) <= {n.name for n in folded.graph.node if n.op_type == "Conv"}


def _bias_error(qdq, fp32, samples) -> float:
    """|mean over samples of (int8 - fp32)|, averaged over the logits: the systematic error
    that bias correction removes."""
    q = accuracy.run_all(accuracy.ort_runner(qdq), samples)
    f = accuracy.run_all(accuracy.ort_runner(fp32), samples)
    diff = np.stack([a["output"] - b["output"] for a, b in zip(q, f, strict=True)])
    return float(np.abs(diff.mean(0)).mean())


@pytest.mark.parametrize("data", [True, False], ids=["empirical", "analytic"])
def test_bias_correction_reduces_the_systematic_error(digits, data, tmp_path):
    imported = frontend.import_model(model_path("digits_mobilenet"), {})
    fp32, _ = passes.run_pipeline(imported.model, passes.select())
    calib = [{"input": x[None]} for x in digits[0][:64]]
    held_out = [{"input": x[None]} for x in digits[2][:200]]
    np.savez(tmp_path / "calib.npz", input=digits[0][:64])
    options = Int8Options(calib=str(tmp_path / "calib.npz"))
    base = quantize(fp32, imported.inputs, options, source=imported.model)
    bn = dfq.bn_stats(imported.model)
    corrected, report = dfq.bias_correction(
        base.model, fp32, bn=bn, samples=calib if data else [], log=lambda _: None
    )
    assert len(report["layers"]) >= 7
    before, after = _bias_error(base.model, fp32, held_out), _bias_error(corrected, fp32, held_out)
    assert after < 0.8 * before, (before, after)


def test_cle_through_global_pool_into_gemm_and_between_gemms():
    rng = np.random.default_rng(11)
    wc = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    wc *= np.logspace(-1.5, 1, 6, dtype=np.float32)[:, None, None, None]
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        head (float[1,3,5,5] x) => (float[1,4] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, Wc, Bc)
            r = Relu (c)
            g = GlobalAveragePool (r)
            f = Flatten (g)
            h = Gemm <transB = 1> (f, W1, B1)
            rh = Relu (h)
            y = Gemm <transB = 1> (rh, W2, B2)
        }
        """,
        Wc=wc,
        Bc=rng.standard_normal(6).astype(np.float32),
        W1=(rng.standard_normal((7, 6)) * np.logspace(-1, 1, 7)[:, None]).astype(np.float32),
        B1=rng.standard_normal(7).astype(np.float32),
        W2=rng.standard_normal((4, 7)).astype(np.float32),
        B2=rng.standard_normal(4).astype(np.float32),
    )
    pairs, _ = dfq.find_pairs(model)
    assert [p.label() for p in pairs] == [
        "c -> Relu -> GlobalAveragePool -> Flatten -> h",  # unnamed nodes: their outputs
        "h -> Relu -> y",
    ]
    out, _ = dfq.equalize(model, pairs, {})
    feeds = {"x": rng.standard_normal((1, 3, 5, 5)).astype(np.float32)}
    want, got = run_ort(model, feeds)[0], run_ort(out, feeds)[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    w = _ranges(out)
    np.testing.assert_allclose(np.abs(w["W1"]).max(1), np.abs(w["W2"]).max(0), rtol=1e-3)
