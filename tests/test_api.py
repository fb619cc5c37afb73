import json

import numpy as np
import onnxruntime as ort
import pytest

import edgec
from edgec import lower, passes
from edgec.errors import InvalidInputError, VerificationError

SHAPE = {"x": (1, 3, 16, 16)}


def test_compile_writes_a_complete_artifact(conv_relu, tmp_path):
    out = tmp_path / "out"
    result = edgec.compile(conv_relu, out, input_shapes=SHAPE, bench_runs=5, bench_budget_s=0.5)
    assert sorted(p.name for p in out.iterdir()) == [
        "edgec-run", "libtvm_ffi.so", "libtvm_runtime.so",  # the deploy bundle
        "manifest.json", "model.onnx", "model.so", "report.html", "report.json"
    ]  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "y", "shape": [1, 8, 16, 16], "dtype": "float32"}]
    assert manifest["target"]["name"] == "x86_64"
    assert manifest["target"]["tvm"]["mcpu"] not in ("host", "native", "generic")
    assert set(manifest["versions"]) >= {"edgec", "tvm", "onnx", "onnxruntime"}
    assert len(manifest["source"]["sha256"]) == 64
    assert [p["name"] for p in manifest["passes"]] == [p.name for p in passes.PASSES]
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    v = report["verification"]
    assert v["passed"] and v["min_cosine"] > 0.9999 and v["max_abs_err"] < 1e-4
    lat = report["latency"]
    for engine in ("edgec", "onnxruntime"):
        assert set(lat[engine]) >= {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "stddev_ms", "runs",
                                    "warmup"}  # fmt: skip
        assert lat[engine]["runs"] >= 5 and lat[engine]["p50_ms"] > 0
    assert lat["threads"] == report["threads"] >= 1
    # per-kernel profile against the machine's measured peak
    assert report["peak"]["gflops"] > 10 and report["peak"]["threads"] == report["threads"]
    (conv,) = [k for k in report["kernels"] if k["template"] == "conv2d"]
    assert conv["calls"] == 1 and conv["profile_ms"] > 0
    assert conv["gflops"] == conv["flops"] / (conv["profile_ms"] * 1e6)
    assert 0 < conv["peak_fraction"] == conv["gflops"] / report["peak"]["gflops"]
    assert not list(tmp_path.glob(".out.*")), "staging directory left behind"


def test_load_and_call_matches_onnxruntime(conv_relu, tmp_path):
    edgec.compile(conv_relu, tmp_path / "out", input_shapes=SHAPE, bench=False)
    model = edgec.load(tmp_path / "out")
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    (y,) = ort.InferenceSession(str(conv_relu)).run(None, {"x": x})
    out = model(x=x)
    assert list(out) == ["y"]
    np.testing.assert_allclose(out["y"], y, rtol=1e-5, atol=1e-5)


def test_multiple_inputs_outputs_and_integer_dtypes(two_io, tmp_path):
    edgec.compile(two_io, tmp_path / "out", bench=False)
    model = edgec.load(tmp_path / "out")
    a = np.arange(10, dtype=np.float32).reshape(2, 5)
    k = np.array([[0, 1, 2, 3, 20], [9, 0, 0, 0, 0]], dtype=np.int64)
    out = model(a=a, k=k)
    np.testing.assert_array_equal(out["s"], a + k)
    np.testing.assert_array_equal(out["m"], [4, 0])
    assert out["m"].dtype == np.int64


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"a": np.zeros((2, 5), np.float32)}, "missing input 'k' \\[2, 5\\] int64"),
        ({"a": np.zeros((2, 4), np.float32), "k": np.zeros((2, 5), np.int64)},
         "input 'a' has shape \\[2, 4\\], expected \\[2, 5\\]"),
        ({"a": np.zeros((2, 5), np.float64), "k": np.zeros((2, 5), np.int64)},
         "input 'a' has dtype float64, expected float32"),
        ({"a": np.zeros((2, 5), np.float32), "k": np.zeros((2, 5), np.int64), "z": 1},
         "unknown input 'z'"),
    ],
)  # fmt: skip
def test_wrong_inputs_are_clear_errors(two_io, tmp_path, inputs, message):
    edgec.compile(two_io, tmp_path / "out", bench=False)
    model = edgec.load(tmp_path / "out")
    with pytest.raises(InvalidInputError, match=message):
        model.run(inputs)


def test_existing_output_is_refused_without_force(conv_relu, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(InvalidInputError, match="already exists; pass --force"):
        edgec.compile(conv_relu, out, input_shapes=SHAPE, bench=False)
    assert (out / "keep.txt").read_text() == "user data"
    edgec.compile(conv_relu, out, input_shapes=SHAPE, bench=False, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.so").exists()


def test_existing_file_is_never_replaced(conv_relu, tmp_path):
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(InvalidInputError, match="not a directory"):
        edgec.compile(conv_relu, out, input_shapes=SHAPE, bench=False, force=True)
    assert out.read_text() == "a file"


def test_verification_failure_leaves_no_output(conv_relu, tmp_path, monkeypatch):
    real_run = lower.Runtime.run

    def wrong(self, arrays):
        return [y + 0.01 * np.abs(y).max() for y in real_run(self, arrays)]

    monkeypatch.setattr(lower.Runtime, "run", wrong)
    out = tmp_path / "out"
    with pytest.raises(VerificationError, match=r"y: scaled err 0.01.*\[FAIL\]") as exc:
        edgec.compile(conv_relu, out, input_shapes=SHAPE, bench=False)
    assert exc.value.report["verification"]["passed"] is False
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [conv_relu]


def test_tolerance_and_verify_inputs(conv_relu, tmp_path, monkeypatch):
    x = np.full((1, 3, 16, 16), 0.5, np.float32)
    res = edgec.compile(conv_relu, tmp_path / "a", input_shapes=SHAPE, bench=False,
                        verify_inputs={"x": x}, tolerance=1e-3)  # fmt: skip
    assert res.report["verification"]["inputs"] == "--verify-input"
    assert res.report["verification"]["tolerance"] == 1e-3
    with pytest.raises(InvalidInputError, match="input 'x' has shape"):
        edgec.compile(conv_relu, tmp_path / "b", input_shapes=SHAPE, bench=False,
                      verify_inputs={"x": x[0]})  # fmt: skip


def test_bench_existing_artifact(conv_relu, tmp_path):
    edgec.compile(conv_relu, tmp_path / "out", input_shapes=SHAPE, bench=False)
    result = edgec.bench(tmp_path / "out", runs=6, budget_s=0.2)
    assert result["edgec"]["runs"] == result["onnxruntime"]["runs"] >= 5
    assert result["onnxruntime_model"].startswith("source")
    conv_relu.unlink()
    result = edgec.bench(tmp_path / "out", runs=5, budget_s=0.1)
    assert result["onnxruntime_model"].startswith("optimized model.onnx")
