"""fuse_batchnorm: BatchNorm / per-channel Mul+Add folded into Conv, ConvTranspose, Gemm, MatMul.

Each case: a tiny graph (ONNX text) -> the pass -> exact op counts, the rule that fired, same
outputs in onnxruntime. Near-misses must leave the graph alone and say why. Then small torch
modules through both exporters and ``simplify`` (as in the pipeline), and the SLAB zoo model.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import onnx
import pytest

from edgec.passes.fuse_batchnorm import RULES, FuseBatchNorm
from edgec.passes.simplify import Simplify
from tests.conftest import RNG_SEED, assert_equivalent, make_model, op_counts

OPSET = '<ir_version: 9, opset_import: ["" : 17]>'


def _rng(*key: object) -> np.random.Generator:
    """A generator seeded by the test case (stable across processes, unlike hash())."""
    return np.random.default_rng([RNG_SEED, zlib.crc32(repr(key).encode())])


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _bn(rng: np.random.Generator, c: int, prefix: str = "") -> dict[str, np.ndarray]:
    """Non-trivial BN statistics: gamma, beta, mean, var named {prefix}g/b/m/v."""
    return {
        f"{prefix}g": rng.uniform(0.5, 1.5, c).astype(np.float32),
        f"{prefix}b": rng.normal(0, 0.5, c).astype(np.float32),
        f"{prefix}m": rng.normal(0, 0.5, c).astype(np.float32),
        f"{prefix}v": rng.uniform(0.5, 1.5, c).astype(np.float32),
    }


def _fold(text: str, **inits: np.ndarray):
    """Build the model, run the pass, check outputs; returns (result, op counts)."""
    model = make_model(f"{OPSET}\n{text}", **inits)
    result = FuseBatchNorm()(model)
    assert_equivalent(model, result.model)
    return result, op_counts(result.model)


def _unchanged(text: str, **inits: np.ndarray):
    model = make_model(f"{OPSET}\n{text}", **inits)
    result = FuseBatchNorm()(model)
    assert not result.changed
    assert result.model is model
    return result


def test_rules_are_explicit_and_ordered():
    names = [r.name for r in RULES]
    assert names[:3] == ["FuseBatchNormIntoConv", "FuseBatchNormIntoConvTranspose",
                         "FuseBatchNormIntoGemm"]  # fmt: skip
    assert list(dict.fromkeys(names[3:])) == ["MergeRepBN", "FoldAffineIntoProducer",
                                              "FoldAffineIntoConsumer", "ComposeAffines",
                                              "CancelLayoutPair"]  # fmt: skip
    assert FuseBatchNorm.name == "fuse_batchnorm" and FuseBatchNorm.summary


# ------------------------------------------------------------------------------ after the op


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_conv_bn_reuses_onnxscript_rule(groups, bias):
    rng = _rng("conv_bn", groups, bias)
    inits = dict(W=_w(rng, 8, 8 // groups, 3, 3), **_bn(rng, 8))
    if bias:
        inits["B"] = _w(rng, 8)
    result, ops = _fold(
        f"""g (float[2,8,7,7] x) => (float[2,8,7,7] y) {{
            c = Conv <group = {groups}, pads = [1, 1, 1, 1]> (x, W{", B" if bias else ""})
            y = BatchNormalization (c, g, b, m, v)
        }}""",
        **inits,
    )
    assert ops == {"Conv": 1}
    assert result.stats["FuseBatchNormIntoConv"] == 1


@pytest.mark.parametrize("const_first", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_conv_mul_add(groups, stride, bias, const_first):
    rng = _rng("conv_mul_add", groups, stride, bias, const_first)
    inits = dict(W=_w(rng, 8, 8 // groups, 3, 3), S=_w(rng, 8, 1, 1), T=_w(rng, 1, 8, 1, 1))
    if bias:
        inits["B"] = _w(rng, 8)
    mul, add = ("S, c", "T, s") if const_first else ("c, S", "s, T")
    out = 7 if stride == 1 else 4
    result, ops = _fold(
        f"""g (float[2,8,7,7] x) => (float[2,8,{out},{out}] y) {{
            c = Conv <group = {groups}, strides = [{stride}, {stride}], pads = [1, 1, 1, 1]>
                     (x, W{", B" if bias else ""})
            s = Mul ({mul})
            y = Add ({add})
        }}""",
        **inits,
    )
    assert ops == {"Conv": 1}
    assert result.stats["FoldAffineIntoProducer"] == 2


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_bn_and_affine(groups, stride):
    rng = _rng("convT", groups, stride)
    size = 6 if stride == 1 else 11
    result, ops = _fold(
        f"""g (float[1,4,6,6] x) => (float[1,8,{size},{size}] y) {{
            c = ConvTranspose <group = {groups}, strides = [{stride}, {stride}],
                               pads = [1, 1, 1, 1]> (x, W, B)
            n = BatchNormalization (c, g, b, m, v)
            s = Mul (S, n)
            y = Add (s, T)
        }}""",
        W=_w(rng, 4, 8 // groups, 3, 3), B=_w(rng, 8), S=_w(rng, 8, 1, 1), T=_w(rng, 8, 1, 1),
        **_bn(rng, 8),
    )  # fmt: skip
    assert ops == {"ConvTranspose": 1}
    assert result.stats["FuseBatchNormIntoConvTranspose"] == 1
    assert result.stats["FoldAffineIntoProducer"] == 2


@pytest.mark.parametrize("alpha_beta", [False, True])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn_and_affine(trans_b, alpha_beta):
    rng = _rng("gemm", trans_b, alpha_beta)
    attrs = f"transB = {trans_b}" + (", alpha = 0.5, beta = 2.0" if alpha_beta else "")
    result, ops = _fold(
        f"""g (float[4,8] x) => (float[4,16] y) {{
            c = Gemm <{attrs}> (x, W, C)
            s = Mul (c, S)
            a = Add (T, s)
            y = BatchNormalization (a, g, b, m, v)
        }}""",
        W=_w(rng, *((16, 8) if trans_b else (8, 16))), C=_w(rng, 16), S=_w(rng, 16),
        T=_w(rng, 1, 16), **_bn(rng, 16),
    )  # fmt: skip
    assert ops == {"Gemm": 1}
    assert result.stats["FoldAffineIntoProducer"] == 2
    assert result.stats["FuseBatchNormIntoGemm"] == 1


@pytest.mark.parametrize("bias", [False, True])
def test_matmul_layer_scale(bias):
    rng = _rng("layer_scale", bias)
    inits = dict(W=_w(rng, 8, 16), G=_w(rng, 16))
    body = "y = Mul (G, h)"
    if bias:
        inits["B"] = _w(rng, 16)
        body = "p = Add (B, h)\n y = Mul (G, p)"
    result, ops = _fold(
        f"""g (float[2,5,8] x) => (float[2,5,16] y) {{
            h = MatMul (x, W)
            {body}
        }}""",
        **inits,
    )
    assert ops == ({"MatMul": 1, "Add": 1} if bias else {"MatMul": 1})
    assert result.stats["FoldAffineIntoProducer"] == 1


def test_matmul_bn_2d():
    rng = _rng("matmul_bn")
    result, ops = _fold(
        """g (float[6,8] x) => (float[6,16] y) {
            h = MatMul (x, W)
            y = BatchNormalization (h, g, b, m, v)
        }""",
        W=_w(rng, 8, 16), **_bn(rng, 16),
    )  # fmt: skip
    assert ops == {"MatMul": 1, "Add": 1}


@pytest.mark.parametrize("flatten", [True, False])
def test_levit_linear_bn(flatten):
    """MatMul -> Flatten(axis=2) | Reshape -> BN1d -> Reshape: the BN goes, the reshapes cancel."""
    rng = _rng("levit", flatten)
    flat = "f = Flatten <axis = 2> (h)" if flatten else "f = Reshape (h, S2)"
    result, ops = _fold(
        f"""g (float[2,5,8] x) => (float[2,5,16] y) {{
            h = MatMul (x, W)
            {flat}
            n = BatchNormalization (f, g, b, m, v)
            y = Reshape (n, S3)
        }}""",
        W=_w(_rng("levit_w"), 8, 16), S2=np.array([10, 16]), S3=np.array([2, 5, 16]),
        **_bn(rng, 16),
    )  # fmt: skip
    assert ops == {"MatMul": 1, "Add": 1}
    assert result.stats["FoldAffineIntoProducer"] == 1
    assert result.stats["CancelLayoutPair"] == 1


def test_tokens_transpose_bn_transpose():
    """EfficientFormer/SLAB: MatMul+Add -> Transpose -> BN1d -> Transpose."""
    rng = _rng("transpose_bn")
    result, ops = _fold(
        """g (float[2,5,8] x) => (float[2,5,16] y) {
            h = MatMul (x, W)
            a = Add (h, B)
            t = Transpose <perm = [0, 2, 1]> (a)
            n = BatchNormalization (t, g, b, m, v)
            y = Transpose <perm = [0, 2, 1]> (n)
        }""",
        W=_w(rng, 8, 16), B=_w(rng, 16), **_bn(rng, 16),
    )  # fmt: skip
    assert ops == {"MatMul": 1, "Add": 1}
    assert result.stats["CancelLayoutPair"] == 1


def test_simplified_gemm_form_reshape_transpose_bn():
    """onnxsim's 3-D Linear: Reshape -> Gemm -> Reshape -> Transpose -> BN -> Transpose."""
    rng = _rng("gemm_reshape")
    result, ops = _fold(
        """g (float[2,5,8] x) => (float[2,5,16] y) {
            r = Reshape (x, S2)
            h = Gemm (r, W, B)
            u = Reshape (h, S3)
            t = Transpose <perm = [0, 2, 1]> (u)
            n = BatchNormalization (t, g, b, m, v)
            y = Transpose <perm = [0, 2, 1]> (n)
        }""",
        W=_w(rng, 8, 16), B=_w(rng, 16), S2=np.array([10, 8]), S3=np.array([2, 5, 16]),
        **_bn(rng, 16),
    )  # fmt: skip
    assert ops == {"Reshape": 2, "Gemm": 1}


def test_chain_of_affines_around_relu():
    """Conv -> BN -> Relu -> BN -> Mul -> Conv: the first BN folds back, the rest forward."""
    rng = _rng("chain")
    inits = dict(W1=_w(rng, 8, 4, 3, 3), W2=_w(rng, 6, 8, 1, 1), S=_w(rng, 8, 1, 1),
                 **_bn(rng, 8, "p"), **_bn(rng, 8, "q"))  # fmt: skip
    result, ops = _fold(
        """g (float[1,4,6,6] x) => (float[1,6,6,6] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, W1)
            n = BatchNormalization (c, pg, pb, pm, pv)
            r = Relu (n)
            k = BatchNormalization (r, qg, qb, qm, qv)
            s = Mul (k, S)
            y = Conv (s, W2)
        }""",
        **inits,
    )
    assert ops == {"Conv": 2, "Relu": 1}
    assert result.stats["FoldAffineIntoConsumer"] == 2


def test_standalone_affines_compose():
    rng = _rng("compose")
    result, ops = _fold(
        """g (float[1,4,5,5] x) => (float[1,4,5,5] y) {
            n = BatchNormalization (x, g, b, m, v)
            s = Mul (S, n)
            a = Add (s, T)
            y = Relu (a)
        }""",
        S=_w(rng, 4, 1, 1), T=_w(rng, 1, 4, 1, 1), **_bn(rng, 4),
    )  # fmt: skip
    assert ops == {"BatchNormalization": 1, "Relu": 1}
    assert result.stats["ComposeAffines"] == 2


# ----------------------------------------------------------------------------- before the op


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("pad", [0, 1])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_bn_before_conv(groups, stride, pad, bias):
    """Exact for pad 0; for zero padding the shift becomes a border-correct bias map."""
    rng = _rng("bn_conv", groups, stride, pad, bias)
    inits = dict(W=_w(rng, 8, 8 // groups, 3, 3), **_bn(rng, 8))
    if bias:
        inits["B"] = _w(rng, 8)
    out = (9 + 2 * pad - 3) // stride + 1
    result, ops = _fold(
        f"""g (float[2,8,9,9] x) => (float[2,8,{out},{out}] y) {{
            n = BatchNormalization (x, g, b, m, v)
            y = Conv <group = {groups}, strides = [{stride}, {stride}],
                      pads = [{pad}, {pad}, {pad}, {pad}]> (n, W{", B" if bias else ""})
        }}""",
        **inits,
    )
    assert ops == ({"Conv": 1, "Add": 1} if pad else {"Conv": 1})
    assert result.stats["FoldAffineIntoConsumer"] == 1


@pytest.mark.parametrize(
    ("x", "w", "attrs", "y"),
    [
        ("1,4,9,9", "6,4,3,3", "dilations = [2, 2], pads = [2, 1, 0, 2]", "6,7,8"),
        ("1,4,9,8", "6,4,3,3", 'auto_pad = "SAME_UPPER", strides = [2, 2]', "6,5,4"),
        ("1,4,8,8", "6,4,4,4", 'auto_pad = "SAME_LOWER", strides = [2, 2]', "6,4,4"),
        ("2,4,10", "6,4,3", "pads = [2, 1]", "6,11"),
        ("1,4,5,5,5", "4,1,3,3,3", "group = 4, pads = [1, 1, 1, 1, 1, 1]", "4,5,5,5"),
    ],
    ids=["dilated-asymmetric", "same-upper", "same-lower", "conv1d", "conv3d-depthwise"],
)
def test_bn_before_padded_conv_bias_map(x, w, attrs, y):
    rng = _rng("bias_map", x, attrs)
    batch = x.split(",")[0]
    result, ops = _fold(
        f"""g (float[{x}] x) => (float[{batch},{y}] y) {{
            n = BatchNormalization (x, g, b, m, v)
            y = Conv <{attrs}> (n, W, B)
        }}""",
        W=_w(rng, *map(int, w.split(","))), B=_w(rng, int(w.split(",")[0])), **_bn(rng, 4),
    )  # fmt: skip
    assert ops == {"Conv": 1, "Add": 1}


def test_scale_before_padded_conv_needs_no_bias_map():
    rng = _rng("mul_conv")
    result, ops = _fold(
        """g (float[1,4,6,6] x) => (float[1,8,6,6] y) {
            s = Mul (x, S)
            y = Conv <pads = [1, 1, 1, 1]> (s, W, B)
        }""",
        S=_w(rng, 4, 1, 1), W=_w(rng, 8, 4, 3, 3), B=_w(rng, 8),
    )  # fmt: skip
    assert ops == {"Conv": 1}


@pytest.mark.parametrize("alpha_beta", [False, True])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("trans_a", [0, 1])
def test_bn_before_gemm(trans_a, trans_b, alpha_beta):
    """With transA the BN channel reaches Gemm's A through a Transpose, on axis 0."""
    rng = _rng("bn_gemm", trans_a, trans_b, alpha_beta)
    attrs = f"transA = {trans_a}, transB = {trans_b}"
    attrs += ", alpha = 0.5, beta = 2.0" if alpha_beta else ""
    a, transpose = ("k", "k = Transpose (n)") if trans_a else ("n", "")
    result, ops = _fold(
        f"""g (float[4,8] x) => (float[4,16] y) {{
            n = BatchNormalization (x, g, b, m, v)
            {transpose}
            y = Gemm <{attrs}> ({a}, W, C)
        }}""",
        W=_w(rng, *((16, 8) if trans_b else (8, 16))), C=_w(rng, 16), **_bn(rng, 8),
    )  # fmt: skip
    assert ops == ({"Transpose": 1, "Gemm": 1} if trans_a else {"Gemm": 1})
    assert result.stats["FoldAffineIntoConsumer"] == 1


def test_bn_feeding_two_linears_folds_into_both():
    rng = _rng("fanout")
    result, ops = _fold(
        """g (float[3,8] x) => (float[3,4] y, float[3,6] z) {
            n = BatchNormalization (x, g, b, m, v)
            y = MatMul (n, W1)
            z = Gemm <transB = 1> (n, W2, C)
        }""",
        W1=_w(rng, 8, 4), W2=_w(rng, 6, 8), C=_w(rng, 6), **_bn(rng, 8),
    )  # fmt: skip
    assert ops == {"MatMul": 1, "Add": 1, "Gemm": 1}
    assert result.stats["FoldAffineIntoConsumer"] == 2


# ---------------------------------------------------------------------------------- SLAB RepBN

_REPBN = """
            t = Transpose <perm = [0, 2, 1]> (z)
            n = BatchNormalization (t, g, b, m, v)
            {alpha}
            r = Add ({sum})
            u = Transpose <perm = [0, 2, 1]> (r)
"""


@pytest.mark.parametrize("alpha", ["mul", "mul_const_first", "one"])
def test_repbn_folds_into_following_linear(alpha):
    rng = _rng("repbn", alpha)
    block = _REPBN.format(
        alpha={"mul": "s = Mul (t, A)", "mul_const_first": "s = Mul (A, t)", "one": ""}[alpha],
        sum="n, t" if alpha == "one" else "s, n",
    )
    result, ops = _fold(
        f"""g (float[2,6,8] x) => (float[2,6,16] y) {{
            z = Relu (x)
            {block}
            h = MatMul (u, W)
            y = Add (B, h)
        }}""",
        A=np.array([0.7], np.float32), W=_w(rng, 8, 16), B=_w(rng, 16), **_bn(rng, 8),
    )  # fmt: skip
    assert ops == {"Relu": 1, "MatMul": 1, "Add": 1}
    assert result.stats["MergeRepBN"] == 1
    assert result.stats["CancelLayoutPair"] == 1


def test_repbn_folds_into_preceding_linear_before_nonlinearity():
    rng = _rng("repbn_prev")
    block = _REPBN.format(alpha="s = Mul (A, t)", sum="n, s").replace("(z)", "(a)", 1)
    result, ops = _fold(
        f"""g (float[2,6,8] x) => (float[2,6,8] y) {{
            h = MatMul (x, W)
            a = Add (h, B)
            {block}
            y = Relu (u)
        }}""",
        A=np.array([1.3], np.float32), W=_w(rng, 8, 8), B=_w(rng, 8), **_bn(rng, 8),
    )  # fmt: skip
    assert ops == {"MatMul": 1, "Add": 1, "Relu": 1}
    assert result.stats["FoldAffineIntoProducer"] == 1


def test_repbn_head_through_reduce_mean():
    """SLAB's final norm: RepBN -> mean over tokens -> Linear head."""
    rng = _rng("repbn_head")
    block = _REPBN.format(alpha="", sum="t, n")
    result, ops = _fold(
        f"""g (float[1,6,8] x) => (float[1,10] y) {{
            z = Relu (x)
            {block}
            p = ReduceMean <axes = [1], keepdims = 0> (u)
            y = Gemm <transB = 1> (p, W, C)
        }}""",
        W=_w(rng, 10, 8), C=_w(rng, 10), **_bn(rng, 8),
    )  # fmt: skip
    assert ops == {"Relu": 1, "ReduceMean": 1, "Gemm": 1}


# ---------------------------------------------------------------------------- must not fire


def test_training_mode_bn_is_refused():
    rng = _rng("training")
    result = _unchanged(
        """g (float[2,4,6,6] x) => (float[2,4,6,6] y) {
            c = Conv (x, W)
            y, rm, rv = BatchNormalization <training_mode = 1> (c, g, b, m, v)
        }""",
        W=_w(rng, 4, 4, 1, 1), **_bn(rng, 4),
    )  # fmt: skip
    assert any("FuseBatchNormIntoConv" in d and "training mode" in d for d in result.declined)


@pytest.mark.parametrize(
    ("name", "body", "inits", "reason"),
    [  # x is float[1,4,6,6], y float[1,C,6,6] with C the first dim of W
        (
            "shared weight",
            """c = Conv (x, W)
            d = Conv (x, W)
            s = Mul (c, S)
            y = Add (s, d)""",
            {"W": (8, 4, 1, 1), "S": (8, 1, 1)},
            "is shared with another node",
        ),
        (
            "conv output used twice",
            """c = Conv (x, W)
            s = Mul (c, S)
            y = Add (s, c)""",
            {"W": (8, 4, 1, 1), "S": (8, 1, 1)},
            "has 2 consumers",
        ),
        (
            "scale along a spatial axis",
            """c = Conv (x, W)
            y = Mul (c, S)""",
            {"W": (8, 4, 1, 1), "S": (1, 1, 1, 6)},
            "not its output-channel axis 1",
        ),
        (
            "non-constant BN parameters",
            """c = Conv (x, W)
            y = BatchNormalization (c, gamma, b, m, v)""",
            {"W": (8, 4, 1, 1), "b": (8,), "m": (8,), "v": (8,)},
            "not constant",
        ),
        (
            "BN also feeds a Relu",
            """n = BatchNormalization (x, g, b, m, v)
            c = Conv (n, W)
            r = Relu (n)
            y = Add (c, r)""",
            {"W": (4, 4, 1, 1), "g": (4,), "b": (4,), "m": (4,), "v": (4,)},
            "also feeds Relu",
        ),
    ],
)
def test_near_misses_are_refused_with_a_reason(name, body, inits, reason):
    rng = _rng("near_miss", name)
    arrays = {k: np.abs(_w(rng, *shape)) + 0.5 for k, shape in inits.items()}
    c_out = inits["W"][0]
    extra = ", float[8] gamma" if "gamma" in body else ""
    result = _unchanged(
        f"""g (float[1,4,6,6] x{extra}) => (float[1,{c_out},6,6] y) {{
            {body}
        }}""",
        **arrays,
    )
    assert any(reason in d for d in result.declined), result.declined


def test_bn_token_axis_is_not_the_matmul_channel():
    """ORT's MatmulBNFusion only compares lengths: here BN normalizes the 8 tokens, not the 8
    output features of the MatMul."""
    rng = _rng("axis")
    result = _unchanged(
        """g (float[2,8,4] x) => (float[2,8,8] y) {
            h = MatMul (x, W)
            y = BatchNormalization (h, g, b, m, v)
        }""",
        W=_w(rng, 4, 8), **_bn(rng, 8),
    )  # fmt: skip
    assert any("not its output-channel axis 2" in d for d in result.declined), result.declined


def test_padded_conv_without_static_shape_is_refused():
    rng = _rng("dynamic")
    result = _unchanged(
        """g (float[1,4,H,W] x) => (float[1,8,H,W] y) {
            n = BatchNormalization (x, g, b, m, v)
            y = Conv <pads = [1, 1, 1, 1]> (n, K)
        }""",
        K=_w(rng, 8, 4, 3, 3), **_bn(rng, 4),
    )  # fmt: skip
    assert any("bias map" in d for d in result.declined), result.declined


@pytest.mark.parametrize(
    "body",
    [
        "s = Relu (x)\n y = Conv (s, W)",  # a non-linear op in between: not a candidate
        "s = Mul (x, M)\n y = Conv (s, W)",  # a spatially varying scale: not an affine
        "s = Add (x, x)\n y = Conv (s, W)",  # no constant operand
    ],
)
def test_not_candidates_stay_silent(body):
    rng = _rng("silent", body)
    result = _unchanged(
        f"""g (float[1,4,6,6] x) => (float[1,8,6,6] y) {{
            {body}
        }}""",
        W=_w(rng, 8, 4, 1, 1), M=_w(rng, 1, 4, 6, 6),
    )  # fmt: skip
    assert result.declined == []


# ------------------------------------------------------------------------- torch modules


torch = pytest.importorskip("torch")
nn = torch.nn


class _LeViTLinearBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.bn = nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16)

    def forward(self, x):
        return self.bn(self.c(x).flatten(0, 1)).reshape(x.shape[0], x.shape[1], 16)


class _LinearTransposeBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.bn = nn.Linear(8, 16), nn.BatchNorm1d(16)

    def forward(self, x):
        return self.bn(self.c(x).transpose(1, 2)).transpose(1, 2)


class _RepBNLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.alpha, self.bn = nn.Parameter(torch.tensor([0.7])), nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 16)

    def forward(self, x):
        t = x.transpose(1, 2)
        return self.fc((self.bn(t) + self.alpha * t).transpose(1, 2))


class _ConvMulAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(4, 8, 3, padding=1)
        self.s, self.t = nn.Parameter(torch.randn(8, 1, 1)), nn.Parameter(torch.randn(8, 1, 1))

    def forward(self, x):
        return self.c(x) * self.s + self.t


def _modules():
    seq = nn.Sequential
    return {
        "conv_bn": (lambda: seq(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)),
                    (1, 4, 8, 8)),
        "convT_bn_g2": (lambda: seq(nn.ConvTranspose2d(4, 8, 3, 2, groups=2), nn.BatchNorm2d(8)),
                        (1, 4, 5, 5)),
        "linear_bn1d": (lambda: seq(nn.Linear(8, 16), nn.BatchNorm1d(16)), (4, 8)),
        "levit_linear_bn": (_LeViTLinearBN, (2, 5, 8)),
        "linear_transpose_bn": (_LinearTransposeBN, (2, 5, 8)),
        "bn_conv_pad0": (lambda: seq(nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3)), (1, 4, 8, 8)),
        "bn_conv_pad1": (lambda: seq(nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3, padding=1)),
                         (1, 4, 8, 8)),
        "bn_linear": (lambda: seq(nn.BatchNorm1d(8), nn.Linear(8, 16)), (4, 8)),
        "repbn_linear": (_RepBNLinear, (2, 6, 8)),
        "conv_mul_add": (_ConvMulAdd, (1, 4, 8, 8)),
    }  # fmt: skip


def _export(name: str, dynamo: bool, tmp_path) -> onnx.ModelProto:
    from edgec.models import randomize_batchnorm

    build, shape = _modules()[name]
    torch.manual_seed(RNG_SEED % 2**31)
    module = randomize_batchnorm(build()).eval()
    x = torch.randn(shape)
    path = tmp_path / f"{name}.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (x,), path, dynamo=True, opset_version=18, verbose=False)
        else:
            torch.onnx.export(module, (x,), path, dynamo=False, opset_version=17,
                              training=torch.onnx.TrainingMode.PRESERVE)  # fmt: skip
    return onnx.load(path)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", list(_modules()))
def test_torch_exports_lose_every_batchnorm(name, dynamo, tmp_path):
    exported = _export(name, dynamo, tmp_path)
    simplified = Simplify()(exported).model
    result = FuseBatchNorm()(simplified)
    ops = op_counts(result.model)
    assert "BatchNormalization" not in ops, (ops, result.declined)
    assert_equivalent(exported, result.model)
    if name == "conv_mul_add":
        assert ops == {"Conv": 1}
    if name in ("levit_linear_bn", "linear_transpose_bn", "repbn_linear"):
        assert "Transpose" not in ops and ops.get("Reshape", 0) <= 2, ops


def test_slab_tiny_zoo_model(tmp_path):
    from edgec import models

    exported = onnx.load(models.export("slab_tiny", tmp_path / "slab_tiny.onnx"))
    simplified = Simplify()(exported).model
    result = FuseBatchNorm()(simplified)
    ops = op_counts(result.model)
    assert "BatchNormalization" not in ops
    assert result.stats["MergeRepBN"] == 9
    assert ops["Transpose"] == op_counts(simplified)["Transpose"] - 2 * 9
    assert_equivalent(exported, result.model, rtol=1e-4)
