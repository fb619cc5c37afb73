"""extract_conv: probe-and-verify extraction of affine conv regions (Diverse Branch Block soups)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgec.passes.extract_conv import STAT, ExtractConv
from edgec.passes.simplify import Simplify
from tests.conftest import assert_equivalent, make_model, op_counts

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional


# -- a Diverse Branch Block following the official BNAndPad semantics --------------------------
class BNAndPad(nn.Module):
    """BN, then pad with the BN's bias-equivalent value (what the official layer does)."""

    def __init__(self, pad: int, channels: int) -> None:
        super().__init__()
        self.bn, self.pad = nn.BatchNorm2d(channels), pad

    def forward(self, x):
        out = self.bn(x)
        if self.pad > 0:
            bn, p = self.bn, self.pad
            value = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
            value = value.view(1, -1, 1, 1)
            out = F.pad(out, [p] * 4)
            out[:, :, 0:p, :] = value
            out[:, :, -p:, :] = value
            out[:, :, :, 0:p] = value
            out[:, :, :, -p:] = value
        return out


def conv_bn(cin: int, cout: int, k: int, s: int, p: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout))


class DBB(nn.Module):
    """KxK conv+BN + 1x1 conv+BN + (1x1 -> BNAndPad -> KxK avg-pool -> BN)
    + (1x1 -> BNAndPad -> KxK conv -> BN), summed."""

    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1) -> None:
        super().__init__()
        p = k // 2
        self.origin = conv_bn(cin, cout, k, s, p)
        self.one = conv_bn(cin, cout, 1, s, 0)
        self.avg = nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False),
            BNAndPad(p, cout),
            nn.AvgPool2d(k, s, 0),
            nn.BatchNorm2d(cout),
        )
        self.kxk = nn.Sequential(
            nn.Conv2d(cin, cin, 1, bias=False),
            BNAndPad(p, cin),
            nn.Conv2d(cin, cout, k, s, 0, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return self.origin(x) + self.one(x) + self.avg(x) + self.kxk(x)


def _dbb_net(stride: int) -> nn.Module:
    torch.manual_seed(stride)
    net = nn.Sequential(DBB(4, 8, 3, stride), nn.ReLU(), DBB(8, 8, 3, 1), nn.ReLU())
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.5)
    return net.eval()


def _export(net: nn.Module, size: int, dynamo: bool, path) -> onnx.ModelProto:
    x = torch.randn(1, 4, size, size)
    with torch.no_grad():
        if dynamo:
            program = torch.onnx.export(net, (x,), dynamo=True, opset_version=17, verbose=False)
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17)
    return onnx.load(path)


@pytest.fixture(
    scope="module",
    params=[(False, 1, 12), (False, 2, 13), (True, 1, 12), (True, 2, 12)],
    ids=["ts-s1", "ts-s2", "dynamo-s1", "dynamo-s2"],
)
def dbb_export(request, tmp_path_factory):
    dynamo, stride, size = request.param
    path = tmp_path_factory.mktemp("dbb") / "dbb.onnx"
    return dynamo, stride, _export(_dbb_net(stride), size, dynamo, path)


def test_dbb_soup_becomes_one_conv_per_block(dbb_export):
    dynamo, stride, exported = dbb_export
    raw = op_counts(exported)
    assert raw["ScatterND"] == 16 and raw["Conv"] == 10
    if not dynamo:
        assert len(exported.graph.node) > 1500  # ~840 nodes of Shape/Constant/Slice per block
    simplified = Simplify()(exported).model
    assert op_counts(simplified)["ScatterND"] == 16  # onnxsim cannot see through the soup

    result = ExtractConv()(simplified)
    assert result.stats == {STAT: 2} and result.declined == []
    assert op_counts(result.model) == {"Conv": 2, "Relu": 2}
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in convs]
    assert [a["kernel_shape"] for a in attrs] == [[3, 3], [3, 3]]
    assert [a["strides"] for a in attrs] == [[stride] * 2, [1, 1]]
    assert attrs[1]["pads"] == [1, 1, 1, 1] and attrs[0]["group"] == 1
    assert_equivalent(simplified, result.model, rtol=1e-4)
    assert_equivalent(exported, result.model, rtol=1e-4, seed=1)


# -- ONNX-text regions ---------------------------------------------------------------------
def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _w(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _bn_params(rng, c: int) -> dict[str, np.ndarray]:
    return {
        "g": rng.uniform(0.5, 1.5, c).astype(np.float32),
        "be": rng.normal(0, 0.5, c).astype(np.float32),
        "mu": rng.normal(0, 0.5, c).astype(np.float32),
        "var": rng.uniform(0.5, 1.5, c).astype(np.float32),
    }


def test_depthwise_branches_become_grouped_conv_with_batch_two():
    """MobileOne-style: 3x3 dw + 1x1 dw + identity BN, plus a dilated 3x3 dw (DRB), on N=2."""
    rng = _rng(1)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2,6,10,10] x) => (float[2,6,10,10] y) {
            a = Conv <group = 6, pads = [2, 2, 2, 2]> (x, W5, B5)
            b = Conv <group = 6, pads = [2, 2, 2, 2], dilations = [2, 2]> (x, W3, B3)
            c = Conv <group = 6> (x, W1, B1)
            d = BatchNormalization (x, g, be, mu, var)
            s1 = Add (a, b)
            s2 = Add (c, s1)
            s3 = Add (s2, d)
            y = Relu (s3)
        }
        """,
        W5=_w(rng, 6, 1, 5, 5),
        B5=_w(rng, 6),
        W3=_w(rng, 6, 1, 3, 3),
        B3=_w(rng, 6),
        W1=_w(rng, 6, 1, 1, 1),
        B1=_w(rng, 6),
        **_bn_params(rng, 6),
    )
    result = ExtractConv()(model)
    assert result.stats == {STAT: 1}
    assert op_counts(result.model) == {"Conv": 1, "Relu": 1}
    (conv,) = [n for n in result.model.graph.node if n.op_type == "Conv"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs["group"] == 6 and attrs["kernel_shape"] == [5, 5]
    assert attrs["pads"] == [2, 2, 2, 2]
    assert_equivalent(model, result.model, rtol=1e-4)


def test_relu_between_branches_does_not_fire():
    rng = _rng(2)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,4,8,8] x) => (float[1,4,8,8] y) {
            a = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
            r = Relu (a)
            b = Conv <pads = [1, 1, 1, 1]> (r, W2, B2)
            c = Conv (x, W3, B3)
            y = Add (b, c)
        }
        """,
        W1=_w(rng, 4, 4, 3, 3),
        B1=_w(rng, 4),
        W2=_w(rng, 4, 4, 3, 3),
        B2=_w(rng, 4),
        W3=_w(rng, 4, 4, 1, 1),
        B3=_w(rng, 4),
    )
    result = ExtractConv()(model)
    assert result.stats == {STAT: 0} and not result.changed
    assert result.model is model and result.declined == []


def test_intermediate_graph_output_is_declined():
    rng = _rng(3)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,4,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] b) {
            a = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
            b = Conv (x, W2, B2)
            y = Add (a, b)
        }
        """,
        W1=_w(rng, 4, 4, 3, 3),
        B1=_w(rng, 4),
        W2=_w(rng, 4, 4, 1, 1),
        B2=_w(rng, 4),
    )
    result = ExtractConv()(model)
    assert result.stats == {STAT: 0} and result.model is model
    (reason,) = result.declined
    assert "values escape the region: b, y" in reason


def test_zero_padding_of_a_biased_branch_fails_verification():
    """1x1 conv (with bias) -> Pad(0) -> 3x3 conv: a conv in the interior, not at the border
    (the padded ring is 0, not the bias): the probe extracts a kernel, verification refuses it."""
    rng = _rng(4)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,4,8,8] x) => (float[1,4,8,8] y) {
            a = Conv (x, W1, B1)
            p = Pad (a, pads)
            b = Conv (p, W3, B3)
            c = Conv <pads = [1, 1, 1, 1]> (x, W2, B2)
            y = Add (b, c)
        }
        """,
        W1=_w(rng, 4, 4, 1, 1),
        B1=_w(rng, 4) + 2,
        W3=_w(rng, 4, 4, 3, 3),
        B3=_w(rng, 4),
        W2=_w(rng, 4, 4, 3, 3),
        B2=_w(rng, 4),
        pads=np.array([0, 0, 1, 1, 0, 0, 1, 1]),
    )
    result = ExtractConv()(model)
    assert result.stats == {STAT: 0} and result.model is model
    (reason,) = result.declined
    assert "extracted conv does not match: max abs err" in reason
    err = float(reason.split("max abs err ")[1].split()[0])
    assert err > 0.1  # O(1) border error, not rounding


def test_residual_add_splits_regions():
    """x + Conv3x3(Conv1x1(x)) is one region; the Add of a second input z is not in it."""
    rng = _rng(5)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,4,8,8] x, float[1,4,8,8] z) => (float[1,4,8,8] y) {
            a = Conv (x, W1)
            b = Conv <pads = [1, 1, 1, 1]> (a, W2, B2)
            c = Add (b, x)
            y = Add (c, z)
        }
        """,
        W1=_w(rng, 8, 4, 1, 1),
        W2=_w(rng, 4, 8, 3, 3),
        B2=_w(rng, 4),
    )
    result = ExtractConv()(model)
    assert result.stats == {STAT: 1}
    assert op_counts(result.model) == {"Conv": 1, "Add": 1}
    (conv,) = [n for n in result.model.graph.node if n.op_type == "Conv"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs["kernel_shape"] == [3, 3] and attrs["pads"] == [1, 1, 1, 1]
    assert_equivalent(model, result.model, rtol=1e-4)


def test_stacked_padded_convs_are_declined():
    """Conv3x3(pad 1) -> Conv3x3(pad 1) is no single conv at the border (the inner padding cuts
    the inner conv's response): declined with the measured error."""
    rng = _rng(6)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,4,8,8] x) => (float[1,4,8,8] y) {
            a = Conv <pads = [1, 1, 1, 1]> (x, W1)
            y = Conv <pads = [1, 1, 1, 1]> (a, W2, B2)
        }
        """,
        W1=_w(rng, 16, 4, 3, 3),
        W2=_w(rng, 4, 16, 3, 3),
        B2=_w(rng, 4),
    )
    result = ExtractConv()(model)
    assert result.stats == {STAT: 0} and result.model is model
    (reason,) = result.declined
    assert "region x -> y (2 nodes, 2 Conv): extracted conv does not match" in reason


def test_merging_a_bottleneck_that_costs_more_is_declined():
    """1x1 16->4 then 1x1 4->16 (a linear bottleneck, MobileNetV2 style) is exactly one 1x1
    conv, but a 4x more expensive one: declined on cost."""
    rng = _rng(7)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,16,8,8] x) => (float[1,16,8,8] y) {
            a = Conv (x, W1, B1)
            y = Conv (a, W2, B2)
        }
        """,
        W1=_w(rng, 4, 16, 1, 1),
        B1=_w(rng, 4),
        W2=_w(rng, 16, 4, 1, 1),
        B2=_w(rng, 16),
    )
    result = ExtractConv()(model)
    assert result.stats == {STAT: 0} and result.model is model
    assert result.declined == [
        "extract_conv: region x -> y (2 nodes, 2 Conv): the extracted 1x1 conv (group 1) costs "
        "16384 MACs, more than the region's convs (8192)"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name, blocks", [("repvgg_a0", 22), ("mobileone_s0", 43)])
def test_zoo_train_form_blocks(tmp_path, name, blocks):
    """Every RepVGG / MobileOne train-form block (branches + identity BN) becomes one conv."""
    from edgec import models

    model = Simplify()(onnx.load(models.export(name, tmp_path / "m.onnx"))).model
    result = ExtractConv()(model)
    assert result.stats == {STAT: blocks} and result.declined == []
    counts = op_counts(result.model)
    assert counts["Conv"] == counts["Relu"] == blocks
    assert "BatchNormalization" not in counts and "Add" not in counts
    assert_equivalent(model, result.model, rtol=1e-4)


def _repvgg_block(name: str, x: str, out: str) -> str:
    return f"""
            {name}3 = Conv <pads = [1, 1, 1, 1]> ({x}, {name}W3, {name}B3)
            {name}1 = Conv ({x}, {name}W1, {name}B1)
            {name}s = Add ({name}3, {name}1)
            {name}i = BatchNormalization ({x}, {name}g, {name}be, {name}mu, {name}var)
            {out} = Add ({name}s, {name}i)
    """


def _repvgg_params(rng, name: str, c: int) -> dict[str, np.ndarray]:
    params = {
        "W3": _w(rng, c, c, 3, 3),
        "B3": _w(rng, c),
        "W1": _w(rng, c, c, 1, 1),
        "B1": _w(rng, c),
        **_bn_params(rng, c),
    }
    return {name + k: v for k, v in params.items()}


def test_stacked_blocks_without_activation_are_split_at_the_cut():
    """Two RepVGG blocks back to back (no activation): the maximal region is no single conv at
    the border (and a 5x5 would cost more); split at the value between them, each block is."""
    rng = _rng(8)
    model = make_model(
        f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,4,9,9] x) => (float[1,4,9,9] y) {{
            {_repvgg_block("a", "x", "mid")}
            {_repvgg_block("b", "mid", "y")}
        }}
        """,
        **_repvgg_params(rng, "a", 4),
        **_repvgg_params(rng, "b", 4),
    )
    result = ExtractConv()(model)
    assert result.stats == {STAT: 2}
    assert op_counts(result.model) == {"Conv": 2}
    (reason,) = result.declined
    assert reason.startswith("extract_conv: region x -> y (10 nodes, 4 Conv): the extracted 5x5")
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert_equivalent(model, result.model, rtol=1e-4)


def test_region_output_is_graph_output_with_stride_two_on_odd_size():
    rng = _rng(9)
    model = make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1,3,9,9] x) => (float[1,6,5,5] y) {
            a = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, W3, B3)
            b = Conv <strides = [2, 2]> (x, W1, B1)
            y = Add (a, b)
        }
        """,
        W3=_w(rng, 6, 3, 3, 3),
        B3=_w(rng, 6),
        W1=_w(rng, 6, 3, 1, 1),
        B1=_w(rng, 6),
    )
    result = ExtractConv()(model)
    assert result.stats == {STAT: 1}
    (conv,) = result.model.graph.node
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs["pads"] == [1, 1, 1, 1] and attrs["strides"] == [2, 2]
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert_equivalent(model, result.model, rtol=1e-4)
