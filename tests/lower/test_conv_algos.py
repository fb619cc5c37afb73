"""Convolution algorithms (edgec.lower.conv_algos): im2win, im2col and Winograd against
onnxruntime, Winograd's error bound, the per-layer choice of the search, --conv-algo, and the
im2win CUDA kernel compiled to PTX.

Each numerical case compiles a one-conv ONNX model (with its fused epilogue) with the algorithm
forced, runs it through the Relax VM and compares with onnxruntime (max abs error <= 1e-4 x
the output's magnitude); it also checks which template scheduled the conv kernel, so a silent
fallback to direct fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgec
from edgec import frontend, lower, verify
from edgec.lower import conv_algos, im2win, measure, winograd
from edgec.lower.conv_algos import ConvSpec
from tests.lower.test_schedules import THREADS, Conv, _target, assert_close, assert_template

A = (0, 1, 1, 2)  # asymmetric pads (top, left, bottom, right)
PACKED_CASES = [
    Conv(16, 32, k=1, pads=(0, 0, 0, 0), bias=False),
    Conv(16, 32, k=1, stride=2, pads=(0, 0, 0, 0), hw=(14, 15), epilogue="relu"),
    Conv(16, 32, epilogue="relu"),
    Conv(16, 32, stride=2, pads=A, epilogue="relu"),
    Conv(8, 16, k=5, pads=(1, 2, 2, 1), hw=(11, 13), epilogue="clip"),
    Conv(3, 16, k=7, stride=2, pads=(3, 3, 3, 3), hw=(15, 17), epilogue="relu"),
    Conv(16, 32, pads=(2, 2, 2, 2), dilation=2, epilogue="relu"),
    Conv(8, 16, stride=2, pads=(0, 0, 0, 0), dilation=2, hw=(17, 13), bias=False),
    Conv(16, 32, groups=2, epilogue="relu"),
    Conv(24, 24, groups=2, hw=(11, 11), epilogue="add_relu"),
    Conv(16, 16, epilogue="res_relu", batch=2),
]
DEPTHWISE = Conv(24, 24, stride=2, pads=(0, 0, 1, 1), groups=24, epilogue="clip")
WINOGRAD_CASES = [
    Conv(16, 32, epilogue="relu"),
    Conv(16, 16, epilogue="res_relu"),
    Conv(32, 32, hw=(7, 9), bias=False, epilogue="add_relu"),
    Conv(16, 24, pads=A, hw=(9, 11)),
    Conv(8, 16, pads=(0, 0, 0, 0), hw=(10, 10), batch=2, epilogue="clip"),
]
TEMPLATE = {"im2win": "im2win", "im2col": "im2col", "winograd": "winograd"}


def compile_and_run(model: onnx.ModelProto, tmp_path: Path, conv_algo: str):
    plans: list = []
    target = _target()
    executable, records = lower.build(
        model, target, threads=THREADS, conv_algo=conv_algo, conv_plan=plans
    )
    lower.export(executable, tmp_path / "model.so", target)
    inputs, outputs = frontend.signature(model)
    feeds = verify.random_inputs(inputs, 0)
    got = lower.Runtime(tmp_path / "model.so", THREADS).run([feeds[s.name] for s in inputs])
    actual = dict(zip([s.name for s in outputs], got, strict=True))
    return records, plans[0], actual, verify.run_onnxruntime(model, feeds)


def test_grids_cover_every_axis():
    cases = PACKED_CASES + [DEPTHWISE]
    assert {c.k for c in cases} == {1, 3, 5, 7}
    assert {c.stride for c in cases} == {1, 2}
    assert {p for c in cases for p in c.pads} == {0, 1, 2, 3}
    assert any(len(set(c.pads)) > 1 for c in cases)
    assert {c.dilation for c in cases} == {1, 2}
    assert {"1" if c.groups == 1 else "C" if c.groups == c.cin else "g" for c in cases} == {
        "1", "g", "C"
    }  # fmt: skip
    assert {c.batch for c in cases} == {1, 2}


@pytest.mark.parametrize("layout", im2win.LAYOUTS)
@pytest.mark.parametrize("case", PACKED_CASES, ids=lambda c: c.id)
def test_im2win_matches_onnxruntime(case: Conv, layout: str, tmp_path: Path):
    records, plan, actual, expected = compile_and_run(case.model(), tmp_path, f"im2win-{layout}")
    assert_close(actual, expected)
    (kernel,) = assert_template(records, "im2win", "im2win")
    assert kernel["conv"]["algorithm"] == "im2win" and kernel["conv"]["option"] == layout
    # one kernel computes the conv and its epilogue: nothing else has the conv's output size
    assert not [r for r in records if r["template"] == "conv2d"]


@pytest.mark.parametrize("case", PACKED_CASES[1:6], ids=lambda c: c.id)
def test_im2col_matches_onnxruntime(case: Conv, tmp_path: Path):
    records, _, actual, expected = compile_and_run(case.model(), tmp_path, "im2col")
    assert_close(actual, expected)
    assert_template(records, "im2col", "im2col")


@pytest.mark.parametrize("m", winograd.TILES)
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=lambda c: c.id)
def test_winograd_matches_onnxruntime(case: Conv, m: int, tmp_path: Path):
    records, _, actual, expected = compile_and_run(case.model(), tmp_path, f"winograd-{m}")
    assert_close(actual, expected)
    (kernel,) = assert_template(records, "winograd", "winograd")
    assert kernel["conv"]["algorithm"] == "winograd" and kernel["conv"]["option"] == m


@pytest.mark.parametrize("algo", ["im2win", "winograd"])
def test_depthwise_falls_back_to_direct(algo: str, tmp_path: Path):
    records, plan, actual, expected = compile_and_run(DEPTHWISE.model(), tmp_path, algo)
    assert_close(actual, expected)
    (kernel,) = assert_template(records, "conv2d", "conv2d")
    assert kernel["conv"]["algorithm"] == "direct"
    assert kernel["conv"]["fallback"].startswith("depthwise")
    assert plan.summary()["chosen"] == {"direct": 1}


def test_knob_candidates_are_correct():
    """Every third candidate (so every knob value occurs) of the im2win (both
    layouts), im2col and Winograd templates computes what the default does (the search's own
    check, on seeded random inputs)."""
    from tvm import relax

    target = lower.target_json(_target(), THREADS)
    lanes = lower.vector_lanes(_target())
    model = Conv(16, 32, hw=(7, 8), epilogue="relu").model()
    checked = {}
    for label in ("im2win-nhwc", "im2win-nchw", "winograd-4", "winograd-2", "im2col"):
        mod, _ = conv_algos.rewrite(
            lower.to_relax(model), conv_algos.forced(*conv_algos.parse(label))
        )
        (task,) = [t for t in measure.kernel_tasks(relax.get_pipeline("zero")(mod), lanes)
                   if t.template in TEMPLATE]  # fmt: skip
        want = measure.outputs(task, task.default, target)
        for knobs in task.space[1::3]:
            got = measure.outputs(task, knobs, target)
            for g, w in zip(got, want, strict=True):
                err = np.abs(g - w).max() / np.abs(w).max()
                assert err <= 1e-5, f"{label} {knobs}: {err:.2g}"
        checked[label] = len(task.space)
    assert all(n >= 2 for n in checked.values()), checked


INT8_CASES = [
    ConvSpec(1, 16, 9, 11, 32, 3, 3, pads=(1, 1, 1, 1)),
    ConvSpec(1, 16, 13, 12, 32, 3, 3, stride=(2, 2), pads=(0, 1, 1, 2), dilation=(2, 2)),
    ConvSpec(2, 16, 8, 8, 16, 5, 5, pads=(2, 2, 2, 2), groups=2),
    ConvSpec(1, 8, 7, 7, 16, 1, 1),
]


@pytest.mark.parametrize("layout", im2win.LAYOUTS)
@pytest.mark.parametrize("spec", INT8_CASES, ids=lambda s: s.label().replace(" ", "_"))
def test_im2win_int8_is_exact(spec: ConvSpec, layout: str):
    """int8 x int8 -> int32 im2win, scheduled by the CPU template: bit-exact vs numpy int64."""
    import tvm

    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (spec.n, spec.cin, spec.h, spec.w)).astype(np.int8)
    weight = rng.integers(-128, 128, (spec.cout, spec.cg, spec.kh, spec.kw)).astype(np.int8)
    packed, _ = im2win.relax_parts(spec, weight, layout)
    lib = im2win.integer_kernel(spec, layout, target=lower.target_json(_target(), THREADS))
    dev = tvm.cpu(0)
    y = tvm.runtime.tensor(np.zeros((spec.n, spec.cout, spec.ho, spec.wo), np.int32), dev)
    lib["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(packed, dev), y)
    want = conv_algos.reference_conv(x, weight, spec)
    assert np.abs(want).max() > 2**15  # sums beyond int16: a real int32 accumulation
    np.testing.assert_array_equal(y.numpy(), want)


# one QDQ conv (u8/s8 activations, per-channel s8 weights, int32 bias): k, stride, pads, dilation,
# groups. The input is already quantized, so the compiled model is integer end to end.
QDQ_CASES = [
    (3, (1, 1), (1, 1, 1, 1), 1, 1),
    (3, (2, 2), A, 1, 1),
    (5, (1, 1), (2, 1, 2, 3), 1, 2),
    (7, (2, 2), (3, 3, 3, 3), 1, 1),
    (3, (1, 1), (2, 2, 2, 2), 2, 1),
    (1, (2, 2), (0, 0, 0, 0), 1, 1),
    (3, (1, 1), (1, 1, 1, 1), 1, 16),  # depthwise: stays direct
]


def _qdq_conv(case, act: str):
    """(model, quantized input, expected output) for a QDQ conv: the expected output is the
    integer arithmetic of edgec.lower.qdq in numpy (exact int64 conv of x - zx, dyadic
    requantization), so any kernel must match it bit for bit."""
    from onnx import TensorProto, helper, numpy_helper

    from edgec.lower import qdq

    k, stride, pads, dil, groups = case
    c, f, hw = 16, 16 if groups == 16 else 32, (11, 13)
    spec = ConvSpec(1, c, *hw, f, k, k, stride=stride, pads=pads, dilation=(dil, dil),
                    groups=groups)  # fmt: skip
    rng = np.random.default_rng([7, k, *stride, *pads, dil, groups, len(act)])
    lo, hi = qdq.QRANGE[act]
    x = rng.integers(lo, hi + 1, (1, c, *hw)).astype(act)
    zx = int(rng.integers(100, 150)) if act == "uint8" else int(rng.integers(-10, 10))
    w = rng.integers(-127, 128, (f, c // groups, k, k)).astype(np.int8)
    sx, sw = 0.02, rng.uniform(0.001, 0.01, f).astype(np.float32)
    b = rng.integers(-3000, 3000, f).astype(np.int32)
    acc = conv_algos.reference_conv(x.astype(np.int64) - zx, w, spec) + b.reshape(1, -1, 1, 1)
    real = acc * (sx * sw.astype(np.float64)).reshape(1, -1, 1, 1)
    if act == "uint8":
        so = float(real.max() - min(real.min(), 0)) / 255
        zo = int(np.clip(round(-min(real.min(), 0) / so), 0, 255))
    else:
        so, zo = float(np.abs(real).max()) / 127, 0
    ty = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}[act]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wf"], axis=0),
        helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bf"], axis=0),
        helper.make_node(
            "Conv",
            ["xf", "wf", "bf"],
            ["yf"],
            kernel_shape=[k, k],
            pads=[pads[0], pads[1], pads[2], pads[3]],
            strides=list(stride),
            dilations=[dil, dil],
            group=groups,
        ),  # fmt: skip
        helper.make_node("Relu", ["yf"], ["yr"]),
        helper.make_node("QuantizeLinear", ["yr", "so", "zo"], ["y"]),
    ]
    inits = {
        "sx": np.array(sx, np.float32), "zx": np.array(zx, act), "w": w, "sw": sw,
        "zw": np.zeros(f, np.int8), "b": b, "bs": (np.float32(sx) * sw).astype(np.float32),
        "bz": np.zeros(f, np.int32), "so": np.array(so, np.float32), "zo": np.array(zo, act),
    }  # fmt: skip
    graph = helper.make_graph(
        nodes, "q", [helper.make_tensor_value_info("x", ty, list(x.shape))],
        [helper.make_tensor_value_info("y", ty, [1, f, spec.ho, spec.wo])],
        [numpy_helper.from_array(v, name) for name, v in inits.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    mult = np.float64(np.float32(sx)) * sw.astype(np.float64) / np.float64(np.float32(so))
    lo_q = zo  # relu: codes below the zero point clamp to it
    want = qdq.requantize_ref([(acc, mult.reshape(1, -1, 1, 1))], zo, act, lo=lo_q)
    return model, x, want


@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("case", QDQ_CASES, ids=lambda c: "k{}s{}p{}d{}g{}".format(
    c[0], c[1][0], "".join(map(str, c[2])), c[3], c[4]))  # fmt: skip
def test_im2win_int8_in_a_qdq_model(case, act: str, tmp_path: Path):
    """``--conv-algo im2win`` on an int8 model: the integer conv of edgec.lower.qdq becomes
    an im2win kernel (u8 x s8 -> s32, the zero-point padding folded into the window copy, the
    requantization fused as its epilogue), bit-exact with numpy's integer arithmetic and within
    one quantum of onnxruntime."""
    model, x, want = _qdq_conv(case, act)
    plans: list = []
    target = _target()
    ex, records = lower.build(model, target, THREADS, integer_only=True, conv_algo="im2win",
                              conv_plan=plans)  # fmt: skip
    lower.export(ex, tmp_path / "model.so", target)
    got = lower.Runtime(tmp_path / "model.so", THREADS).run([x])[0]
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) > 20
    # onnxruntime on the same QDQ model: within one quantum (float rounding ties go either way)
    ort = verify.run_onnxruntime(model, {"x": x})["y"]
    assert np.abs(got.astype(np.int32) - ort.astype(np.int32)).max() <= 1
    (layer,) = plans[0].layers
    if case[4] == 16:
        assert layer["algo"] == "direct" and "depthwise" in layer["fallback"]
        return
    assert layer["algo"] == "im2win" and layer["spec"].integer
    assert layer["spec"].pads == case[2]  # the separate zero-point pad was folded
    (conv,) = assert_template(records, "im2win", "im2win")
    assert conv["conv"]["transformed_input_bytes"] == conv_algos.transformed_bytes(
        "im2win", layer["spec"], "nhwc")["transformed_input_bytes"]  # fmt: skip
    assert not [r for r in records if r["kernel"].startswith("pad")]  # no padded copy


# --------------------------------------------------------------------------------------------
# numerics of Winograd and the memory model


def test_winograd_error_is_bounded_and_reported():
    rng = np.random.default_rng(0)
    spec = ConvSpec(1, 64, 14, 14, 64, 3, 3, pads=(1, 1, 1, 1))
    weight = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
    x = rng.uniform(-1, 1, (1, 64, 14, 14)).astype(np.float32)
    exact = conv_algos.reference_conv(x, weight, spec)
    errors = {}
    for m in winograd.TILES:
        emulated = winograd.emulate(x, weight, spec, m)
        errors[m] = conv_algos.relative_error(emulated, exact)
        # another seeded input: same order of magnitude
        assert 1 / 3 < errors[m] / winograd.layer_error(spec, weight, m) < 3
        assert 1e-8 < errors[m] < conv_algos.WINOGRAD_RTOL
    assert errors[2] < errors[4]  # the bigger tile rounds more (larger transform constants)


def test_im2win_uses_less_memory_than_im2col():
    """The window tensor is K_h*W_span*H_o vs im2col's K_h*K_w*H_o*W_o: <= 0.6x for stride-1
    kernels of width >= 3; stride 2 halves im2col's columns, so the ratio is s/K_w ~ 0.67."""
    for k in (3, 5, 7):
        spec = ConvSpec(1, 64, 56, 56, 64, k, k, pads=(k // 2,) * 4)
        win = conv_algos.transformed_bytes("im2win", spec)["transformed_input_bytes"]
        col = conv_algos.transformed_bytes("im2col", spec)["transformed_input_bytes"]
        assert win / col == pytest.approx((56 + k - 1) / (k * 56))  # W_span / (K_w * W_o)
        assert win <= 0.6 * col
    s2 = ConvSpec(1, 64, 56, 56, 128, 3, 3, stride=(2, 2), pads=(1, 1, 1, 1))
    ratio = (conv_algos.transformed_bytes("im2win", s2)["transformed_input_bytes"]
             / conv_algos.transformed_bytes("im2col", s2)["transformed_input_bytes"])  # fmt: skip
    assert ratio == pytest.approx(57 / (3 * 28))


# --------------------------------------------------------------------------------------------
# the search chooses an algorithm per layer; --conv-algo forces one


def _two_layer_model() -> onnx.ModelProto:
    from tests.conftest import make_model

    rng = np.random.default_rng(7)
    return make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        two (float[1,16,12,12] x) => (float[1,32,6,6] y) {
            a = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
            r = Relu (a)
            y = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (r, W2, B2)
        }
        """,
        W1=(rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32),
        B1=rng.standard_normal(16).astype(np.float32),
        W2=(rng.standard_normal((32, 16, 3, 3)) / 12).astype(np.float32),
        B2=rng.standard_normal(32).astype(np.float32),
    )


SPEED = {"winograd": 1e-4, "im2win": 2e-4, "conv2d": 5e-4, "im2col": 9e-4}  # fake seconds


@pytest.fixture
def fake_times(monkeypatch):
    """Kernels time by template (Winograd fastest, then im2win, direct, im2col); outputs of
    candidates of one kernel agree."""
    calls = []

    def fake_measure(task, knobs, target, **kw):
        calls.append(task.name)
        return SPEED.get(task.template, 1e-3) * (1 + 0.01 * task.space.index(knobs))

    monkeypatch.setattr(measure, "measure", fake_measure)
    monkeypatch.setattr(measure, "outputs", lambda *a, **k: [np.zeros(4, np.float32)])
    return calls


def _conv_records(report: dict) -> list[dict]:
    return sorted((k for k in report["kernels"] if "conv" in k), key=lambda k: k["conv"]["layers"])


def test_search_picks_the_fastest_algorithm_per_layer(tmp_path: Path, fake_times):
    path = tmp_path / "two.onnx"
    onnx.save(_two_layer_model(), path)
    report = edgec.compile(path, tmp_path / "out", bench=False, search="fast",
                           tuning_db=tmp_path / "t.db").report  # fmt: skip
    first, second = _conv_records(report)
    assert first["conv"]["algorithm"] == "winograd" and first["template"] == "winograd"
    assert second["conv"]["algorithm"] == "im2win" and second["template"] == "im2win"
    tried = {(t["algo"], t["option"]) for t in first["conv"]["tried"]}
    assert tried == set(conv_algos.VARIANTS)  # every variant of a 3x3 stride-1 layer
    assert {t["algo"] for t in second["conv"]["tried"]} == {"direct", "im2col", "im2win"}
    for t in first["conv"]["tried"]:
        assert t["ms"] > 0 and "workspace_bytes" in t
        if t["algo"] == "winograd":
            assert 0 < t["error"] < conv_algos.WINOGRAD_RTOL
    assert report["conv_algos"]["chosen"] == {"winograd": 1, "im2win": 1}
    assert report["verification"]["passed"]  # the chosen algorithms compile into a right model


def test_search_screens_variants_then_tunes_only_the_chosen_kernels(tmp_path: Path, fake_times):
    """Phase 1 times each variant's default once (names "variant/kernel"); phase 2 searches
    knobs of the final model's kernels only, on the same budget, reusing the screened times."""
    path = tmp_path / "two.onnx"
    onnx.save(_two_layer_model(), path)
    report = edgec.compile(path, tmp_path / "out", bench=False, search="fast",
                           tuning_db=tmp_path / "t.db").report  # fmt: skip
    screened = [name for name in fake_times if "/" in name]
    tuned = [name for name in fake_times if "/" not in name]
    assert len(screened) == len(set(screened)) >= 6  # one default per variant kernel
    assert fake_times[: len(screened)] == screened  # the screen comes first
    final = {k["kernel"] for k in report["kernels"]}
    chosen = {k["kernel"] for k in _conv_records(report)}
    assert tuned and set(tuned) <= final and chosen <= set(tuned)
    for k in _conv_records(report):  # several knobs timed, the fastest chosen
        assert len(k["candidates"]) > 1 and k["knobs"] == k["candidates"][0]["knobs"]


def test_winograd_beyond_tolerance_is_rejected(tmp_path: Path, fake_times, monkeypatch):
    monkeypatch.setattr(conv_algos, "WINOGRAD_RTOL", 1e-12)
    path = tmp_path / "two.onnx"
    onnx.save(_two_layer_model(), path)
    report = edgec.compile(path, tmp_path / "out", bench=False, search="fast",
                           tuning_db=tmp_path / "t.db").report  # fmt: skip
    first, _ = _conv_records(report)
    assert first["conv"]["algorithm"] == "im2win"  # the next fastest
    rejected = [t for t in first["conv"]["tried"] if t["algo"] == "winograd"]
    assert len(rejected) == 2 and all("rejected" in t for t in rejected)


def test_auto_without_a_search_takes_winograd_for_big_3x3_layers(tmp_path: Path):
    big = Conv(64, 64, hw=(14, 14), epilogue="relu")
    records, plan, actual, expected = compile_and_run(big.model(), tmp_path, "auto")
    assert_close(actual, expected)
    (kernel,) = assert_template(records, "winograd", "winograd")
    assert kernel["conv"]["option"] == 4 and "tried" not in kernel["conv"]
    small = conv_algos.ConvSpec(1, 32, 14, 14, 64, 3, 3, pads=(1, 1, 1, 1))
    strided = conv_algos.ConvSpec(1, 64, 28, 28, 64, 3, 3, stride=(2, 2), pads=(1, 1, 1, 1))
    assert conv_algos.heuristic(0, small) == conv_algos.heuristic(0, strided) == ("direct", None)


@pytest.mark.parametrize("algo", ["im2win", "im2col", "winograd", "direct"])
def test_cli_conv_algo_forces_the_family(cli, tmp_path: Path, algo: str):
    path = tmp_path / "two.onnx"
    onnx.save(_two_layer_model(), path)
    r = cli("compile", path, "-o", tmp_path / "out", "--conv-algo", algo, "--no-bench", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    first, second = _conv_records(report)
    assert first["conv"]["algorithm"] == algo
    want = "direct" if algo == "winograd" else algo  # stride 2: Winograd falls back
    assert second["conv"]["algorithm"] == want
    if algo == "winograd":
        assert "stride 1" in second["conv"]["fallback"]
    assert report["conv_algos"]["conv_algo"] == algo
    assert report["verification"]["passed"]


def test_cli_rejects_an_unknown_algorithm(cli, tmp_path: Path):
    path = tmp_path / "two.onnx"
    onnx.save(_two_layer_model(), path)
    r = cli("compile", path, "-o", tmp_path / "out", "--conv-algo", "fft")
    assert r.code == 2 and "fft" in r.err
    assert not (tmp_path / "out").exists()
    with pytest.raises(edgec.errors.InvalidInputError, match="im2win-nchw"):
        edgec.compile(path, tmp_path / "out", conv_algo="fft")


# --------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")
def test_im2win_cuda_kernel_compiles_to_ptx():
    spec = ConvSpec(1, 32, 14, 14, 64, 3, 3, stride=(2, 2), pads=(1, 1, 1, 1))
    ptx = im2win.cuda_ptx(spec)
    assert ".entry im2win_conv2d_kernel(" in ptx  # the conv; _1 is the window transform
    assert ".shared" in ptx and "ld.shared.f32" in ptx  # window rows staged in shared memory
    assert "bar.sync" in ptx
