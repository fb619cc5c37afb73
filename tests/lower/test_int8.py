"""Integer kernels from QDQ graphs, bit-exact against a numpy integer reference.

Each case is a one-op QDQ ONNX model whose input is already quantized (uint8/int8) and whose
output is the QuantizeLinear result, so the compiled model is integer end to end. The numpy
reference does the same arithmetic: int64 convolution/matmul of ``x - zx`` with int8 weights,
the int32 bias, and the dyadic requantization of ``edgec.lower.qdq`` (``requantize_ref``).
"""

from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec import lower, targets
from edgec.errors import FloatOpsError
from edgec.lower import qdq
from tests.conftest import RNG_SEED

THREADS = 2
NP2ONNX = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}


def _rng(*salt) -> np.random.Generator:
    return np.random.default_rng([RNG_SEED, *(hash(str(s)) % 2**31 for s in salt)])


@functools.cache
def _target(name: str = "x86_64") -> targets.Target:
    return targets.get(name)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "q", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def run_int(
    model: onnx.ModelProto,
    feeds: list[np.ndarray],
    tmp_path: Path,
    target="x86_64",
    choose=None,
    fold_pad: bool = False,
):
    """Compile with integer_only (nothing float left) and run: (output, quant, records).
    ``fold_pad``: as ``edgec compile`` does (``conv_algos``' plan), the zero-point padding
    inside the conv's function instead of a padded tensor from a kernel of its own."""
    quant: dict = {}
    ex, records = lower.build(model, _target(target), THREADS, integer_only=True, quant=quant,
                              choose=choose, conv_plan=[] if fold_pad else None)  # fmt: skip
    path = tmp_path / "model.so"
    lower.export(ex, path, _target(target))
    return lower.Runtime(path, THREADS).run(feeds)[0], quant, records


def _act(rng, shape, dtype):
    lo, hi = qdq.QRANGE[dtype]
    return rng.integers(lo, hi + 1, shape).astype(dtype)


def _out_params(real: np.ndarray, dtype: str) -> tuple[float, int]:
    """Output scale/zero point covering ``real`` (asymmetric uint8 / symmetric int8)."""
    if dtype == "uint8":
        lo, hi = min(real.min(), 0.0), max(real.max(), 0.0)
        scale = (hi - lo) / 255 or 1.0
        return float(scale), int(np.clip(round(-lo / scale), 0, 255))
    return float(np.abs(real).max() / 127 or 1.0), 0


def _conv_ref(x, zx, w, stride, pad, groups):
    """int64 NCHW convolution of (x - zx) with w; padding is real zero."""
    xc = np.pad(x.astype(np.int64) - zx, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    n, c, h, wd = xc.shape
    f, cg, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, f, oh, ow), np.int64)
    fg = f // groups
    for g in range(groups):
        xs = xc[:, g * cg : (g + 1) * cg]
        for u in range(kh):
            for v in range(kw):
                patch = xs[:, :, u : u + stride * oh : stride, v : v + stride * ow : stride]
                wg = w[g * fg : (g + 1) * fg, :, u, v].astype(np.int64)
                out[:, g * fg : (g + 1) * fg] += np.einsum("nchw,fc->nfhw", patch, wg)
    return out


CONVS = [  # c, f, k, stride, pad, groups, hw
    (16, 32, 3, 1, 1, 1, 10),
    (16, 32, 3, 2, 1, 1, 11),
    (24, 48, 1, 1, 0, 1, 7),
    (8, 16, 1, 2, 0, 1, 8),
    (32, 32, 3, 1, 1, 32, 9),  # depthwise
    (32, 32, 3, 2, 1, 32, 10),
    (3, 16, 3, 2, 1, 1, 12),  # stem-like: 3 input channels
    (64, 16, 3, 1, 0, 1, 6),
    (16, 24, 1, 1, 0, 1, 8),  # F = 24: the 8-channel micro-kernel
    (3, 16, 7, 2, 3, 1, 17),  # ResNet's stem: words of 4 taps of a row (kw 7 -> 8)
    (1, 16, 3, 1, 1, 1, 10),  # one channel (grayscale): taps
    (2, 32, 5, 1, 2, 1, 9),  # kw 5 -> 8 taps
]


def _int8_template() -> str:
    """The template the x86_64 target (this CPU) uses for dense int8 convolutions."""
    from edgec.lower import int8

    with __import__("tvm").target.Target(lower.target_json(_target(), 1)):
        isa = int8._isa()
    return "int8_conv2d" if isa else "conv2d"


def _depthwise_template(target: str = "x86_64") -> str:
    """The template for int8 depthwise convolutions on ``target`` (AVX512-VNNI only)."""
    from edgec.lower import int8

    with __import__("tvm").target.Target(lower.target_json(_target(target), 1)):
        isa = int8._isa()
    return "int8_depthwise" if isa == "vnni" else "conv2d"


@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("case", CONVS, ids=lambda c: "c{}f{}k{}s{}p{}g{}".format(*c[:6]))
def test_conv_bit_exact(case, act, tmp_path, target="x86_64", choose=None):
    conv_case(case, act, tmp_path, target, choose)


def conv_case(case, act, tmp_path, target="x86_64", choose=None, fold_pad=False) -> list[dict]:
    """One QDQ Conv (``case``: c, f, k, stride, pad, groups, hw), compiled integer-only and
    bit-exact against the numpy reference; returns the kernel records of the convolution."""
    c, f, k, stride, pad, groups, hw = case
    rng = _rng("conv", case, act)
    x = _act(rng, (1, c, hw, hw), act)
    zx = int(rng.integers(90, 160)) if act == "uint8" else int(rng.integers(-20, 20))
    sx = 0.02
    w = rng.integers(-127, 128, (f, c // groups, k, k)).astype(np.int8)
    sw = rng.uniform(0.001, 0.02, f).astype(np.float32)  # per output channel
    bscale = (np.float32(sx) * sw).astype(np.float32)
    b = rng.integers(-5000, 5000, f).astype(np.int32)
    acc = _conv_ref(x, zx, w, stride, pad, groups) + b.reshape(1, -1, 1, 1)
    real = acc * (sx * sw.astype(np.float64)).reshape(1, -1, 1, 1)
    so, zo = _out_params(real, act)
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wf"], axis=0),
        helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bf"], axis=0),
        helper.make_node(
            "Conv", ["xf", "wf", "bf"], ["yf"], pads=[pad] * 4, strides=[stride] * 2, group=groups
        ),  # fmt: skip
        helper.make_node("QuantizeLinear", ["yf", "so", "zo"], ["y"]),
    ]
    oshape = list(acc.shape)
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", NP2ONNX[act], list(x.shape))],
        [helper.make_tensor_value_info("y", NP2ONNX[act], oshape)],
        {
            "sx": np.array(sx, np.float32), "zx": np.array(zx, act), "w": w, "sw": sw,
            "zw": np.zeros(f, np.int8), "b": b, "bs": bscale, "bz": np.zeros(f, np.int32),
            "so": np.array(so, np.float32), "zo": np.array(zo, act),
        },
    )  # fmt: skip
    folded = {"fold_pad": True} if fold_pad else {}
    got, quant, records = run_int(model, [x], tmp_path, target, choose, **folded)
    # the same arithmetic in numpy: real multiplier sx * sw / so per output channel
    mult = np.float64(np.float32(sx)) * sw.astype(np.float64) / np.float64(np.float32(so))
    want = qdq.requantize_ref([(acc, mult.reshape(1, -1, 1, 1))], zo, act)
    assert got.dtype == np.dtype(act)
    np.testing.assert_array_equal(got, want)
    assert quant["integer_op_kinds"] == {"nn.conv2d": 1} and quant["float_ops"] == []
    conv = [r for r in records if "conv2d" in r["kernel"]]
    dense = groups == 1 and f % 8 == 0  # input channels are padded to a multiple of 4
    depthwise = groups == c == f
    want = _int8_template() if dense else _depthwise_template(target) if depthwise else "conv2d"
    assert conv[0]["template"] == want, conv
    # not trivially saturated: the test exercises the requantization
    assert len(np.unique(got)) > 20
    if k == 1 and stride > 1:  # the strided pixels are sliced out before the kernel's copy
        assert any("strided_slice" in r["kernel"] for r in records), records
    return conv


@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("case", [CONVS[i] for i in (0, 1, 5, 6)], ids=["k3s1", "k3s2", "dw", "c3"])
def test_conv_folded_padding_bit_exact(case, act, tmp_path):
    """The padding folded into the conv's function (how ``edgec compile`` lowers): the int8
    templates' input copies fill the zero point themselves (a 3-channel stem's channel padding
    too)."""
    conv_case(case, act, tmp_path, fold_pad=True)


def test_thin_input_conv_reads_words_of_taps(tmp_path):
    """A dense conv on fewer than 4 channels whose row of taps pads to fewer MACs than its
    channels (C * ceil4(KW) < ceil4(C) * KW: ResNet's 3-channel 7x7 stem, a 1-channel 3x3):
    ``int8_conv2d`` takes words of 4 consecutive taps of an input row (zero weights on the
    padded taps), read from the padded input as it is; a 3-channel 3x3 stem keeps its channels
    padded to 4 (12 MACs either way)."""
    for case, (c, kw) in ((CONVS[9], (3, 8)), (CONVS[10], (1, 4)), (CONVS[11], (2, 8)),
                          (CONVS[6], (4, 3))):  # fmt: skip
        (tmp_path / str(case)).mkdir()
        conv = conv_case(case, "uint8", tmp_path / str(case))
        _, f, k, stride, pad, _, hw = case
        out = (hw + 2 * pad - k) // stride + 1
        assert conv[0]["flops"] == 2 * f * out * out * c * k * kw, conv  # the MACs it runs


@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize(
    "case", [CONVS[0], CONVS[1], CONVS[3], CONVS[9]], ids=["k3s1", "k3s2", "k1s2", "taps"]
)
def test_conv_avx2_bit_exact(case, act, tmp_path, monkeypatch):
    """The x86_64-avx2 target: the vpmaddwd micro-kernel (this CPU runs AVX2 code)."""
    monkeypatch.setattr(__name__ + "._int8_template", lambda: "int8_conv2d")
    test_conv_bit_exact(case, act, tmp_path, target="x86_64-avx2")


@pytest.mark.parametrize("case", [CONVS[1], CONVS[9]], ids=["k3s2", "taps"])
def test_conv_every_candidate_bit_exact(case, tmp_path):
    """Every knob set of int8_conv2d's search space (tile width, 1 or 2 channel blocks, threads
    over output rows or channel blocks), on channel words and on words of taps."""
    from edgec.lower import int8

    with __import__("tvm").target.Target(lower.target_json(_target(), 1)):
        if int8._isa() is None:
            pytest.skip("no x86 dot-product instructions here")
    spaces: list = []

    def first(name, info, space, default):
        if "fk" in default:  # int8_conv2d's knobs
            spaces.append(space)
        return default

    test_conv_bit_exact(case, "uint8", tmp_path, choose=first)
    space = spaces[0]
    assert len(space) >= 2 and {k["par"] for k in space} == {"y", "f"}  # rows or channels
    assert {k["fk"] for k in space} == ({1, 2} if case[1] % 32 == 0 else {1})
    for i, knobs in enumerate(space[1:]):
        (tmp_path / str(i)).mkdir()
        pick = lambda n, info, sp, d, k=knobs: k if "fk" in d else d  # noqa: E731
        test_conv_bit_exact(case, "uint8", tmp_path / str(i), choose=pick)


@pytest.mark.parametrize(
    "f, c, hw, k, par",
    [(64, 64, 56, 3, "y"), (128, 128, 28, 3, "y"), (256, 256, 14, 3, "y"), (512, 512, 7, 3, "f"),
     (512, 256, 7, 1, "y"), (64, 4, 112, 7, "y")],
)  # fmt: skip
def test_conv_threads_split_rows_where_the_input_outweighs_the_weights(f, c, hw, k, par):
    """ResNet-18's layers: rows (each thread repacks the rows it reads) up to layer 3, output
    channel blocks (each thread reads half of the weights) for layer 4's 3x3 convs."""
    from edgec.lower import int8

    info = {"f": f, "cin": c, "h": hw, "w": hw, "kh": k, "kw": k, "isa": "vnni"}
    assert int8.Int8Conv2d().default(info, 16)["par"] == par


MATMULS = [(1, 64, 10, "gemm"), (7, 96, 48, "gemm"), (16, 32, 64, "matmul"), (5, 30, 17, "matmul")]


@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("case", MATMULS, ids=lambda c: "m{}k{}n{}{}".format(*c))
def test_matmul_bit_exact(case, act, tmp_path):
    m, k, n, kind = case
    rng = _rng("mm", case, act)
    x = _act(rng, (m, k), act)
    zx = int(rng.integers(100, 150)) if act == "uint8" else int(rng.integers(-10, 10))
    sx = 0.05
    w = rng.integers(-127, 128, (n, k) if kind == "gemm" else (k, n)).astype(np.int8)
    sw = rng.uniform(0.001, 0.02, n).astype(np.float32)
    b = rng.integers(-3000, 3000, n).astype(np.int32)
    wkn = w.T if kind == "gemm" else w
    acc = (x.astype(np.int64) - zx) @ wkn.astype(np.int64) + b
    real = acc * sx * sw.astype(np.float64)
    so, zo = _out_params(real, act)
    bscale = (np.float32(sx) * sw).astype(np.float32)
    if kind == "gemm":
        op = helper.make_node("Gemm", ["xf", "wf", "bf"], ["yf"], transB=1)
        extra = []
    else:
        op = helper.make_node("MatMul", ["xf", "wf"], ["mf"])
        extra = [helper.make_node("Add", ["mf", "bf"], ["yf"])]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wf"],
                         axis=0 if kind == "gemm" else 1),  # fmt: skip
        helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bf"], axis=0),
        op, *extra,
        helper.make_node("QuantizeLinear", ["yf", "so", "zo"], ["y"]),
    ]  # fmt: skip
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", NP2ONNX[act], [m, k])],
        [helper.make_tensor_value_info("y", NP2ONNX[act], [m, n])],
        {
            "sx": np.array(sx, np.float32), "zx": np.array(zx, act), "w": w, "sw": sw,
            "zw": np.zeros(n, np.int8), "b": b, "bs": bscale, "bz": np.zeros(n, np.int32),
            "so": np.array(so, np.float32), "zo": np.array(zo, act),
        },
    )  # fmt: skip
    got, quant, _ = run_int(model, [x], tmp_path)
    mult = np.float64(np.float32(sx)) * sw.astype(np.float64) / np.float64(np.float32(so))
    np.testing.assert_array_equal(got, qdq.requantize_ref([(acc, mult)], zo, act))
    assert quant["integer_op_kinds"] == {"matmul": 1} and quant["float_ops"] == []


@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_conv_transpose_bit_exact(act, tmp_path):
    """ConvTranspose 3x3 stride 2, pads 1, output_padding 1: integer, plain int32 kernel."""
    rng = _rng("convT", act)
    c, f, hw, k, s, p = 8, 6, 5, 3, 2, 1
    x = _act(rng, (1, c, hw, hw), act)
    zx, sx = (int(rng.integers(100, 150)) if act == "uint8" else 3), 0.03
    w = rng.integers(-127, 128, (c, f, k, k)).astype(np.int8)
    sw = rng.uniform(0.002, 0.02, f).astype(np.float32)
    b = rng.integers(-2000, 2000, f).astype(np.int32)
    full = np.zeros((1, f, (hw - 1) * s + k + 1, (hw - 1) * s + k + 1), np.int64)
    xc = x.astype(np.int64) - zx
    for u in range(k):
        for v in range(k):
            contrib = np.einsum("nchw,cf->nfhw", xc, w[:, :, u, v].astype(np.int64))
            full[:, :, u : u + s * hw : s, v : v + s * hw : s] += contrib
    out_hw = (hw - 1) * s - 2 * p + k + 1
    acc = full[:, :, p : p + out_hw, p : p + out_hw] + b.reshape(1, -1, 1, 1)
    so, zo = _out_params(acc * (sx * sw.astype(np.float64)).reshape(1, -1, 1, 1), act)
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wf"], axis=1),
        helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bf"], axis=0),
        helper.make_node(
            "ConvTranspose",
            ["xf", "wf", "bf"],
            ["yf"],
            strides=[s, s],
            pads=[p] * 4,
            output_padding=[1, 1],
        ),  # fmt: skip
        helper.make_node("QuantizeLinear", ["yf", "so", "zo"], ["y"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", NP2ONNX[act], list(x.shape))],
        [helper.make_tensor_value_info("y", NP2ONNX[act], list(acc.shape))],
        {
            "sx": np.array(sx, np.float32), "zx": np.array(zx, act), "w": w, "sw": sw,
            "zw": np.zeros(f, np.int8), "b": b, "bs": (np.float32(sx) * sw).astype(np.float32),
            "bz": np.zeros(f, np.int32), "so": np.array(so, np.float32), "zo": np.array(zo, act),
        },
    )  # fmt: skip
    got, quant, _ = run_int(model, [x], tmp_path)
    mult = np.float64(np.float32(sx)) * sw.astype(np.float64) / np.float64(np.float32(so))
    np.testing.assert_array_equal(
        got, qdq.requantize_ref([(acc, mult.reshape(1, -1, 1, 1))], zo, act)
    )
    assert quant["integer_op_kinds"] == {"nn.conv2d_transpose": 1} and quant["float_ops"] == []


@pytest.mark.parametrize("types", [("uint8", "int8"), ("uint8", "uint8"), ("int8", "uint8")])
def test_matmul_activations_bit_exact(types, tmp_path, target="x86_64", choose=None):
    """Attention-style MatMul of two quantized activations (one transposed), batched, for
    each pair of activation types (u8 x s8 after the zero-point corrections)."""
    ta, tb = types
    rng = _rng("mmact", types)
    a, b = _act(rng, (2, 6, 16), ta), _act(rng, (2, 9, 16), tb)
    p = {"sa": 0.02, "za": 131 if ta == "uint8" else -5, "sb": 0.05,
         "zb": -3 if tb == "int8" else 140}  # fmt: skip
    acc = np.einsum("bik,bjk->bij", a.astype(np.int64) - p["za"], b.astype(np.int64) - p["zb"])
    so, zo = _out_params(acc * p["sa"] * p["sb"], "uint8")
    nodes = [
        helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["af"]),
        helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bf"]),
        helper.make_node("Transpose", ["bf"], ["bt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["af", "bt"], ["yf"]),
        helper.make_node("QuantizeLinear", ["yf", "so", "zo"], ["y"]),
    ]
    inits = {
        "sa": np.array(p["sa"], np.float32), "za": np.array(p["za"], ta),
        "sb": np.array(p["sb"], np.float32), "zb": np.array(p["zb"], tb),
        "so": np.array(so, np.float32), "zo": np.array(zo, np.uint8),
    }  # fmt: skip
    model = _model(
        nodes,
        [helper.make_tensor_value_info("a", NP2ONNX[ta], [2, 6, 16]),
         helper.make_tensor_value_info("b", NP2ONNX[tb], [2, 9, 16])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [2, 6, 9])],
        inits,
    )  # fmt: skip
    got, quant, _ = run_int(model, [a, b], tmp_path, target, choose)
    f32 = {k: np.float64(np.float32(v)) for k, v in p.items() if k[0] == "s"}
    mult = f32["sa"] * f32["sb"] / np.float64(np.float32(so))
    np.testing.assert_array_equal(got, qdq.requantize_ref([(acc, mult)], zo, "uint8"))
    assert quant["float_ops"] == [] and quant["integer_op_kinds"] == {"matmul": 1}


def test_conv_clip_tensor_bounds_bit_exact(tmp_path):
    """Conv + Clip(min, max as tensors: the importer's maximum/minimum) + a standalone Clip on
    a quantized tensor: the first becomes the requantization's clamp, the second a clamp of
    the codes."""
    rng = _rng("clip")
    x = _act(rng, (1, 8, 8, 8), "uint8")
    w = rng.integers(-100, 100, (16, 8, 3, 3)).astype(np.int8)
    inits = {
        "sx": np.array(0.02, np.float32), "zx": np.array(128, np.uint8), "w": w,
        "sw": np.full(16, 0.01, np.float32), "zw": np.zeros(16, np.int8),
        "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
        "so": np.array(0.03, np.float32), "zo": np.array(0, np.uint8),
        "lo2": np.array(1.0, np.float32), "hi2": np.array(4.5, np.float32),
        "s2": np.array(0.02, np.float32), "z2": np.array(10, np.uint8),
    }  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wf"], axis=0),
        helper.make_node("Conv", ["xf", "wf"], ["c"], pads=[1] * 4),
        helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "so", "zo"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "so", "zo"], ["rd"]),
        helper.make_node("Clip", ["rd", "lo2", "hi2"], ["r2"]),
        helper.make_node("QuantizeLinear", ["r2", "s2", "z2"], ["y"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 16, 8, 8])],
        inits,
    )
    got, quant, _ = run_int(model, [x], tmp_path)
    f32 = {k: np.float64(v) for k, v in inits.items() if k[0] == "s"}
    acc = _conv_ref(x, 128, w, 1, 1, 1)
    mult = f32["sx"] * f32["sw"][0] / f32["so"]
    r = qdq.requantize_ref([(acc, mult)], 0, "uint8", lo=0, hi=int(np.round(6 / f32["so"])))
    codes = np.clip(r, int(np.ceil(1.0 / f32["so"])), int(np.floor(4.5 / f32["so"])))
    want = qdq.requantize_ref([(codes.astype(np.int64), f32["so"] / f32["s2"])], 10, "uint8")
    np.testing.assert_array_equal(got, want)
    assert quant["integer_op_kinds"] == {"nn.conv2d": 1, "clip": 1}


def test_add_pool_concat_bit_exact(tmp_path):
    """Quantized Add (two-term requantization), Relu, MaxPool, GlobalAveragePool, Concat."""
    rng = _rng("add")
    a, b = _act(rng, (1, 8, 6, 6), "uint8"), _act(rng, (1, 8, 6, 6), "uint8")
    p = {"sa": 0.03, "za": 120, "sb": 0.011, "zb": 7, "ss": 0.04, "zs": 128, "sg": 0.02, "zg": 100}
    nodes = [
        helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["af"]),
        helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bf"]),
        helper.make_node("Add", ["af", "bf"], ["sf"]),
        helper.make_node("QuantizeLinear", ["sf", "ss", "zs"], ["s"]),
        helper.make_node("DequantizeLinear", ["s", "ss", "zs"], ["sd"]),
        helper.make_node("Relu", ["sd"], ["rf"]),
        helper.make_node("QuantizeLinear", ["rf", "ss", "zs"], ["r"]),
        helper.make_node("DequantizeLinear", ["r", "ss", "zs"], ["rd"]),
        helper.make_node("MaxPool", ["rd"], ["mf"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("QuantizeLinear", ["mf", "ss", "zs"], ["mq"]),
        helper.make_node("DequantizeLinear", ["mq", "ss", "zs"], ["md"]),
        helper.make_node("GlobalAveragePool", ["md"], ["gf"]),
        helper.make_node("QuantizeLinear", ["gf", "sg", "zg"], ["g"]),
        helper.make_node("DequantizeLinear", ["g", "sg", "zg"], ["gd"]),
        helper.make_node("MaxPool", ["bf"], ["bfm"], kernel_shape=[6, 6]),
        helper.make_node("QuantizeLinear", ["bfm", "sb", "zb"], ["bq"]),
        helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["bfp"]),
        helper.make_node("Concat", ["gd", "bfp"], ["cf"], axis=1),
        helper.make_node("QuantizeLinear", ["cf", "sg", "zg"], ["y"]),
    ]
    inits = {k: np.array(v, np.float32 if k[0] == "s" else np.uint8) for k, v in p.items()}
    model = _model(
        nodes,
        [helper.make_tensor_value_info(n, TensorProto.UINT8, [1, 8, 6, 6]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 16, 1, 1])],
        inits,
    )
    got, quant, _ = run_int(model, [a, b], tmp_path)
    f32 = {k: np.float64(np.float32(v)) for k, v in p.items() if k[0] == "s"}
    ai, bi = a.astype(np.int64) - p["za"], b.astype(np.int64) - p["zb"]
    s = qdq.requantize_ref([(ai, f32["sa"] / f32["ss"]), (bi, f32["sb"] / f32["ss"])], p["zs"],
                           "uint8", bounds=(255, 255))  # fmt: skip
    r = np.maximum(s, p["zs"])
    m = r.reshape(1, 8, 3, 2, 3, 2).max(axis=(3, 5))
    total = m.astype(np.int64).sum(axis=(2, 3), keepdims=True) - 9 * p["zs"]
    g = qdq.requantize_ref([(total, f32["ss"] / (f32["sg"] * 9))], p["zg"], "uint8")
    bmax = b.max(axis=(2, 3), keepdims=True).astype(np.int64) - p["zb"]
    bpart = qdq.requantize_ref([(bmax, f32["sb"] / f32["sg"])], p["zg"], "uint8")
    np.testing.assert_array_equal(got, np.concatenate([g, bpart], axis=1))
    assert quant["float_ops"] == []
    assert {"add", "nn.relu", "nn.max_pool2d", "mean", "concat"} <= set(quant["integer_op_kinds"])


@pytest.mark.parametrize(("ratios", "zps", "dtype"), [
    ((0.9, 0.7), (0, 255, 3), "uint8"),  # n < 32: multipliers near one
    ((1e-3, 0.02), (255, 0, 250), "uint8"),  # n large: the rounding term dominates
    ((0.5, 0.5), (-128, 127, 0), "int8"),
])  # fmt: skip
def test_add_requantizes_in_int32_at_the_extremes(ratios, zps, dtype, tmp_path, monkeypatch):
    """A residual add of two 8-bit tensors runs in int32 (multipliers of 22 bits or fewer, so
    ``2 * 255 * M + 2**(n-1) < 2**31``) and stays bit-exact with the reference at the codes'
    extremes (every pair of 0/255 or -128/127 with the zero points at the other end)."""
    lo, hi = qdq.QRANGE[dtype]
    codes = np.array([lo, hi, lo + 1, hi - 1, (lo + hi) // 2], np.int64)
    a = np.repeat(codes, len(codes)).reshape(1, 1, 5, 5).astype(dtype)
    b = np.tile(codes, len(codes)).reshape(1, 1, 5, 5).astype(dtype)
    so = 0.05
    p = {"sa": ratios[0] * so, "sb": ratios[1] * so, "so": so}
    inits = {k: np.array(v, np.float32) for k, v in p.items()}
    inits |= {f"z{k}": np.array(z, dtype) for k, z in zip("abo", zps, strict=True)}
    nodes = [
        helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["af"]),
        helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bf"]),
        helper.make_node("Add", ["af", "bf"], ["s"]),
        helper.make_node("QuantizeLinear", ["s", "so", "zo"], ["y"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info(n, NP2ONNX[dtype], [1, 1, 5, 5]) for n in "ab"],
        [helper.make_tensor_value_info("y", NP2ONNX[dtype], [1, 1, 5, 5])],
        inits,
    )
    lowered, original = [], qdq.lower

    def keep(*args, **kwargs):
        lowered.append(original(*args, **kwargs))
        return lowered[-1]

    monkeypatch.setattr(qdq, "lower", keep)
    got, quant, _ = run_int(model, [a, b], tmp_path)
    assert "int64" not in lowered[0]["main"].script()
    f32 = {k: np.float64(np.float32(v)) for k, v in p.items()}
    reals = [np.array(f32["sa"] / f32["so"]), np.array(f32["sb"] / f32["so"])]
    ms, n, narrow = qdq.requant_multipliers(reals, (255, 255))
    assert narrow and max(abs(int(m)) for m in ms) < 2**qdq.NARROW_BITS
    assert 2 * 255 * max(abs(int(m)) for m in ms) + 2 ** (int(n) - 1) < 2**31
    terms = [(a.astype(np.int64) - zps[0], reals[0]), (b.astype(np.int64) - zps[1], reals[1])]
    np.testing.assert_array_equal(got, qdq.requantize_ref(terms, zps[2], dtype, bounds=(255, 255)))
    assert quant["integer_op_kinds"] == {"add": 1}


def test_requant_multipliers_fall_back_to_int64():
    """Terms too wide for int32 (a 16-bit constant, an unbounded accumulator) keep 31-bit
    multipliers in int64."""
    reals = [np.array(0.01), np.array(0.3)]
    _, _, narrow = qdq.requant_multipliers(reals, (255, 40000))
    ms, n, wide_unbounded = qdq.requant_multipliers(reals)
    assert not narrow and not wide_unbounded
    assert 2**30 <= max(abs(int(m)) for m in ms) < 2**31


def test_requantize_edge_cases():
    """The dyadic requantization against exact rational arithmetic: round half up of
    x * M / 2**n, saturation, tiny and near-one multipliers, int32 extremes."""
    accs = np.array([-(2**31), -(2**31) + 1, -1, 0, 1, 2**31 - 1, 12345, -12345], np.int64)
    for real in (1e-12, 3.7e-9, 1e-4, 0.0123, 0.5, 0.999999, 1.0, 1.5, 1000.0):
        (m,), n = qdq.multipliers([np.array(real)])
        assert 1 <= int(n) <= qdq.MAX_SHIFT and abs(int(m)) < 2**31
        if real >= 2**-31:  # M keeps at least 30 significant bits
            assert abs(int(m) / 2 ** int(n) - real) <= real * 2**-30
        for dtype in ("uint8", "int8"):
            got = qdq.requantize_ref([(accs, np.array(real))], 3, dtype)
            lo, hi = qdq.QRANGE[dtype]
            for acc, g in zip(accs, got, strict=True):
                exact = Fraction(int(acc) * int(m), 2 ** int(n)) + Fraction(1, 2)
                want = min(hi, max(lo, (exact.numerator // exact.denominator) + 3))
                assert int(g) == want, (real, dtype, acc)
    # a two-term sum shares one shift; the larger multiplier keeps 30+ bits
    (ma, mb), n = qdq.multipliers([np.array(0.75), np.array(1e-3)])
    assert 2**30 <= ma < 2**31 and abs(mb / 2 ** int(n) - 1e-3) < 2**-31
    with pytest.raises(ValueError):
        qdq.multipliers([np.array(2.0**31)])


def test_integer_only_rejects_float_ops(tmp_path):
    """A Softmax between quantize and dequantize has no integer form: integer_only fails and
    names it; without the flag the report lists it."""
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"], name="dq"),
        helper.make_node("Softmax", ["xf"], ["yf"], name="sm"),
        helper.make_node("QuantizeLinear", ["yf", "s", "z"], ["y"], name="q"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [2, 8])],
        {"s": np.array(0.01, np.float32), "z": np.array(0, np.uint8)},
    )
    with pytest.raises(FloatOpsError) as e:
        lower.build(model, _target(), THREADS, integer_only=True)
    assert "softmax" in str(e.value) and e.value.exit_code == 1
    assert [o["node"] for o in e.value.ops] == ["dq", "sm", "q"]
    assert [o["op"] for o in e.value.ops] == ["dequantize", "nn.softmax", "quantize"]
    quant: dict = {}
    lower.build(model, _target(), THREADS, quant=quant)
    assert [o["op"] for o in quant["float_ops"]] == ["dequantize", "nn.softmax", "quantize"]
    assert quant["declined"] and "softmax" in quant["declined"][0]["reason"]
