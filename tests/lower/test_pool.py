"""The max-pool template (edgec.lower.pool), checked against onnxruntime.

Each case compiles a one-op MaxPool model for this machine and compares with onnxruntime:
max pooling is exact, so outputs must be identical. Shapes cover ResNet's 3x3 stride-2 pool,
rows that are not multiples of the vector width (overlapping tails), windows over padded rows
and columns, asymmetric padding, ceil mode, stride 1 and 3, float32 and uint8/int8 tensors.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgec import lower, verify
from edgec.lower import measure
from tests.lower.test_schedules import THREADS, _target, assert_template

CASES = {
    # id: (input shape, kernel, strides, pads (top, left, bottom, right), ceil mode)
    "resnet_3x3s2": ((1, 8, 112, 112), (3, 3), (2, 2), (1, 1, 1, 1), 0),
    "2x2s2_odd": ((2, 3, 15, 17), (2, 2), (2, 2), (0, 0, 0, 0), 0),
    "3x3s1_tail": ((1, 4, 9, 33), (3, 3), (1, 1), (1, 1, 1, 1), 0),
    "ceil": ((1, 2, 13, 13), (3, 3), (2, 2), (1, 1, 1, 1), 1),
    "asym_rect": ((1, 3, 10, 70), (2, 3), (1, 2), (0, 1, 1, 0), 0),
    "3x3s3_wide": ((1, 2, 12, 200), (3, 3), (3, 3), (0, 0, 0, 0), 0),
}


def maxpool_model(shape, kernel, strides, pads, ceil, elem=TensorProto.FLOAT) -> onnx.ModelProto:
    node = helper.make_node(
        "MaxPool", ["x"], ["y"], kernel_shape=list(kernel), strides=list(strides),
        pads=[pads[0], pads[1], pads[2], pads[3]], ceil_mode=ceil,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "pool", [helper.make_tensor_value_info("x", elem, list(shape))],
        [helper.make_tensor_value_info("y", elem, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return onnx.shape_inference.infer_shapes(model)


def run_both(
    model: onnx.ModelProto, x: np.ndarray, tmp_path
) -> tuple[list, np.ndarray, np.ndarray]:
    target = _target()
    executable, records = lower.build(model, target, threads=THREADS)
    lower.export(executable, tmp_path / "model.so", target)
    (got,) = lower.Runtime(tmp_path / "model.so", THREADS).run([x])
    (want,) = verify.run_onnxruntime(model, {"x": x}).values()
    return records, got, want


@pytest.mark.parametrize("case", list(CASES))
def test_float_max_pool_equals_onnxruntime(case, tmp_path):
    shape = CASES[case][0]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) - 1  # mostly < 0
    records, got, want = run_both(maxpool_model(*CASES[case]), x, tmp_path)
    assert_template(records, "pool", "max_pool")
    assert got.shape == want.shape
    assert np.array_equal(got, want)


@pytest.mark.parametrize("elem", [TensorProto.UINT8, TensorProto.INT8], ids=["uint8", "int8"])
def test_integer_max_pool_equals_onnxruntime(elem, tmp_path):
    """Quantized tensors: the padding value is the dtype's lowest (0 for uint8, -128 int8)."""
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    info = np.iinfo(dtype)
    x = np.random.default_rng(1).integers(info.min, info.max + 1, (1, 8, 112, 112), dtype=dtype)
    model = maxpool_model(*CASES["resnet_3x3s2"], elem=elem)
    records, got, want = run_both(model, x, tmp_path)
    (record,) = assert_template(records, "pool", "max_pool")
    assert record["knobs"] == {"vec": 64}  # a zmm of bytes
    assert np.array_equal(got, want)


def _task(model: onnx.ModelProto):
    tasks: list = []

    def tune(found, target_json):
        tasks.append((found, target_json))
        raise KeyboardInterrupt  # stop after the dry run: the tasks are all we need

    with pytest.raises(KeyboardInterrupt):
        lower.build(model, _target(), THREADS, tune=tune)
    found, tj = tasks[0]
    (task,) = [t for t in found if t.template == "max_pool"]
    return task, tj


def test_every_candidate_computes_what_the_default_computes():
    task, tj = _task(maxpool_model(*CASES["asym_rect"]))
    assert [k["vec"] for k in task.space] == [16, 8, 32]
    measure.prepare(2)
    want = measure.outputs(task, task.default, tj)
    for knobs in task.space[1:]:
        (got,) = measure.outputs(task, knobs, tj)
        assert np.array_equal(got, want[0]), knobs


def test_dilated_or_single_column_pools_decline(tmp_path):
    dilated = maxpool_model((1, 2, 9, 9), (2, 2), (1, 1), (0, 0, 0, 0), 0)
    dilated.graph.node[0].attribute.append(helper.make_attribute("dilations", [2, 2]))
    records, got, want = run_both(dilated, np.ones((1, 2, 9, 9), np.float32), tmp_path)
    (record,) = assert_template(records, "pool", "generic")
    assert "max_pool: dilation 2x2" in record["declined"]
    column = maxpool_model((1, 2, 9, 1), (3, 1), (2, 1), (1, 0, 1, 0), 0)
    x = np.random.default_rng(2).standard_normal((1, 2, 9, 1)).astype(np.float32)
    (tmp_path / "column").mkdir()
    records, got, want = run_both(column, x, tmp_path / "column")
    (record,) = assert_template(records, "pool", "generic")
    assert any("max_pool: rows of 1" in d for d in record["declined"])
    assert np.array_equal(got, want)
