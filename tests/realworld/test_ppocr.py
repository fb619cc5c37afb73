"""PP-OCR (rapidocr-onnxruntime's PP-OCRv4 det/rec and PP-OCR cls models) compiled by edgec.

The three models keep their weights in Constant nodes and have symbolic dims, pinned here to the
shapes rapidocr's pipeline feeds for scikit-image's page.png. Each is compiled for x86_64 and
verified against onnxruntime on the real pipeline inputs; then the whole OCR pipeline runs once
with rapidocr's onnxruntime sessions and once with the edgec-compiled models substituted, and
must read the same text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

rapidocr = pytest.importorskip("rapidocr_onnxruntime")
skimage_data = pytest.importorskip("skimage.data")

import edgec  # noqa: E402

# det input 320x640 (min side 320) keeps the test fast; the pipeline still finds 6 lines.
CONFIG = {"det_limit_type": "min", "det_limit_side_len": 320, "rec_batch_num": 8,
          "cls_batch_num": 8}  # fmt: skip
# model -> (ONNX file in the wheel, the pipeline attribute holding its onnxruntime session)
MODELS = {
    "det": ("ch_PP-OCRv4_det_infer.onnx", "text_det", "infer"),
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "text_cls", "infer"),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", "text_rec", "session"),
}
MODEL_DIR = Path(rapidocr.__file__).parent / "models"


class EdgecSession:
    """Stands in for rapidocr's OrtInferSession: ``session(x) -> [outputs]``. Compiles the
    ONNX model with edgec for each new input shape, verified against onnxruntime on that very
    input, and runs the compiled artifact."""

    def __init__(self, model_path: Path, workdir: Path):
        self.model_path, self.workdir = model_path, workdir
        self.compiled: dict[tuple, edgec.CompileResult] = {}
        self._loaded: dict[tuple, edgec.api.CompiledModel] = {}

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        key = tuple(x.shape)
        if key not in self.compiled:
            out = self.workdir / f"{self.model_path.stem}_{'x'.join(map(str, key))}"
            self.compiled[key] = edgec.compile(
                self.model_path, out, input_shapes={"x": key}, verify_inputs={"x": x},
                bench=False,
            )  # fmt: skip
            self._loaded[key] = edgec.load(out)
        model = self._loaded[key]
        return list(model(x=x).values())

    def run(self, output_names, feeds: dict) -> list[np.ndarray]:
        return self(feeds["x"])


def _page() -> np.ndarray:
    gray = skimage_data.page()
    return np.stack([gray] * 3, axis=-1)


@pytest.fixture(scope="module")
def ocr(tmp_path_factory) -> dict:
    """Both pipelines' results, and the edgec sessions (with their compile reports)."""
    workdir = tmp_path_factory.mktemp("ppocr")
    reference = rapidocr.RapidOCR(**CONFIG)
    expected, _ = reference(_page())
    engine = rapidocr.RapidOCR(**CONFIG)
    sessions = {}
    for name, (file, module, attr) in MODELS.items():
        sessions[name] = EdgecSession(MODEL_DIR / file, workdir)
        setattr(getattr(engine, module), attr, sessions[name])
    actual, _ = engine(_page())
    return {"expected": expected, "actual": actual, "sessions": sessions}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_onnxruntime_on_page(ocr, name):
    session = ocr["sessions"][name]
    assert session.compiled, f"the pipeline never ran the {name} model"
    for shape, result in session.compiled.items():
        v = result.report["verification"]
        assert v["inputs"] == "--verify-input", shape
        assert v["passed"] and v["min_cosine"] > 0.9999, (shape, v)


def test_pipeline_reads_the_same_text(ocr):
    expected, actual = ocr["expected"], ocr["actual"]
    texts = [r[1] for r in expected]
    assert len(texts) >= 5 and "Region-based segmentation" in texts
    assert [r[1] for r in actual] == texts
    for e, a in zip(expected, actual, strict=True):
        assert abs(a[2] - e[2]) < 1e-3, (e, a)
        np.testing.assert_allclose(np.asarray(a[0]), np.asarray(e[0]), atol=1.0)
