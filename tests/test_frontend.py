import onnx
import pytest

from edgec import frontend
from edgec.errors import InvalidInputError
from tests.conftest import conv_relu_model


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (["x=1,3,224,224"], {"x": (1, 3, 224, 224)}),
        (["input.1=1x3x8x8"], {"input.1": (1, 3, 8, 8)}),
        ([" a = 2, 5 ", "b=7"], {"a": (2, 5), "b": (7,)}),
        ([], {}),
    ],
)
def test_parse_input_shapes(spec, expected):
    assert frontend.parse_input_shapes(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["x"], "expected NAME=D1,D2"),
        (["x=1,a"], "expected NAME=D1,D2"),
        (["x=1,0,3"], "must be positive"),
        (["x=-1,3"], "expected NAME=D1,D2"),
        (["x=1", "x=2"], "given twice"),
    ],
)
def test_parse_input_shapes_rejects(spec, message):
    with pytest.raises(InvalidInputError, match=message):
        frontend.parse_input_shapes(spec)


def test_pin_input_shapes_sets_static_dims():
    model = frontend.pin_input_shapes(conv_relu_model(), {"x": (2, 3, 16, 16)})
    inputs, _ = frontend.signature(model)
    assert inputs[0].shape == (2, 3, 16, 16)
    outputs = frontend.signature(frontend.infer_shapes(model))[1]
    assert outputs[0].shape == (2, 8, 16, 16)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({}, r"input 'x' \[N,3,16,16\] has dynamic dims N \(e.g. --input-shape x=1,3,16,16\)"),
        ({"y": (1, 3, 16, 16)}, "'y', not inputs of the model; its inputs are 'x'"),
        ({"x": (1, 3, 16)}, "has rank 3, but input 'x' has rank 4"),
        ({"x": (1, 4, 16, 16)}, "dim 1 of 'x' is fixed to 3"),
    ],
)
def test_pin_input_shapes_errors_name_the_input(shapes, message):
    with pytest.raises(InvalidInputError, match=message):
        frontend.pin_input_shapes(conv_relu_model(), shapes)


def test_import_model_hashes_and_signature(conv_relu):
    imported = frontend.import_model(conv_relu, {"x": (1, 3, 16, 16)})
    assert len(imported.source_sha256) == 64
    assert [s.to_json() for s in imported.outputs] == [
        {"name": "y", "shape": [1, 8, 16, 16], "dtype": "float32"}
    ]
    assert imported.opset == 17


def test_external_data_is_loaded_and_hashed(tmp_path):
    model = conv_relu_model()
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)  # fmt: skip
    assert (tmp_path / "ext.data").exists()
    first = frontend.import_model(path, {"x": (1, 3, 16, 16)})
    assert first.model.graph.initializer[0].raw_data  # weights were read from the data file
    data = bytearray((tmp_path / "ext.data").read_bytes())
    data[0] ^= 0xFF
    (tmp_path / "ext.data").write_bytes(bytes(data))
    second = frontend.import_model(path, {"x": (1, 3, 16, 16)})
    assert second.source_sha256 != first.source_sha256


def test_missing_external_data_is_a_clear_error(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(conv_relu_model(), path, save_as_external_data=True, location="ext.data",
              size_threshold=0)  # fmt: skip
    (tmp_path / "ext.data").unlink()
    with pytest.raises(InvalidInputError, match="ext.onnx"):
        frontend.import_model(path, {"x": (1, 3, 16, 16)})


def test_newer_ir_version_than_onnxruntime_knows_still_compiles(tmp_path, cli):
    """Exporters stamp their onnx's newest IR version (14 here), which onnxruntime 1.31 refuses
    although an opset-17 graph needs IR 8: the import re-stamps it, and the compile verifies."""
    model = conv_relu_model(dynamic_batch=False)
    model.ir_version = 14
    path = tmp_path / "ir14.onnx"
    onnx.save(model, path)
    assert frontend.import_model(path).model.ir_version == 8
    result = cli("compile", str(path), "-o", str(tmp_path / "out"), "--no-bench")
    assert result.code == 0, result.err
