"""edgec check: the op-coverage matrix, and the same listing when compile fails."""

from __future__ import annotations

import json

import numpy as np
import onnx

from tests.conftest import RNG_SEED, make_model


def _unsupported(tmp_path):
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17, "com.example" : 1]>
        g (float[1,4] x) => (float[1,4] y) {
            a = Celu <alpha = 1.0> (x)
            b = Relu (a)
            c = Relu (b)
            y = com.example.Fancy (c)
        }
        """
    )
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    onnx.save(model, tmp_path / "m.onnx")
    return tmp_path / "m.onnx"


def test_unsupported_op_exits_3_with_matrix_and_suggestions(cli, tmp_path):
    path = _unsupported(tmp_path)
    result = cli("check", path)
    assert result.code == 3
    lines = result.out.splitlines()
    assert lines[0] == f"{path}: 4 node(s), 3 op type(s), target x86_64"
    assert [line.split() for line in lines[3:6]] == [
        ["Relu", "2", "yes"], ["Celu", "1", "NO"], ["com.example.Fancy", "1", "NO"]]  # fmt: skip
    assert "the model uses 2 unsupported op type(s) in 2 node(s):" in result.out
    assert "  Celu (1): n0\n      suggestion: export it as Elu-style ops" in result.out
    assert "  com.example.Fancy (1): n3\n      suggestion: custom domain com.example" in result.out
    assert "2 node(s) cannot be lowered for x86_64" in result.err
    data = json.loads(cli("check", path, "--json").out)
    assert data["supported"] is False
    assert [n["node"] for n in data["unsupported"]] == ["n0", "n3"]
    assert [(n["node"], n["lowers"]) for n in data["node_coverage"]] == [
        ("n0", False), ("n1", True), ("n2", True), ("n3", False)]  # fmt: skip
    # compile fails with the same listing (exit 3, nothing written)
    result = cli("-q", "compile", path, "-o", tmp_path / "out")
    assert result.code == 3 and not (tmp_path / "out").exists()
    assert "  Celu (1): n0\n      suggestion: export it as Elu-style ops" in result.err


def test_supported_model_shows_the_passes_that_would_fire(cli, tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N,3,8,8] x) => (float[N,4,8,8] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, W)
            y = BatchNormalization (c, s, b, m, v)
        }
        """,
        W=rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        s=rng.standard_normal(4).astype(np.float32), b=rng.standard_normal(4).astype(np.float32),
        m=rng.standard_normal(4).astype(np.float32), v=rng.uniform(0.5, 2, 4).astype(np.float32),
    )  # fmt: skip
    onnx.save(model, tmp_path / "bn.onnx")
    before = (tmp_path / "bn.onnx").read_bytes()
    result = cli("check", tmp_path / "bn.onnx")
    assert result.code == 0, result.err
    assert "  not evaluated: dynamic input shapes need --input-shape" in result.out
    result = cli("check", tmp_path / "bn.onnx", "--input-shape", "x=1,3,8,8")
    assert result.code == 0, result.err
    assert "simplify         fires: BatchNormalization -1 (2 -> 1 nodes)" in result.out
    assert "every op lowers for x86_64" in result.out
    result = cli("check", tmp_path / "bn.onnx", "--input-shape", "x=1,3,8,8", "--skip-pass",
                 "simplify", "--json")  # fmt: skip
    pipeline = json.loads(result.out)["passes"]["pipeline"]
    assert [(p["name"], p["fires"]) for p in pipeline] == [
        ("fuse_batchnorm", {"FuseBatchNormIntoConv": 1}), ("reparameterize", {}),
        ("extract_conv", {})]  # fmt: skip
    assert (tmp_path / "bn.onnx").read_bytes() == before  # a copy was rewritten, not the file
