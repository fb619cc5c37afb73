"""ONNX's backend node tests for the ops of exported CNNs, ViTs and OCR models, compiled by
edgec (bench/coverage.py; the full suite and its per-op table: docs/COVERAGE.md).

Every case must either match its stored outputs or be refused as unsupported (exit code 3):
no wrong answer, no crash, no other error.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import coverage  # noqa: E402

VISION_OPS = (
    "Conv", "ConvTranspose", "Resize", "Upsample", "Pad", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "InstanceNormalization",
    "LayerNormalization", "GroupNormalization", "Softmax", "LogSoftmax", "Gemm", "MatMul",
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Gelu", "Mish",
    "Elu", "Tanh", "Clip", "Erf", "Add", "Mul", "Sub", "Div", "Pow", "Sqrt", "Reshape",
    "Transpose", "Concat", "Slice", "Split", "Squeeze", "Unsqueeze", "Flatten", "Gather",
    "ReduceMean", "ReduceMax", "ReduceSum", "TopK", "ArgMax", "Einsum", "GridSample",
    "DepthToSpace", "SpaceToDepth", "NonMaxSuppression", "Where", "Expand", "Cast", "Shape",
    "Tile", "RoiAlign", "Dropout", "Identity",
)  # fmt: skip


@pytest.fixture(scope="module")
def results() -> list[dict]:
    cases = coverage.load_cases(ops=VISION_OPS)
    assert len(cases) > 500
    return coverage.run_all(cases, jobs=2)


def test_vision_cases_match_or_are_unsupported(results):
    bad = [f"{r['name']}: {r['status']} {r['detail']}" for r in results
           if r["status"] not in ("pass", "unsupported")]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_vision_pass_counts(results):
    table = coverage.per_op(results)
    # every case of these ops passes (numbers from docs/COVERAGE.md)
    for op in (
        "Conv",
        "AveragePool",
        "Gemm",
        "MatMul",
        "Softmax",
        "Transpose",
        "NonMaxSuppression",
    ):
        assert table[op]["pass"] == sum(table[op].values()), (op, table[op])
    # Resize: all opsets, axes, keep_aspect_ratio (edgec.lower.converters)
    assert table["Resize"]["pass"] >= 21, table["Resize"]
    total = coverage.totals(results)
    assert total["pass"] / len(results) > 0.75, total


def _segfault(case: dict) -> dict:
    if case["name"] == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if case["name"] == "hang":
        time.sleep(60)
    return {"status": "pass", "detail": "", "seconds": 0.0}


def test_a_crashing_or_hanging_case_costs_only_itself():
    cases = [{"name": n, "op": "X"} for n in ("a", "crash", "b", "hang", "c")]
    results = coverage.run_all(cases, jobs=2, runner=_segfault, timeout_s=5)
    assert [r["status"] for r in results] == ["pass", "crash", "pass", "timeout", "pass"]
    assert "exit code -11" in results[1]["detail"]
