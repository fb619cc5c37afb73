"""Import: load an ONNX model, validate it, and pin every input shape.

After :func:`import_model` the graph is checked (``onnx.checker``), every input has a static shape
(symbolic dims come from ``--input-shape``) and shape inference has annotated all values, so the
passes, onnxruntime and TVM all see the same fully static graph.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from edgec.errors import InvalidInputError


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, shape (ints, or strings for symbolic dims) and dtype."""

    name: str
    shape: tuple[int | str, ...] | None  # None: rank unknown (an output inference could not type)
    dtype: str  # numpy dtype name

    def to_json(self) -> dict:
        shape = None if self.shape is None else list(self.shape)
        return {"name": self.name, "shape": shape, "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: Mapping) -> TensorSpec:
        return cls(d["name"], None if d["shape"] is None else tuple(d["shape"]), d["dtype"])


@dataclasses.dataclass
class ImportedModel:
    model: onnx.ModelProto  # static shapes, shape-inferred
    source_path: Path
    source_sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def opset(self) -> int:
        return opset_of(self.model)


_SHAPE_SPEC = re.compile(r"^\s*([^=\s][^=]*?)\s*=\s*(\d+(?:\s*[,x]\s*\d+)*)\s*$")


def parse_input_shapes(specs: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME=1,3,224,224`` specs (``x`` also separates dims) into a dict."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        match = _SHAPE_SPEC.match(spec)
        if not match:
            raise InvalidInputError(
                f"bad --input-shape {spec!r}: expected NAME=D1,D2,... with positive integers, "
                "e.g. input=1,3,224,224"
            )
        name, dims = match.group(1), tuple(int(d) for d in re.split(r"\s*[,x]\s*", match[2]))
        if any(d <= 0 for d in dims):
            raise InvalidInputError(f"bad --input-shape {spec!r}: dimensions must be positive")
        if name in shapes:
            raise InvalidInputError(f"--input-shape given twice for input {name!r}")
        shapes[name] = dims
    return shapes


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs, not initializers (IR < 4 lists both)."""
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        raise InvalidInputError(f"{value.name!r} is not a tensor (sequences/maps are unsupported)")
    tensor = value.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    if not tensor.HasField("shape"):
        return TensorSpec(value.name, None, dtype)
    dims: list[int | str] = []
    for i, d in enumerate(tensor.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
        else:
            dims.append(d.dim_param or f"?{i}")
    return TensorSpec(value.name, tuple(dims), dtype)


def signature(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return [_spec(v) for v in graph_inputs(model)], [_spec(v) for v in model.graph.output]


def _sha256(path: Path, model: onnx.ModelProto) -> str:
    """Hash of the model file and, in order, every external data file it references."""
    h = hashlib.sha256(path.read_bytes())
    locations = sorted(
        {
            entry.value
            for tensor in onnx.external_data_helper._get_all_tensors(model)
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )
    for location in locations:
        h.update((path.parent / location).read_bytes())
    return h.hexdigest()


def load(path: str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    """Load and check an ONNX file (with external data); returns the model and its sha256."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    if not path.is_file():
        raise InvalidInputError(f"{path}: not a file")
    try:
        header = onnx.load(path, load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InvalidInputError(
            f"{path}: not a valid ONNX model (truncated or not ONNX? protobuf: {e})"
        ) from e
    if not header.HasField("graph") or not header.opset_import or not header.graph.node:
        raise InvalidInputError(
            f"{path}: not a valid ONNX model (no graph, nodes or opset import; "
            "truncated or not an ONNX file?)"
        )
    try:
        onnx.checker.check_model(str(path))
        model = onnx.load(path)
    except (onnx.checker.ValidationError, OSError, ValueError, DecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInputError(f"{path}: invalid ONNX model: {first}") from e
    return model, _sha256(path, header)


def pin_input_shapes(
    model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]
) -> onnx.ModelProto:
    """Give every graph input a static shape; errors name the input and its symbolic dims."""
    model_inputs = {v.name: v for v in graph_inputs(model)}
    unknown = sorted(set(shapes) - set(model_inputs))
    if unknown:
        raise InvalidInputError(
            f"--input-shape names {', '.join(map(repr, unknown))}, not inputs of the model; "
            f"its inputs are {', '.join(map(repr, model_inputs))}"
        )
    model = onnx.ModelProto.FromString(model.SerializeToString()) if shapes else model
    missing = []
    for name, value in ((v.name, v) for v in graph_inputs(model)):
        spec = _spec(value)
        dims = value.type.tensor_type.shape.dim
        if spec.shape is None:  # rank unknown: the spec gives it
            if name not in shapes:
                missing.append(f"{name!r} has no shape at all")
                continue
            value.type.tensor_type.shape.dim.extend(
                onnx.TensorShapeProto.Dimension() for _ in shapes[name]
            )
            spec = TensorSpec(name, tuple(f"?{i}" for i in range(len(shapes[name]))), spec.dtype)
        if name in shapes:
            given = shapes[name]
            if len(given) != len(spec.shape):
                raise InvalidInputError(
                    f"--input-shape {name}={','.join(map(str, given))} has rank {len(given)}, "
                    f"but input {name!r} has rank {len(spec.shape)} (shape {_fmt(spec.shape)})"
                )
            for axis, (want, have) in enumerate(zip(given, spec.shape, strict=True)):
                if isinstance(have, int) and have != want:
                    raise InvalidInputError(
                        f"--input-shape {name}={','.join(map(str, given))} conflicts with the "
                        f"model: dim {axis} of {name!r} is fixed to {have} "
                        f"(shape {_fmt(spec.shape)})"
                    )
                dims[axis].Clear()
                dims[axis].dim_value = want
        elif any(isinstance(d, str) for d in spec.shape):
            symbolic = [d for d in spec.shape if isinstance(d, str)]
            example = ",".join("1" if isinstance(d, str) else str(d) for d in spec.shape)
            missing.append(
                f"input {name!r} {_fmt(spec.shape)} has dynamic dims {', '.join(symbolic)} "
                f"(e.g. --input-shape {name}={example})"
            )
    if missing:
        raise InvalidInputError(
            "dynamic input shapes need --input-shape NAME=D1,D2,...: " + "; ".join(missing)
        )
    return model


def _fmt(shape: tuple) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    # Outputs are re-inferred: exporters sometimes leave stale or rank-only output types.
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        raise InvalidInputError(f"shape inference failed: {str(e).strip()}") from e


def _oldest_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model stamped with the oldest IR version its opsets allow (8 at least, for local
    functions): newer exporters stamp the newest IR version their onnx knows, which an older
    onnxruntime refuses although the graph uses nothing newer. The protobuf is unchanged."""
    need = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = min(model.ir_version, max(need, 8))
    return model


def import_model(
    path: str | os.PathLike, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> ImportedModel:
    """Load, check, pin input shapes and infer all shapes. Raises InvalidInputError."""
    model, sha = load(path)
    model = _oldest_ir_version(model)
    model = infer_shapes(pin_input_shapes(model, input_shapes or {}))
    inputs, outputs = signature(model)
    return ImportedModel(model, Path(path), sha, inputs, outputs)
