"""Every schedule template, checked numerically against onnxruntime on tiny models.

Each case compiles a one-kernel-ish ONNX model for this machine (``x86_64``, 2 threads), exports
and runs it through the Relax VM, and compares with onnxruntime (max abs error <= 1e-4 x the
output's magnitude). It also checks WHICH template scheduled the anchor kernel, so a silent
fallback (to ``generic`` or to no schedule at all) fails the test instead of passing slowly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgec import frontend, lower, targets, verify
from edgec.lower import schedules
from tests.conftest import RNG_SEED, make_model

OPSET = '<ir_version: 9, opset_import: ["" : 17]>'
THREADS = 2
RTOL = 1e-4
_APPLY_ALL = schedules.apply_all  # the real one, for tests that wrap it with a knob chooser


# --------------------------------------------------------------------------------------------
# helpers


def _rng(salt: str) -> np.random.Generator:
    return np.random.default_rng([RNG_SEED, *salt.encode()])


def _dims(shape) -> str:
    return ",".join(str(int(d)) for d in shape)


@functools.cache
def _target() -> targets.Target:
    return targets.get("x86_64")


def compile_and_run(
    model: onnx.ModelProto, tmp_path: Path, *, seed: int = 0, schedule: bool = True
) -> tuple[list[dict], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Build, export, load and run ``model``; returns (records, edgec outputs, ORT outputs)."""
    target = _target()
    executable, records = lower.build(model, target, threads=THREADS, schedule=schedule)
    path = tmp_path / "model.so"
    lower.export(executable, path, target)
    inputs, outputs = frontend.signature(model)
    feeds = verify.random_inputs(inputs, seed)
    got = lower.Runtime(path, THREADS).run([feeds[s.name] for s in inputs])
    actual = dict(zip([s.name for s in outputs], got, strict=True))
    return records, actual, verify.run_onnxruntime(model, feeds)


def assert_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    for name, want in expected.items():
        have = actual[name]
        assert have.shape == want.shape, f"{name}: shape {have.shape} != {want.shape}"
        assert np.all(np.isfinite(have)), f"{name}: non-finite values"
        scale = max(float(np.abs(want).max()), 1e-12)
        err = float(np.abs(have.astype(np.float64) - want).max())
        assert err <= RTOL * scale, f"{name}: max abs err {err:.3g} > {RTOL:g} x {scale:.3g}"


def _describe(records: list[dict]) -> str:
    return "\n".join(
        f"  {r['kernel']}: {r['template']} {r.get('knobs', '')} {r.get('declined', '')}"
        for r in records
    )


class WrongTemplate(AssertionError):
    """A kernel was scheduled by another template than expected (a silent fallback)."""


def assert_template(records: list[dict], kernel_part: str, template: str) -> list[dict]:
    """Every kernel whose name contains ``kernel_part`` was scheduled by ``template``, there is
    at least one, and no kernel at all was left unscheduled."""
    anchors = [r for r in records if kernel_part in r["kernel"]]
    assert anchors, f"no kernel named *{kernel_part}* among:\n{_describe(records)}"
    if any(r["template"] != template for r in anchors):
        raise WrongTemplate(f"expected {template!r} for *{kernel_part}*:\n{_describe(records)}")
    unscheduled = [r for r in records if r["template"] is None]
    if unscheduled:
        raise WrongTemplate(f"unscheduled kernels:\n{_describe(unscheduled)}")
    return anchors


def params(ids, known_bugs: dict[str, tuple[type[BaseException], str]], values=None) -> list:
    """pytest params with readable ids; a known template bug is a strict xfail that only
    accepts its own exception type (wrong numbers elsewhere still fail the test)."""
    out = []
    for i, name in enumerate(ids):
        marks = []
        if name in known_bugs:
            raises, reason = known_bugs[name]
            marks.append(pytest.mark.xfail(strict=True, raises=raises, reason=reason))
        out.append(pytest.param(values[i] if values else name, id=name, marks=marks))
    return out


# --------------------------------------------------------------------------------------------
# Conv2d template


@dataclasses.dataclass(frozen=True)
class Conv:
    cin: int
    cout: int
    k: int = 3
    stride: int = 1
    pads: tuple[int, int, int, int] = (1, 1, 1, 1)  # ONNX order: top, left, bottom, right
    dilation: int = 1
    groups: int = 1
    hw: tuple[int, int] = (13, 17)
    bias: bool = True
    epilogue: str = "none"  # none | relu | clip | add_relu (second input) | res_relu (x itself)
    batch: int = 1

    @property
    def out_hw(self) -> tuple[int, int]:
        top, left, bottom, right = self.pads
        span = self.dilation * (self.k - 1) + 1
        h, w = self.hw
        return (
            (h + top + bottom - span) // self.stride + 1,
            (w + left + right - span) // self.stride + 1,
        )

    @property
    def id(self) -> str:
        g = "dw" if self.groups == self.cin and self.groups > 1 else f"g{self.groups}"
        pads = "p" + (
            str(self.pads[0]) if len(set(self.pads)) == 1 else "".join(map(str, self.pads))
        )
        d = f"d{self.dilation}" if self.dilation > 1 else ""
        n = f"n{self.batch}-" if self.batch > 1 else ""
        return (
            f"{n}{self.cin}to{self.cout}-k{self.k}s{self.stride}{pads}{d}-{g}-"
            f"{self.hw[0]}x{self.hw[1]}-{'bias' if self.bias else 'nobias'}-{self.epilogue}"
        )

    def model(self) -> onnx.ModelProto:
        rng = _rng(self.id)
        n, (h, w), (ho, wo) = self.batch, self.hw, self.out_hw
        fan_in = self.cin // self.groups * self.k * self.k
        inits = {
            "W": (rng.standard_normal((self.cout, self.cin // self.groups, self.k, self.k))
                  / math.sqrt(fan_in)).astype(np.float32)
        }  # fmt: skip
        args = "x, W"
        if self.bias:
            inits["B"] = rng.standard_normal(self.cout).astype(np.float32)
            args += ", B"
        attrs = (
            f"kernel_shape = [{self.k}, {self.k}], strides = [{self.stride}, {self.stride}], "
            f"pads = [{self.pads[0]}, {self.pads[1]}, {self.pads[2]}, {self.pads[3]}], "
            f"dilations = [{self.dilation}, {self.dilation}], group = {self.groups}"
        )
        inputs = f"float[{n},{self.cin},{h},{w}] x"
        body = [f"c = Conv <{attrs}> ({args})"]
        if self.epilogue == "none":
            body.append("y = Identity (c)")
        elif self.epilogue == "relu":
            body.append("y = Relu (c)")
        elif self.epilogue == "clip":
            inits["lo"] = np.array(0.0, np.float32)
            inits["hi"] = np.array(6.0, np.float32)
            body.append("y = Clip (c, lo, hi)")
        elif self.epilogue == "add_relu":
            inputs += f", float[{n},{self.cout},{ho},{wo}] r"
            body += ["s = Add (c, r)", "y = Relu (s)"]
        elif self.epilogue == "res_relu":
            assert (self.cin, h, w) == (self.cout, ho, wo), "residual needs same-shape output"
            body += ["s = Add (c, x)", "y = Relu (s)"]
        else:
            raise ValueError(self.epilogue)
        text = "\n".join(
            [
                OPSET,
                f"conv ({inputs}) => (float[{n},{self.cout},{ho},{wo}] y) {{",
                *body,
                "}",
            ]
        )
        return make_model(text, **inits)


A = (0, 1, 1, 2)  # asymmetric pads (top, left, bottom, right)
CONV_CASES = [
    # stems: few input channels, large kernels, stride 2
    Conv(3, 8, k=3, epilogue="relu"),
    Conv(3, 16, k=3, epilogue="relu"),
    Conv(3, 16, k=7, stride=2, pads=(3, 3, 3, 3), hw=(15, 17), epilogue="relu"),
    Conv(3, 32, k=3, stride=2, epilogue="clip"),
    Conv(3, 8, k=5, pads=(0, 0, 0, 0), bias=False),
    Conv(3, 8, k=5, stride=2, pads=(2, 2, 2, 2), epilogue="clip"),
    # dense 1x1
    Conv(16, 32, k=1, pads=(0, 0, 0, 0), bias=False),
    Conv(16, 32, k=1, stride=2, pads=(0, 0, 0, 0), hw=(14, 14)),
    Conv(24, 24, k=1, pads=(0, 0, 0, 0), epilogue="clip"),
    Conv(48, 16, k=1, pads=(0, 0, 0, 0), epilogue="add_relu"),
    Conv(32, 16, k=1, stride=2, pads=(0, 0, 0, 0), bias=False, epilogue="clip"),
    Conv(32, 64, k=1, pads=(0, 0, 0, 0), hw=(1, 1), epilogue="relu"),  # SE block on a 1x1 map
    # dense 3x3 / 5x5 / 7x7
    Conv(16, 32, epilogue="relu"),
    Conv(16, 32, stride=2, epilogue="relu"),
    Conv(16, 32, pads=(0, 0, 0, 0)),
    Conv(16, 16, epilogue="res_relu"),
    Conv(32, 32, hw=(7, 9), bias=False, epilogue="add_relu"),
    Conv(24, 24, epilogue="relu"),
    Conv(24, 40, hw=(9, 11), epilogue="relu"),
    Conv(16, 16, hw=(2, 3), epilogue="relu"),
    Conv(16, 32, stride=2, hw=(3, 2), epilogue="relu"),  # output width 1
    Conv(16, 48, k=5, pads=(2, 2, 2, 2), hw=(9, 11), epilogue="relu"),
    Conv(8, 8, k=7, pads=(3, 3, 3, 3), bias=False, epilogue="relu"),
    Conv(16, 32, k=7, stride=2, pads=(3, 3, 3, 3), epilogue="relu"),
    Conv(16, 32, epilogue="relu", batch=2),
    # asymmetric pads
    Conv(16, 32, pads=A, epilogue="relu"),
    Conv(16, 32, k=5, pads=(1, 2, 2, 1), hw=(11, 13), bias=False),
    Conv(24, 24, stride=2, pads=(0, 0, 1, 1), groups=24, epilogue="clip"),
    # dilation
    Conv(16, 32, pads=(2, 2, 2, 2), dilation=2, epilogue="relu"),
    Conv(8, 16, stride=2, pads=(0, 0, 0, 0), dilation=2, hw=(17, 13), bias=False),
    Conv(32, 32, dilation=2, hw=(11, 11), epilogue="relu"),
    # grouped
    Conv(16, 32, groups=2, epilogue="relu"),
    Conv(32, 32, stride=2, groups=2, bias=False),
    Conv(24, 24, groups=2, hw=(11, 11), epilogue="add_relu"),
    # depthwise (and a channel multiplier of 2)
    Conv(24, 24, groups=24, epilogue="clip"),
    Conv(24, 24, stride=2, groups=24, epilogue="clip"),
    Conv(16, 16, k=5, pads=(2, 2, 2, 2), groups=16, epilogue="relu"),
    Conv(32, 32, k=5, stride=2, pads=(2, 2, 2, 2), groups=32, bias=False),
    Conv(16, 16, k=7, pads=(3, 3, 3, 3), groups=16),
    Conv(16, 16, pads=(2, 2, 2, 2), dilation=2, groups=16, epilogue="relu"),
    Conv(16, 16, groups=16, epilogue="res_relu"),
    Conv(8, 16, groups=8, epilogue="relu"),
    Conv(16, 16, groups=16, hw=(1, 1), epilogue="relu"),
]

# Known template bugs: id -> (exception, reason). Strict xfails: a fix makes them XPASS (fail).
CONV_BUGS: dict[str, tuple[type[BaseException], str]] = {}


def test_conv_grid_covers_every_axis():
    """The grid (not a cross product) still takes every value of every axis at least once."""
    seen = {
        "k": {c.k for c in CONV_CASES},
        "stride": {c.stride for c in CONV_CASES},
        "pad": {p for c in CONV_CASES for p in c.pads},
        "asymmetric": {len(set(c.pads)) > 1 for c in CONV_CASES},
        "dilation": {c.dilation for c in CONV_CASES},
        "groups": {"1" if c.groups == 1 else "C" if c.groups == c.cin else "g" for c in CONV_CASES},
        "cout%16": {c.cout % 16 == 0 for c in CONV_CASES},
        "odd": {c.hw[0] % 2 == 1 and c.hw[1] % 2 == 1 for c in CONV_CASES},
        "bias": {c.bias for c in CONV_CASES},
        "epilogue": {c.epilogue for c in CONV_CASES},
        "batch": {c.batch for c in CONV_CASES},
    }
    assert seen == {
        "k": {1, 3, 5, 7},
        "stride": {1, 2},
        "pad": {0, 1, 2, 3},
        "asymmetric": {True, False},
        "dilation": {1, 2},
        "groups": {"1", "g", "C"},
        "cout%16": {True, False},
        "odd": {True, False},
        "bias": {True, False},
        "epilogue": {"none", "relu", "clip", "add_relu", "res_relu"},
        "batch": {1, 2},
    }
    assert len({c.id for c in CONV_CASES}) == len(CONV_CASES), "duplicate ids"
    assert set(CONV_BUGS) <= {c.id for c in CONV_CASES}, "stale CONV_BUGS entry"


@pytest.mark.parametrize("case", params([c.id for c in CONV_CASES], CONV_BUGS, CONV_CASES))
def test_conv2d_template(case: Conv, tmp_path: Path):
    records, actual, expected = compile_and_run(case.model(), tmp_path)
    assert_close(actual, expected)
    assert_template(records, "conv2d", "conv2d")


# --------------------------------------------------------------------------------------------
# Matmul template


def _gelu(src: str, dst: str) -> list[str]:
    """Erf-GELU as PyTorch exports it: 0.5 * x * (1 + erf(x / sqrt(2)))."""
    return [
        f"g0 = Div ({src}, sqrt2)",
        "g1 = Erf (g0)",
        "g2 = Add (g1, one)",
        f"g3 = Mul ({src}, g2)",
        f"{dst} = Mul (g3, half)",
    ]


GELU_CONSTS = {
    "sqrt2": np.array(math.sqrt(2.0), np.float32),
    "one": np.array(1.0, np.float32),
    "half": np.array(0.5, np.float32),
}


def _weights(salt: str, **shapes) -> dict[str, np.ndarray]:
    rng = _rng(salt)
    out = {}
    for name, shape in shapes.items():
        scale = 1.0 / math.sqrt(shape[0]) if len(shape) == 2 else 1.0
        out[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return out


def mm_const(m: int, k: int, n: int, *, bias: bool = False, gelu: bool = False, batch=()):
    """x[*batch, M, K] @ W[K, N] (+ b[N]) (-> GELU)."""
    name = f"mm{'x'.join(map(str, (*batch, m, k, n)))}{bias}{gelu}"
    inits = _weights(name, W=(k, n), **({"b": (n,)} if bias else {}))
    body = ["t = MatMul (x, W)"]
    last = "t"
    if bias:
        body.append("u = Add (t, b)")
        last = "u"
    if gelu:
        body += _gelu(last, "y")
        inits.update(GELU_CONSTS)
    else:
        body.append(f"y = Identity ({last})")
    text = "\n".join(
        [
            OPSET,
            f"mm (float[{_dims((*batch, m, k))}] x) => (float[{_dims((*batch, m, n))}] y) {{",
            *body,
            "}",
        ]
    )
    return make_model(text, **inits)


def gemm(m: int, k: int, n: int, *, trans_b: int, alpha: float = 1.0, beta: float = 1.0):
    """Gemm(x[M, K], B, C[N]) with a constant B ([N, K] when transB=1, else [K, N])."""
    name = f"gemm{m}x{k}x{n}t{trans_b}"
    inits = _weights(name, B=(n, k) if trans_b else (k, n), C=(n,))
    text = "\n".join(
        [
            OPSET,
            f"gemm (float[{m},{k}] x) => (float[{m},{n}] y) {{",
            f"y = Gemm <transB = {trans_b}, alpha = {alpha}, beta = {beta}> (x, B, C)",
            "}",
        ]
    )
    return make_model(text, **inits)


def mm_act(a_shape, b_shape, *, transpose_b: bool = False, scale: bool = False):
    """Batched MatMul of two activations (attention scores / attention x values)."""
    out = (*a_shape[:-1], b_shape[-2] if transpose_b else b_shape[-1])
    body = []
    b = "b"
    if transpose_b:
        perm = list(range(len(b_shape)))
        perm[-2:] = perm[-1], perm[-2]
        body.append(f"bt = Transpose <perm = [{_dims(perm)}]> (b)")
        b = "bt"
    inits = {}
    if scale:
        body += [f"t = MatMul (a, {b})", "y = Mul (t, s)"]
        inits["s"] = np.array(0.125, np.float32)
    else:
        body.append(f"y = MatMul (a, {b})")
    text = "\n".join(
        [
            OPSET,
            f"mm (float[{_dims(a_shape)}] a, float[{_dims(b_shape)}] b) => "
            f"(float[{_dims(out)}] y) {{",
            *body,
            "}",
        ]
    )
    return make_model(text, **inits)


MATMUL_CASES = {
    # 2-D, constant weight [K, N]: N a multiple of 16, and not (padded)
    "2d-197x64x64": lambda: mm_const(197, 64, 64),
    "2d-197x64x197": lambda: mm_const(197, 64, 197),
    "2d-1x512x1000-bias": lambda: mm_const(1, 512, 1000, bias=True),
    "2d-50x40x24-bias": lambda: mm_const(50, 40, 24, bias=True),
    "2d-7x33x5": lambda: mm_const(7, 33, 5),
    "2d-13x96x48-bias-gelu": lambda: mm_const(13, 96, 48, bias=True, gelu=True),
    # [B, M, K] x [K, N] with bias and GELU (a ViT MLP)
    "3d-1x197x64x256-bias-gelu": lambda: mm_const(197, 64, 256, bias=True, gelu=True, batch=(1,)),
    "3d-2x50x64x96-bias": lambda: mm_const(50, 64, 96, bias=True, batch=(2,)),
    "3d-2x9x24x40-bias-gelu": lambda: mm_const(9, 24, 40, bias=True, gelu=True, batch=(2,)),
    # Gemm with a transposed constant weight (packed by the template) and without
    "gemm-transB-1x512x1000": lambda: gemm(1, 512, 1000, trans_b=1),
    "gemm-transB-8x64x64": lambda: gemm(8, 64, 64, trans_b=1),
    "gemm-transB-5x48x24-alpha-beta": lambda: gemm(5, 48, 24, trans_b=1, alpha=0.5, beta=2.0),
    "gemm-6x32x80": lambda: gemm(6, 32, 80, trans_b=0),
    # two activations: attention scores and attention x values
    "act-1x3x197x64-1x3x64x197": lambda: mm_act((1, 3, 197, 64), (1, 3, 64, 197)),
    "act-qkT-1x3x197x64-scale": lambda: mm_act(
        (1, 3, 197, 64), (1, 3, 197, 64), transpose_b=True, scale=True
    ),
    "act-1x3x197x197-1x3x197x64": lambda: mm_act((1, 3, 197, 197), (1, 3, 197, 64)),
    "act-2x17x24-2x24x40": lambda: mm_act((2, 17, 24), (2, 24, 40)),
    "act-bcast-2x3x10x16-3x16x24": lambda: mm_act((2, 3, 10, 16), (3, 16, 24)),
    # degenerate shapes: M = 1 with a batch, N = 1, K = 1 (an outer product)
    "3d-3x1x32x48-bias-gelu": lambda: mm_const(1, 32, 48, bias=True, gelu=True, batch=(3,)),
    "2d-9x16x1-bias": lambda: mm_const(9, 16, 1, bias=True),
    "2d-9x1x24-k1": lambda: mm_const(9, 1, 24),
}
MATMUL_BUGS: dict[str, tuple[type[BaseException], str]] = {}


@pytest.mark.parametrize("name", params(MATMUL_CASES, MATMUL_BUGS))
def test_matmul_template(name: str, tmp_path: Path):
    records, actual, expected = compile_and_run(MATMUL_CASES[name](), tmp_path)
    assert_close(actual, expected)
    assert_template(records, "matmul", "matmul")


# --------------------------------------------------------------------------------------------
# Generic template


def _graph(name: str, inputs: str, outputs: str, body: list[str], **inits) -> onnx.ModelProto:
    text = "\n".join([OPSET, f"{name} ({inputs}) => ({outputs}) {{", *body, "}"])
    return make_model(text, **inits)


GENERIC_CASES = {
    "softmax-last-axis": (
        "softmax",
        lambda: _graph(
            "sm",
            "float[1,3,197,197] x",
            "float[1,3,197,197] y",
            ["y = Softmax <axis = -1> (x)"],
        ),
    ),
    "layernorm": (
        "layer_norm",
        lambda: _graph(
            "ln",
            "float[1,197,192] x",
            "float[1,197,192] y",
            ["y = LayerNormalization <axis = -1, epsilon = 1e-6> (x, g, b)"],
            **_weights("ln", g=(192,), b=(192,)),
        ),
    ),
    "maxpool-k3s2p1": (
        "max_pool2d",
        lambda: _graph(
            "mp",
            "float[1,16,13,17] x",
            "float[1,16,7,9] y",
            ["y = MaxPool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]> (x)"],
        ),
    ),
    "global-avgpool": (
        "mean",
        lambda: _graph(
            "gap", "float[1,24,7,9] x", "float[1,24,1,1] y", ["y = GlobalAveragePool (x)"]
        ),
    ),
    "transpose-reshape": (
        "transpose",
        lambda: _graph(
            "tr",
            "float[1,197,3,64] x",
            "float[1,3,197,64] y, float[1,197,192] z",
            [
                "y = Transpose <perm = [0, 2, 1, 3]> (x)",
                "t = Transpose <perm = [0, 2, 1, 3]> (y)",
                "z = Reshape (t, shape)",
            ],
            shape=np.array([1, 197, 192], np.int64),
        ),
    ),
    "reshape-transpose-patchify": (
        "reshape",
        lambda: _graph(
            "patch",
            "float[1,8,12,12] x",
            "float[1,9,128] y",
            [
                "a = Reshape (x, s1)",
                "b = Transpose <perm = [0, 2, 4, 1, 3, 5]> (a)",
                "y = Reshape (b, s2)",
            ],
            s1=np.array([1, 8, 3, 4, 3, 4], np.int64),
            s2=np.array([1, 9, 128], np.int64),
        ),
    ),
}
GENERIC_BUGS: dict[str, tuple[type[BaseException], str]] = {}
# cases a dedicated template now takes (edgec.lower.norms, edgec.lower.pool)
NORMS = {"softmax-last-axis": "softmax", "layernorm": "layer_norm", "maxpool-k3s2p1": "max_pool"}


@pytest.mark.parametrize("name", params(GENERIC_CASES, GENERIC_BUGS))
def test_generic_template(name: str, tmp_path: Path):
    kernel_part, build_model = GENERIC_CASES[name]
    records, actual, expected = compile_and_run(build_model(), tmp_path)
    assert records, "no kernels"
    assert_close(actual, expected)
    assert_template(records, kernel_part, NORMS.get(name, "generic"))


# --------------------------------------------------------------------------------------------
# schedule=False: TVM's plain lowering stays correct


def test_unscheduled_build_matches(tmp_path: Path):
    model = Conv(16, 32, stride=2, epilogue="add_relu").model()
    (tmp_path / "off").mkdir()
    records, actual, expected = compile_and_run(model, tmp_path / "off", schedule=False)
    assert records == []
    assert_close(actual, expected)
    (tmp_path / "on").mkdir()
    _, scheduled, _ = compile_and_run(model, tmp_path / "on")
    assert_close(scheduled, actual)


def test_records_carry_knobs_and_flops(tmp_path: Path):
    case = Conv(16, 32, epilogue="relu")
    records, _, _ = compile_and_run(case.model(), tmp_path)
    (conv,) = assert_template(records, "conv2d", "conv2d")
    ho, wo = case.out_hw
    assert conv["flops"] == 2 * case.cout * ho * wo * case.cin * case.k * case.k
    assert {"vec", "fb", "xb"} <= set(conv["knobs"])


# --------------------------------------------------------------------------------------------
# Every candidate of a template's search space (what the latency-measured search will try) is
# correct too, not only the default knobs.


def _spy_spaces(monkeypatch, pick=None) -> dict[str, list]:
    """Patch ``schedules.apply_all`` so that ``pick(kernel, space, default)`` chooses the knobs;
    returns a dict that fills with each kernel's search space as builds run."""
    real = _APPLY_ALL
    spaces: dict[str, list] = {}

    def choose(name, info, space, default):
        spaces[name] = space
        return pick(name, space, default) if pick else default

    monkeypatch.setattr(schedules, "apply_all", lambda mod, lanes, **_: real(mod, lanes, choose))
    return spaces


def sweep_space(model, tmp_path: Path, monkeypatch, kernel_part: str, template: str) -> int:
    """Build ``model`` once per candidate knob set of its ``kernel_part`` kernel(s) and check
    each against onnxruntime; one assertion listing every failing candidate."""
    spaces = _spy_spaces(monkeypatch)
    lower.build(model, _target(), threads=THREADS)
    names = [n for n in spaces if kernel_part in n]
    assert names, f"no *{kernel_part}* kernel in {list(spaces)}"
    candidates = spaces[names[0]]
    failures = []
    for i, knobs in enumerate(candidates):
        _spy_spaces(monkeypatch, lambda n, space, d, k=knobs: k if kernel_part in n else d)
        (tmp_path / str(i)).mkdir()
        try:
            records, actual, expected = compile_and_run(model, tmp_path / str(i))
            assert_close(actual, expected)
            assert_template(records, kernel_part, template)
        except Exception as e:  # noqa: BLE001 - every failing candidate is reported
            failures.append(f"{knobs}: {type(e).__name__}: {str(e).strip().splitlines()[0]}")
    assert not failures, f"{len(failures)}/{len(candidates)} candidates fail:\n" + "\n".join(
        failures
    )
    return len(candidates)


SPACE_CASES = {
    "conv-16to32-k3s1p1-13x17-relu": (lambda: Conv(16, 32, epilogue="relu").model(), "conv2d"),
    "conv-24to24-k3s2-asym-g2-bias": (
        lambda: Conv(24, 24, stride=2, pads=A, groups=2).model(),
        "conv2d",
    ),
    "conv-dw-24-k3s2p1-clip": (
        lambda: Conv(24, 24, stride=2, groups=24, epilogue="clip").model(),
        "conv2d",
    ),
    "conv-16to48-k1-9x11-add_relu": (
        lambda: Conv(16, 48, k=1, pads=(0, 0, 0, 0), hw=(9, 11), epilogue="add_relu").model(),
        "conv2d",
    ),
    "matmul-3d-2x9x24x40-bias-gelu": (MATMUL_CASES["3d-2x9x24x40-bias-gelu"], "matmul"),
    "matmul-2d-50x40x24-bias": (MATMUL_CASES["2d-50x40x24-bias"], "matmul"),
    "matmul-act-2x17x24-2x24x40": (MATMUL_CASES["act-2x17x24-2x24x40"], "matmul"),
    "generic-layernorm": (GENERIC_CASES["layernorm"][1], "layer_norm"),
    "generic-patchify": (GENERIC_CASES["reshape-transpose-patchify"][1], "reshape"),
}
SPACE_BUGS: dict[str, tuple[type[BaseException], str]] = {}


@pytest.mark.parametrize("name", params(SPACE_CASES, SPACE_BUGS))
def test_every_knob_candidate(name: str, tmp_path: Path, monkeypatch):
    build_model, kernel_part = SPACE_CASES[name]
    template = {"conv2d": "conv2d", "matmul": "matmul", "layer_norm": "layer_norm"}.get(
        kernel_part, "generic"
    )
    assert sweep_space(build_model(), tmp_path, monkeypatch, kernel_part, template) >= 2


# --------------------------------------------------------------------------------------------
# The matmul template's packing of a transposed constant weight. ONNX Gemm(transB=1) does not
# reach it (FoldConstant transposes the constant before fusion, so the template sees B[K, N]),
# so this builds the Relax module by hand: y = relu(x @ W^T + b) with a constant W[N, K].


def _relax_matmul_nt(x: np.ndarray, w: np.ndarray, b: np.ndarray):
    from tvm import relax, te, topi

    (m, k), n = x.shape, w.shape[0]

    def matmul_nt(a, bt):
        r = te.reduce_axis((0, k), "k")
        return te.compute((m, n), lambda i, j: te.sum(a[i, r] * bt[j, r], axis=r), "matmul_nt")

    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((m, k), "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            t = bb.emit_te(matmul_nt, xv, relax.const(w), primfunc_name_hint="matmul_nt")
            u = bb.emit_te(topi.add, t, relax.const(b))
            y = bb.emit_output(bb.emit_te(topi.nn.relu, u))
        bb.emit_func_output(y)
    return bb.get()


def _run_nt(m: int, k: int, n: int, tmp_path: Path, monkeypatch, knobs=None) -> dict:
    """Build and run relu(x @ W^T + b) (the matmul kernel with ``knobs``, default if None),
    check it against numpy; returns the template's match info for the matmul kernel."""
    rng = _rng(f"nt{m}x{k}x{n}")
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    monkeypatch.setattr(lower, "to_relax", lambda _model: _relax_matmul_nt(x, w, b))
    infos: dict[str, dict] = {}

    def choose(name, info, space, default):
        infos[name] = {**info, "space": space}
        return knobs if knobs is not None and "matmul" in name else default

    monkeypatch.setattr(
        schedules, "apply_all", lambda mod, lanes, **_: _APPLY_ALL(mod, lanes, choose)
    )
    executable, records = lower.build(None, _target(), threads=THREADS)
    assert_template(records, "matmul", "matmul")
    path = tmp_path / f"nt{len(list(tmp_path.iterdir()))}.so"
    lower.export(executable, path, _target())
    (got,) = lower.Runtime(path, THREADS).run([x])
    want = np.maximum(x.astype(np.float64) @ w.T.astype(np.float64) + b, 0)
    assert_close({"y": got}, {"y": want})
    (info,) = [v for name, v in infos.items() if "matmul" in name]
    return info


@pytest.mark.parametrize("m,k,n", [(6, 64, 64), (5, 48, 40), (1, 96, 32)], ids=str)
def test_matmul_packs_transposed_constant_weight(m, k, n, tmp_path: Path, monkeypatch):
    info = _run_nt(m, k, n, tmp_path, monkeypatch)
    assert info["transposed"] and info["b_param"] in info["constants"], info


def test_matmul_transposed_weight_every_knob_candidate(tmp_path: Path, monkeypatch):
    """Packed (N divisible by nb) and padded (not) candidates of the transposed-weight path."""
    space = _run_nt(5, 48, 40, tmp_path, monkeypatch)["space"]
    failures = []
    for knobs in space:
        try:
            _run_nt(5, 48, 40, tmp_path, monkeypatch, knobs)
        except Exception as e:  # noqa: BLE001 - every failing candidate is reported
            failures.append(f"{knobs}: {type(e).__name__}: {str(e).strip().splitlines()[0]}")
    assert not failures, f"{len(failures)}/{len(space)} candidates fail:\n" + "\n".join(failures)
