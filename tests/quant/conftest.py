"""Shared fixtures of the int8 tests: the committed digits models and their data split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
MODELS = ("digits_cnn", "digits_mobilenet")


@pytest.fixture(scope="session")
def digits():
    """(x_train, y_train, x_test, y_test) of edgec.models.digits (needs scikit-learn)."""
    pytest.importorskip("sklearn")
    from edgec.models import digits as d

    return d.split()


@pytest.fixture(scope="session")
def calib_npz(digits, tmp_path_factory) -> Path:
    """100 training images as one stacked .npz keyed by the input name."""
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, input=digits[0][:100])
    return path


def model_path(name: str) -> Path:
    return DATA / f"{name}.onnx"
