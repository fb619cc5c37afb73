"""--keep-float: by name (nodes_to_exclude), and auto (measured sensitivity vs gain)."""

from __future__ import annotations

import numpy as np
import onnx

from edgec.frontend import signature
from edgec.quant import Int8Options, mixed, quantize
from tests.conftest import make_model


def _outlier_model() -> onnx.ModelProto:
    """a: 1x1 conv whose output channel 0 is 1000x the others (a per-tensor uint8 activation
    quantizer wipes out channels 1-7); b: reads only channels 1-7; c: a big, benign 3x3 conv."""
    rng = np.random.default_rng(3)
    wa = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    wa[0] *= 1000
    wb = rng.standard_normal((8, 8, 1, 1)).astype(np.float32)
    wb[:, 0] = 0
    return make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        outlier (float[1,4,16,16] x) => (float[1,64,16,16] y) {
            a = Conv (x, Wa, Ba)
            ra = Relu (a)
            b = Conv (ra, Wb, Bb)
            rb = Relu (b)
            y = Conv <pads = [1, 1, 1, 1]> (rb, Wc, Bc)
        }
        """,
        Wa=wa,
        Ba=np.ones(8, np.float32),
        Wb=wb,
        Bb=np.ones(8, np.float32),
        Wc=(rng.standard_normal((64, 8, 3, 3)) * 0.3).astype(np.float32),
        Bc=np.zeros(64, np.float32),
    )


def _float_nodes(qdq: onnx.ModelProto) -> set[str]:
    """Weight nodes whose weight input is not a DequantizeLinear output."""
    dq = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in qdq.graph.node if n.op_type == "Conv" and n.input[1] not in dq}


def test_keep_float_by_name():
    model = _outlier_model()
    inputs = signature(model)[0]
    full = quantize(model, inputs, Int8Options(calib="synthetic", calib_samples=4))
    names = [n.name for n in full.model.graph.node if n.op_type == "Conv"]
    assert names == ["Conv_0", "Conv_2", "Conv_4"] and not _float_nodes(full.model)
    kept = quantize(model, inputs, Int8Options(calib="synthetic", calib_samples=4,
                                               keep_float="Conv_0,Conv_2"))  # fmt: skip
    assert _float_nodes(kept.model) == {"Conv_0", "Conv_2"}
    assert kept.report["kept_float"] == ["Conv_0", "Conv_2"]
    assert kept.report["quantized_layers"] == 1
    assert kept.accuracy["cosine"] > full.accuracy["cosine"]  # the outlier path stays exact


def test_keep_float_auto_keeps_the_sensitive_cheap_layers():
    model = _outlier_model()
    inputs = signature(model)[0]
    result = quantize(model, inputs, Int8Options(calib="synthetic", calib_samples=8,
                                                 keep_float="auto"))  # fmt: skip
    section = result.report["mixed_precision"]
    rows = {r["node"]: r for r in section["layers"]}
    assert list(rows) == ["Conv_0", "Conv_2", "Conv_4"]
    assert "proxy" in section["gain"]
    # the big benign conv is worth int8; the outlier path costs accuracy and buys little
    assert rows["Conv_4"]["precision"] == "int8" and rows["Conv_4"]["gain_share"] > 0.8
    assert rows["Conv_2"]["nsr"] > 100 * rows["Conv_4"]["nsr"]
    assert "Conv_2" in section["kept_float"]
    assert section["nsr_mixed"] < 0.5 * section["nsr_all_int8"]
    assert _float_nodes(result.model) == set(section["kept_float"])
    assert result.report["kept_float"] == section["kept_float"]


def test_layer_costs_and_proxy():
    model = _outlier_model()
    shapes = mixed._shapes(model)
    conv = [n for n in model.graph.node if n.op_type == "Conv"][2]
    costs = mixed.layer_costs(model, conv, shapes)
    assert costs["flops"] == 2 * 64 * 16 * 16 * 8 * 9
    fp32, int8 = mixed.proxy_ms(costs)
    assert 1 < fp32 / int8 <= 4


def test_repq_vit_scales_wired_into_int8():
    """A post-LayerNorm Linear: RepQ-ViT re-parameterizes the LN and pins its output quantizer
    to the layer-wise (d~, z~); the int8 model still tracks fp32."""
    rng = np.random.default_rng(5)
    gamma = np.exp(rng.standard_normal(16) * 1.5).astype(np.float32)  # wide channel spread
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        vit (float[1,10,16] x) => (float[1,10,8] y) {
            n = LayerNormalization <axis = -1> (x, G, B)
            m = MatMul (n, W)
            y = Add (m, Bias)
        }
        """,
        G=gamma,
        B=(rng.standard_normal(16) * 2).astype(np.float32),
        W=(rng.standard_normal((16, 8)) * 0.2).astype(np.float32),
        Bias=rng.standard_normal(8).astype(np.float32),
    )
    result = quantize(model, signature(model)[0], Int8Options(calib="synthetic"))
    rep = result.report["repq_vit"]
    assert rep["status"] == "applied" and rep["stats"]["layernorms_reparameterized"] == 1
    (ln_out, params), = rep["layerwise"].items()  # fmt: skip
    q = next(n for n in result.model.graph.node if n.op_type == "QuantizeLinear"
             and n.input[0] == ln_out)  # fmt: skip
    scale = next(t for t in result.model.graph.initializer if t.name == q.input[1])
    np.testing.assert_allclose(onnx.numpy_helper.to_array(scale), params["scale"], rtol=1e-6)
    assert result.accuracy["cosine"] > 0.99


def test_keep_float_auto_takes_measured_latency():
    model = _outlier_model()
    times = {"Conv_0": (1.0, 0.25), "Conv_2": (1.0, 0.25), "Conv_4": (0.1, 0.1)}
    result = quantize(model, signature(model)[0],
                      Int8Options(calib="synthetic", calib_samples=8, keep_float="auto"),
                      layer_latency=lambda node: times[node.name])  # fmt: skip
    section = result.report["mixed_precision"]
    assert section["gain"].startswith("measured")
    rows = {r["node"]: r for r in section["layers"]}
    assert {r["gain_source"] for r in rows.values()} == {"measured"}
    assert rows["Conv_4"]["saving_ms"] == 0 and rows["Conv_0"]["gain_share"] == 0.5
    assert "Conv_2" not in section["kept_float"]  # sensitive, but now it buys half the gain


def test_layer_latency_is_measured_in_compile(tmp_path):
    """`edgec.compile --int8 --keep-float auto` on a target that runs here: every layer's fp32
    and int8 times come from edgec.lower.layer_latency (the layer alone, compiled both ways and
    timed); the one-layer int8 model is a valid QDQ model of the same layer."""
    import edgec
    from edgec.lower import layer_latency

    model = _outlier_model()
    onnx.save(model, tmp_path / "m.onnx")
    result = edgec.compile(tmp_path / "m.onnx", tmp_path / "out", int8=True, calib="synthetic",
                           keep_float="auto", bench=False)  # fmt: skip
    mixed_section = result.report["quantization"]["mixed_precision"]
    assert mixed_section["gain"].startswith("measured")
    rows = mixed_section["layers"]
    assert len(rows) == 3 and all(r["gain_source"] == "measured" for r in rows)
    assert all(r["fp32_ms"] > 0 and r["int8_ms"] > 0 for r in rows)
    node = next(n for n in model.graph.node if n.op_type == "Conv")
    shapes = layer_latency.LayerLatency(model, edgec.targets.get("x86_64"), 1).shapes
    fp32, int8 = layer_latency.one_layer(model, node, shapes)
    onnx.checker.check_model(int8, full_check=True)
    ops = [n.op_type for n in int8.graph.node]
    assert ops == ["DequantizeLinear"] * 3 + ["Conv", "QuantizeLinear"], ops
    assert [n.op_type for n in fp32.graph.node] == ["Conv"]
