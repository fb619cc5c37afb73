"""A small CNN quantized by onnxruntime (quantize_static, QDQ) compiled end to end by edgec.

With ``integer_only`` nothing float is left between the input quantize and the output
dequantize, and the result matches onnxruntime running the same QDQ model to within one output
quantum (integer requantization rounds half up where the float reference rounds half to even,
so a few elements may differ by 1 LSB; the share of exact matches is asserted to be high).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec import api, verify
from edgec.quant import quantize_qdq
from tests.conftest import RNG_SEED, node_model

SHAPE = (1, 8, 16, 16)


def small_cnn() -> onnx.ModelProto:
    """conv3x3+relu, depthwise 3x3 + relu6 (Clip), 1x1 stride 2, residual add, maxpool,
    concat, global average pool, flatten, gemm."""
    rng = np.random.default_rng(RNG_SEED)

    def w(*shape):
        return (rng.standard_normal(shape) * (2.0 / np.prod(shape[1:])) ** 0.5).astype(np.float32)

    inits = {
        "w1": w(16, 8, 3, 3), "b1": w(16) * 0.1, "w2": w(16, 1, 3, 3), "b2": w(16) * 0.1,
        "w3": w(32, 16, 1, 1), "b3": w(32), "w4": w(32, 32, 3, 3), "b4": w(32),
        "wf": w(10, 64), "bf": w(10), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
    }  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1] * 4, group=16),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], strides=[2, 2]),
        helper.make_node("Conv", ["c3", "w4", "b4"], ["c4"], pads=[1] * 4),
        helper.make_node("Relu", ["c4"], ["r4"]),
        helper.make_node("Add", ["c3", "r4"], ["a"]),
        helper.make_node("MaxPool", ["a"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["m", "m"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"]),
        helper.make_node("Flatten", ["g"], ["fl"]),
        helper.make_node("Gemm", ["fl", "wf", "bf"], ["y"], transB=1),
    ]
    return node_model(nodes, "small_cnn", {"x": SHAPE}, {"y": (1, 10)}, inits)


def quantize(model: onnx.ModelProto, path, activation: str) -> onnx.ModelProto:
    """The QDQ model of ``model`` (MinMax on 8 N(0, 1) samples), also saved to ``path``."""
    rng = np.random.default_rng(RNG_SEED + 1)
    samples = [{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(8)]
    qdq = quantize_qdq(model, samples, activation=activation)
    onnx.save(qdq, path)
    return qdq


def _quantum(model: onnx.ModelProto) -> float:
    node = next(n for n in model.graph.node if "y" in n.output)
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return float(init[node.input[1]])


@pytest.mark.parametrize("activation", ["uint8", "int8"])
def test_small_cnn_integer_only(activation, tmp_path):
    qdq = quantize(small_cnn(), tmp_path / f"cnn_{activation}.onnx", activation)
    assert {n.op_type for n in qdq.graph.node} >= {"QuantizeLinear", "DequantizeLinear", "Conv"}
    result = api.compile(tmp_path / f"cnn_{activation}.onnx", tmp_path / "out", integer_only=True,
                         bench=False, threads=2)  # fmt: skip
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["precision"] == "int8" and report["float_ops"] == []
    kinds = report["int8"]["integer_op_kinds"]
    assert kinds["nn.conv2d"] == 4 and kinds["matmul"] == 1 and kinds["add"] == 1
    assert {"nn.max_pool2d", "concat", "mean"} <= set(kinds)
    assert result.report["verification"]["passed"]
    templates = {k["template"] for k in report["kernels"] if "conv2d" in k["kernel"]}
    assert "int8_conv2d" in templates  # the dense convs run on the dot-product micro-kernel
    # against onnxruntime on the same QDQ model, several inputs
    model = api.load(tmp_path / "out")
    # reference: QDQ semantics (graph optimizations off); optimized: onnxruntime's int8 kernels
    for optimize in (False, True):
        session = verify.ort_session(qdq, optimize=optimize, threads=2)
        rng = np.random.default_rng(RNG_SEED + 2)
        diffs = []
        for _ in range(8):
            x = rng.standard_normal(SHAPE).astype(np.float32)
            ours = model(x=x)["y"]
            theirs = session.run(None, {"x": x})[0]
            diffs.append(np.abs(ours.astype(np.float64) - theirs) / _quantum(qdq))
        quanta = np.concatenate([d.ravel() for d in diffs])
        exact = float(np.mean(quanta < 0.5))
        print(f"{activation} (ORT optimize={optimize}): max |edgec - onnxruntime| = "
              f"{quanta.max():.2f} quanta, {exact:.1%} of {quanta.size} outputs exact")  # fmt: skip
        assert quanta.max() <= 1.0 + 1e-6
        assert exact >= 0.8


def test_integer_only_cli_exit_code(tmp_path, cli):
    """--integer-only on a QDQ model with a float island (Sigmoid: no integer form; a Softmax
    would become I-ViT's Shiftmax) exits 1, names the op and writes nothing."""
    rng = np.random.default_rng(RNG_SEED)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
        helper.make_node("Sigmoid", ["d"], ["sm"]),
        helper.make_node("QuantizeLinear", ["sm", "s", "z"], ["q2"]),
        helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "island",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(np.array(0.01, np.float32), "s"),
         numpy_helper.from_array(np.array(0, np.uint8), "z")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / "island.onnx"
    onnx.save(model, path)
    del rng
    out = tmp_path / "out"
    res = cli("compile", str(path), "-o", str(out), "--integer-only", "--no-bench")
    assert res.code == 1 and "sigmoid" in res.err and not out.exists()
    res = cli("compile", str(path), "-o", str(out), "--no-bench", "--json")
    assert res.code == 0
    report = json.loads(res.out)
    assert [o["op"] for o in report["float_ops"]] == ["dequantize", "sigmoid", "quantize"]


def test_search_with_conv_algorithms_on_a_qdq_model(tmp_path):
    """`--search fast` (conv algorithms on auto) on a QDQ model: each int8 conv layer is timed
    as direct and as im2win (nhwc and nchw windows) and takes the fastest; the other
    algorithms are fp32 only and say so; the compile succeeds and verifies."""
    quantize(small_cnn(), tmp_path / "cnn.onnx", "uint8")
    result = api.compile(tmp_path / "cnn.onnx", tmp_path / "out", bench=False, threads=2,
                         search="fast", search_budget_s=30,
                         tuning_db=tmp_path / "t.db")  # fmt: skip
    report = result.report
    assert report["precision"] == "int8" and report["verification"]["passed"]
    assert report["search"]["mode"] == "fast"
    assert set(report["conv_algos"]["chosen"]) <= {"direct", "im2win"}
    convs = [k["conv"] for k in report["kernels"] if "conv" in k]
    dense = [c for c in convs if c.get("tried")]
    assert dense, convs
    complete = 0  # layers with every candidate timed within the budget
    for conv in dense:
        tried = {(t["algo"], t.get("option")): t for t in conv["tried"]}
        if " g16 " in conv["shape"]:  # depthwise: direct only
            assert set(tried) == {("direct", None)} and conv["algorithm"] == "direct"
            continue
        assert set(tried) == {("direct", None), ("im2win", "nhwc"), ("im2win", "nchw")}, conv
        timed = [t for t in tried.values() if t["ms"] is not None]
        best = min(timed, key=lambda t: t["ms"]) if timed else {"algo": "direct"}
        assert conv["algorithm"] == best["algo"]
        complete += len(timed) == 3
        assert tried["im2win", "nhwc"]["transformed_input_bytes"] > 0  # int8: 1 byte each
    assert complete >= 1
