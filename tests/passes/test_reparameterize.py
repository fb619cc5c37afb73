"""reparameterize: Add trees of Conv / BN / identity branches merged into one Conv."""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import onnx
import pytest

from edgec.passes.reparameterize import Reparameterize
from edgec.passes.simplify import Simplify
from tests.conftest import assert_equivalent, make_model, op_counts

C = 8  # channels of the text-model tests
REPARAM = Reparameterize()


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.3).astype(np.float32)


def _bn(rng: np.random.Generator, prefix: str, c: int = C) -> dict[str, np.ndarray]:
    """Non-trivial BatchNormalization parameters named {prefix}_g/_b/_m/_v."""
    return {
        f"{prefix}_g": rng.uniform(0.5, 1.5, c).astype(np.float32),
        f"{prefix}_b": rng.normal(0.0, 0.3, c).astype(np.float32),
        f"{prefix}_m": rng.normal(0.0, 0.3, c).astype(np.float32),
        f"{prefix}_v": rng.uniform(0.5, 1.5, c).astype(np.float32),
    }


def _bn_call(prefix: str, x: str) -> str:
    return f"BatchNormalization ({x}, {prefix}_g, {prefix}_b, {prefix}_m, {prefix}_v)"


def _apply(model: onnx.ModelProto, expected: dict[str, int]):
    before = model.SerializeToString()
    result = REPARAM(model)
    assert model.SerializeToString() == before  # the input model is not modified
    assert op_counts(result.model) == expected
    assert_equivalent(model, result.model)
    return result


def _unchanged(model: onnx.ModelProto, reason: str) -> list[str]:
    result = REPARAM(model)
    assert not result.changed and result.model is model
    assert any(reason in d for d in result.declined), result.declined
    return result.declined


# ---------------------------------------------------------------------------------------------
# Text models


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("pad", [0, 1])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_repvgg_style_block(groups: int, stride: int, pad: int, bias: bool) -> None:
    """kxk conv + BN, 1x1 conv + BN, identity BN (stride 1 only); k = 2*pad + 1, PRESERVE form."""
    rng, k = _rng(groups * 10 + stride), 2 * pad + 1
    h = 8 // stride
    b = ", B1" if bias else ""
    tail = f"i = {_bn_call('bn0', 'x')}\n y = Add (i, s)\n r = Relu (y)"
    if stride == 2:  # no identity branch
        tail = "r = Relu (s)"
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,{C},8,8] x) => (float[1,{C},{h},{h}] r) {{
            c1 = Conv <pads = [{pad}, {pad}, {pad}, {pad}], strides = [{stride}, {stride}],
                       group = {groups}> (x, W1{b})
            n1 = {_bn_call("bn1", "c1")}
            c2 = Conv <strides = [{stride}, {stride}], group = {groups}> (x, W2)
            n2 = {_bn_call("bn2", "c2")}
            s = Add (n1, n2)
            {tail}
        }}
        """,
        W1=_w(rng, C, C // groups, k, k),
        B1=_w(rng, C),
        W2=_w(rng, C, C // groups, 1, 1),
        **_bn(rng, "bn0"),
        **_bn(rng, "bn1"),
        **_bn(rng, "bn2"),
    )
    if not bias:
        model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "B1"))
    result = _apply(model, {"Conv": 1, "Relu": 1})
    ident = int(stride == 1)
    assert result.stats == {"merged_convs": 1, "conv_branches": 2, "identity_branches": ident,
                            "folded_affines": 2 + ident, "constant_leaves": 0}  # fmt: skip
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs["kernel_shape"] == [k, k] and attrs["group"] == groups
    assert attrs["pads"] == [pad] * 4 and attrs["strides"] == [stride] * 2


def test_acnet_left_deep_chain_in_mixed_order_keeps_output_name() -> None:
    """3x3 + 1x3 + 3x1 (biases), Add chain with the asymmetric branches first; y is an output."""
    rng = _rng(1)
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,{C},8,8] x) => (float[1,{C},8,8] y) {{
            a = Conv <pads = [0, 1, 0, 1]> (x, Wr, Br)
            b = Conv <pads = [1, 1, 1, 1]> (x, Wk, Bk)
            c = Conv <pads = [1, 0, 1, 0]> (x, Wc, Bc)
            s = Add (a, b)
            y = Add (c, s)
        }}
        """,
        Wr=_w(rng, C, C, 1, 3), Br=_w(rng, C), Wk=_w(rng, C, C, 3, 3), Bk=_w(rng, C),
        Wc=_w(rng, C, C, 3, 1), Bc=_w(rng, C),
    )  # fmt: skip
    result = _apply(model, {"Conv": 1})
    assert result.stats["conv_branches"] == 3
    assert result.model.graph.node[0].output[0] == "y"


@pytest.mark.parametrize("order", ["conv_first", "input_first"])
def test_plain_residual(order: str) -> None:
    rng = _rng(2)
    add = "Add (c, x)" if order == "conv_first" else "Add (x, c)"
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,{C},8,8] x) => (float[1,{C},8,8] y) {{
            c = Conv <pads = [1, 1, 1, 1], group = 2> (x, W, B)
            s = {add}
            y = Relu (s)
        }}
        """,
        W=_w(rng, C, C // 2, 3, 3),
        B=_w(rng, C),
    )
    result = _apply(model, {"Conv": 1, "Relu": 1})
    assert result.stats["identity_branches"] == 1


def test_residual_with_off_center_kernel() -> None:
    """2x2 kernel, pads (1,1,0,0): the identity lands at kernel position (1,1)."""
    rng = _rng(3)
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,{C},8,8] x) => (float[1,{C},8,8] y) {{
            c = Conv <pads = [1, 1, 0, 0]> (x, W)
            y = Add (x, c)
        }}
        """,
        W=_w(rng, C, C, 2, 2),
    )
    _apply(model, {"Conv": 1})


def test_torchscript_constant_first_affines_and_constant_leaf() -> None:
    """Mul(s, Conv), Add(bias, .), Sub / Div by per-channel constants, a constant leaf."""
    rng = _rng(4)
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,{C},8,8] x) => (float[1,{C},8,8] y) {{
            a = Conv <pads = [1, 1, 1, 1]> (x, Wa)
            am = Mul (S, a)
            b = Conv (x, Wb, Bb)
            bd = Div (b, D)
            bs = Sub (K, bd)
            xm = Mul (x, S)
            t1 = Add (Bias, am)
            t2 = Add (t1, bs)
            t3 = Add (xm, t2)
            y = Add (t3, Z)
        }}
        """,
        Wa=_w(rng, C, C, 3, 3), Wb=_w(rng, C, C, 1, 1), Bb=_w(rng, C),
        S=rng.uniform(0.5, 1.5, (C, 1, 1)).astype(np.float32),
        D=rng.uniform(0.5, 1.5, (1, C, 1, 1)).astype(np.float32),
        K=_w(rng, C, 1, 1), Bias=_w(rng, 1, C, 1, 1), Z=np.float32(0.5).reshape(()),
    )  # fmt: skip
    result = _apply(model, {"Conv": 1})
    assert result.stats == {"merged_convs": 1, "conv_branches": 2, "identity_branches": 1,
                            "folded_affines": 4, "constant_leaves": 2}  # fmt: skip


def test_dilated_branches_into_dense_kernel() -> None:
    """UniRepLKNet-style depthwise 7x7 + 3x3 dil 2 + 3x3 dil 3 + 5x5, all with BN."""
    rng = _rng(5)
    spec = [("m", 7, 1), ("d2", 3, 2), ("d3", 3, 3), ("k5", 5, 1)]
    lines, inits = [], {}
    for name, k, r in spec:
        p = r * (k - 1) // 2
        lines.append(f"c{name} = Conv <pads = [{p}, {p}, {p}, {p}], dilations = [{r}, {r}], "
                     f"group = {C}> (x, W{name})")  # fmt: skip
        lines.append(f"n{name} = {_bn_call(name, 'c' + name)}")
        inits |= {f"W{name}": _w(rng, C, 1, k, k), **_bn(rng, name)}
    body = "\n".join(lines)
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,{C},12,12] x) => (float[1,{C},12,12] y) {{
            {body}
            s1 = Add (nm, nd2)
            s2 = Add (s1, nd3)
            y = Add (s2, nk5)
        }}
        """,
        **inits,
    )
    result = _apply(model, {"Conv": 1})
    attrs = {
        a.name: onnx.helper.get_attribute_value(a) for a in result.model.graph.node[0].attribute
    }
    assert attrs["kernel_shape"] == [7, 7] and attrs["dilations"] == [1, 1]


def test_dilated_main_branch_keeps_its_dilation() -> None:
    """3x3 dil 2 + 1x1 + identity: every tap lies on the dilation lattice."""
    rng = _rng(6)
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,{C},8,8] x) => (float[1,{C},8,8] y) {{
            a = Conv <pads = [2, 2, 2, 2], dilations = [2, 2]> (x, Wa)
            b = Conv (x, Wb)
            s = Add (a, b)
            y = Add (s, x)
        }}
        """,
        Wa=_w(rng, C, C, 3, 3),
        Wb=_w(rng, C, C, 1, 1),
    )
    result = _apply(model, {"Conv": 1})
    attrs = {
        a.name: onnx.helper.get_attribute_value(a) for a in result.model.graph.node[0].attribute
    }
    assert attrs["kernel_shape"] == [3, 3] and attrs["dilations"] == [2, 2]


def test_partial_merge_keeps_non_linear_branch() -> None:
    rng = _rng(7)
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,{C},8,8] x) => (float[1,{C},8,8] y) {{
            a = Conv <pads = [1, 1, 1, 1]> (x, Wa, Ba)
            r = Sigmoid (x)
            b = Conv (x, Wb)
            s1 = Add (a, r)
            s2 = Add (s1, b)
            y = Relu (s2)
        }}
        """,
        Wa=_w(rng, C, C, 3, 3),
        Ba=_w(rng, C),
        Wb=_w(rng, C, C, 1, 1),
    )
    result = _apply(model, {"Conv": 1, "Sigmoid": 1, "Add": 1, "Relu": 1})
    assert result.declined == []


def test_merges_through_affine_between_add_trees() -> None:
    """(Conv3 + Conv1) -> Mul -> + Conv1: the inner sum merges, then the outer one."""
    rng = _rng(8)
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,{C},8,8] x) => (float[1,{C},8,8] y) {{
            a = Conv <pads = [1, 1, 1, 1]> (x, Wa)
            b = Conv (x, Wb)
            s = Add (a, b)
            m = Mul (s, S)
            c = Conv (x, Wc)
            y = Add (c, m)
        }}
        """,
        Wa=_w(rng, C, C, 3, 3), Wb=_w(rng, C, C, 1, 1), Wc=_w(rng, C, C, 1, 1),
        S=rng.uniform(0.5, 1.5, (1, C, 1, 1)).astype(np.float32),
    )  # fmt: skip
    _apply(model, {"Conv": 1})


def test_two_inputs_merged_separately() -> None:
    rng = _rng(9)
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,{C},8,8] x, float[1,{C},8,8] z) => (float[1,{C},8,8] y) {{
            a = Conv <pads = [1, 1, 1, 1]> (x, Wa)
            b = Conv <pads = [1, 1, 1, 1]> (z, Wb)
            c = Conv (x, Wc)
            d = Conv (z, Wd)
            s1 = Add (a, b)
            s2 = Add (s1, c)
            y = Add (s2, d)
        }}
        """,
        Wa=_w(rng, C, C, 3, 3), Wb=_w(rng, C, C, 3, 3),
        Wc=_w(rng, C, C, 1, 1), Wd=_w(rng, C, C, 1, 1),
    )  # fmt: skip
    result = _apply(model, {"Conv": 2, "Add": 1})
    assert result.stats["merged_convs"] == 2


def test_linear_bottleneck_residual_is_left_alone_quietly() -> None:
    """MobileNetV2: Conv(h) + z where z = Conv(x) also feeds h: different inputs, no report."""
    rng = _rng(21)
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,{C},8,8] x) => (float[1,{C},8,8] y) {{
            z = Conv (x, Wz)
            h = Relu (z)
            p = Conv <pads = [1, 1, 1, 1]> (h, Wp)
            y = Add (p, z)
        }}
        """,
        Wz=_w(rng, C, C, 1, 1),
        Wp=_w(rng, C, C, 3, 3),
    )
    result = REPARAM(model)
    assert not result.changed and result.declined == []


def test_nothing_to_do() -> None:
    result = REPARAM(make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,4] a, float[1,4] b) => (float[1,4] y) { y = Add (a, b) }
        """
    ))  # fmt: skip
    assert not result.changed and result.declined == []


# ---------------------------------------------------------------------------------------------
# Refusals: the graph stays as it is and the reason is reported


def _pair(
    a: str, b: str, shape: str = f"1,{C},8,8", extra_in: str = "", extra_out: str = "", **w
) -> onnx.ModelProto:
    """y = Add(a, b) after the two given node lines."""
    return make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[{shape}] x{extra_in}) => (float[1,{C},8,8] y{extra_out}) {{
            {a}
            {b}
            y = Add (p, q)
        }}
        """,
        **w,
    )


def test_refuses_different_inputs() -> None:
    rng = _rng(10)
    model = _pair("p = Conv (x, W1)", "q = Conv (z, W2)", extra_in=f", float[1,{C},8,8] z",
                  W1=_w(rng, C, C, 1, 1), W2=_w(rng, C, C, 1, 1))  # fmt: skip
    _unchanged(model, "leaves on different inputs 'x', 'z'")


def test_refuses_non_constant_weight() -> None:
    rng = _rng(11)
    model = _pair("p = Conv (x, wi)", "q = Conv (x, W2)", extra_in=f", float[{C},{C},1,1] wi",
                  W2=_w(rng, C, C, 1, 1))  # fmt: skip
    _unchanged(model, "weight is not a constant")


def test_refuses_weight_shared_with_another_node() -> None:
    rng = _rng(12)
    model = _pair("p = Conv (x, W1)", "q = Conv (x, W2)\n o = Conv (x, W1)",
                  extra_out=f", float[1,{C},8,8] o",
                  W1=_w(rng, C, C, 1, 1), W2=_w(rng, C, C, 1, 1))  # fmt: skip
    _unchanged(model, "weight or bias shared with another node")


def test_refuses_intermediate_with_other_consumers() -> None:
    rng = _rng(13)
    model = _pair(f"c = Conv (x, W1)\n p = {_bn_call('bn', 'c')}\n o = Relu (c)",
                  "q = Conv (x, W2)", extra_out=f", float[1,{C},8,8] o",
                  W1=_w(rng, C, C, 1, 1), W2=_w(rng, C, C, 1, 1), **_bn(rng, "bn"))  # fmt: skip
    _unchanged(model, "output of Conv 'c' has other consumers")


def test_refuses_stride_mismatch() -> None:
    rng = _rng(14)
    model = _pair("p = Conv <pads = [1, 1, 1, 1]> (x, W1)",
                  "q = Conv <strides = [2, 2], pads = [4, 4, 4, 4]> (x, W2)",
                  W1=_w(rng, C, C, 3, 3), W2=_w(rng, C, C, 1, 1))  # fmt: skip
    _unchanged(model, "stride [2, 2] differs from main branch [1, 1]")


def test_refuses_group_mismatch() -> None:
    rng = _rng(15)
    model = _pair("p = Conv <pads = [1, 1, 1, 1]> (x, W1)", "q = Conv <group = 2> (x, W2)",
                  W1=_w(rng, C, C, 3, 3), W2=_w(rng, C, C // 2, 1, 1))  # fmt: skip
    _unchanged(model, "group 2 differs from main branch group 1")


def test_refuses_dilation_off_the_main_lattice() -> None:
    rng = _rng(16)
    model = _pair("p = Conv <pads = [2, 2, 2, 2], dilations = [2, 2]> (x, W1)",
                  "q = Conv <pads = [1, 1, 1, 1]> (x, W2)",
                  W1=_w(rng, C, C, 3, 3), W2=_w(rng, C, C, 3, 3))  # fmt: skip
    _unchanged(model, "dilation [1, 1] does not fit main branch dilation [2, 2]")


def test_refuses_padding_that_cannot_be_embedded() -> None:
    rng = _rng(17)
    model = _pair("p = Conv <pads = [1, 1, 1, 1]> (x, W1)",
                  "q = Conv <pads = [0, 2, 0, 0]> (x, W2)",
                  W1=_w(rng, C, C, 3, 3), W2=_w(rng, C, C, 1, 3))  # fmt: skip
    _unchanged(model, "kernel 1x3 pads [0, 2, 0, 0] cannot be embedded")


def test_refuses_identity_with_stride_2() -> None:
    rng = _rng(18)
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,{C},1,1] x) => (float[1,{C},1,1] y) {{
            c = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, W)
            y = Add (c, x)
        }}
        """,
        W=_w(rng, C, C, 3, 3),
    )
    _unchanged(model, "identity needs stride 1, main branch has stride [2, 2]")


def test_refuses_identity_when_channels_change() -> None:
    rng = _rng(19)
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,1,8,8] x) => (float[1,{C},8,8] y) {{
            c = Conv <pads = [1, 1, 1, 1]> (x, W)
            n = {_bn_call("bn", "x")}
            y = Add (c, n)
        }}
        """,
        W=_w(rng, C, 1, 3, 3),
        **_bn(rng, "bn", 1),
    )
    _unchanged(model, "identity needs C_in == C_out, got 1 -> 8")


def test_partial_merge_reports_the_refused_branch() -> None:
    """3x3 + 1x1 merge; the stride-2-incompatible identity BN stays and is reported."""
    rng = _rng(20)
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,{C},1,1] x) => (float[1,{C},1,1] y) {{
            a = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, Wa)
            b = Conv <strides = [2, 2]> (x, Wb)
            n = {_bn_call("bn", "x")}
            s = Add (a, b)
            y = Add (s, n)
        }}
        """,
        Wa=_w(rng, C, C, 3, 3), Wb=_w(rng, C, C, 1, 1), **_bn(rng, "bn"),
    )  # fmt: skip
    result = _apply(model, {"Conv": 1, "BatchNormalization": 1, "Add": 1})
    assert [d.split(": ", 1)[1] for d in result.declined] == [
        "identity branch on 'x': identity needs stride 1, main branch has stride [2, 2]"
    ]


# ---------------------------------------------------------------------------------------------
# torch modules through both exporters, simplified first as in the pipeline

try:
    import torch
except ImportError:  # the text-model tests above still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch (the models extra)")

# block -> op counts after the pass
BLOCKS = {
    "repvgg": {"Conv": 1, "Relu": 1},  # 3x3 + 1x1 + identity BN, groups 2
    "repvgg_s2": {"Conv": 1, "Relu": 1},  # stride 2, 8 -> 16 channels: no identity
    "acnet": {"Conv": 1},  # 3x3 + 1x3 + 3x1
    "mobileone": {"Conv": 2, "Relu": 2},  # depthwise k=4 + scale + skip, pointwise k=4 + skip
    "drb13": {"Conv": 1},  # UniRepLKNet K=13: 13x13 + dilated k=[5,7,3,3,3], r=[1,2,3,4,5]
}
EXPORTERS = ["torchscript", "torchscript_preserve", "dynamo"]


def _block(name: str) -> torch.nn.Module:
    """A freshly initialized test block with random BN statistics, in eval mode."""
    from torch import nn

    from edgec.models import randomize_batchnorm
    from edgec.models.repvgg import RepBlock

    def conv_bn(k, pad, dilation=1, groups=1) -> nn.Module:
        conv = nn.Conv2d(C, C, k, 1, pad, dilation, groups, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(C))

    class Sum(nn.Module):
        def __init__(self, *branches: nn.Module) -> None:
            super().__init__()
            self.branches = nn.ModuleList(branches)

        def forward(self, x):
            out = self.branches[0](x)
            for branch in self.branches[1:]:
                out = out + branch(x)
            return out

    dilated = [(5, 1), (7, 2), (3, 3), (3, 4), (3, 5)]
    module = {
        "repvgg": lambda: RepBlock(C, C, 3, 1, groups=2),
        "repvgg_s2": lambda: RepBlock(C, 2 * C, 3, 2),
        "acnet": lambda: Sum(conv_bn(3, 1), conv_bn((1, 3), (0, 1)), conv_bn((3, 1), (1, 0))),
        "mobileone": lambda: nn.Sequential(RepBlock(C, C, 3, 1, C, 4), RepBlock(C, C, 1, 1, 1, 4)),
        "drb13": lambda: Sum(
            conv_bn(13, 6, groups=C), *(conv_bn(k, r * (k - 1) // 2, r, C) for k, r in dilated)
        ),
    }[name]()
    return randomize_batchnorm(module).eval()


def _export(module, path: pathlib.Path, exporter: str, shape=(1, C, 16, 16)) -> onnx.ModelProto:
    """dynamo: opset 18, weights in an external data file; else TorchScript at opset 17."""
    from edgec.models import _quiet_exporter

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), _quiet_exporter(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PRESERVE + constant folding advice
        if exporter == "dynamo":
            program = torch.onnx.export(module, (x,), dynamo=True, opset_version=18, verbose=False)
            program.save(str(path), external_data=True)
        else:
            preserve = exporter.endswith("preserve")
            kw = {"training": torch.onnx.TrainingMode.PRESERVE} if preserve else {}
            torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17, **kw)
    return onnx.load(path)  # with its external data


@needs_torch
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("block", list(BLOCKS))
def test_torch_blocks(block: str, exporter: str, tmp_path: pathlib.Path) -> None:
    torch.manual_seed(0)
    original = _export(_block(block), tmp_path / "m.onnx", exporter)
    result = REPARAM(Simplify()(original).model)
    assert op_counts(result.model) == BLOCKS[block]
    assert not result.declined
    assert_equivalent(original, result.model)


@needs_torch
@pytest.mark.parametrize("block", list(BLOCKS))
def test_torch_blocks_preserve_without_simplify(block: str, tmp_path: pathlib.Path) -> None:
    """Every BN kept (onnxsim would fold Conv+BN): the pass folds them itself."""
    torch.manual_seed(1)
    original = _export(_block(block), tmp_path / "m.onnx", "torchscript_preserve")
    bns = op_counts(original)["BatchNormalization"]
    result = REPARAM(original)
    assert op_counts(result.model) == BLOCKS[block]
    assert result.stats["folded_affines"] == bns
    assert_equivalent(original, result.model)


# ---------------------------------------------------------------------------------------------
# Zoo: the train forms become exactly the deploy forms


def _zoo(name: str, path: pathlib.Path, exporter: str) -> onnx.ModelProto:
    """TorchScript / dynamo exports are simplified first; PRESERVE (every BN kept) is raw."""
    from edgec import models

    if exporter != "preserve":
        return Simplify()(onnx.load(models.export(name, path, dynamo=exporter == "dynamo"))).model
    return _export(models.build(name), path, "preserve", models.get(name).input_shape)


@needs_torch
@pytest.mark.slow
@pytest.mark.parametrize(
    ("train", "exporter"),
    [
        ("repvgg_a0", "torchscript"),
        ("mobileone_s0", "torchscript"),
        ("repvgg_a0", "dynamo"),
        ("repvgg_a0", "preserve"),
        ("mobileone_s0", "preserve"),
    ],
)
def test_zoo_train_form_becomes_deploy_form(train: str, exporter: str, tmp_path: pathlib.Path):
    original = _zoo(train, tmp_path / "train.onnx", exporter)
    deploy = _zoo(f"{train}_deploy", tmp_path / "deploy.onnx", exporter)
    result = REPARAM(original)
    counts = op_counts(result.model)
    assert counts == op_counts(deploy)
    assert "BatchNormalization" not in counts and "Add" not in counts
    assert not result.declined
    assert_equivalent(original, result.model, rtol=1e-4)
    assert_equivalent(deploy, result.model, rtol=1e-4)  # the same function as the torch fold
