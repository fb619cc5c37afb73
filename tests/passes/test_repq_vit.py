"""repq_vit_scales: RepQ-ViT LayerNorm scale re-parameterization (exact, docs rewrites.md 2.7)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgec import verify
from edgec.frontend import signature
from edgec.passes.repq_vit import RepQViTScales
from tests.conftest import assert_equivalent, make_model, op_counts, run_ort

C = 16


def _ln_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gamma/beta with a wide spread, so per-channel ranges differ a lot (the RepQ-ViT case)."""
    return {
        "gamma": (rng.uniform(0.2, 3.0, C) * rng.choice([-1, 1], C)).astype(np.float32),
        "beta": rng.normal(0, 1.5, C).astype(np.float32),
    }


def _w(rng, *shape) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def _feeds(model: onnx.ModelProto, seeds=(0, 1)) -> list[dict[str, np.ndarray]]:
    return [verify.random_inputs(signature(model)[0], s) for s in seeds]


def _ranges(model: onnx.ModelProto, name: str, feeds) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (last axis) min and max of value ``name`` in onnxruntime."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.append(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    )
    sess = verify.ort_session(probe)
    arrs = [sess.run([name], f)[0] for f in feeds]
    flat = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrs]).astype(np.float64)
    return flat.min(0), flat.max(0)


def _assert_on_common_grid(before, after, name, pass_, feeds, levels=255):
    """After the rewrite every channel's measured range starts on the common min~ (within half
    a step: z_c was rounded) and spans the same number of steps d~ it spanned in its own grid."""
    lo0, hi0 = _ranges(before, name, feeds)
    lo1, hi1 = _ranges(after, name, feeds)
    d, z = pass_.channel_params_used[name]
    d_t, z_t = pass_.layerwise_params[name]
    assert np.isclose(d_t, d.mean()) and np.isclose(z_t, z.mean())
    min_t = -z_t * d_t
    np.testing.assert_allclose((lo1 - min_t) / d_t, (lo0 + z * d) / d, atol=1e-3)
    np.testing.assert_allclose((hi1 - lo1) / d_t, (hi0 - lo0) / d, rtol=1e-4, atol=1e-3)
    straddle = (lo0 < 0) & (hi0 > 0)  # channels whose quantizer range is exactly [min, max]
    assert straddle.any()
    assert np.all(np.abs((lo1 - min_t) / d_t)[straddle] <= 0.5 + 1e-3)
    np.testing.assert_allclose(((hi1 - lo1) / d_t)[straddle], levels, rtol=1e-4)
    spread0 = (hi0 - lo0)[straddle]
    assert spread0.max() / spread0.min() > 3  # the ranges really were different before


LN_LINEAR = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[2,5,16] x) => (float[2,5,8] y) {
    n = LayerNormalization <axis = -1, epsilon = 1e-6> (x, gamma, beta)
    m = MatMul (n, W)
    y = Add (m, B)
}
"""


def test_ln_linear_calibrated_on_random_inputs():
    rng = np.random.default_rng(0)
    model = make_model(LN_LINEAR, **_ln_params(rng), W=_w(rng, C, 8), B=_w(rng, 8))
    p = RepQViTScales()
    result = p(model)
    assert result.stats == {
        "layernorms_reparameterized": 1,
        "linears_updated": 1,
        "bias_adds_created": 0,
    }
    assert result.declined == []
    assert op_counts(result.model) == op_counts(model)
    assert list(p.layerwise_params) == ["n"]
    assert_equivalent(model, result.model, rtol=1e-4)
    assert_equivalent(model, result.model, rtol=1e-4, seed=7)
    _assert_on_common_grid(model, result.model, "n", p, _feeds(model))


def test_ln_qkv_three_linears_with_given_params():
    """HF-style q/k/v: three Linears on one LN output (bias Add in both operand orders), with
    the (d_c, z_c) handed in as the int8 pipeline does; calibration_inputs give the ranges."""
    rng = np.random.default_rng(1)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2,5,16] x) => (float[2,5,8] q, float[2,5,8] k, float[2,5,8] v) {
            n = LayerNormalization <epsilon = 1e-6> (x, gamma, beta)
            mq = MatMul (n, Wq)
            q = Add (mq, Bq)
            mk = MatMul (n, Wk)
            k = Add (Bk, mk)
            mv = MatMul (n, Wv)
            v = Add (mv, Bv)
        }
        """,
        **_ln_params(rng),
        Wq=_w(rng, C, 8),
        Bq=_w(rng, 8),
        Wk=_w(rng, C, 8),
        Bk=_w(rng, 8),
        Wv=_w(rng, C, 8),
        Bv=_w(rng, 8),
    )
    feeds = _feeds(model, seeds=(3, 4, 5))
    lo, hi = _ranges(model, "n", feeds)
    lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    d = (hi - lo) / 255
    z = np.round(-lo / d)
    p = RepQViTScales({"n": (d, z)})
    result = p(model)
    assert result.stats == {
        "layernorms_reparameterized": 1,
        "linears_updated": 3,
        "bias_adds_created": 0,
    }
    assert op_counts(result.model) == op_counts(model)
    assert_equivalent(model, result.model, rtol=1e-4)
    _assert_on_common_grid(model, result.model, "n", p, feeds)
    # the same through calibration_inputs: the pass derives the very same (d, z)
    p2 = RepQViTScales(calibration_inputs=feeds)
    p2(model)
    np.testing.assert_allclose(p2.channel_params_used["n"][0], d)
    np.testing.assert_array_equal(p2.channel_params_used["n"][1], z)


def test_linear_without_bias_gets_one_bias_add():
    rng = np.random.default_rng(2)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2,5,16] x) => (float[2,5,8] y) {
            n = LayerNormalization (x, gamma, beta)
            m = MatMul (n, W)
            y = Relu (m)
        }
        """,
        **_ln_params(rng),
        W=_w(rng, C, 8),
    )
    result = RepQViTScales()(model)
    assert result.stats == {
        "layernorms_reparameterized": 1,
        "linears_updated": 1,
        "bias_adds_created": 1,
    }
    assert op_counts(result.model) == {**op_counts(model), "Add": 1}
    assert [n.op_type for n in result.model.graph.node] == [
        "LayerNormalization",
        "MatMul",
        "Add",
        "Relu",
    ]
    assert_equivalent(model, result.model, rtol=1e-4)


def test_gemm_behind_reshape_without_bias_needs_no_node():
    """onnxsim's form Reshape -> Gemm(transB=1, alpha) with no C: C is added, no node."""
    rng = np.random.default_rng(3)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2,5,16] x) => (float[10,8] y) {
            n = LayerNormalization (x, gamma, beta)
            r = Reshape (n, shape)
            y = Gemm <transB = 1, alpha = 0.5> (r, W)
        }
        """,
        **_ln_params(rng),
        W=_w(rng, 8, C),
        shape=np.array([-1, C]),
    )
    p = RepQViTScales()
    result = p(model)
    assert result.stats["layernorms_reparameterized"] == 1
    assert result.stats["bias_adds_created"] == 0
    assert op_counts(result.model) == op_counts(model)
    gemm = result.model.graph.node[-1]
    assert len(gemm.input) == 3
    assert_equivalent(model, result.model, rtol=1e-4)
    _assert_on_common_grid(model, result.model, "n", p, _feeds(model))


def test_ln_output_feeding_a_residual_add_is_declined():
    rng = np.random.default_rng(4)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2,5,16] x) => (float[2,5,16] y) {
            n = LayerNormalization (x, gamma, beta)
            m = MatMul (n, W)
            a = Add (m, B)
            y = Add (a, n)
        }
        """,
        **_ln_params(rng),
        W=_w(rng, C, C),
        B=_w(rng, C),
    )
    result = RepQViTScales()(model)
    assert not result.changed and result.model is model
    assert result.declined == [
        "repq_vit_scales: LayerNormalization 'n': consumer Add '' is not a Linear"
    ]


def test_ln_not_on_last_axis_is_declined():
    rng = np.random.default_rng(5)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2,16,5] x) => (float[2,16,8] y) {
            n = LayerNormalization <axis = 1> (x, gamma, beta)
            y = MatMul (n, W)
        }
        """,
        gamma=np.ones((16, 5), np.float32),
        beta=np.zeros((16, 5), np.float32),
        W=_w(rng, 5, 8),
    )
    result = RepQViTScales({"n": (np.ones(5), np.zeros(5))})(model)
    assert not result.changed
    assert result.declined == [
        "repq_vit_scales: LayerNormalization 'n': axis 1 is not the last axis"
    ]


@pytest.mark.slow
def test_deit_tiny(tmp_path):
    from edgec import models
    from edgec.passes.simplify import Simplify

    exported = onnx.load(models.export("deit_tiny", tmp_path / "deit.onnx"))
    model = Simplify()(exported).model
    lns = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert len(lns) == 25
    feeds = _feeds(model)
    p = RepQViTScales(calibration_inputs=feeds)
    result = p(model)
    # norm1 -> (Reshape) -> qkv Gemm and norm2 -> (Reshape) -> fc1 Gemm in all 12 blocks; the
    # final norm reaches the head only through Gather(cls token): declined, as in RepQ-ViT
    assert result.stats == {
        "layernorms_reparameterized": 24,
        "linears_updated": 24,
        "bias_adds_created": 0,
    }
    final = lns[-1].output[0]
    assert result.declined == [
        f"repq_vit_scales: LayerNormalization {lns[-1].name!r}: consumer Gather '/Gather' is not "
        "a Linear"
    ]
    assert sorted(p.layerwise_params) == sorted(n.output[0] for n in lns[:-1])
    assert final not in p.layerwise_params
    assert op_counts(result.model) == op_counts(model)
    assert len(result.model.graph.initializer) == len(model.graph.initializer) + 2 * 24
    assert_equivalent(model, result.model, rtol=1e-4)
    assert_equivalent(exported, result.model, rtol=1e-4, seed=3)
    for name in list(p.layerwise_params)[::5]:
        lo, hi = _ranges(model, name, feeds)
        lo1, hi1 = _ranges(result.model, name, feeds)
        d, z = p.channel_params_used[name]
        d_t, z_t = p.layerwise_params[name]
        assert np.all(np.abs((lo1 + z_t * d_t) / d_t) <= 0.5 + 1e-3)
        np.testing.assert_allclose((hi1 - lo1) / d_t, (hi - lo) / d, rtol=1e-3)


def test_symbolic_shapes_need_calibration_inputs():
    rng = np.random.default_rng(6)
    model = make_model(
        LN_LINEAR.replace("float[2,5,16] x", "float[N,5,16] x").replace(
            "float[2,5,8] y", "float[N,5,8] y"
        ),
        **_ln_params(rng),
        W=_w(rng, C, 8),
        B=_w(rng, 8),
    )
    result = RepQViTScales()(model)
    assert not result.changed
    (reason,) = result.declined
    assert reason.startswith("repq_vit_scales: LayerNormalization 'n': cannot calibrate: ")
    feeds = [{"x": rng.standard_normal((3, 5, 16)).astype(np.float32)}]
    result = RepQViTScales(calibration_inputs=feeds)(model)
    assert result.stats["layernorms_reparameterized"] == 1
    (want,), (got,) = run_ort(model, feeds[0]), run_ort(result.model, feeds[0])
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
