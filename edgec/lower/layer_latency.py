"""Measured fp32 and int8 latency of one weight layer alone: the gain of ``--keep-float auto``.

For a Conv / ConvTranspose / Gemm / MatMul node with constant weights, two one-node models are
built from the node's own attributes, weights and shapes: the fp32 layer, and its QDQ form as the
int8 pipeline leaves it between two quantized layers (uint8 input ``DQ``, int8 per-channel
weight, int32 bias, ``Q`` to uint8: the integer kernel with its requantization, no float
boundary). Both are compiled for the target with the default knobs and timed on this machine in
interleaved blocks (``edgec.report.latency``); the p50s are the layer's fp32 and int8 times.
The scales are nominal: they change no instruction of the kernels, only their values.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RUNS = 20
BUDGET_S = 1.0
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}  # per-output-channel axis of the weight


def _weight_axis(node: onnx.NodeProto) -> int:
    if node.op_type in WEIGHT_AXIS:
        return WEIGHT_AXIS[node.op_type]
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1  # MatMul: [K, N]


def one_layer(
    model: onnx.ModelProto, node: onnx.NodeProto, shapes: dict[str, list[int]]
) -> tuple[onnx.ModelProto, onnx.ModelProto] | None:
    """(fp32 model, int8 QDQ model) of ``node`` alone, or None when it has a non-constant
    operand besides its input or unknown shapes."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    x, *params = [i for i in node.input if i]
    out = node.output[0]
    if x not in shapes or out not in shapes or any(p not in consts for p in params):
        return None
    weight = consts[params[0]].astype(np.float32)
    opset = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    x_shape, y_shape = shapes[x], shapes[out]

    def build(nodes, x_type, y_type, inits) -> onnx.ModelProto:
        graph = helper.make_graph(
            nodes, node.op_type.lower(),
            [helper.make_tensor_value_info("x", x_type, x_shape)],
            [helper.make_tensor_value_info("y", y_type, y_shape)],
            [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
        )  # fmt: skip
        m = helper.make_model(graph, opset_imports=opset or [helper.make_opsetid("", 17)])
        m.ir_version = model.ir_version
        return m

    names = ["x", "w", *(["b"] if len(params) > 1 else [])]
    layer = helper.make_node(node.op_type, names, ["y"])
    layer.attribute.extend(node.attribute)
    fp32 = build([layer], TensorProto.FLOAT, TensorProto.FLOAT,
                 {"w": weight, **({"b": consts[params[1]].astype(np.float32)}
                                  if len(params) > 1 else {})})  # fmt: skip
    axis = _weight_axis(node) % weight.ndim
    reduce = tuple(i for i in range(weight.ndim) if i != axis)
    sw = (np.abs(weight).max(axis=reduce) / 127).astype(np.float32)
    sw[sw == 0] = 1.0
    shape = [1] * weight.ndim
    shape[axis] = -1
    wq = np.clip(np.round(weight / sw.reshape(shape)), -127, 127).astype(np.int8)
    sx = np.float32(0.02)
    inits = {"sx": sx, "zx": np.uint8(128), "wq": wq, "sw": sw, "zw": np.zeros(sw.shape, np.int8),
             "so": np.float32(0.05), "zo": np.uint8(128)}  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wf"], axis=axis),
    ]
    inputs = ["xf", "wf"]
    if len(params) > 1:
        bias = consts[params[1]].astype(np.float64)
        bscale = (sx * sw).astype(np.float32)
        if bias.size != bscale.size:
            return None
        inits.update(bq=np.round(bias / bscale).astype(np.int32), bs=bscale,
                     bz=np.zeros(bscale.shape, np.int32))  # fmt: skip
        nodes.append(helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bf"], axis=0))
        inputs.append("bf")
    layer = helper.make_node(node.op_type, inputs, ["yf"])
    layer.attribute.extend(node.attribute)
    nodes += [layer, helper.make_node("QuantizeLinear", ["yf", "so", "zo"], ["y"])]
    int8 = build(nodes, TensorProto.UINT8, TensorProto.UINT8, inits)
    return fp32, int8


class LayerLatency:
    """``(node) -> (fp32_ms, int8_ms)`` for ``edgec.quant.mixed.choose``, measured on this
    machine for ``target`` (which must run here) with ``threads``; None for a layer it cannot
    isolate (the caller then uses its roofline proxy for that layer)."""

    def __init__(self, model: onnx.ModelProto, target, threads: int,
                 log: Callable[[str], None] = lambda _: None):  # fmt: skip
        inferred = onnx.shape_inference.infer_shapes(model)
        g = inferred.graph
        self.shapes = {
            v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*g.value_info, *g.input, *g.output]
            if v.type.tensor_type.shape.dim
            and all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)
        }
        self.model, self.target, self.threads, self.log = model, target, threads, log

    def __call__(self, node: onnx.NodeProto) -> tuple[float, float] | None:
        from edgec import frontend, lower, verify
        from edgec.report import latency

        models = one_layer(self.model, node, self.shapes)
        if models is None:
            return None
        engines = {}
        with tempfile.TemporaryDirectory(prefix="edgec-layer-") as tmp:
            for name, m in zip(("fp32", "int8"), models, strict=True):
                lib, _ = lower.build(m, self.target, self.threads)
                path = Path(tmp) / f"{name}.so"
                lower.export(lib, path, self.target)
                runtime = lower.Runtime(path, self.threads)
                ty = m.graph.input[0].type.tensor_type
                dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ty.elem_type)).name
                spec = frontend.TensorSpec("x", tuple(d.dim_value for d in ty.shape.dim), dtype)
                engines[name] = runtime.prepare([verify.random_inputs([spec], 0)["x"]])
            stats = latency.measure(engines, runs=RUNS, budget_s=BUDGET_S)
        return stats["fp32"]["p50_ms"], stats["int8"]["p50_ms"]
