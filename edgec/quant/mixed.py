"""Mixed precision, ``--keep-float auto``: keep in float the layers where int8 costs accuracy and
buys little (FLIQS-style: measured sensitivity against expected gain).

For each weight layer L (Conv, ConvTranspose, Gemm, MatMul):

- **error**: the model is quantized with only L in int8 (onnxruntime ``nodes_to_quantize``, the
  calibration reused) and run on the samples in onnxruntime; ``nsr`` = ||y_q - y||^2 / ||y||^2
  over all outputs and samples, against fp32.
- **gain**: the time int8 saves on L. ``latency(node) -> (fp32_ms, int8_ms) | None`` gives
  measured kernel times (``edgec.lower.layer_latency``: L alone, compiled both ways and timed on
  this machine; what ``edgec.compile`` passes for targets that run here); without it, or for a
  layer it cannot isolate, a roofline proxy from L's FLOPs and bytes: ``ms = max(flops / peak,
  bytes / bandwidth)`` with the nominal machine ``PROXY`` (int8: 4x the fp32 op rate, 1/4 of the
  activation and weight bytes). The report says which was used, per layer.

L stays float when its error share (nsr / sum nsr) exceeds ``COST_RATIO`` times its gain share
(saving / sum saving) and its own nsr is above ``MIN_NSR`` (an error nobody would notice is
never worth float). The chosen mix is then measured whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

Latency = Callable[[onnx.NodeProto], tuple[float, float] | None]

COST_RATIO = 2.0
MIN_NSR = 1e-4
SENSITIVITY_SAMPLES = 16
PROXY = {"fp32_gflops": 100.0, "int8_gops": 400.0, "gbytes_per_s": 20.0}


def nsr(actual: Sequence[dict], expected: Sequence[dict]) -> float:
    """Noise-to-signal ratio over every output and sample."""
    noise = sum(float(np.sum((np.asarray(a[k], np.float64) - e[k]) ** 2))
                for a, e in zip(actual, expected, strict=True) for k in e)  # fmt: skip
    signal = sum(float(np.sum(np.asarray(e[k], np.float64) ** 2)) for e in expected for k in e)
    return noise / signal if signal > 0 else float(noise > 0)


def layer_costs(model: onnx.ModelProto, node: onnx.NodeProto, shapes: dict) -> dict:
    """FLOPs (2 x MACs) and fp32 / int8 bytes (input + weight + output) of one weight layer."""
    consts = {t.name: t for t in model.graph.initializer}
    w = consts.get(node.input[1])
    wsize = int(np.prod(w.dims)) if w is not None else 0
    out = int(np.prod(shapes.get(node.output[0], [0])))
    inp = int(np.prod(shapes.get(node.input[0], [0])))
    if node.op_type in ("Conv", "ConvTranspose") and w is not None:
        macs_per = int(np.prod(w.dims[1:]))  # (C_in / group) x kernel taps
        macs = out * macs_per if node.op_type == "Conv" else inp * int(np.prod(w.dims[1:]))
    elif w is not None:
        k = w.dims[0]
        macs = (
            out * k
            if node.op_type == "MatMul"
            else out * int(np.prod(w.dims)) // max(shapes.get(node.output[0], [1])[-1], 1)
        )
    else:
        macs = 0
    return {"flops": 2 * macs, "bytes_fp32": 4 * (inp + wsize + out),
            "bytes_int8": inp + wsize + out}  # fmt: skip


def proxy_ms(costs: dict) -> tuple[float, float]:
    bw = PROXY["gbytes_per_s"] * 1e6  # bytes per ms
    fp32 = max(costs["flops"] / (PROXY["fp32_gflops"] * 1e6), costs["bytes_fp32"] / bw)
    int8 = max(costs["flops"] / (PROXY["int8_gops"] * 1e6), costs["bytes_int8"] / bw)
    return fp32, int8


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {}
    for v in list(g.value_info) + list(g.input) + list(g.output):
        dims = v.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[v.name] = [d.dim_value for d in dims]
    return out


def choose(
    model: onnx.ModelProto,
    quantizer: Callable[..., onnx.ModelProto],
    samples: Sequence[dict],
    reference: Sequence[dict],
    *,
    latency: Latency | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[list[str], dict]:
    """The node names to keep in float, and the report section with the per-layer table.

    ``quantizer(exclude=..., include=...)`` returns a QDQ model of ``model``;
    ``reference`` are the fp32 outputs on ``samples``.
    """
    from edgec.quant import WEIGHT_OPS, accuracy, weight_layers

    layers = [n for n in weight_layers(model) if n.op_type in WEIGHT_OPS]
    samples, reference = samples[:SENSITIVITY_SAMPLES], reference[:SENSITIVITY_SAMPLES]
    shapes = _shapes(model)

    def error(qdq: onnx.ModelProto) -> float:
        return nsr(accuracy.run_all(accuracy.ort_runner(qdq), samples), reference)

    all_int8 = error(quantizer())
    rows = []
    for k, node in enumerate(layers, 1):
        err = error(quantizer(include=[node.name]))
        costs = layer_costs(model, node, shapes)
        measured = latency(node) if latency else None
        fp32_ms, int8_ms = measured or proxy_ms(costs)
        rows.append({"node": node.name, "op": node.op_type, **costs, "nsr": err,
                     "fp32_ms": fp32_ms, "int8_ms": int8_ms,
                     "saving_ms": max(fp32_ms - int8_ms, 0.0),
                     "gain_source": "measured" if measured else "proxy"})  # fmt: skip
        log(f"keep-float auto: layer {k}/{len(layers)} {node.name}: nsr {err:.3g}")
    total_err = sum(r["nsr"] for r in rows) or 1.0
    total_gain = sum(r["saving_ms"] for r in rows) or 1.0
    keep = []
    for r in rows:
        r["error_share"], r["gain_share"] = r["nsr"] / total_err, r["saving_ms"] / total_gain
        float_ = r["nsr"] > MIN_NSR and r["error_share"] > COST_RATIO * r["gain_share"]
        r["precision"] = "fp32" if float_ else "int8"
        if float_:
            keep.append(r["node"])
    mixed_err = error(quantizer(exclude=keep)) if keep else all_int8
    log(f"keep-float auto: {len(keep)} of {len(rows)} layer(s) kept in float; nsr all-int8 "
        f"{all_int8:.3g} -> mixed {mixed_err:.3g}")  # fmt: skip
    section = {
        "mode": "auto",
        "rule": f"float when nsr > {MIN_NSR:g} and error share > {COST_RATIO:g} x gain share",
        "error_metric": "nsr = ||y_q - y||^2 / ||y||^2 with only this layer in int8, over "
        f"{len(samples)} sample(s), vs fp32 in onnxruntime",
        "gain": "measured: each layer alone, fp32 and int8 kernels compiled and timed on this "
        "machine (edgec.lower.layer_latency; rows with gain_source proxy: not isolable)"
        if latency
        else "roofline proxy (target not runnable here): "
        "ms = max(flops / peak, bytes / bandwidth), "
        f"nominal fp32 {PROXY['fp32_gflops']:g} GFLOP/s, int8 {PROXY['int8_gops']:g} GOP/s, "
        f"{PROXY['gbytes_per_s']:g} GB/s",
        "nsr_all_int8": all_int8,
        "nsr_mixed": mixed_err,
        "kept_float": keep,
        "layers": rows,
    }
    return keep, section
