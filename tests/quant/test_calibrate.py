"""Calibration data readers (edgec.quant.calibrate): layouts, archives, images, errors."""

from __future__ import annotations

import tarfile
import zipfile

import numpy as np
import pytest

from edgec.errors import InvalidInputError
from edgec.frontend import TensorSpec
from edgec.quant import calibrate

IMG = [TensorSpec("input", (1, 1, 8, 8), "float32")]
RGB = [TensorSpec("image", (1, 3, 6, 5), "float32")]
TWO = [TensorSpec("a", (1, 3), "float32"), TensorSpec("b", (2,), "int64")]


def _arr(seed: int, shape=(1, 1, 8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_directory_of_npy_in_sorted_order_and_sample_limit(tmp_path):
    for k in range(5):  # one exact-shape sample per file; written out of order
        np.save(tmp_path / f"s{4 - k}.npy", _arr(4 - k))
    (tmp_path / "notes.txt").write_text("ignored")
    cs = calibrate.load(str(tmp_path), IMG, samples=3)
    assert (cs.kind, cs.available, len(cs.samples)) == ("arrays", 5, 3)
    for k, s in enumerate(cs.samples):
        np.testing.assert_array_equal(s["input"], _arr(k))


def test_stacked_npz_with_and_without_the_batch_axis(tmp_path):
    stack = np.stack([_arr(k)[0] for k in range(7)])  # [7, 1, 8, 8]: K samples of shape[1:]
    np.savez(tmp_path / "a.npz", input=stack)
    np.savez(tmp_path / "b.npz", input=stack[:, None].astype(np.float64))  # [K, *shape], cast
    for name in ("a.npz", "b.npz"):
        cs = calibrate.load(str(tmp_path / name), IMG)
        assert len(cs.samples) == 7 and cs.samples[3]["input"].shape == (1, 1, 8, 8)
        assert cs.samples[3]["input"].dtype == np.float32
        np.testing.assert_allclose(cs.samples[3]["input"], _arr(3))


def test_multi_input_npz_records(tmp_path):
    for k in range(3):
        np.savez(tmp_path / f"{k}.npz", a=np.full((1, 3), k, np.float32), b=np.arange(2) + k)
    cs = calibrate.load(str(tmp_path), TWO)
    assert [int(s["b"][0]) for s in cs.samples] == [0, 1, 2]
    assert cs.samples[2]["a"].tolist() == [[2.0, 2.0, 2.0]]


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_archives(tmp_path, kind):
    files = []
    for k in range(4):
        np.save(tmp_path / f"{k}.npy", _arr(k))
        files.append(tmp_path / f"{k}.npy")
    archive = tmp_path / f"calib.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for f in files:
                z.write(f, f"samples/{f.name}")
    else:
        with tarfile.open(archive, "w:gz" if kind.endswith("gz") else "w") as t:
            for f in files:
                t.add(f, f"samples/{f.name}")
    cs = calibrate.load(str(archive), IMG)
    assert len(cs.samples) == 4
    np.testing.assert_array_equal(cs.samples[2]["input"], _arr(2))


def test_images_with_preprocessing(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    spec = "size=6x5,mean=0.5,0.4,0.3,std=0.2,0.25,0.5,layout=NCHW"
    cs = calibrate.load(str(tmp_path), RGB, preprocess=spec)
    assert cs.kind == "images" and cs.preprocess.mean == (0.5, 0.4, 0.3)
    want = (pixels / 255.0 - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5]
    got = cs.samples[0]["image"]
    assert got.shape == (1, 3, 6, 5)
    np.testing.assert_allclose(got[0].transpose(1, 2, 0), want, rtol=1e-5, atol=1e-5)
    grey = calibrate.load(str(tmp_path), IMG)  # resized to 8x8, one channel, default scale
    assert grey.samples[0]["input"].shape == (1, 1, 8, 8)
    assert grey.samples[0]["input"].min() >= 0.0 and grey.samples[0]["input"].max() <= 1.0


def test_parse_preprocess():
    p = calibrate.parse_preprocess("size=224,mean=1,2,3,std=4,5,6,scale=1/127.5,layout=nhwc")
    assert p == calibrate.Preprocess(
        (224, 224), (1.0, 2.0, 3.0), (4.0, 5.0, 6.0), 1 / 127.5, "NHWC"
    )
    for bad in ("size=0", "layout=CHW", "std=0", "colour=red", "224"):
        with pytest.raises(InvalidInputError, match="--calib-preprocess"):
            calibrate.parse_preprocess(bad)


def test_synthetic_is_seeded_and_flagged():
    a = calibrate.load("synthetic", IMG, samples=3, seed=1)
    b = calibrate.load("synthetic", IMG, samples=3, seed=1)
    assert a.synthetic and len(a.samples) == 3
    np.testing.assert_array_equal(a.samples[2]["input"], b.samples[2]["input"])
    assert a.to_json()["warning"] == calibrate.SYNTHETIC_WARNING


@pytest.mark.parametrize(
    "make, inputs, match",
    [
        (lambda d: d / "missing", IMG, "no such file or directory"),
        (lambda d: d, IMG, "no samples found"),
        (lambda d: _save(d / "x.npy", np.zeros((1, 1, 7, 8), np.float32)), IMG, "has shape"),
        (lambda d: _savez(d / "x.npz", other=np.zeros((1, 1, 8, 8))), IMG, "unknown input 'other'"),
        (lambda d: _savez(d / "x.npz", a=np.zeros((1, 3))), TWO, "missing input 'b'"),
        (lambda d: _save(d / "x.npy", np.zeros((1, 3))), TWO, "use .npz files"),
        (lambda d: _savez(d / "x.npz", a=np.zeros((1, 3)), b=np.zeros(2)), TWO, "dtype float64"),
        (lambda d: _write(d / "x.npy", b"not numpy"), IMG, "cannot read"),
        (lambda d: _write(d / "x.zip", b"not a zip"), IMG, "not a readable zip"),
        (lambda d: _write(d / "x.onnx", b""), IMG, "unsupported file"),
    ],
)
def test_bad_inputs_are_clear_errors(tmp_path, make, inputs, match):
    path = make(tmp_path)
    with pytest.raises(InvalidInputError, match=match):
        calibrate.load(str(path), inputs)


def test_bad_method_and_sample_count():
    with pytest.raises(InvalidInputError, match="--calib-method"):
        calibrate.method("kl")
    with pytest.raises(InvalidInputError, match="--calib-samples"):
        calibrate.load("synthetic", IMG, samples=0)


def _save(path, arr):
    np.save(path, arr)
    return path


def _savez(path, **arrays):
    np.savez(path, **arrays)
    return path


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
