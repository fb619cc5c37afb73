"""The int8_matmul template (edgec.lower.int8.Int8Matmul): u8 x s8 -> s32 matmuls with a
constant weight on the vpdpbusd (``x86_64``, this CPU's AVX512-VNNI) and vpmaddwd
(``x86_64-avx2``) micro-kernels, bit-exact against a numpy int64 reference.

Each case is a one-op QDQ model ``DequantizeLinear -> MatMul(constant int8 weight) ->
QuantizeLinear`` compiled integer-only (see tests/lower/test_int8.py), compared with the numpy
reference (exact) and with onnxruntime running the same QDQ model (within one output quantum:
float rounding ties go the other way in a few elements). Kernel-level tests check the cases
where the template must decline, and that every knob set of its search space is exact.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from edgec import lower, verify
from edgec.lower import measure, qdq, schedules
from tests.lower.test_int8 import NP2ONNX, THREADS, _act, _model, _out_params, _rng, _target
from tests.lower.test_int8 import run_int as _run_int

TARGETS = ["x86_64", "x86_64-avx2"]  # vpdpbusd / vpmaddwd (this CPU runs both)

CASES = [  # batch dims, M, K, N
    ((), 1, 16, 8),  # N = 8: the 8-lane vpdpbusd
    ((), 1, 512, 1000),  # a CNN head: 5 column blocks of 8 (GEMV)
    ((1,), 17, 192, 16),
    ((1,), 197, 192, 576),  # DeiT-tiny qkv
    ((2,), 17, 768, 192),  # DeiT-tiny fc2 with a batch of 2
    ((2, 3), 5, 16, 192),  # two batch dims
]


def _isa(target: str) -> str | None:
    from edgec.lower import int8

    tvm = lower._tvm()
    with tvm.target.Target(lower.target_json(_target(target), 1)):
        return int8._isa()


def qdq_matmul(batch, m, k, n, act="uint8", seed=()):
    """The QDQ model, its input and the numpy reference output."""
    rng = _rng("int8mm", batch, m, k, n, act, *seed)
    x = _act(rng, (*batch, m, k), act)
    zx = int(rng.integers(90, 160)) if act == "uint8" else int(rng.integers(-20, 20))
    sx = 0.03
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    sw = rng.uniform(0.001, 0.02, n).astype(np.float32)  # per output channel
    acc = (x.astype(np.int64) - zx) @ w.astype(np.int64)
    so, zo = _out_params(acc * sx * sw.astype(np.float64), act)
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wf"], axis=1),
        helper.make_node("MatMul", ["xf", "wf"], ["yf"]),
        helper.make_node("QuantizeLinear", ["yf", "so", "zo"], ["y"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", NP2ONNX[act], list(x.shape))],
        [helper.make_tensor_value_info("y", NP2ONNX[act], list(acc.shape))],
        {
            "sx": np.array(sx, np.float32), "zx": np.array(zx, act), "w": w, "sw": sw,
            "zw": np.zeros(n, np.int8), "so": np.array(so, np.float32), "zo": np.array(zo, act),
        },
    )  # fmt: skip
    mult = np.float64(np.float32(sx)) * sw.astype(np.float64) / np.float64(np.float32(so))
    return model, x, qdq.requantize_ref([(acc, mult)], zo, act)


def run_int(model, x, tmp_path, target, choose=None):
    tmp_path.mkdir(exist_ok=True)
    got, quant, records = _run_int(model, [x], tmp_path, target, choose)
    assert quant["integer_op_kinds"] == {"matmul": 1} and quant["float_ops"] == []
    (record,) = [r for r in records if "matmul" in r["kernel"]]
    return got, record


def assert_close_to_ort(model: onnx.ModelProto, x: np.ndarray, got: np.ndarray) -> None:
    """onnxruntime (no graph optimizations: the QDQ semantics in float) within one quantum."""
    want = verify.run_onnxruntime(model, {"x": x})["y"]
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.99, (diff.max(), np.mean(diff == 0))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}m{}k{}n{}".format(*c))
def test_matmul_bit_exact(case, target, tmp_path):
    model, x, want = qdq_matmul(*case)
    got, record = run_int(model, x, tmp_path, target)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) > 20 or case[1] * case[3] <= 16  # not trivially saturated
    assert_close_to_ort(model, x, got)
    if _isa(target):
        assert record["template"] == "int8_matmul", record
        fb = 8 if target == "x86_64-avx2" or case[3] % 16 else 16
        assert case[3] % (record["knobs"]["fk"] * fb) == 0 and record["knobs"]["mb"] <= case[1]


@pytest.mark.parametrize("target", TARGETS)
def test_int8_activation_bit_exact(target, tmp_path):
    """int8 activations: the +128 shift to uint8 is inlined into the copy of x (M a multiple of
    the tile's rows: a plain copy; 197 rows: the copy padded to whole tiles)."""
    for m in (12, 197):
        model, x, want = qdq_matmul((1,), m, 64, 32, "int8")
        got, record = run_int(model, x, tmp_path / str(m), target)
        np.testing.assert_array_equal(got, want)
        assert record["template"] == ("int8_matmul" if _isa(target) else "matmul")


@pytest.mark.parametrize("target", TARGETS)
def test_k_not_multiple_declines(target, tmp_path):
    """K = 30: not whole 4-byte words (vpdpbusd), but pairs (vpmaddwd); K = 15: neither. A
    declined kernel falls back to the generic matmul template, still exact."""
    for k in (30, 15):
        model, x, want = qdq_matmul((), 9, k, 16)
        got, record = run_int(model, x, tmp_path / str(k), target)
        np.testing.assert_array_equal(got, want)
        fires = _isa(target) == "avx2" and k % 2 == 0
        assert record["template"] == ("int8_matmul" if fires else "matmul"), record
        if not fires and _isa(target):
            assert any(d.startswith(f"int8_matmul: K={k} not a multiple") for d in
                       record["declined"]), record  # fmt: skip


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", [((), 16, 32, 16), ((2,), 13, 30, 23), ((1, 3), 9, 64, 19)])
def test_activation_weight_is_packed_per_call(shape, target):
    """A u8 x s8 matmul whose B is a function input (an activation: attention's k or v) is
    packed into the micro-kernel's layout inside the kernel on every call, with N and K padded
    to whole tiles (zeros: exact), and is bit-exact with int64 numpy."""
    tvm = lower._tvm()
    from tvm import relax

    batch, m, k, n = shape
    rng = _rng("act b", shape)
    x = rng.integers(0, 256, (*batch, m, k)).astype(np.uint8)
    w = rng.integers(-128, 128, (*batch, k, n)).astype(np.int8)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    wv = relax.Var("w", relax.TensorType(w.shape, "int8"))
    with bb.function("main", [xv, wv]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.matmul(xv, wv, out_dtype="int32"))
        bb.emit_func_output(y)
    tgt = tvm.target.Target(lower.target_json(_target(target), 1))
    with tgt:
        plain = relax.get_pipeline("zero")(bb.get())
        (gv,) = [g for g, f in plain.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
        func0 = plain[gv]  # (apply_all schedules the module in place)
        mod, records = schedules.apply_all(plain, 16)
    (record,) = records
    assert record["template"] == ("int8_matmul" if _isa(target) else "matmul"), record
    vm = relax.VirtualMachine(tvm.compile(mod, target=tgt), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w)).numpy()
    want = x.astype(np.int64) @ w.astype(np.int64)
    np.testing.assert_array_equal(got, want)
    if not _isa(target) or batch != (2,):
        return
    # every knob set of the space (padded tiles of every size), kernel by kernel
    template = measure._template("int8_matmul")
    with tgt:
        info = template.match(func0)
        info["constants"] = set()
        for knobs in template.space(info, 16):
            func = schedules.apply_knobs(template, func0, info, knobs)
            lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                                 target=tgt)  # fmt: skip
            out = tvm.runtime.tensor(np.zeros(want.shape, np.int32))
            lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
            np.testing.assert_array_equal(out.numpy(), want, err_msg=str(knobs))


def test_activation_matmul_fires(tmp_path):
    """Attention-style matmul of two quantized activations with awkward sizes (K and N not
    multiples of 4 or 16, like DeiT's 197 tokens): qdq lowers it to u8 x s8 plus exact
    zero-point corrections, and int8_matmul computes it, bit-exact."""
    rng = _rng("act x act")
    a, b = _act(rng, (2, 13, 29), "uint8"), _act(rng, (2, 29, 23), "uint8")
    p = {"sa": 0.02, "za": 131, "sb": 0.05, "zb": 120}
    acc = (a.astype(np.int64) - p["za"]) @ (b.astype(np.int64) - p["zb"])
    so, zo = _out_params(acc * p["sa"] * p["sb"], "uint8")
    nodes = [
        helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["af"]),
        helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bf"]),
        helper.make_node("MatMul", ["af", "bf"], ["yf"]),
        helper.make_node("QuantizeLinear", ["yf", "so", "zo"], ["y"]),
    ]
    inits = {
        "sa": np.array(p["sa"], np.float32), "za": np.array(p["za"], np.uint8),
        "sb": np.array(p["sb"], np.float32), "zb": np.array(p["zb"], np.uint8),
        "so": np.array(so, np.float32), "zo": np.array(zo, np.uint8),
    }  # fmt: skip
    model = _model(
        nodes,
        [helper.make_tensor_value_info("a", NP2ONNX["uint8"], list(a.shape)),
         helper.make_tensor_value_info("b", NP2ONNX["uint8"], list(b.shape))],
        [helper.make_tensor_value_info("y", NP2ONNX["uint8"], [2, 13, 23])],
        inits,
    )  # fmt: skip
    got, _, records = _run_int(model, [a, b], tmp_path)
    mult = np.float64(np.float32(p["sa"])) * np.float64(np.float32(p["sb"]))
    mult /= np.float64(np.float32(so))
    np.testing.assert_array_equal(got, qdq.requantize_ref([(acc, mult)], zo, "uint8"))
    (record,) = [r for r in records if "matmul" in r["kernel"]]
    assert record["template"] == ("int8_matmul" if _isa("x86_64") else "matmul"), record


@pytest.mark.parametrize("target", TARGETS)
def test_every_candidate_bit_exact(target):
    """Every knob set of the search space (M = 19: every row count but 1 pads), kernel by
    kernel on random integers, against TVM's plain lowering of the same kernel; the search
    can time the candidates."""
    if _isa(target) is None:
        pytest.skip("no x86 dot-product instructions here")
    tvm = lower._tvm()
    model, _, _ = qdq_matmul((1,), 19, 64, 64)
    task = _task(model, target)
    assert task.template == "int8_matmul"
    knobs = {(k["mb"], k["fk"], k["order"]) for k in task.space}
    assert {1, 2} <= {f for _, f, _ in knobs} and {o for *_, o in knobs} == {"nm", "mn"}
    rng = _rng("space", target)
    # x, w, offset, multiplier, rounding, shift, output: requantized codes of mid range
    x, w, offset, mult, rounding, shift, out = (
        np.zeros([int(d) for d in p.ty.shape], str(p.ty.dtype)) for p in task.func.params
    )
    x[:] = rng.integers(0, 256, x.shape)
    w[:] = rng.integers(-128, 128, w.shape)
    offset[:] = rng.integers(-5000, 5000, offset.shape)
    mult[:], rounding[:], shift[:] = rng.integers(1, 4, mult.shape), 2**10, 11
    tgt = tvm.target.Target(lower.target_json(_target(target), THREADS))

    def run(func) -> np.ndarray:
        mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        with tgt:
            lib = tvm.tirx.build(mod, target=tgt)
        args = [tvm.runtime.tensor(a) for a in (x, w, offset, mult, rounding, shift, out)]
        lib["main"](*args)
        return args[-1].numpy()

    want = run(task.func)
    assert len(np.unique(want)) > 100
    template = measure._template(task.template)
    for knobs in task.space:
        got = run(schedules.apply_knobs(template, task.func, task.info, knobs))
        np.testing.assert_array_equal(got, want, err_msg=str(knobs))
    seconds = [measure.measure(task, k, lower.target_json(_target(target), THREADS), repeat=1,
                               min_repeat_ms=1) for k in task.space[:2]]  # fmt: skip
    assert all(0 < s < 0.1 for s in seconds)


def _task(model, target: str) -> measure.Task:
    """The model's matmul kernel as the search sees it (``measure.kernel_tasks``)."""
    tvm = lower._tvm()
    from tvm import relax
    from tvm.relax import transform

    with qdq.onnx_node_names() as names:
        mod = lower.to_relax(model)
    mod = qdq.lower(mod, True, {}, names)
    with tvm.target.Target(lower.target_json(_target(target), 1)):
        mod = transform.DecomposeOpsForInference()(mod)
        mod = relax.get_pipeline("zero")(mod)
        tasks = measure.kernel_tasks(mod, lower.vector_lanes(_target(target)))
    (task,) = [t for t in tasks if "matmul" in t.name]
    return task


def test_registry_order():
    """int8_matmul is tried before the generic matmul template (which also matches its kernels)."""
    names = [t.name for t in schedules.TEMPLATES]
    assert names.index("int8_matmul") < names.index("matmul")
