"""One small compiled artifact shared by the report tests (compiling is the expensive part)."""

from __future__ import annotations

import onnx
import pytest

from tests.conftest import conv_relu_model


@pytest.fixture(scope="session")
def artifact(tmp_path_factory):
    """conv_relu (1x3x16x16), compiled with verification, a short bench and the profile."""
    from edgec import api

    d = tmp_path_factory.mktemp("artifact")
    onnx.save(conv_relu_model(dynamic_batch=False), d / "model.onnx")
    api.compile(d / "model.onnx", d / "out", bench_runs=8, bench_budget_s=0.3)
    return d / "out"
