"""Tests for the model zoo (edgec.models): build, ONNX export and deploy-form structure."""

from __future__ import annotations

import collections
import os
import pathlib
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
np = pytest.importorskip("numpy")

import edgec.models as zoo  # noqa: E402
from edgec.models.repvgg import RepBlock  # noqa: E402

NAMES = [m.name for m in zoo.ZOO]
REPARAM_PAIRS = [("repvgg_a0", "repvgg_a0_deploy", 22), ("mobileone_s0", "mobileone_s0_deploy", 43)]
DYNAMO_FAST = ["resnet18", "deit_tiny", "slab_tiny"]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| relative to max |b|."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def torch_out(name: str, seed: int = 0, batch: int = 1) -> np.ndarray:
    with torch.no_grad():
        return zoo.build(name, seed)(zoo.example_input(name, seed, batch)).numpy()


def ort_out(path: pathlib.Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x})[0]


def op_counts(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """name -> path of its dynamo=False export (each model exported once per module)."""
    root = tmp_path_factory.mktemp("zoo")
    cache: dict[str, pathlib.Path] = {}

    def get(name: str) -> pathlib.Path:
        if name not in cache:
            cache[name] = zoo.export(name, root / f"{name}.onnx")
        return cache[name]

    return get


def test_registry() -> None:
    assert NAMES == [
        "resnet18",
        "mobilenetv2",
        "repvgg_a0",
        "repvgg_a0_deploy",
        "mobileone_s0",
        "mobileone_s0_deploy",
        "deit_tiny",
        "slab_tiny",
    ]
    assert isinstance(zoo.ZOO, tuple)
    for m in zoo.ZOO:
        assert zoo.get(m.name) is m
        assert m.kind in ("cnn", "vit") and m.description and "\n" not in m.description
        assert m.input_shape == (1, 3, 224, 224)
    assert [m.kind for m in zoo.ZOO].count("vit") == 2
    with pytest.raises(ValueError, match="unknown zoo model 'nope'; known: resnet18"):
        zoo.get("nope")
    with pytest.raises(ValueError):
        zoo.build("nope")


def test_import_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import edgec.models as z\n"
        "assert len(z.ZOO) == 8 and z.get('deit_tiny').kind == 'vit'\n"
    )
    root = pathlib.Path(zoo.__file__).parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)


@pytest.mark.parametrize("name", NAMES)
def test_build(name: str) -> None:
    model = zoo.build(name, seed=0)
    assert not model.training
    y = torch_out(name)
    assert y.shape == (1, 1000)
    assert np.isfinite(y).all()
    assert 0.05 < np.abs(y).max() < 100, "random init should keep logits O(1)"
    np.testing.assert_array_equal(torch_out(name, seed=0), y)  # deterministic
    assert not np.allclose(torch_out(name, seed=1), y)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:  # non-trivial eval statistics
        assert bn.running_var.min() >= 0.5 and bn.running_var.max() <= 1.5
        assert bn.running_mean.abs().max() > 0 and bn.bias.abs().max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_export_torchscript(name: str, exported) -> None:
    path = exported(name)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    x = zoo.example_input(name).numpy()
    assert rel_err(ort_out(path, x), torch_out(name)) < 1e-4


def _check_dynamo(name: str, tmp_path: pathlib.Path) -> None:
    path = zoo.export(name, tmp_path / f"{name}.onnx", dynamo=True)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}[""] >= 18
    assert [i.name for i in model.graph.input] == ["input"]
    x = zoo.example_input(name).numpy()
    assert rel_err(ort_out(path, x), torch_out(name)) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx"]  # no external data


@pytest.mark.parametrize("name", DYNAMO_FAST)
def test_export_dynamo(name: str, tmp_path: pathlib.Path) -> None:
    _check_dynamo(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if n not in DYNAMO_FAST])
def test_export_dynamo_all(name: str, tmp_path: pathlib.Path) -> None:
    _check_dynamo(name, tmp_path)


@pytest.mark.parametrize(("train", "deploy", "n_blocks"), REPARAM_PAIRS)
def test_deploy_form_onnx(train: str, deploy: str, n_blocks: int, exported) -> None:
    t_ops, d_ops = op_counts(onnx.load(exported(train))), op_counts(onnx.load(exported(deploy)))
    assert d_ops["Conv"] == n_blocks
    assert d_ops["BatchNormalization"] == 0
    assert d_ops["Relu"] == n_blocks
    assert t_ops["Conv"] >= n_blocks
    assert t_ops["BatchNormalization"] > 0  # identity-branch BN is not folded


@pytest.mark.parametrize(("train", "deploy", "n_blocks"), REPARAM_PAIRS)
def test_deploy_form_is_reparameterization(train: str, deploy: str, n_blocks: int) -> None:
    t_model, d_model = zoo.build(train, seed=3), zoo.build(deploy, seed=3)
    t_blocks = {n: m for n, m in t_model.named_modules() if isinstance(m, RepBlock)}
    d_blocks = {n: m for n, m in d_model.named_modules() if isinstance(m, RepBlock)}
    assert t_blocks.keys() == d_blocks.keys() and len(d_blocks) == n_blocks
    for name, tb in t_blocks.items():
        conv = d_blocks[name].reparam
        main = tb.dense[0].conv  # the kxk branch fixes the deploy conv's geometry
        assert conv.weight.shape == main.weight.shape
        assert (conv.stride, conv.padding, conv.groups) == (main.stride, main.padding, main.groups)
        assert conv.bias is not None and main.bias is None
    x = zoo.example_input(train, seed=5)
    with torch.no_grad():
        y_t, y_d = t_model(x).numpy(), d_model(x).numpy()
    assert rel_err(y_d, y_t) < 1e-5


def test_export_batch_and_opset(tmp_path: pathlib.Path) -> None:
    path = zoo.export("slab_tiny", str(tmp_path / "sub" / "m.onnx"), batch=2, opset=18, seed=4)
    assert isinstance(path, pathlib.Path) and path.exists()
    model = onnx.load(path)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    x = zoo.example_input("slab_tiny", seed=4, batch=2).numpy()
    y = ort_out(path, x)
    assert y.shape == (2, 1000)
    assert rel_err(y, torch_out("slab_tiny", seed=4, batch=2)) < 1e-4


def test_export_is_atomic(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")

    def broken(model, x, path, opset, dynamo) -> None:
        pathlib.Path(path).write_bytes(b"partial")
        raise RuntimeError("boom")

    monkeypatch.setattr(zoo, "_export_to", broken)
    with pytest.raises(RuntimeError, match="boom"):
        zoo.export("slab_tiny", target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
