"""edgec's layer over TVM's ONNX importer: ops it declares unsupported, and converters for
ops that TVM 0.27's importer lacks or gets wrong.

``DECLINED`` ops are refused up front with UnsupportedModelError (exit code 3) instead of
being imported: training, sequence/optional, string and random ops that an inference compiler
has no business with, and ops the importer converts into wrong results (each with the failing
ONNX node test named). ``unsupported_types`` refuses tensors of element types TVM cannot
compute with (float8, int4, string, complex). ``converters()`` is the context in which
``lower.to_relax`` imports: TVM's convert map plus edgec.lower.converters.CONVERTERS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import onnx

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
    for n in ("STRING", "COMPLEX64", "COMPLEX128", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ",
              "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0", "UINT4", "INT4", "FLOAT4E2M1",
              "UINT2", "INT2")
    if hasattr(onnx.TensorProto, n)
}  # fmt: skip

# ops with an edgec converter (edgec.lower.converters.CONVERTERS), replacing TVM's
CONVERTED = ("Resize", "Upsample")


def declined(op_type: str) -> str | None:
    return DECLINED.get(op_type)


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
        {"op_type": f"tensor type {name.lower()}", "domain": "ai.onnx", "node": where}
        for name, where in seen.items()
    ]


@contextlib.contextmanager
def converters() -> Iterator[None]:
    """TVM's importer with edgec's converters in (TVM looks its convert map up per node)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    from edgec.lower.converters import CONVERTERS

    original = onnx_frontend._get_convert_map
    onnx_frontend._get_convert_map = lambda: {**original(), **CONVERTERS}
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original
