"""int8 depthwise convolutions on ``vpdpbusd`` (``edgec.lower.int8.Int8Depthwise``).

Bit-exact against the numpy integer reference of ``test_int8`` over kernel sizes, strides,
paddings, widths that are not multiples of a tile and channel counts that are not multiples of
16, for uint8 and int8 activations (the latter shifted to uint8 inside the kernel); what it must
decline; and a MobileNetV2-style QDQ model (``quantize_static``) whose depthwise layers it
schedules, within one quantum of onnxruntime, with ``--search fast`` and the per-layer timing
of ``--keep-float auto``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from edgec import api, targets, verify
from edgec.quant import quantize_qdq
from tests.conftest import RNG_SEED, node_model
from tests.lower import test_int8
from tests.lower.test_int8_e2e import _quantum

VNNI = test_int8._depthwise_template() == "int8_depthwise"
needs_vnni = pytest.mark.skipif(not VNNI, reason="no AVX512-VNNI on this machine")

DEPTHWISE = [  # c (= f = groups), k, stride, pad, hw
    (24, 3, 1, 1, 20),
    (40, 3, 2, 1, 33),  # odd width, stride 2: the last tile overlaps
    (20, 5, 1, 2, 14),  # 5 taps a row: two weight words
    (36, 5, 2, 2, 17),
    (8, 3, 1, 0, 9),  # no padding: no producer block
    (48, 3, 1, 1, 70),  # wide rows: zmm tiles
    (12, 3, 2, 1, 7),  # a row narrower than a tile
]


@needs_vnni
@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("case", DEPTHWISE, ids=lambda c: "c{}k{}s{}p{}w{}".format(*c))
def test_depthwise_bit_exact(case, act, tmp_path):
    c, k, stride, pad, hw = case
    (conv,) = test_int8.conv_case((c, c, k, stride, pad, c, hw), act, tmp_path)
    assert conv["template"] == "int8_depthwise" and conv["knobs"]["lanes"] in (4, 8, 16)


@needs_vnni
def test_depthwise_every_candidate_bit_exact(tmp_path):
    """Every knob set of the template's search space (vector lanes, tiles in flight)."""
    case = (40, 40, 3, 2, 1, 40, 33)
    spaces: list = []

    def first(name, info, space, default):
        if "lanes" in default:
            spaces.append(space)
        return default

    test_int8.conv_case(case, "uint8", tmp_path, choose=first)
    (space,) = spaces
    assert {k["lanes"] for k in space} == {4, 8, 16} and {k["xt"] for k in space} == {1, 2}
    for i, knobs in enumerate(space[1:]):
        (tmp_path / str(i)).mkdir()
        pick = lambda n, info, sp, d, k=knobs: k if "lanes" in d else d  # noqa: E731
        (conv,) = test_int8.conv_case(case, "uint8", tmp_path / str(i), choose=pick)
        assert conv["knobs"] == knobs


@pytest.mark.parametrize(
    "case, target, reason",
    [
        ((16, 32, 3, 1, 1, 16, 8), "x86_64", "a channel multiplier"),  # F = 2C
        ((16, 16, 3, 1, 1, 16, 8), "x86_64-avx2", "no AVX512-VNNI target"),
    ],
    ids=["multiplier", "avx2"],
)
def test_depthwise_declines(case, target, reason, tmp_path):
    """What the template cannot compute is left to the generic schedule, bit-exact."""
    (conv,) = test_int8.conv_case(case, "uint8", tmp_path, target=target)
    assert conv["template"] == "conv2d"
    assert any(d.startswith(f"int8_depthwise: {reason}") for d in conv["declined"]), conv


def mobilenet_block() -> onnx.ModelProto:
    """A MobileNetV2-style net on 1x3x32x32: stem 3x3/2, depthwise 3x3 + project, an inverted
    residual with a 3x3/2 depthwise, another with a 5x5 depthwise and a residual Add, global
    average pool, Gemm. ReLU6 as Clip; channel counts 16, 48, 72 (not all multiples of 16)."""
    rng = np.random.default_rng(RNG_SEED)
    inits: dict = {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    nodes = []

    def conv(x, cin, cout, k, stride=1, groups=1, relu6=True):
        i = len(nodes)
        w = rng.standard_normal((cout, cin // groups, k, k)) * (2 / (cin // groups * k * k)) ** 0.5
        inits[f"w{i}"], inits[f"b{i}"] = (
            w.astype(np.float32),
            rng.normal(0, 0.1, cout).astype(np.float32),
        )
        out = f"c{i}"
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [out], pads=[k // 2] * 4,
                                      strides=[stride] * 2, group=groups))  # fmt: skip
        if relu6:
            nodes.append(helper.make_node("Clip", [out, "lo", "hi"], [f"r{i}"]))
            out = f"r{i}"
        return out

    x = conv("x", 3, 16, 3, 2)
    x = conv(x, 16, 16, 3, groups=16)
    x = conv(x, 16, 8, 1, relu6=False)
    x = conv(x, 8, 48, 1)
    x = conv(x, 48, 48, 3, 2, groups=48)
    x = conv(x, 48, 16, 1, relu6=False)
    y = conv(x, 16, 72, 1)
    y = conv(y, 72, 72, 5, groups=72)
    y = conv(y, 72, 16, 1, relu6=False)
    nodes.append(helper.make_node("Add", [x, y], ["sum"]))
    nodes.append(helper.make_node("GlobalAveragePool", ["sum"], ["g"]))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"]))
    inits["wf"] = rng.standard_normal((10, 16)).astype(np.float32) * 0.3
    inits["bf"] = np.zeros(10, np.float32)
    nodes.append(helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1))
    return node_model(nodes, "mobilenet_block", {"x": (1, 3, 32, 32)}, {"y": (1, 10)}, inits)


def quantized_block(directory, activation: str):
    """``mobilenet_block`` quantized by quantize_static (minmax, 8 samples), saved."""
    rng = np.random.default_rng(RNG_SEED + 1)
    samples = [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    path = directory / f"mbv2_{activation}.qdq.onnx"
    onnx.save(quantize_qdq(mobilenet_block(), samples, activation=activation), path)
    return path


@needs_vnni
@pytest.mark.parametrize("search, activation", [("none", "uint8"), ("none", "int8"),
                                                ("fast", "uint8")])  # fmt: skip
def test_mobilenet_block_depthwise_scheduled(search, activation, tmp_path):
    """The three depthwise layers of a quantize_static model run on int8_depthwise (also when
    ``--search fast`` times its candidates, and with int8 activations, shifted to uint8 in the
    kernel's input copy), nothing float is left, and the output is within one quantum of
    onnxruntime on the same QDQ model."""
    qdq_path = quantized_block(tmp_path, activation)
    result = api.compile(qdq_path, tmp_path / "out", integer_only=True, bench=False,
                         threads=2, search=search, search_budget_s=20,
                         tuning_db=tmp_path / "t.db")  # fmt: skip
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["float_ops"] == [] and result.report["verification"]["passed"]
    depthwise = [k for k in report["kernels"] if " g" in k.get("conv", {}).get("shape", "")]
    assert len(depthwise) == 3, [k.get("conv") for k in report["kernels"]]
    assert {k["template"] for k in depthwise} == {"int8_depthwise"}, depthwise
    if search == "fast":  # its candidates timed (within the budget: at least one layer)
        assert report["search"]["mode"] == "fast"
        timed = [c for k in depthwise for c in k.get("candidates", []) if "lanes" in c["knobs"]]
        assert len(timed) >= 2, depthwise
    model = api.load(tmp_path / "out")
    session = verify.ort_session(onnx.load(qdq_path), optimize=False, threads=2)
    rng = np.random.default_rng(RNG_SEED + 2)
    quanta = []
    for _ in range(4):
        x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        diff = np.abs(model(x=x)["y"].astype(np.float64) - session.run(None, {"x": x})[0])
        quanta.append(diff / _quantum(onnx.load(qdq_path)))
    assert np.max(quanta) <= 1.0 + 1e-3  # float32 outputs: one quantum up to rounding


@needs_vnni
def test_layer_latency_of_a_depthwise_layer():
    """``--keep-float auto`` times a depthwise layer alone in fp32 and int8 (the int8 one on
    this template)."""
    from edgec.lower import layer_latency

    model = mobilenet_block()
    node = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] == "w7")
    timer = layer_latency.LayerLatency(model, targets.get("x86_64"), 1)
    fp32_ms, int8_ms = timer(node)
    assert 0 < fp32_ms < 1000 and 0 < int8_ms < 1000
