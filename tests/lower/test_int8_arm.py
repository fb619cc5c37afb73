"""arm64 int8 convolutions on ``sdot`` (edgec.lower.int8_arm), cross-compiled and run under
qemu-aarch64, bit-exact against test_int8's numpy integer reference."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from edgec import deploy, lower, targets
from edgec.deploy import toolchain
from edgec.lower import int8_arm
from tests.lower import test_int8

A76 = "arm64/cortex-a76"

needs_qemu = pytest.mark.skipif(
    toolchain.emulator(targets.get(A76)) is None
    or not shutil.which("aarch64-linux-gnu-g++")
    or not shutil.which("aarch64-linux-gnu-objdump"),
    reason="needs the arm64 cross toolchain and qemu-user: make cross-toolchain",
)


def _sdots(library) -> int:
    """sdot instructions in the arm64 library's code."""
    dis = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(library)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return sum(line.split("\t")[2:3] == ["sdot"] for line in dis.splitlines())


@pytest.fixture
def on_arm64(monkeypatch):
    """test_int8's ``run_int`` for arm64 targets: the library cross-linked, run by the deploy
    bundle's edgec-run under qemu-aarch64; the sdot count of each library lands in the list."""
    counts: list[int] = []

    def run_int(model, feeds, tmp_path, target, choose=None):
        t = targets.get(target)
        quant: dict = {}
        ex, records = lower.build(model, t, test_int8.THREADS, integer_only=True, quant=quant,
                                  choose=choose)  # fmt: skip
        lower.export(ex, tmp_path / "model.so", t)
        deploy.write_bundle(tmp_path, t, toolchain.compiler(t))
        (y,), _ = deploy.run_bundle(tmp_path, "model.so", feeds, emulator=toolchain.emulator(t))
        counts.append(_sdots(tmp_path / "model.so"))
        return y, quant, records

    monkeypatch.setattr(test_int8, "run_int", run_int)
    return counts


@needs_qemu
@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize(
    "case", [test_int8.CONVS[i] for i in (0, 1, 6, 8)], ids=["k3s1", "k3s2", "c3", "f24"]
)
def test_conv_sdot_bit_exact(case, act, tmp_path, on_arm64, monkeypatch):
    """Dense convs on arm64/cortex-a76 (+dotprod): int8_conv2d_sdot, sdot in the code."""
    monkeypatch.setattr(test_int8, "_int8_template", lambda: "int8_conv2d_sdot")
    test_int8.test_conv_bit_exact(case, act, tmp_path, target=A76)
    assert on_arm64[0] >= 4 * 9 if case[2] == 3 else on_arm64[0] >= 4


@needs_qemu
def test_conv_sdot_every_tile_bit_exact(tmp_path, on_arm64, monkeypatch):
    """Every (fb, xb) tile of the search space (alternating the epilogue order)."""
    monkeypatch.setattr(test_int8, "_int8_template", lambda: "int8_conv2d_sdot")
    spaces: list = []

    def first(name, info, space, default):
        if "fb" in default and "epi" in default:  # int8_conv2d_sdot's knobs
            spaces.append(space)
        return default

    case = test_int8.CONVS[1]  # F = 32, 6 output columns
    test_int8.test_conv_bit_exact(case, "int8", tmp_path, target=A76, choose=first)
    tiles = sorted({(k["fb"], k["xb"]) for k in spaces[0]})
    assert {fb for fb, _ in tiles} == {4, 8, 16, 32} and {xb for _, xb in tiles} >= {1, 2, 3, 6}
    assert all(xb * fb // 4 <= int8_arm.MAX_ACC for fb, xb in tiles)
    for i, (fb, xb) in enumerate(tiles):
        knobs = {"fb": fb, "xb": xb, **({"epi": "x"} if i % 2 else {})}
        (tmp_path / str(i)).mkdir()
        pick = lambda n, info, sp, d, k=knobs: k if "fb" in d and "epi" in d else d  # noqa: E731
        test_int8.test_conv_bit_exact(case, "uint8", tmp_path / str(i), target=A76, choose=pick)
    assert len(on_arm64) == len(tiles) + 1 and min(on_arm64) > 0


def kept_records(monkeypatch) -> list:
    """The kernel records of every ``test_int8.run_int`` call from now on (appended)."""
    records: list = []
    real = test_int8.run_int

    def keep(*args, **kw):
        out = real(*args, **kw)
        records.extend(out[2])
        return out

    monkeypatch.setattr(test_int8, "run_int", keep)
    return records


@needs_qemu
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_no_dotprod_declines_and_stays_exact(act, tmp_path, on_arm64, monkeypatch):
    """Generic arm64 (no +dotprod): the template declines with its reason; the generic integer
    schedule is bit-exact and has no sdot."""
    records = kept_records(monkeypatch)
    monkeypatch.setattr(test_int8, "_int8_template", lambda: "conv2d")
    test_int8.test_conv_bit_exact(test_int8.CONVS[0], act, tmp_path, target="arm64")
    (conv,) = [r for r in records if "conv2d" in r["kernel"]]
    assert "int8_conv2d_sdot: no +dotprod on this arm64 target (sdot)" in conv["declined"]
    assert on_arm64 == [0]


def test_has_sdot_per_target():
    sdot = {t.name for t in targets.TARGETS
            if int8_arm.has_sdot(lower.target_json(t, 1))}  # fmt: skip
    assert sdot == {"arm64/cortex-a76", "arm64/rk3588"}


def test_default_tile():
    """The most accumulator registers (at most MAX_ACC), then the fewest loads per sdot."""
    t = int8_arm.Int8ConvSdot()
    assert t.default({"f": 32, "w": 56}, 4) == {"fb": 16, "xb": 4, "epi": "x"}
    assert t.default({"f": 32, "w": 7}, 4) == {"fb": 8, "xb": 7, "epi": "x"}  # 7 x 16 > 24
    assert t.default({"f": 64, "w": 14}, 4) == {"fb": 32, "xb": 2, "epi": "x"}
    assert t.default({"f": 12, "w": 10}, 4) == {"fb": 4, "xb": 10, "epi": "x"}


@pytest.mark.parametrize("signed", [False, True])
def test_signed_conv_gives_dense_convs_int8_activations(signed, monkeypatch):
    """qdq's signed_conv (sdot targets): a dense conv reads int8 activations (uint8 - 128),
    a depthwise one keeps uint8; without it both read uint8."""
    from tvm import relax

    from edgec.lower import qdq

    class Built(Exception):  # test_conv_bit_exact's model, caught before it is compiled
        pass

    def run_int(model, *args, **kw):
        raise Built(model)

    monkeypatch.setattr(test_int8, "run_int", run_int)
    models = []
    for case in (test_int8.CONVS[0], test_int8.CONVS[4]):  # dense, depthwise
        with pytest.raises(Built) as e:
            test_int8.test_conv_bit_exact(case, "uint8", None)
        models.append(e.value.args[0])
    dtypes = []
    for model in models:
        mod = qdq.lower(lower.to_relax(model), integer_only=True, signed_conv=signed)
        relax.analysis.post_order_visit(
            mod["main"],
            lambda e: (
                dtypes.append(str(e.args[0].ty.dtype))
                if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d"
                else None
            ),
        )
    assert dtypes == (["int8", "uint8"] if signed else ["uint8", "uint8"])


@needs_qemu
def test_compile_int8_for_cortex_a76_uses_sdot(tmp_path):
    """`edgec compile model.onnx --target arm64/cortex-a76 --int8`: the dense convs on sdot,
    the artifact verified under qemu against the QDQ model in onnxruntime."""
    import edgec
    from tests.quant.conftest import model_path

    out = tmp_path / "out"
    result = edgec.compile(model_path("digits_cnn"), out, target=A76, int8=True,
                           calib="synthetic")  # fmt: skip
    report = result.report
    assert report["float_ops"] == [] and report["verification"]["passed"]
    assert report["verification"]["emulated"].startswith("qemu-aarch64")
    assert report["verification"]["scaled_err"] <= 0.05
    convs = [k for k in report["kernels"] if "conv2d" in k["kernel"]]
    assert len(convs) == 3 and {k["template"] for k in convs} == {"int8_conv2d_sdot"}
    assert _sdots(out / "model.so") > 0


@needs_qemu
@pytest.mark.parametrize("case", [((), 1, 16, 8), ((1,), 17, 192, 16), ((2,), 9, 64, 48)],
                         ids=lambda c: "b{}m{}k{}n{}".format(*c))  # fmt: skip
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_matmul_sdot_bit_exact(case, act, tmp_path, on_arm64):
    """Weight matmuls on arm64/cortex-a76: int8_matmul_sdot (x moved to int8 by qdq), sdot in
    the code, bit-exact with test_int8_matmul's numpy reference; M not a multiple of the tile's
    rows (17, 9) pads x to whole tiles."""
    from tests.lower.test_int8_matmul import qdq_matmul

    model, x, want = qdq_matmul(*case, act)
    got, quant, records = test_int8.run_int(model, [x], tmp_path, A76)
    np.testing.assert_array_equal(got, want)
    assert quant["float_ops"] == []
    (record,) = [r for r in records if "matmul" in r["kernel"]]
    assert record["template"] == "int8_matmul_sdot", record
    assert on_arm64[0] >= 1


@needs_qemu
def test_matmul_sdot_every_tile_bit_exact(tmp_path, on_arm64):
    """Every (mb, fb) tile of the search space, M = 9 (padded for most mb)."""
    from tests.lower.test_int8_matmul import qdq_matmul

    model, x, want = qdq_matmul((), 9, 32, 32, "uint8")
    spaces: list = []

    def first(name, info, space, default):
        if set(default) == {"mb", "fb"}:
            spaces.append(space)
        return default

    test_int8.run_int(model, [x], tmp_path, A76, first)
    tiles = spaces[0]
    assert {k["fb"] for k in tiles} == {4, 8, 16, 32} and {k["mb"] for k in tiles} >= {1, 2, 8}
    for i, knobs in enumerate(tiles):
        (tmp_path / str(i)).mkdir()
        pick = lambda n, info, sp, d, k=knobs: k if set(d) == {"mb", "fb"} else d  # noqa: E731
        got, _, records = test_int8.run_int(model, [x], tmp_path / str(i), A76, pick)
        np.testing.assert_array_equal(got, want)
        (record,) = [r for r in records if "matmul" in r["kernel"]]
        assert record["template"] == "int8_matmul_sdot" and record["knobs"] == knobs


@needs_qemu
@pytest.mark.parametrize("types", [("uint8", "int8"), ("uint8", "uint8"), ("int8", "uint8")])
def test_matmul_activations_sdot_bit_exact(types, tmp_path, on_arm64, monkeypatch):
    """Attention-style matmuls of two activations (B transposed, N = 9 and K = 16: B packed per
    call with N padded) on sdot: both operands int8, bit-exact with the numpy reference."""
    records = kept_records(monkeypatch)
    spaces: list = []

    def first(name, info, space, default):
        if set(default) == {"mb", "fb"}:
            spaces.append(space)
        return default

    test_int8.test_matmul_activations_bit_exact(types, tmp_path, target=A76, choose=first)
    (record,) = [r for r in records if "matmul" in r["kernel"]]
    assert record["template"] == "int8_matmul_sdot", record
    assert on_arm64[0] >= 1
    if types != ("uint8", "int8"):
        return
    assert {k["fb"] for k in spaces[0]} == {4, 8, 16}  # N = 9: padded to 12 or 16
    for i, knobs in enumerate(spaces[0]):  # every tile, N and M padded per tile
        (tmp_path / str(i)).mkdir()
        pick = lambda n, info, sp, d, k=knobs: k if set(d) == {"mb", "fb"} else d  # noqa: E731
        before = len(records)
        test_int8.test_matmul_activations_bit_exact(types, tmp_path / str(i), A76, pick)
        (record,) = [r for r in records[before:] if "matmul" in r["kernel"]]
        assert record["template"] == "int8_matmul_sdot" and record["knobs"] == knobs, record
