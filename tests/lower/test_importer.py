"""edgec's layer over TVM's ONNX importer: clean refusals and the converters' results."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgec import frontend, lower, targets, verify
from edgec.errors import ExitCode, UnsupportedModelError
from tests.conftest import RNG_SEED, make_model


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    static = frontend.infer_shapes(model)
    executable, _ = lower.build(static, targets.get("x86_64"), 1)
    return lower.Runtime(None, 1, executable=executable).run(list(feeds.values()))


def test_training_batchnorm_is_refused_with_its_reason():
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 15]>
        g (float[2,3,4,4] x) => (float[2,3,4,4] y, float[3] rm, float[3] rv) {
            y, rm, rv = BatchNormalization <training_mode = 1> (x, s, b, m, v)
        }
        """,
        **{k: np.ones(3, np.float32) for k in "sbmv"},
    )
    with pytest.raises(UnsupportedModelError) as e:
        lower.check_supported(frontend.infer_shapes(model))
    assert e.value.exit_code == ExitCode.UNSUPPORTED
    assert e.value.nodes[0]["op_type"] == "BatchNormalization"
    assert "training_mode" in e.value.nodes[0]["reason"] and "training_mode" in str(e.value)


def test_bfloat16_tensors_are_refused():
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y) {
            h = Cast <to = 16> (x)
            y = Cast <to = 1> (h)
        }
        """
    )
    nodes = lower.unsupported_nodes(frontend.infer_shapes(model))
    assert [n["op_type"] for n in nodes] == ["tensor type bfloat16"]


@pytest.mark.parametrize("opset", [11, 13, 19])
def test_resize_with_scales_matches_onnxruntime(opset):
    # opset 11/13 need edgec's converter (TVM only has Resize-18); scales as a constant
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : {opset}]>
        g (float[1,2,5,6] x) => (float[1,2,10,18] y) {{
            y = Resize <mode = "linear"> (x, roi, scales)
        }}
        """,
        roi=np.zeros(0, np.float32),
        scales=np.array([1, 1, 2, 3], np.float32),
    )
    x = np.random.default_rng(RNG_SEED).standard_normal((1, 2, 5, 6)).astype(np.float32)
    (got,) = _run(model, {"x": x})
    (want,) = verify.run_onnxruntime(model, {"x": x}).values()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_resize_with_an_inexact_scale_is_refused():
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 19]>
        g (float[1,1,4,4] x) => (float[1,1,2,2] y) {
            y = Resize <mode = "linear"> (x, , scales)
        }
        """,
        scales=np.array([1, 1, 0.6, 0.6], np.float32),
    )
    with pytest.raises(UnsupportedModelError, match="not an exact multiple"):
        lower.to_relax(frontend.infer_shapes(model))


def test_reduce_max_of_a_fully_masked_row_is_minus_infinity():
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2,3] x) => (float[2,1] y) {
            y = ReduceMax <keepdims = 1> (x, axes)
        }
        """,
        axes=np.array([1], np.int64),
    )
    x = np.array([[1.0, -np.inf, 2.0], [-np.inf] * 3], np.float32)
    (got,) = _run(model, {"x": x})
    assert got.ravel().tolist() == [2.0, -np.inf]
