"""Shared test helpers: tiny ONNX models from ONNX text, and an in-process CLI runner."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

RNG_SEED = 20261121


def make_model(text: str, **initializers: np.ndarray) -> onnx.ModelProto:
    """An ONNX model from ONNX text, with numpy initializers; IR 9 so onnxruntime accepts it."""
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(
        onnx.numpy_helper.from_array(arr, name) for name, arr in initializers.items()
    )
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def node_model(nodes, name: str, inputs: dict, outputs: dict, inits: dict,
               opset: int = 17) -> onnx.ModelProto:  # fmt: skip
    """A float model from ONNX nodes: ``inputs``/``outputs`` map names to shapes, ``inits`` names
    to arrays (the initializers)."""
    from onnx import TensorProto, helper, numpy_helper

    def info(values: dict) -> list:
        return [
            helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v)) for k, v in values.items()
        ]

    arrays = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    graph = helper.make_graph(nodes, name, info(inputs), info(outputs), arrays)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def conv_relu_model(dynamic_batch: bool = True) -> onnx.ModelProto:
    """Conv 3->8 (3x3, pad 1) + bias + Relu on 16x16 images."""
    rng = np.random.default_rng(RNG_SEED)
    n = "N" if dynamic_batch else "1"
    return make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        tiny (float[{n},3,16,16] x) => (float[{n},8,16,16] y) {{
            c = Conv <pads = [1, 1, 1, 1]> (x, W, B)
            y = Relu (c)
        }}
        """,
        W=rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        B=rng.standard_normal(8).astype(np.float32),
    )


@pytest.fixture
def conv_relu(tmp_path: Path) -> Path:
    path = tmp_path / "conv_relu.onnx"
    onnx.save(conv_relu_model(), path)
    return path


@pytest.fixture
def two_io(tmp_path: Path) -> Path:
    """Two inputs (float, int64) and two outputs, static shapes."""
    path = tmp_path / "two_io.onnx"
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        two_io (float[2,5] a, int64[2,5] k) => (float[2,5] s, int64[2] m) {
            kf = Cast <to = 1> (k)
            s = Add (a, kf)
            m = ArgMax <axis = 1, keepdims = 0> (s)
        }
        """
    )
    onnx.save(model, path)
    return path


@dataclasses.dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``edgec ARGS...`` in-process through the real entry point (exit-code mapping)."""
    from edgec.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["edgec", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
        captured = capsys.readouterr()
        return CliResult(int(exc.value.code or 0), captured.out, captured.err)

    return run


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime with every graph optimization off (the oracle for rewrites)."""
    from edgec.verify import ort_session

    return ort_session(model, optimize=False).run(None, feeds)


def assert_equivalent(
    original: onnx.ModelProto, rewritten: onnx.ModelProto, *, rtol: float = 1e-4, seed: int = 0
) -> None:
    """Same outputs in onnxruntime (ORT_DISABLE_ALL) on seeded random inputs, within
    ``rtol`` of each output's magnitude; the rewritten model also passes the full ONNX check."""
    from edgec import frontend, verify

    onnx.checker.check_model(rewritten, full_check=True)
    inputs, _ = frontend.signature(original)
    feeds = verify.random_inputs(inputs, seed)
    for want, got in zip(run_ort(original, feeds), run_ort(rewritten, feeds), strict=True):
        assert got.shape == want.shape
        scale = max(float(np.abs(want).max()), 1e-12)
        err = float(np.abs(got.astype(np.float64) - want).max())
        assert err <= rtol * scale, f"max abs err {err:.3g} > {rtol:g} x {scale:.3g}"


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(n.op_type for n in model.graph.node))
