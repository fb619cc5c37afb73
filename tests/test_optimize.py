"""`edgec optimize`: the rewritten ONNX model, written atomically, checked, runnable anywhere."""

import json

import onnx

from tests.conftest import assert_equivalent


def test_optimize_writes_a_checked_equivalent_model(cli, conv_relu, tmp_path):
    out = tmp_path / "opt.onnx"
    result = cli("-q", "optimize", conv_relu, "-o", out, "--input-shape", "x=1,3,16,16")
    assert result.code == 0, result.err
    assert "simplify" in result.out
    optimized = onnx.load(out)
    original = onnx.load(conv_relu)
    original.graph.input[0].CopyFrom(optimized.graph.input[0])  # same pinned shape
    assert_equivalent(original, optimized)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_optimize_json_report_and_pass_selection(cli, conv_relu, tmp_path):
    out = tmp_path / "opt.onnx"
    result = cli("-q", "optimize", conv_relu, "-o", out, "--input-shape", "x=1,3,16,16",
                 "--only-pass", "simplify", "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert [p["name"] for p in json.loads(result.out)] == ["simplify"]


def test_optimize_refuses_to_overwrite(cli, conv_relu, tmp_path):
    out = tmp_path / "opt.onnx"
    out.write_text("mine")
    result = cli("-q", "optimize", conv_relu, "-o", out, "--input-shape", "x=1,3,16,16")
    assert result.code == 2 and "already exists; pass --force" in result.err
    assert out.read_text() == "mine"
    result = cli("-q", "optimize", conv_relu, "-o", out, "--input-shape", "x=1,3,16,16",
                 "--force")  # fmt: skip
    assert result.code == 0 and onnx.load(out).graph.node
