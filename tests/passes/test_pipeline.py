"""The pass pipeline: order, selection, and verification that reverts a wrong rewrite."""

import numpy as np
import onnx
import pytest

from edgec import passes
from edgec.errors import InvalidInputError
from edgec.passes.base import PassResult
from edgec.passes.simplify import Simplify
from tests.conftest import make_model


def _static_conv() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    return make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, W)
            shape = Shape (c)
            flat = Reshape (c, shape)
            i = Identity (flat)
            y = Relu (i)
        }
        """,
        W=rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
    )


class _ScaleWeights:
    """A deliberately wrong rewrite: scales the first initializer."""

    name = "scale_weights"
    summary = "wrong on purpose"

    def __call__(self, model):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        w = onnx.numpy_helper.to_array(model.graph.initializer[0]) * 1.01
        model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "W"))
        return PassResult(model, {"scaled": 1})


class _Noop:
    name = "noop"
    summary = "changes nothing"

    def __call__(self, model):
        return PassResult(model, {"matched": 0}, ["Conv 'c': refused, for the test"])


def test_simplify_removes_shape_computation_and_identity():
    result = Simplify()(_static_conv())
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Relu"]
    assert result.stats == {"Identity": -1, "Reshape": -1, "Shape": -1}


def test_pipeline_applies_verified_passes_and_reverts_wrong_ones():
    model = _static_conv()
    out, reports = passes.run_pipeline(model, (Simplify(), _ScaleWeights(), _Noop()))
    # round 1 reports every pass; round 2 (after simplify changed the graph) repeats nothing new
    assert [(r["name"], r["round"]) for r in reports] == [
        ("simplify", 1), ("scale_weights", 1), ("noop", 1)
    ]  # fmt: skip
    by_name = {r["name"]: r for r in reports}
    assert by_name["simplify"]["status"] == "applied"
    assert by_name["simplify"]["verify_scaled_err"] <= passes.PASS_TOLERANCE
    assert (by_name["simplify"]["nodes_before"], by_name["simplify"]["nodes_after"]) == (5, 2)
    wrong = by_name["scale_weights"]
    assert wrong["status"] == "reverted" and "scaled error" in wrong["reason"]
    assert wrong["nodes_after"] == wrong["nodes_before"]
    assert by_name["noop"]["status"] == "unchanged"
    assert by_name["noop"]["declined"] == ["Conv 'c': refused, for the test"]
    # the shipped model is simplify's output, without the wrong rewrite
    w = onnx.numpy_helper.to_array(out.graph.initializer[0])
    np.testing.assert_array_equal(w, onnx.numpy_helper.to_array(model.graph.initializer[0]))
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu"]


def test_pipeline_iterates_to_a_fixpoint():
    class _OneAtATime:
        """Removes one Identity per call, like a fold that exposes the next one."""

        name, summary = "one_identity", "removes one Identity"

        def __call__(self, model):
            model = onnx.ModelProto.FromString(model.SerializeToString())
            nodes = list(model.graph.node)
            for i, node in enumerate(nodes):
                if node.op_type == "Identity":
                    for other in nodes[i + 1 :]:
                        other.input[:] = [node.input[0] if v == node.output[0] else v
                                          for v in other.input]  # fmt: skip
                    del model.graph.node[i]
                    return PassResult(model, {"removed": 1})
            return PassResult(model, {"removed": 0})

    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) {
            a = Identity (x)
            b = Identity (a)
            c = Identity (b)
            y = Relu (c)
        }
        """
    )
    out, reports = passes.run_pipeline(model, (_OneAtATime(),), max_rounds=4)
    assert [n.op_type for n in out.graph.node] == ["Relu"]
    assert [(r["round"], r["status"]) for r in reports] == [(1, "applied"), (2, "applied"),
                                                            (3, "applied")]  # fmt: skip
    _, reports = passes.run_pipeline(model, (_OneAtATime(),), max_rounds=2)
    assert len(reports) == 2


def test_pass_whose_graph_does_not_run_is_reverted():
    class _Break:
        name, summary = "break", "breaks the graph"

        def __call__(self, model):
            model = onnx.ModelProto.FromString(model.SerializeToString())
            model.graph.node[0].input[1] = "does_not_exist"
            return PassResult(model, {"broke": 1})

    _, (report,) = passes.run_pipeline(_static_conv(), (_Break(),))
    assert report["status"] == "reverted" and "fails in onnxruntime" in report["reason"]


def test_select():
    assert [p.name for p in passes.select()] == [p.name for p in passes.PASSES]
    assert passes.select(skip=["simplify"]) == tuple(
        p for p in passes.PASSES if p.name != "simplify"
    )
    assert [p.name for p in passes.select(only=["simplify"])] == ["simplify"]
    with pytest.raises(InvalidInputError, match="unknown pass 'x'"):
        passes.select(skip=["x"])
    with pytest.raises(InvalidInputError, match="cannot be combined"):
        passes.select(skip=["simplify"], only=["simplify"])
