"""I-ViT rewrites of QDQ graphs (``edgec.quant.ivit``): islands found and classified, verified
against the QDQ model in onnxruntime, executed in numpy and through TVM (bit-exact with numpy),
and the tiny digits ViT keeps its top-1 within a point of fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgec import verify
from edgec.quant import ivit, quantize_qdq
from tests.conftest import make_model

DATA = Path(__file__).resolve().parents[1] / "data"


def quantize(model: onnx.ModelProto, feeds: list[dict], unsigned: bool = False) -> onnx.ModelProto:
    """int8 QDQ as onnxruntime's quantize_static makes it (MinMax, per-channel weights);
    ``unsigned``: uint8 activations with zero points (onnxruntime's default)."""
    return quantize_qdq(model, feeds, activation="uint8" if unsigned else "int8")


def images(x: np.ndarray) -> np.ndarray:
    return (x[:, None] / 16.0).astype(np.float32)


@pytest.fixture(scope="module")
def digits():
    data = np.load(DATA / "ivit_digits.npz")
    fp32 = onnx.load(DATA / "ivit_digits.onnx")
    calib = [{"input": images(data["x_calib"][i : i + 1])} for i in range(64)]
    qdq = quantize(fp32, calib)
    return fp32, qdq, ivit.rewrite(qdq), data


def test_digits_islands(digits):
    _, qdq, result, _ = digits
    # 2 blocks: softmax, GELU, attention scale each; 2 LN + 2 residual adds each; final LN
    assert result.stats == {"Shiftmax": 2, "ShiftGELU": 2, "ILayerNorm": 5, "Requantize": 2,
                            "QAdd": 4}  # fmt: skip
    assert result.declined == []
    ops = {n.op_type for n in result.model.graph.node}
    assert not ops & {"Softmax", "Erf", "LayerNormalization", "Div"}
    assert sum(n.domain == ivit.DOMAIN for n in result.model.graph.node) == 15
    gelu = [i for i in result.islands if i["op"] == "ShiftGELU"]
    assert all(i["factor"] == 1.0 for i in gelu)  # snapped: the island computes GELU
    scale = [i for i in result.islands if i["op"] == "Requantize"]
    assert all(abs(i["factor"] - 16**-0.5) < 1e-6 for i in scale)  # head dim 16


def test_digits_verify(digits):
    _, qdq, result, data = digits
    summary, rows = ivit.verify(qdq, result, {"input": images(data["x_test"][:1])})
    assert summary["logits"]["cosine"] > 0.99
    worst = {}
    for row in rows:
        worst[row["op"]] = max(worst.get(row["op"], 0), row["max_steps"])
    # integer kernel vs the QDQ model on the same input codes, in output quantization steps
    assert worst["Requantize"] == 0
    assert worst["QAdd"] <= 1  # two roundings instead of one
    assert worst["ILayerNorm"] <= 2
    # Shiftmax: 2^f ~ 1 + f/2 and log2 e ~ 1.4375 give ~1.6e-2 (ivit.md 5), plus two roundings
    assert max(r["max_err"] for r in rows if r["op"] == "Shiftmax") < 0.035
    assert worst["ShiftGELU"] <= 8


def test_digits_top1(digits):
    fp32, _, result, data = digits
    x, y = data["x_test"], data["y_test"]
    sess = verify.ort_session(fp32)
    ref = [
        int(np.argmax(sess.run(None, {"input": images(x[i : i + 1])})[0])) for i in range(len(x))
    ]
    got = [
        int(np.argmax(ivit.evaluate(result.model, {"input": images(x[i : i + 1])})["logits"]))
        for i in range(len(x))
    ]
    acc_fp32, acc_int = np.mean(np.array(ref) == y), np.mean(np.array(got) == y)
    assert acc_fp32 > 0.93
    assert acc_int >= acc_fp32 - 0.01


OFFICIAL = ivit.Options(
    shiftmax_shift=False, gelu_division_bits=31, gelu_offset="row_max", sqrt_start="fixed"
)


@pytest.mark.parametrize("options", [ivit.Options(), OFFICIAL], ids=["default", "official"])
def test_digits_tvm_bit_exact(digits, options):
    pytest.importorskip("tvm")
    import tvm
    from tvm import relax

    from edgec import lower, targets

    _, qdq, result, data = digits
    if options != ivit.Options():  # the official variants: ShiftGELU as a TIR kernel
        result = ivit.rewrite(qdq, options)
    ex, records = lower.build(result.model, targets.get("x86_64"), 1)
    vm = relax.VirtualMachine(ex.module(), tvm.cpu())
    kernels = {r["kernel"].rstrip("0123456789") for r in records}
    assert {"ivit_shiftmax", "ivit_layernorm"} <= kernels  # the TIR kernels (GELU: a table)
    for i in range(4):
        x = images(data["x_test"][i : i + 1])
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert np.array_equal(got, ivit.evaluate(result.model, {"input": x})["logits"])


def _gelu_variants() -> onnx.ModelProto:
    """Five islands: erf GELU, the folded erf GELU (no * 0.5), tanh GELU, the Gelu op (its
    output quantized because a MatMul reads it), decomposed LayerNorm; and SiLU, no GELU."""
    rng = np.random.default_rng(0)
    return make_model(
        """
        <ir_version: 9, opset_import: ["" : 20]>
        g (float[4,16] x) => (float[4,16] a, float[4,16] b, float[4,16] c, float[4,16] d,
                              float[4,16] e, float[4,16] f) {
            ha = MatMul (x, W)
            d1 = Div (ha, sqrt2)
            e1 = Erf (d1)
            p1 = Add (e1, one)
            m1 = Mul (ha, p1)
            a = Mul (m1, half)
            hb = MatMul (x, W)
            d2 = Div (hb, sqrt2)
            e2 = Erf (d2)
            p2 = Add (e2, one)
            b = Mul (hb, p2)
            hc = MatMul (x, W)
            h3 = Mul (hc, hc)
            h3b = Mul (h3, hc)
            k = Mul (h3b, c044)
            inner = Add (hc, k)
            sc = Mul (inner, c079)
            th = Tanh (sc)
            p3 = Add (th, one)
            hh = Mul (hc, half)
            c = Mul (hh, p3)
            hd = MatMul (x, W)
            gd = Gelu (hd)
            d = MatMul (gd, W)
            he = MatMul (x, W)
            mu = ReduceMean (he, ax)
            dev = Sub (he, mu)
            sq = Pow (dev, two)
            var = ReduceMean (sq, ax)
            ve = Add (var, eps)
            sd = Sqrt (ve)
            nrm = Div (dev, sd)
            gm = Mul (nrm, G)
            e = Add (gm, B)
            hf = MatMul (x, W)
            sg = Sigmoid (hf)
            f = Mul (hf, sg)
        }
        """,
        W=rng.standard_normal((16, 16)).astype(np.float32),
        sqrt2=np.array(2**0.5, np.float32),
        one=np.array(1.0, np.float32),
        half=np.array(0.5, np.float32),
        c044=np.array(0.044715, np.float32),
        c079=np.array((2 / np.pi) ** 0.5, np.float32),
        two=np.array(2.0, np.float32),
        ax=np.array([-1], np.int64),
        eps=np.array(1e-5, np.float32),
        G=rng.uniform(0.5, 1.5, 16).astype(np.float32),
        B=rng.normal(0, 0.3, 16).astype(np.float32),
    )


def test_island_kinds():
    model = _gelu_variants()
    rng = np.random.default_rng(1)
    qdq = quantize(
        model, [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(8)]
    )
    result = ivit.rewrite(qdq)
    by_out = {i["output"].split("_QuantizeLinear")[0]: i for i in result.islands}
    assert {k: v["op"] for k, v in by_out.items()} == {
        "a": "ShiftGELU", "b": "ShiftGELU", "c": "ShiftGELU", "gd": "ShiftGELU", "e": "ILayerNorm",
    }  # fmt: skip
    assert by_out["a"]["factor"] == 1.0 and by_out["b"]["factor"] == 2.0  # folded 0.5
    assert by_out["c"]["factor"] == 1.0 and by_out["gd"]["factor"] == 1.0
    assert any("Sigmoid" in d for d in result.declined)  # SiLU is left alone, with the reason
    x = rng.standard_normal((4, 16)).astype(np.float32)
    summary, rows = ivit.verify(qdq, result, {"x": x})
    assert all(summary[o]["cosine"] > 0.99 for o in "abcde")
    assert summary["f"]["max_abs_err"] == 0.0  # untouched
    assert max(r["max_steps"] for r in rows if r["op"] == "ILayerNorm") <= 2


def test_apply_gate(digits, monkeypatch):
    _, qdq, _, _ = digits
    model, entry = ivit.apply(qdq)
    assert entry["status"] == "applied" and entry["cosine_vs_qdq"] >= ivit.MIN_COSINE
    assert sum(n.domain == ivit.DOMAIN for n in model.graph.node) == 15
    assert {r["op"] for r in entry["per_op"]} == set(ivit.OPS)
    monkeypatch.setattr(ivit, "MIN_COSINE", 1.01)  # impossible: the gate must revert
    model, entry = ivit.apply(qdq)
    assert entry["status"] == "reverted" and "cosine" in entry["reason"]
    assert model is qdq


def test_uint8_activations():
    """uint8 codes with zero points: every island kind, numpy and TVM agree."""
    pytest.importorskip("tvm")
    import tvm
    from tvm import relax

    from edgec import lower, targets

    data = np.load(DATA / "ivit_digits.npz")
    calib = [{"input": images(data["x_calib"][i : i + 1])} for i in range(64)]
    qdq = quantize(onnx.load(DATA / "ivit_digits.onnx"), calib, unsigned=True)
    result = ivit.rewrite(qdq)
    assert sum(result.stats.values()) == 15 and result.declined == []
    x = images(data["x_test"][:1])
    summary, rows = ivit.verify(qdq, result, {"input": x})
    assert summary["logits"]["cosine"] > 0.99
    assert max(r["max_steps"] for r in rows if r["op"] in ("QAdd", "Requantize")) <= 1
    ex, _ = lower.build(result.model, targets.get("x86_64"), 1)
    vm = relax.VirtualMachine(ex.module(), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(got, ivit.evaluate(result.model, {"input": x})["logits"])


def test_compile_int8_applies_ivit_end_to_end(tmp_path):
    """`edgec compile --int8 --integer-only` on the digits ViT: the I-ViT rewrite runs on the
    calibrated QDQ graph, nothing float is left between the input quantize and the output
    dequantize (the q/k/v gathers, the class-token concat and the position-embedding add are
    integer too), the artifact passes verification (lowering by cosine, accuracy vs fp32) and
    keeps its top-1 on the held-out set within a point of fp32."""
    import edgec

    data = np.load(DATA / "ivit_digits.npz")
    images = (data["x_test"][:, None] / 16.0).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=(data["x_calib"][:, None] / 16.0).astype(np.float32))
    fp32 = onnx.load(DATA / "ivit_digits.onnx")
    result = edgec.compile(DATA / "ivit_digits.onnx", tmp_path / "out", int8=True,
                           calib=tmp_path / "calib.npz", bench=False,
                           integer_only=True)  # fmt: skip
    report = result.report
    assert report["int8"]["float_ops"] == []
    lowered = report["int8"]["integer_op_kinds"]
    assert lowered["take"] == 7 and lowered["concat"] == 1, lowered
    entry = report["ivit"]
    assert entry["status"] == "applied", entry
    assert entry["stats"]["Shiftmax"] == 2 and entry["stats"]["ShiftGELU"] == 2
    assert entry["stats"]["ILayerNorm"] >= 4 and entry["min_cosine_required"] == ivit.MIN_COSINE
    v = report["verification"]
    assert v["passed"] and v["ivit_min_cosine_required"] == ivit.MIN_COSINE
    model = edgec.load(tmp_path / "out")
    (name,) = [o.name for o in fp32.graph.output]
    got = np.array([model(input=images[i : i + 1])[name].argmax() for i in range(len(images))])
    ref = verify.ort_session(fp32, optimize=False, threads=1)
    want = np.concatenate([ref.run(None, {"input": images[i : i + 1]})[0].argmax(1)
                           for i in range(len(images))])  # fmt: skip
    acc, acc_fp32 = np.mean(got == data["y_test"]), np.mean(want == data["y_test"])
    assert acc >= acc_fp32 - 0.01, (acc, acc_fp32)
