"""GPU targets without a GPU: CUDA compiled with dlight and validated to cubin; OpenCL compiled."""

import shutil

import pytest

import edgec
from edgec import lower, targets
from edgec.lower import gpu

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")


@needs_nvcc
def test_cuda_sm80_tiny_model_compiles_to_valid_cubin(conv_relu, tmp_path):
    out = tmp_path / "cuda"
    result = edgec.compile(conv_relu, out, target="cuda/sm_80", input_shapes={"x": (1, 3, 16, 16)})
    v = result.report["verification"]
    if gpu.gpu_present("cuda"):  # a GPU machine runs it and compares with onnxruntime
        assert v["passed"] and v["scaled_err"] <= 1e-4
        return
    assert v["passed"] and v["cubin_bytes"] > 1000 and v["source_bytes"] > 1000
    assert v["run"] == "skipped: no CUDA GPU here" and "sm_80" in v["method"]
    assert "bundle" in result.manifest and result.manifest["bundle"] is None
    assert (out / "model.so").stat().st_size > 10_000
    assert result.manifest["target"]["tvm"]["kind"] == "cuda"


def test_device_code_is_cuda_c_for_cuda_and_opencl_c_for_mali(conv_relu):
    model = edgec.frontend.import_model(conv_relu, {"x": (1, 3, 16, 16)}).model
    for name, kind, marker in (("cuda/sm_86", "cuda", "__global__"),
                               ("opencl/mali", "opencl", "__kernel")):  # fmt: skip
        executable, kernels = lower.build(model, targets.get(name), 2)
        (src,) = gpu.device_sources(executable, kind)
        assert marker in src and kernels == []


@needs_nvcc
def test_broken_cuda_code_fails_verification():
    class Fake:  # an executable whose device module holds invalid CUDA C
        class mod:
            kind, imports = "cuda", []

            @staticmethod
            def inspect_source(fmt):
                return 'extern "C" __global__ void k(float* x) { x[0] = undefined_name; }'

    with pytest.raises(edgec.errors.VerificationError, match="nvcc rejected"):
        gpu.validate_cuda(Fake(), "sm_80")


@pytest.mark.slow
@needs_nvcc
def test_cuda_sm80_resnet18_compiles_to_valid_cubin(tmp_path):
    pytest.importorskip("torch")
    from edgec import models

    path = models.export("resnet18", tmp_path / "resnet18.onnx")
    result = edgec.compile(path, tmp_path / "r18", target="cuda/sm_80")
    v = result.report["verification"]
    assert v["passed"] and v["cubin_bytes"] > 50_000 and v["source_bytes"] > 500_000
