"""The softmax and layer-norm templates (edgec.lower.norms), checked against onnxruntime.

Each case compiles a one-op ONNX model for this machine, runs it through the Relax VM and
compares with onnxruntime; it also checks that the norms template (not ``generic``) scheduled
the kernel. Row widths are not multiples of the vector width (197, 50, 33, 7: row tails),
and every candidate of the search space is checked against the default.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgec
from edgec import lower, search, targets
from edgec.lower import measure, norms
from tests.conftest import RNG_SEED, make_model
from tests.lower.test_schedules import OPSET, assert_close, assert_template, compile_and_run


def _dims(shape) -> str:
    return ",".join(map(str, shape))


def softmax_model(shape: tuple[int, ...], axis: int = -1) -> onnx.ModelProto:
    return make_model(
        f"{OPSET} sm (float[{_dims(shape)}] x) => (float[{_dims(shape)}] y) "
        f"{{ y = Softmax <axis = {axis}> (x) }}"
    )


def layer_norm_model(shape: tuple[int, ...], affine: str) -> onnx.ModelProto:
    """LayerNormalization over the last axis; ``affine``: ``scale_bias`` (random), ``scale``
    (random, no bias input) or ``none`` (scale 1, no bias: the plain normalization)."""
    rng = np.random.default_rng([RNG_SEED, shape[-1], len(affine)])
    c = shape[-1]
    inits = {"s": rng.standard_normal(c).astype(np.float32)}
    if affine == "none":
        inits["s"] = np.ones(c, np.float32)
    args = "x, s"
    if affine == "scale_bias":
        inits["b"] = rng.standard_normal(c).astype(np.float32)
        args += ", b"
    return make_model(
        f"{OPSET} ln (float[{_dims(shape)}] x) => (float[{_dims(shape)}] y) "
        f"{{ y = LayerNormalization <axis = -1, epsilon = 0.001> ({args}) }}",
        **inits,
    )


@pytest.mark.parametrize("shape", [(1, 3, 197, 197), (2, 2, 50, 50), (3, 5, 7)], ids=_dims)
def test_softmax_last_axis_matches_onnxruntime(shape, tmp_path):
    records, got, want = compile_and_run(softmax_model(shape), tmp_path)
    (record,) = assert_template(records, "softmax", "softmax")
    assert record["knobs"]["exp"] == "cache"
    assert_close(got, want)
    assert np.allclose(got["y"].sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize(
    "shape, affine",
    [
        ((1, 197, 192), "scale_bias"),
        ((2, 10, 64), "scale"),
        ((3, 5, 33), "none"),
        ((4, 33), "scale_bias"),
    ],  # fmt: skip
    ids=lambda v: _dims(v) if isinstance(v, tuple) else v,
)
def test_layer_norm_matches_onnxruntime(shape, affine, tmp_path):
    records, got, want = compile_and_run(layer_norm_model(shape, affine), tmp_path)
    assert_template(records, "layer_norm", "layer_norm")
    assert_close(got, want)


def test_softmax_over_another_axis_declines(tmp_path):
    records, got, want = compile_and_run(softmax_model((2, 5, 7), axis=1), tmp_path)
    (record,) = assert_template(records, "softmax", "generic")
    assert "softmax: softmax over axis 1 of 3: only the last axis" in record["declined"]
    assert_close(got, want)


def _tasks(model: onnx.ModelProto, fast_math: bool = True) -> tuple[list[measure.Task], dict]:
    from tvm import relax
    from tvm.relax import transform

    target = targets.get("x86_64")
    tj = lower.target_json(target, 2)
    tvm = lower._tvm()
    with tvm.target.Target(tj):
        mod = lower.to_relax(model)
        mod = transform.FastMathTransform()(mod) if fast_math else mod
        mod = relax.get_pipeline("zero")(mod)
    return measure.kernel_tasks(mod, lower.vector_lanes(target)), tj


@pytest.mark.parametrize(
    "model, template, size",
    [
        (softmax_model((2, 3, 50)), "softmax", 8),
        (layer_norm_model((2, 5, 33), "scale"), "layer_norm", 8),
    ],  # fmt: skip
    ids=["softmax", "layer_norm"],
)
def test_every_candidate_computes_what_the_default_computes(model, template, size):
    """Vector widths, cached or recomputed exponentials, one- or two-pass variance, serial or
    parallel rows: the search may pick any of them."""
    tasks, tj = _tasks(model)
    (task,) = [t for t in tasks if t.template == template]
    assert len(task.space) == size
    measure.prepare(2)
    want = measure.outputs(task, task.default, tj)
    for knobs in task.space[1:]:
        assert search._compare(measure.outputs(task, knobs, tj), want) is None, knobs


def test_softmax_without_fast_math_keeps_exp():
    """Without FastMathTransform Relax's softmax calls ``exp``: the template keeps it."""
    tasks, tj = _tasks(softmax_model((4, 37)), fast_math=False)
    (task,) = [t for t in tasks if t.template == "softmax"]
    assert task.info["exp"] == "exact"
    x = measure._arrays(task.func, 0)[0].astype(np.float64)
    want = np.exp(x - x.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    for knobs in task.space:
        (got,) = measure.outputs(task, knobs, tj)
        assert np.abs(got - want).max() < 1e-6, knobs


def test_latency_search_times_the_templates(tmp_path):
    """``--search fast`` measures every candidate of both templates and keeps a correct one."""
    model = make_model(
        f"{OPSET} blk (float[1,2,33,33] x, float[33] s, float[33] b) => (float[1,2,33,33] y) {{"
        " n = LayerNormalization <axis = -1> (x, s, b)\n"
        " y = Softmax <axis = -1> (n) }",
        s=np.linspace(0.5, 1.5, 33, dtype=np.float32),
        b=np.linspace(-1, 1, 33, dtype=np.float32),
    )
    path = tmp_path / "blk.onnx"
    onnx.save(model, path)
    report = edgec.compile(
        path, tmp_path / "out", bench=False, search="fast", tuning_db=tmp_path / "t.db",
        log=lambda _: None, bundle=False,
    ).report  # fmt: skip
    assert report["verification"]["passed"]
    kernels = {k["template"]: k for k in report["kernels"]}
    for template in ("softmax", "layer_norm"):
        k = kernels[template]
        timed = [c for c in k["candidates"] if c.get("ms") is not None]
        assert len(timed) >= 4, k["candidates"]
        assert k["knobs"] in [c["knobs"] for c in timed]


def test_templates_are_registered_before_generic():
    from edgec.lower import schedules

    names = [t.name for t in schedules.TEMPLATES]
    assert names.index("softmax") < names.index("generic")
    assert names.index("layer_norm") < names.index("generic")
    assert [t.name for t in norms.TEMPLATES] == ["softmax", "layer_norm"]


@pytest.mark.parametrize("var", ["two_pass", "one_pass"])
def test_layer_norm_variance_of_rows_far_from_zero(var):
    """Rows with mean 1000 and spread 1 (float32 spacing there: 6e-5): the one-pass variance
    shifts by the row's first element, so it loses no more than the two-pass one."""
    tvm = lower._tvm()
    rows, c = 6, 192
    roles = ["x", "gamma", "beta", "out"]
    func = norms.layer_norm_func([rows, c], roles, 1e-5, 16, var == "one_pass")
    rng = np.random.default_rng(RNG_SEED)
    x = (1000 + rng.standard_normal((rows, c))).astype(np.float32)
    g, b = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    target = tvm.target.Target(lower.target_json(targets.get("x86_64"), 1))
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    dev = tvm.cpu(0)
    args = [tvm.runtime.tensor(a, dev) for a in (x, g, b, np.zeros_like(x))]
    lib["main"](*args)
    x64 = x.astype(np.float64)
    mean, var64 = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
    want = (x64 - mean) / np.sqrt(var64 + 1e-5) * g + b
    assert np.abs(args[3].numpy() - want).max() < 2e-3


@pytest.mark.parametrize(
    "model", [softmax_model((2, 2, 50, 50)), layer_norm_model((3, 50), "scale_bias")],
    ids=["softmax", "layer_norm"],
)  # fmt: skip
def test_avx2_vector_widths(model):
    """AVX2 (8 lanes): vec 8 and 4, the 4-lane halving tree, on this CPU."""
    target = targets.get("x86_64-avx2")
    if not lower.host_can_run(target):
        pytest.skip("this CPU cannot run AVX2 code")
    tj = lower.target_json(target, 2)
    tvm = lower._tvm()
    from tvm import relax
    from tvm.relax import transform

    with tvm.target.Target(tj):
        mod = relax.get_pipeline("zero")(transform.FastMathTransform()(lower.to_relax(model)))
    (task,) = [t for t in measure.kernel_tasks(mod, lower.vector_lanes(target))
               if t.template in ("softmax", "layer_norm")]  # fmt: skip
    assert {k["vec"] for k in task.space} == {8, 4}
    measure.prepare(2)
    arrays = [a.astype(np.float64) for a in measure._arrays(task.func, 0)]
    x = arrays[0]
    if task.template == "softmax":
        want = np.exp(x - x.max(-1, keepdims=True))
        want /= want.sum(-1, keepdims=True)
    else:  # x, gamma, beta (random here: the kernel alone, not the model's constants)
        g, b = (arrays[task.info["roles"].index(r)] for r in ("gamma", "beta"))
        want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-3) * g + b
    for knobs in task.space:
        (got,) = measure.outputs(task, knobs, tj)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), knobs
