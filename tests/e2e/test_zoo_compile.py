"""End to end: zoo models exported by PyTorch, compiled for this CPU, matching onnxruntime."""

import json

import numpy as np
import pytest

import edgec

torch = pytest.importorskip("torch")
from edgec import models  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")

    def export(name: str, **kw):
        path = root / f"{name}{'_dyn' if kw.get('dynamo') else ''}.onnx"
        if not path.exists():
            models.export(name, path, **kw)
        return path

    return export


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "repvgg_a0", "deit_tiny"])
def test_zoo_model_compiles_and_matches_onnxruntime(name, exported, tmp_path):
    result = edgec.compile(exported(name), tmp_path / name, bench=False)
    v = result.report["verification"]
    assert v["passed"], v
    assert v["min_cosine"] > 0.9999
    # and the loaded artifact agrees with onnxruntime on a fresh input too
    import onnxruntime as ort

    x = np.random.default_rng(5).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (ref,) = ort.InferenceSession(str(exported(name))).run(None, {"input": x})
    out = edgec.load(tmp_path / name)(input=x)["output"]
    cos = float(out.ravel() @ ref.ravel() / np.linalg.norm(out) / np.linalg.norm(ref))
    assert cos > 0.9999


@pytest.mark.slow
def test_dynamo_export_with_dynamic_batch_via_cli(exported, tmp_path, cli):
    """The dynamo exporter's graph (opset 18), through the CLI, with report and bench."""
    path = exported("mobilenetv2", dynamo=True)
    out = tmp_path / "m"
    result = cli("-q", "compile", path, "-o", out, "--bench-runs", "5", "--bench-budget", "1")
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["min_cosine"] > 0.9999
    assert report["latency"]["edgec"]["runs"] >= 5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["opset"] >= 17
