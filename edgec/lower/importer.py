"""edgec's layer over TVM's ONNX importer: ops it declares unsupported, and converters for
ops that TVM 0.27's importer lacks or gets wrong.

``DECLINED`` ops are refused up front with UnsupportedModelError (exit code 3) instead of
being imported: training, sequence/optional, string and random ops that an inference compiler
has no business with, and ops the importer converts into wrong results (each with the failing
ONNX node test named). ``unsupported_types`` refuses tensors of element types TVM cannot
compute with (bfloat16, float8, int4, string, complex). ``converters()`` is the context in which
``lower.to_relax`` imports: TVM's convert map plus edgec.lower.converters.CONVERTERS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import onnx
import onnx.numpy_helper

# op -> why edgec refuses it
DECLINED: dict[str, str] = {
    **dict.fromkeys(
        ("Adagrad", "Adam", "Momentum", "Gradient", "NegativeLogLikelihoodLoss",
         "SoftmaxCrossEntropyLoss"),
        "training op",
    ),
    **dict.fromkeys(
        ("SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
         "SequenceLength", "SequenceMap", "SplitToSequence", "ConcatFromSequence", "Optional",
         "OptionalGetElement", "OptionalHasElement"),
        "sequence/optional values",
    ),
    **dict.fromkeys(
        ("StringConcat", "StringNormalizer", "StringSplit", "RegexFullMatch", "TfIdfVectorizer",
         "LabelEncoder"),
        "string op",
    ),
    **dict.fromkeys(
        ("Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform",
         "RandomUniformLike"),
        "random op (results not reproducible)",
    ),
}  # fmt: skip

_BAD_TYPES = {
    getattr(onnx.TensorProto, n): n
    for n in ("STRING", "COMPLEX64", "COMPLEX128", "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ",
              "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0", "UINT4", "INT4", "FLOAT4E2M1",
              "UINT2", "INT2")
    if hasattr(onnx.TensorProto, n)
}  # fmt: skip

# ops with an edgec converter (edgec.lower.converters.CONVERTERS), replacing TVM's
CONVERTED = ("Resize", "Upsample", "NonMaxSuppression", "ReduceMax", "ReduceMin", "Clip")


def declined(node: onnx.NodeProto, types: dict[str, int], consts: dict | None = None) -> str | None:
    """Why edgec refuses this node (None: it does not): a DECLINED op, or a use of an op that
    TVM's importer converts wrongly (``types``: element type of each value name,
    ``consts``: the graph's constant tensors by name, see ``constants``)."""
    if node.op_type in DECLINED:
        return DECLINED[node.op_type]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    outputs = [o for o in node.output[1:] if o]
    first, second = (types.get(node.input[i]) if len(node.input) > i else None for i in (0, 1))
    T = onnx.TensorProto
    axis = attrs.get("axis", -1)
    checks = {
        # (condition, reason); each reason is a failing ONNX node test of TVM's converter
        "BatchNormalization": (attrs.get("training_mode", 0), "training_mode"),
        "LayerNormalization": (outputs, "Mean/InvStdDev outputs"),
        "Dropout": (outputs or (len(node.input) > 2 and node.input[2]), "mask/training"),
        "ConvTranspose": ("output_shape" in attrs, "output_shape (TVM ignores it)"),
        "BitShift": (True, "shift counts outside [0, bits) differ"),
        "IsInf": (
            not attrs.get("detect_positive", 1) or not attrs.get("detect_negative", 1),
            "detect_positive/detect_negative (TVM ignores them)",
        ),
        "Mod": (first in _FLOATS and not attrs.get("fmod", 0), "float Mod with fmod=0"),
        "Pow": (
            first not in _FLOATS and second not in _FLOATS,
            "integer base and exponent",
        ),
        "TopK": (first in (T.UINT64, T.UINT32, T.UINT16), "unsigned TopK"),
        "ReduceMax": (first == T.BOOL, "bool reduction"),
        "ReduceMin": (first == T.BOOL, "bool reduction"),
        "RoiAlign": (attrs.get("mode", b"avg") == b"max", "mode=max"),
        "SpaceToDepth": (attrs.get("mode", b"DCR") != b"DCR", "mode=CRD (TVM ignores it)"),
        # normalizing every axis fails to build; the rank is not known here: positive or -1
        "RMSNormalization": (axis <= 0 and axis != -1, "axis 0 or below -1"),
        # tile of [2,3,4,5] by [4,4,4,4] reads out of bounds in TVM 0.27; one axis is right
        "Tile": (_tiled_axes(node, consts) not in (0, 1), "repeats on several axes"),
    }
    condition, reason = checks.get(node.op_type, (False, ""))
    return f"{node.op_type} with {reason} (TVM gets it wrong)" if condition else None


def _tiled_axes(node: onnx.NodeProto, consts: dict | None) -> int:
    """How many axes a Tile repeats (-1 when the repeats are not constant)."""
    repeats = (consts or {}).get(node.input[1]) if len(node.input) > 1 else None
    return -1 if repeats is None else int((repeats.reshape(-1) != 1).sum())


def constants(graph: onnx.GraphProto) -> dict:
    """The graph's initializers and Constant-node tensors, as numpy arrays by name."""
    found = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            found[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    return found


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def value_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every typed value of ``graph`` (after shape inference: all of them)."""
    types = {t.name: t.data_type for t in graph.initializer}
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def unsupported_types(model: onnx.ModelProto) -> list[dict]:
    """One entry per tensor element type TVM cannot compute with, naming a value that has it."""
    g = model.graph
    seen: dict[str, str] = {}
    values = list(g.input) + list(g.output) + list(g.value_info)
    for v in values:
        t = v.type.tensor_type.elem_type if v.type.HasField("tensor_type") else 0
        if t in _BAD_TYPES:
            seen.setdefault(_BAD_TYPES[t], v.name)
    for t in g.initializer:
        if t.data_type in _BAD_TYPES:
            seen.setdefault(_BAD_TYPES[t.data_type], t.name)
    for node in g.node:
        for a in node.attribute:
            if a.name == "to" and a.i in _BAD_TYPES:
                seen.setdefault(_BAD_TYPES[a.i], node.name or node.op_type)
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in _BAD_TYPES:
                seen.setdefault(_BAD_TYPES[a.t.data_type], node.name or node.op_type)
    return [
        {"op_type": f"tensor type {name.lower()}", "domain": "ai.onnx", "node": where,
         "reason": "TVM cannot compute with this element type"}
        for name, where in seen.items()
    ]  # fmt: skip


# ops whose TVM form edgec.lower.qdq pattern-matches in QDQ models (Clip: call_tir maximum /
# minimum): edgec's converter only for models without quantize/dequantize ops
TVM_FORM_FOR_QDQ = ("Clip",)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


@contextlib.contextmanager
def converters(model: onnx.ModelProto | None = None) -> Iterator[None]:
    """TVM's importer with edgec's converters in (TVM looks its convert map up per node)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    from edgec.lower.converters import CONVERTERS

    mine = dict(CONVERTERS)
    if model is not None and any(n.op_type in QDQ_OPS for n in model.graph.node):
        for op in TVM_FORM_FOR_QDQ:
            mine.pop(op, None)
    original = onnx_frontend._get_convert_map
    onnx_frontend._get_convert_map = lambda: {**original(), **mine}
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original
