"""edgec.models.digits: the deterministic split and the train/export script (1 epoch here)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgec.models import digits as d
from tests.quant.conftest import MODELS, model_path


def test_split_is_deterministic_and_disjoint(digits):
    x_train, y_train, x_test, y_test = digits
    assert (len(y_train), len(y_test)) == (1438, 359)
    assert x_test.shape == (359, 1, 8, 8) and x_test.dtype == np.float32
    assert x_test.min() >= -1.0 and x_test.max() <= 1.0
    again = d.split()
    np.testing.assert_array_equal(again[3], y_test)
    rows = {r.tobytes() for r in x_train.reshape(len(x_train), -1)}
    assert sum(r.tobytes() in rows for r in x_test.reshape(len(x_test), -1)) < 5  # duplicates only


@pytest.mark.parametrize("name", MODELS)
def test_committed_models_keep_their_batchnorms(name):
    model = onnx.load(model_path(name))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("BatchNormalization") == ops.count("Conv")
    assert ("Clip" in ops) == (name == "digits_mobilenet")  # ReLU6


def test_train_and_export(tmp_path, digits):
    """One epoch of the CNN (the full script: `python -m edgec.models.digits`, 15 epochs);
    the export keeps the BNs and matches torch."""
    torch = pytest.importorskip("torch")
    from edgec.verify import run_onnxruntime

    model, acc = d.train("digits_cnn", epochs=1, log=lambda _: None)
    assert acc > 0.5  # one epoch already learns most digits
    path = d.export(model, tmp_path / "digits_cnn.onnx")
    x = digits[2][:1]
    out = run_onnxruntime(onnx.load(path), {"input": x})["output"]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).numpy(), atol=1e-4)
    assert [n.op_type for n in onnx.load(path).graph.node].count("BatchNormalization") == 3
