"""The NHWC layout (``lower.build(layout="nhwc")``, edgec.lower.conv_nhwc): numerically equal to
onnxruntime, scheduled by the ``conv2d_nhwc`` template (not a fallback), every knob of its space
correct, the layout propagated through Clip (ReLU6) without transposes between convs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgec import api, frontend, lower, verify
from edgec.lower import conv_nhwc, measure
from tests.conftest import make_model
from tests.lower.test_schedules import (
    OPSET,
    THREADS,
    Conv,
    _describe,
    _target,
    assert_close,
    assert_template,
)

A = (0, 1, 1, 2)  # asymmetric pads (top, left, bottom, right)
CASES = [
    Conv(3, 16, k=3, stride=2, epilogue="clip"),  # stem: the input's transpose inlined
    Conv(16, 32, k=1, pads=(0, 0, 0, 0), bias=False),
    Conv(24, 24, k=1, pads=(0, 0, 0, 0), epilogue="clip"),  # 24 channels: half vectors
    Conv(48, 16, k=1, pads=(0, 0, 0, 0), epilogue="add_relu"),  # residual add
    Conv(16, 32, k=1, stride=2, pads=(0, 0, 0, 0), hw=(14, 14)),
    Conv(16, 32, stride=2, pads=A, epilogue="relu"),
    Conv(16, 16, epilogue="res_relu"),
    Conv(16, 48, k=5, pads=(2, 2, 2, 2), hw=(9, 11), bias=False),
    Conv(16, 32, groups=2, epilogue="relu"),
    Conv(24, 24, groups=24, epilogue="clip"),  # depthwise
    Conv(24, 24, stride=2, pads=(0, 0, 1, 1), groups=24, epilogue="clip"),
    Conv(32, 32, k=5, stride=2, pads=(2, 2, 2, 2), groups=32, bias=False),
    Conv(16, 16, pads=(2, 2, 2, 2), dilation=2, groups=16, epilogue="relu"),
    Conv(8, 16, groups=8, epilogue="relu"),  # channel multiplier 2
    Conv(16, 32, epilogue="relu", batch=2),
]


def compile_and_run(model, tmp_path: Path):
    target = _target()
    executable, records = lower.build(model, target, threads=THREADS, layout="nhwc")
    path = tmp_path / "model.so"
    lower.export(executable, path, target)
    inputs, outputs = frontend.signature(model)
    feeds = verify.random_inputs(inputs, 0)
    got = lower.Runtime(path, THREADS).run([feeds[s.name] for s in inputs])
    return (
        records,
        dict(zip([s.name for s in outputs], got, strict=True)),
        verify.run_onnxruntime(model, feeds),
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_nhwc_conv_matches_onnxruntime(case: Conv, tmp_path: Path):
    records, actual, expected = compile_and_run(case.model(), tmp_path)
    assert_close(actual, expected)
    assert_template(records, "conv2d", "conv2d_nhwc")


def test_decline_when_no_vector_fits_a_group(tmp_path: Path):
    """3 output channels per group: no channel vector stays in one group, so conv2d_nhwc declines
    (recorded) and the conv is still computed right by the next template."""
    records, actual, expected = compile_and_run(
        Conv(6, 6, groups=2, epilogue="relu").model(), tmp_path
    )
    assert_close(actual, expected)
    (conv,) = [r for r in records if "conv2d" in r["kernel"]]
    assert conv["template"] != "conv2d_nhwc", _describe(records)
    assert any(d.startswith("conv2d_nhwc: no channel block") for d in conv["declined"])


def _tasks(model) -> list:
    import tvm
    from tvm import relax

    mod = lower.to_relax(model)
    with tvm.target.Target(lower.target_json(_target(), THREADS)):
        mod = conv_nhwc.convert(mod)
        mod = relax.get_pipeline("zero")(mod)
    return [t for t in measure.kernel_tasks(mod, 16) if t.template == "conv2d_nhwc"]


@pytest.mark.parametrize(
    "case",
    [Conv(16, 64, k=3, hw=(9, 15), epilogue="clip"), Conv(48, 48, groups=48, hw=(9, 15))],
    ids=["dense", "depthwise"],
)
def test_every_knob_of_the_space_is_correct(case: Conv):
    """What the search may pick: every candidate gives the default's outputs (weights packed
    per candidate at run time, so all see the same logical inputs)."""
    (task,) = _tasks(case.model())
    target = lower.target_json(_target(), THREADS)
    want = measure.outputs(task, task.default, target)
    assert len(task.space) >= 8
    for knobs in task.space:
        got = measure.outputs(task, knobs, target)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=json.dumps(knobs))


def _relax_ops(mod) -> Counter:
    import tvm
    from tvm import relax

    ops: Counter = Counter()

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            ops[expr.op.name] += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return ops


def _relu6_chain():
    """conv -> ReLU6 -> depthwise conv -> ReLU6 -> conv (the MobileNetV2 block)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((32, 8, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((32, 1, 3, 3)).astype(np.float32)
    w3 = rng.standard_normal((8, 32, 1, 1)).astype(np.float32)
    text = f"""{OPSET}
    block (float[1,8,12,12] x) => (float[1,8,12,12] y) {{
        a = Conv <kernel_shape = [1, 1]> (x, w1, b1)
        r = Clip (a, lo, hi)
        d = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 32> (r, w2)
        s = Clip (d, lo, hi)
        y = Conv <kernel_shape = [1, 1]> (s, w3)
    }}"""
    return make_model(text, w1=w1, w2=w2, w3=w3, b1=rng.standard_normal(32).astype(np.float32),
                      lo=np.array(0.0, np.float32), hi=np.array(6.0, np.float32))  # fmt: skip


def test_clip_imports_as_relax_ops_and_the_layout_propagates():
    model = _relu6_chain()
    mod = lower.to_relax(model)
    ops = _relax_ops(mod)
    assert ops["relax.maximum"] == ops["relax.minimum"] == 2
    assert ops["relax.call_tir"] == 0  # TVM's own Clip converter emits two call_tir each
    converted = _relax_ops(conv_nhwc.convert(mod))
    assert converted["relax.nn.conv2d"] == 3
    assert converted["relax.permute_dims"] == 2  # the model's input and output only


def test_qdq_models_keep_tvms_clip():
    """edgec.lower.qdq folds Clip into the integer kernels by TVM's form (call_tir maximum /
    minimum): a model with quantize/dequantize ops is imported with it."""
    text = f"""{OPSET}
    qclip (float[1,4,3,3] x) => (float[1,4,3,3] y) {{
        q = QuantizeLinear (x, s, z)
        d = DequantizeLinear (q, s, z)
        c = Clip (d, lo, hi)
        y = Relu (c)
    }}"""
    model = make_model(text, s=np.array(0.05, np.float32), z=np.array(128, np.uint8),
                       lo=np.array(0.0, np.float32), hi=np.array(6.0, np.float32))  # fmt: skip
    ops = _relax_ops(lower.to_relax(model))
    assert ops["relax.call_tir"] == 2 and ops["relax.maximum"] == ops["relax.minimum"] == 0


def test_clip_nan_bound_is_no_bound(tmp_path: Path):
    text = f"""{OPSET}
    clip (float[2,5] x) => (float[2,5] y) {{
        y = Clip (x, lo, hi)
    }}"""
    model = make_model(text, lo=np.array(np.nan, np.float32), hi=np.array(0.5, np.float32))
    records, actual, expected = compile_and_run(model, tmp_path)
    assert_close(actual, expected)


def test_auto_layout_is_nhwc_only_with_depthwise_convs():
    assert conv_nhwc.resolve("auto", _relu6_chain()) == "nhwc"
    dense = Conv(16, 32, groups=2, epilogue="relu").model()
    assert conv_nhwc.resolve("auto", dense) == "nchw"
    assert conv_nhwc.resolve("nhwc", dense) == "nhwc"


def test_cli_compile_layout(cli, tmp_path: Path):
    """--layout auto (the default) picks nhwc for the depthwise block; --layout nchw keeps it."""
    model = tmp_path / "block.onnx"
    model.write_bytes(_relu6_chain().SerializeToString())
    out = tmp_path / "out"
    for layout, template in (("auto", "conv2d_nhwc"), ("nchw", "conv2d")):
        result = cli("-q", "compile", model, "-o", out, "--force", "--layout", layout,
                     "--threads", "2", "--no-bench", "--no-bundle", "--no-html")  # fmt: skip
        assert result.code == 0, result.err
        report = json.loads((out / "report.json").read_text())
        assert report["layout"] == ("nhwc" if layout == "auto" else layout)
        templates = Counter(k["template"] for k in report["kernels"] if "conv2d" in k["kernel"])
        assert templates == {template: 3}
        assert report["verification"]["passed"]
    result = cli("-q", "compile", model, "-o", out, "--force", "--layout", "nhcw")
    assert result.code == 2


def test_int8_models_stay_nchw(cli, tmp_path: Path):
    """--int8 keeps the NCHW lowering (the integer conv templates), even under --layout nhwc."""
    model = tmp_path / "block.onnx"
    model.write_bytes(_relu6_chain().SerializeToString())
    out = tmp_path / "out"
    result = cli("-q", "compile", model, "-o", out, "--layout", "nhwc", "--int8",
                 "--calib", "synthetic", "--threads", "2", "--no-bench", "--no-bundle",
                 "--no-html")  # fmt: skip
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert report["layout"] == "nchw"
    assert not [k for k in report["kernels"] if k["template"] == "conv2d_nhwc"]


def test_convert_keeps_nchw_when_tvm_cannot_relayout(monkeypatch):
    from tvm import relax

    def broken(_layouts):
        raise RuntimeError("ConvertLayout: no layout inference for some.op")

    mod = lower.to_relax(_relu6_chain())
    monkeypatch.setattr(relax.transform, "ConvertLayout", broken)
    with pytest.warns(UserWarning, match="NHWC layout not applied: ConvertLayout"):
        kept = conv_nhwc.convert(mod)
    assert kept is mod


def _upsampling():
    rng = np.random.default_rng(1)
    text = f"""{OPSET}
    up (float[1,8,6,6] x) => (float[1,8,12,12] y) {{
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 8> (x, w1)
        u = ConvTranspose <kernel_shape = [2, 2], strides = [2, 2]> (a, w2)
        y = Conv <kernel_shape = [1, 1]> (u, w3)
    }}"""
    return make_model(text, w1=rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
                       w2=rng.standard_normal((8, 8, 2, 2)).astype(np.float32),
                       w3=rng.standard_normal((8, 8, 1, 1)).astype(np.float32))  # fmt: skip


def test_conv_transpose_stays_nchw_between_nhwc_convs(tmp_path: Path, recwarn):
    """TVM cannot lower an NHWC conv2d_transpose (PP-OCR's detector has them): it stays NCHW,
    the convs around it are NHWC."""
    model = _upsampling()
    records, actual, expected = compile_and_run(model, tmp_path)
    assert_close(actual, expected)
    assert not [w for w in recwarn if "NHWC layout not applied" in str(w.message)]
    convs = [r for r in records if "conv2d" in r["kernel"] and "transpose" not in r["kernel"]]
    assert [r["template"] for r in convs] == ["conv2d_nhwc", "conv2d_nhwc"], _describe(records)


def test_an_op_left_unlowerable_keeps_the_model_nchw(monkeypatch):
    monkeypatch.setattr(conv_nhwc, "DESIRED", {"relax.nn.conv2d": ["NHWC", "HWIO"]})
    mod = lower.to_relax(_upsampling())
    with pytest.warns(UserWarning, match="relax.nn.conv2d_transpose in NHWC cannot be lowered"):
        kept = conv_nhwc.convert(mod)
    assert kept is mod


def test_report_says_when_the_layout_fell_back(tmp_path: Path, monkeypatch):
    """The report's ``layout`` is the layout applied: nchw after a fallback, with the reason."""
    path = tmp_path / "up.onnx"
    onnx.save(_upsampling(), path)
    report = api.compile(path, tmp_path / "out", bench=False, layout="nhwc").report
    assert report["layout"] == "nhwc" and "layout_fallback" not in report
    monkeypatch.setattr(conv_nhwc, "DESIRED", {"relax.nn.conv2d": ["NHWC", "HWIO"]})
    with pytest.warns(UserWarning, match="NHWC layout not applied"):
        report = api.compile(path, tmp_path / "out2", bench=False, layout="nhwc").report
    assert report["layout"] == "nchw"
    assert "conv2d_transpose in NHWC cannot be lowered" in report["layout_fallback"]
    assert report["verification"]["passed"]
