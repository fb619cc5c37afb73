"""The command line: every documented exit code, with a message that names the problem."""

import json

import numpy as np
import onnx
import pytest

from tests.conftest import make_model


def _assert_clean_error(result, code: int, *fragments: str) -> None:
    assert result.code == code, result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, result.err


def test_help_documents_exit_codes(cli):
    result = cli("--help")
    assert result.code == 0
    for line in ("0  success", "1  verification", "2  bad usage", "3  model not supported"):
        assert line in result.out


def test_compile_and_run_roundtrip(cli, conv_relu, tmp_path):
    out = tmp_path / "out"
    result = cli("-q", "compile", conv_relu, "-o", out, "--input-shape", "x=1,3,16,16",
                 "--bench-runs", "5", "--bench-budget", "0.2")  # fmt: skip
    assert result.code == 0, result.err
    assert "accuracy:  PASS" in result.out and "latency:" in result.out
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = cli("-q", "run", out, "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "y.npz")
    assert result.code == 0, result.err
    with np.load(tmp_path / "y.npz") as y:
        assert y["y"].shape == (1, 8, 16, 16)
    # never overwrite without --force
    result = cli("-q", "run", out, "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "y.npz")
    _assert_clean_error(result, 2, "y.npz already exists; pass --force")
    result = cli("-q", "run", out, "--input", f"z={tmp_path / 'x.npy'}", "-o", tmp_path / "z.npz")
    _assert_clean_error(result, 2, "unknown input 'z'", "missing input 'x'")
    assert not (tmp_path / "z.npz").exists()


def test_compile_json_output_is_the_report(cli, conv_relu, tmp_path):
    result = cli("-q", "compile", conv_relu, "-o", tmp_path / "o", "--input-shape",
                 "x=1,3,16,16", "--no-bench", "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert json.loads(result.out) == json.loads((tmp_path / "o" / "report.json").read_text())


def test_bench_command(cli, conv_relu, tmp_path):
    assert cli("-q", "compile", conv_relu, "-o", tmp_path / "o", "--input-shape", "x=1,3,16,16",
               "--no-bench").code == 0  # fmt: skip
    result = cli("-q", "bench", tmp_path / "o", "--runs", "5", "--budget", "0.1", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["edgec"]["runs"] == 5
    result = cli("-q", "bench", tmp_path / "missing")
    _assert_clean_error(result, 2, "no such artifact directory")


@pytest.mark.parametrize(
    ("make_input", "fragments"),
    [
        (lambda d: d / "missing.onnx", ["missing.onnx: no such file"]),
        (lambda d: _write(d / "text.onnx", b"hello, not a model\n"), ["not a valid ONNX model"]),
        (lambda d: _write(d / "trunc.onnx", _conv_bytes()[:150]), ["not a valid ONNX model"]),
        (lambda d: _write(d / "empty.onnx", b""), ["not a valid ONNX model"]),
        (lambda d: d, ["not a file"]),
    ],
)
def test_bad_model_files_exit_2(cli, tmp_path, make_input, fragments):
    path = make_input(tmp_path)
    result = cli("-q", "compile", path, "-o", tmp_path / "out")
    _assert_clean_error(result, 2, *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["-t", "sparc"], ["unknown target 'sparc'", "x86_64"]),
        ([], ["dynamic dims N", "--input-shape x=1,3,16,16"]),
        (["--input-shape", "x=1,3"], ["rank 2", "rank 4"]),
        (["--input-shape", "x:1,3,16,16"], ["bad --input-shape 'x:1,3,16,16'"]),
        (["--input-shape", "q=1,3,16,16"], ["'q', not inputs of the model"]),
        (["--input-shape", "x=1,3,16,16", "--skip-pass", "nope"], ["unknown pass 'nope'"]),
        (["--input-shape", "x=1,3,16,16", "--verify-input", "x=/nonexistent.npy"],
         ["cannot read input 'x'"]),
        (["--bogus-flag"], ["No such option"]),
    ],
)  # fmt: skip
def test_bad_usage_exits_2(cli, conv_relu, tmp_path, args, fragments):
    result = cli("-q", "compile", conv_relu, "-o", tmp_path / "out", *args)
    _assert_clean_error(result, 2, *fragments)
    assert not (tmp_path / "out").exists()


def test_existing_output_exits_2(cli, conv_relu, tmp_path):
    (tmp_path / "out").mkdir()
    result = cli("-q", "compile", conv_relu, "-o", tmp_path / "out", "--input-shape", "x=1,3,16,16")
    _assert_clean_error(result, 2, "already exists; pass --force")


def test_unsupported_ops_exit_3_listing_every_node(cli, tmp_path):
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17, "com.example" : 1]>
        g (float[1,4] x) => (float[1,4] y) {
            a = Celu <alpha = 1.0> (x)
            b = Celu <alpha = 2.0> (a)
            c = LpNormalization <axis = 1> (b)
            d = Relu (c)
            y = com.example.Fancy (d)
        }
        """
    )
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}_{node.op_type.lower()}"
    onnx.save(model, tmp_path / "m.onnx")
    result = cli("-q", "compile", tmp_path / "m.onnx", "-o", tmp_path / "out")
    _assert_clean_error(
        result, 3, "3 unsupported op type(s) in 4 node(s)", "Celu (2): n0_celu, n1_celu",
        "LpNormalization (1): n2_lpnormalization", "com.example.Fancy (1): n4_fancy",
    )  # fmt: skip
    assert "Relu" not in result.err
    assert not (tmp_path / "out").exists()


def test_verification_failure_exits_1(cli, conv_relu, tmp_path, monkeypatch):
    from edgec import lower

    real_run = lower.Runtime.run
    monkeypatch.setattr(lower.Runtime, "run", lambda self, a: [y * 1.1 for y in real_run(self, a)])
    result = cli("-q", "compile", conv_relu, "-o", tmp_path / "out", "--input-shape",
                 "x=1,3,16,16")  # fmt: skip
    _assert_clean_error(result, 1, "verification failed", "[FAIL]")
    assert not (tmp_path / "out").exists()


def test_internal_errors_exit_4_and_debug_shows_traceback(cli, conv_relu, tmp_path, monkeypatch):
    from edgec import lower

    def crash(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(lower, "build", crash)
    args = ("compile", conv_relu, "-o", tmp_path / "o", "--input-shape", "x=1,3,16,16")
    result = cli("-q", *args)
    _assert_clean_error(result, 4, "internal error: RuntimeError: boom", "--debug")
    result = cli("--debug", "-q", *args)
    assert result.code == 4 and "Traceback" in result.err


def test_listings(cli):
    assert "x86_64" in cli("targets").out and "alias of x86_64" in cli("targets").out
    assert cli("passes").out.startswith("simplify")


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _conv_bytes() -> bytes:
    from tests.conftest import conv_relu_model

    return conv_relu_model().SerializeToString()


def test_zoo_commands(cli, tmp_path):
    listing = cli("zoo", "list").out
    for name in ("resnet18", "mobilenetv2", "repvgg_a0", "mobileone_s0", "deit_tiny", "slab_tiny"):
        assert name in listing
    _assert_clean_error(cli("-q", "zoo", "export", "nope", "-o", tmp_path / "m.onnx"), 2,
                        "unknown zoo model 'nope'")  # fmt: skip
    out = tmp_path / "r.onnx"
    assert cli("-q", "zoo", "export", "resnet18", "-o", out).code == 0
    assert onnx.load(out).opset_import[0].version == 17
    _assert_clean_error(cli("-q", "zoo", "export", "resnet18", "-o", out), 2, "already exists")
