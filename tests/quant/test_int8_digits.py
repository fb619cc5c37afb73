"""int8 accuracy on the held-out digits test set (committed models, deterministic split), and
`edgec compile --int8` end to end: report/manifest keys, synthetic warning, bad usage."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgec import frontend, passes
from edgec.quant import Int8Options, accuracy, quantize
from tests.quant.conftest import MODELS, model_path


def top1(run, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in percent, one image at a time (the models take batch 1)."""
    hits = [int(np.argmax(run({"input": x[i : i + 1]})["output"])) == y[i] for i in range(len(y))]
    return 100.0 * float(np.mean(hits))


@pytest.fixture(scope="module")
def fp32_models():
    out = {}
    for name in MODELS:
        imported = frontend.import_model(model_path(name), {})
        out[name] = (imported, passes.run_pipeline(imported.model, passes.select())[0])
    return out


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "mode, max_drop",
    [("calibrated", 0.5), ("dfq_data_free", 1.0), ("dfq_calibrated", 0.5)],
)
def test_int8_top1_close_to_fp32(name, mode, max_drop, fp32_models, digits, calib_npz):
    imported, fp32 = fp32_models[name]
    options = {
        "calibrated": Int8Options(calib=str(calib_npz)),
        "dfq_data_free": Int8Options(dfq=True),  # synthetic activation ranges, BN statistics
        "dfq_calibrated": Int8Options(calib=str(calib_npz), dfq=True),
    }[mode]
    result = quantize(fp32, imported.inputs, options, source=imported.model)
    assert sum(n.op_type == "QuantizeLinear" for n in result.model.graph.node) >= 4
    _, _, x_test, y_test = digits
    want = top1(accuracy.ort_runner(fp32), x_test, y_test)
    got = top1(accuracy.ort_runner(result.model), x_test, y_test)
    assert want > 98.0
    assert got >= want - max_drop, f"{name} {mode}: int8 {got:.2f}% vs fp32 {want:.2f}%"
    assert (mode == "dfq_data_free") == bool(result.warnings)  # synthetic ranges are flagged


def test_compile_int8_end_to_end(cli, tmp_path, digits):
    """edgec compile --int8 with a directory of calibration .npy files; the compiled artifact's
    top-1 over the held-out set is within 0.5 points of fp32."""
    x_train, _, x_test, y_test = digits
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(64):
        np.save(calib / f"{i:03d}.npy", x_train[i][None])
    out = tmp_path / "out"
    r = cli("compile", model_path("digits_cnn"), "-o", out, "--int8", "--calib", calib,
            "--calib-samples", "48", "--calib-method", "percentile", "--no-bench")  # fmt: skip
    assert r.code == 0, r.err
    assert "calibration: 48/48 samples" in r.err and "int8:" in r.out
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert manifest["precision"] == report["precision"] == "int8"
    assert report["quantization"]["calibration"]["samples"] == 48
    assert report["quantization"]["calibration"]["method"] == "percentile"
    v = report["verification"]
    assert v["passed"] and v["vs_fp32"]["min_cosine"] > 0.99  # accuracy
    assert v["scaled_err"] <= 0.05 and v["tolerance"] == 0.05  # the lowering vs QDQ semantics
    assert report["accuracy"]["top1_agreement"] > 0.95 and not report["warnings"]
    qdq = onnx.load(out / "model.onnx")
    assert sum(n.op_type == "DequantizeLinear" for n in qdq.graph.node) >= 8

    from edgec import api

    model = api.load(out)
    fp32 = accuracy.ort_runner(onnx.load(model_path("digits_cnn")))
    want = top1(fp32, x_test, y_test)
    got = top1(lambda feeds: model(**feeds), x_test, y_test)
    assert got >= want - 0.5, f"compiled int8 {got:.2f}% vs fp32 {want:.2f}%"


def test_synthetic_calibration_warns_loudly(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("compile", model_path("digits_cnn"), "-o", out, "--int8", "--calib", "synthetic",
            "--no-bench")  # fmt: skip
    assert r.code == 0, r.err
    assert "WARNING: --calib synthetic" in r.err
    report = json.loads((out / "report.json").read_text())
    assert any("synthetic" in w for w in report["warnings"])
    assert "warning" in report["accuracy"] and report["quantization"]["calibration"]["warning"]


@pytest.mark.parametrize(
    "args, match",
    [
        (["--calib", "synthetic"], "only apply with --int8"),
        (["--int8"], "needs calibration data"),
        (["--int8", "--calib", "nowhere/"], "no such file"),
        (["--int8", "--calib", "synthetic", "--keep-float", "nope"], "no node named 'nope'"),
        (["--int8", "--calib", "synthetic", "--calib-samples", "0"], "must be positive"),
    ],
)
def test_bad_int8_usage_exits_2(cli, tmp_path, args, match):
    out = tmp_path / "out"
    r = cli("compile", model_path("digits_cnn"), "-o", out, "--no-bench", *args)
    assert r.code == 2 and match in r.err, r.err
    assert not out.exists()


def test_png_calibration_matches_array_calibration(fp32_models, digits, calib_npz, tmp_path):
    """The digits as 8-bit PNGs, preprocessed back to the model's scale by --calib-preprocess:
    the same samples up to 8-bit rounding, and int8 top-1 within 0.5 points of fp32."""
    from PIL import Image

    x_train, _, x_test, y_test = digits
    for i in range(100):  # model input (p/16 - 0.5)/0.5  ->  8-bit grey p*255/16
        pixels = np.round((x_train[i, 0] * 0.5 + 0.5) * 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(tmp_path / f"{i:03d}.png")
    imported, fp32 = fp32_models["digits_cnn"]
    images = quantize(fp32, imported.inputs, Int8Options(
        calib=str(tmp_path), calib_preprocess="mean=0.5,std=0.5,layout=NCHW"))  # fmt: skip
    arrays = quantize(fp32, imported.inputs, Int8Options(calib=str(calib_npz)))
    assert images.calibration.kind == "images" and len(images.calibration.samples) == 100
    np.testing.assert_allclose(
        images.calibration.samples[7]["input"], x_train[7:8], atol=1.01 / 255
    )
    got = top1(accuracy.ort_runner(images.model), x_test, y_test)
    assert got >= top1(accuracy.ort_runner(fp32), x_test, y_test) - 0.5
    assert abs(images.accuracy["cosine"] - arrays.accuracy["cosine"]) < 1e-3


def test_int8_verification_failure_exits_1_and_writes_nothing(cli, tmp_path, monkeypatch):
    from edgec import verify

    monkeypatch.setitem(verify.MIN_COSINE, "int8", 0.9999999)  # no int8 model is this close
    out = tmp_path / "out"
    r = cli("compile", model_path("digits_cnn"), "-o", out, "--int8", "--calib", "synthetic",
            "--no-bench")  # fmt: skip
    assert r.code == 1 and "worst-sample cosine >= 1" in r.err, r.err
    assert "[FAIL]" in r.err and not out.exists()


def test_int8_min_cosine_sets_the_accuracy_floor(cli, tmp_path):
    """--int8-min-cosine replaces the 0.98 floor of the int8-vs-fp32 check: far above what int8
    reaches it fails (exit 1, nothing written); a lower floor is recorded in the report."""
    failed = tmp_path / "failed"
    r = cli("compile", model_path("digits_cnn"), "-o", failed, "--int8", "--calib", "synthetic",
            "--no-bench", "--int8-min-cosine", "0.9999999")  # fmt: skip
    assert r.code == 1 and "worst-sample cosine >= 1" in r.err and not failed.exists(), r.err
    out = tmp_path / "out"
    r = cli("compile", model_path("digits_cnn"), "-o", out, "--int8", "--calib", "synthetic",
            "--no-bench", "--int8-min-cosine", "0.9", "--json")  # fmt: skip
    assert r.code == 0, r.err
    v = json.loads(r.out)["verification"]
    assert v["passed"] and v["min_cosine_required"] == 0.9
