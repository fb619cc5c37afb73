"""The deploy bundle: edgec-run with the target's TVM runtime, natively and under qemu-aarch64."""

import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest

import edgec
from edgec import deploy, targets, verify
from edgec.deploy import toolchain
from edgec.errors import VerificationError
from edgec.report import latency

SHAPE = {"x": (1, 3, 16, 16)}
BUNDLE = {"edgec-run", "libtvm_runtime.so", "libtvm_ffi.so"}
EM_AARCH64 = 183  # ELF e_machine of aarch64

needs_qemu = pytest.mark.skipif(
    toolchain.emulator(targets.get("arm64")) is None or not shutil.which("aarch64-linux-gnu-g++"),
    reason="needs the arm64 cross toolchain and qemu-user: make cross-toolchain",
)


def _elf_machine(path) -> int:
    return int.from_bytes(path.read_bytes()[18:20], "little")


def _scaled_err(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_native_bundle_runs_without_python_and_reports_bench_keys(conv_relu, tmp_path):
    out = tmp_path / "out"
    result = edgec.compile(conv_relu, out, input_shapes=SHAPE, bench=False)
    assert set(result.manifest["bundle"]["files"]) == BUNDLE
    assert all((out / name).is_file() for name in BUNDLE)
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    # the documented command line, run from the bundle directory
    proc = subprocess.run(
        ["./edgec-run", "./model.so", "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy",
         "--runs", "7", "--warmup", "2", "--threads", "1", "--report", tmp_path / "lat.json",
         "--profile", "3"],
        cwd=out, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (want,) = verify.run_onnxruntime(onnx.load(conv_relu), {"x": x}).values()
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float32 and y.shape == (1, 8, 16, 16)
    assert _scaled_err(y, want) <= 1e-4
    report = json.loads((tmp_path / "lat.json").read_text())
    assert set(report["edgec"]) == set(latency.stats([0.001, 0.002], 2))  # same keys as bench
    assert report["edgec"]["runs"] == 7 and report["edgec"]["warmup"] == 2
    s = report["edgec"]
    assert 0 < s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert report["threads"] == 1 and report["peak_rss_mb"] > 1
    assert report["device"]["arch"] == "x86_64" and report["device"]["cores"] >= 1
    assert report["device"]["emulated"] is None
    # per-kernel profile on the device (the VM's instrument hook), slowest first
    rows = report["profile"]
    (conv,) = [r for r in rows if r["kernel"].startswith("fused_conv2d")]
    assert conv["calls"] == 1 and conv["ms"] > 0
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    assert abs(sum(r["share"] for r in report["profile"]) - 1) < 1e-6


def test_bad_input_gives_a_clear_runner_error(conv_relu, tmp_path):
    out = tmp_path / "out"
    edgec.compile(conv_relu, out, input_shapes=SHAPE, bench=False, verify_result=False)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    proc = subprocess.run([out / "edgec-run", out / "model.so", "-i", tmp_path / "bad.npy"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "not a .npy file" in proc.stderr


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """ONNX exports of zoo architectures at test-sized inputs (qemu is slow)."""
    torch = pytest.importorskip("torch")
    from edgec import models
    from edgec.models.vit import DeiT

    root = tmp_path_factory.mktemp("zoo_arm64")

    def export(name: str) -> tuple:
        if name == "resnet18":
            torch.manual_seed(0)
            model, shape = models.build("resnet18"), (1, 3, 64, 64)
        else:  # DeiT-tiny's blocks (dim 192, 3 heads, 224 px, 196+1 tokens), 2 of its 12
            torch.manual_seed(0)
            model, shape = models.finish_init(DeiT(depth=2)).eval(), (1, 3, 224, 224)
        path = root / f"{name}.onnx"
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), models._quiet_exporter():
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"])  # fmt: skip
        return path, shape

    return export


@needs_qemu
@pytest.mark.parametrize("name", ["resnet18", "deit_tiny_2blocks"])
def test_arm64_zoo_model_matches_onnxruntime_under_qemu(name, zoo, tmp_path):
    path, shape = zoo(name)
    out = tmp_path / "arm"
    result = edgec.compile(path, out, target="arm64")
    v = result.report["verification"]
    assert v["emulated"] == "qemu-aarch64: correctness only"
    assert v["passed"] and v["scaled_err"] <= 1e-4 and v["min_cosine"] > 0.9999
    assert "emulated: correctness only" in result.report["latency"]["skipped"]
    assert _elf_machine(out / "model.so") == _elf_machine(out / "edgec-run") == EM_AARCH64
    assert _elf_machine(out / "libtvm_runtime.so") == EM_AARCH64
    assert result.manifest["bundle"]["runtime"]["platform"] == "manylinux_2_28_aarch64"
    # the bundle's runner, under qemu, on a fresh input
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    emulator = toolchain.emulator(targets.get("arm64"))
    (y,), report = deploy.run_bundle(out, "model.so", [x], emulator=emulator, runs=2)
    (want,) = verify.run_onnxruntime(onnx.load(path), {"input": x}).values()
    assert y.shape == want.shape and _scaled_err(y, want) <= 1e-4
    assert report["device"]["arch"] == "aarch64" and report["edgec"]["runs"] == 2


@needs_qemu
def test_a_wrong_result_under_qemu_fails_the_compile_and_writes_nothing(conv_relu, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    real = deploy.run_bundle

    def off_by_a_bit(*args, **kw):
        outputs, report = real(*args, **kw)
        return [o + 1e-2 * np.abs(o).max() for o in outputs], report

    monkeypatch.setattr(deploy, "run_bundle", off_by_a_bit)
    with pytest.raises(VerificationError, match="outputs differ from onnxruntime") as e:
        edgec.compile(conv_relu, tmp_path / "out", target="arm64", input_shapes=SHAPE)
    assert e.value.report["verification"]["emulated"] == "qemu-aarch64: correctness only"
    assert 9e-3 < e.value.report["verification"]["scaled_err"] < 1.1e-2
    assert not (tmp_path / "out").exists()


@needs_qemu
def test_arm64_int8_compiles_to_integer_kernels_verified_under_qemu(tmp_path):
    """The command users asked for: `edgec compile model.onnx --target arm64 --int8`."""
    from tests.quant.conftest import model_path

    result = edgec.compile(model_path("digits_cnn"), tmp_path / "out", target="arm64", int8=True,
                           calib="synthetic")  # fmt: skip
    report = result.report
    assert report["precision"] == "int8" and report["float_ops"] == []
    v = report["verification"]
    assert v["passed"] and v["emulated"].startswith("qemu-aarch64")
    assert v["scaled_err"] <= 0.05  # vs the QDQ model in onnxruntime
    assert report["latency"] == {"skipped": deploy.EMULATED_LATENCY}
    assert (tmp_path / "out" / "report.html").is_file() and "html_error" not in report
