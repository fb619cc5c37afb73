"""Calibration data for --int8: samples from files or archives, image preprocessing, synthetic
data, and onnxruntime's calibrators (``--calib-method``) fed with progress.

``--calib PATH`` is a directory (searched recursively, in sorted order), a ``.zip`` / ``.tar``
(``.tar.gz``, ``.tgz``) archive, or a single ``.npz`` / ``.npy`` file. Members:

- ``.npz``: arrays keyed by input name; ``.npy``: an array of the model's only input.
  An array is one sample (the input's exact shape) or a stack of samples along a new leading
  axis (``[K, *shape]``; for a batch-1 input also ``[K, *shape[1:]]``).
- images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``) for a single-input image model, read with
  Pillow and preprocessed by ``--calib-preprocess`` (see :func:`parse_preprocess`).

``--calib synthetic`` uses seeded N(0, 1) inputs: the resulting activation ranges say nothing
about real data, so the CLI and the report carry a warning.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from edgec.errors import InvalidInputError
from edgec.frontend import TensorSpec

SYNTHETIC = "synthetic"
METHODS = ("minmax", "percentile", "entropy")
DEFAULT_SAMPLES = 100
SYNTHETIC_SAMPLES = 16
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ARRAY_SUFFIXES = (".npy", ".npz")
SYNTHETIC_WARNING = (
    "WARNING: --calib synthetic: activation ranges come from random N(0, 1) inputs, not data; "
    "int8 accuracy on real inputs is unknown. Give --calib PATH with real samples."
)

Sample = dict[str, np.ndarray]
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Image preprocessing: resize to ``size`` (H, W), ``x = (pixel * scale - mean) / std`` per
    channel, then ``layout`` NCHW or NHWC with a batch axis of 1."""

    size: tuple[int, int] | None = None  # None: the model input's spatial size
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1 / 255
    layout: str = "NCHW"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def parse_preprocess(spec: str | None) -> Preprocess:
    """``size=224`` (or ``224x192``), ``mean=0.485,0.456,0.406``, ``std=...``, ``scale=1/255``
    (a number or ``1/N``), ``layout=NCHW|NHWC``, comma-separated ``key=value`` items."""
    if not spec:
        return Preprocess()
    fields: dict = {}
    for key, value in _items(spec):
        try:
            if key == "size":
                dims = [int(d) for d in value.lower().split("x")]
                fields["size"] = (dims[0], dims[-1]) if len(dims) in (1, 2) else None
                if fields["size"] is None or min(dims) <= 0:
                    raise ValueError
            elif key in ("mean", "std"):
                fields[key] = tuple(float(v) for v in value.split(","))
                if key == "std" and any(v == 0 for v in fields[key]):
                    raise ValueError
            elif key == "scale":
                num, _, den = value.partition("/")
                fields["scale"] = float(num) / (float(den) if den else 1.0)
            elif key == "layout":
                if value.upper() not in ("NCHW", "NHWC"):
                    raise ValueError
                fields["layout"] = value.upper()
            else:
                raise InvalidInputError(
                    f"--calib-preprocess: unknown key {key!r} (size, mean, std, scale, layout)"
                )
        except (ValueError, ZeroDivisionError) as e:
            raise InvalidInputError(f"--calib-preprocess: bad value {key}={value!r}") from e
    return Preprocess(**fields)


def _items(spec: str) -> Iterator[tuple[str, str]]:
    """Split ``a=1,b=2,3,c=x`` into (a, '1'), (b, '2,3'), (c, 'x'): a comma starts a new item
    only when a ``key=`` follows."""
    key, parts = None, []
    for piece in spec.split(","):
        name, eq, value = piece.partition("=")
        if eq and name.strip().isidentifier():
            if key is not None:
                yield key, ",".join(parts)
            key, parts = name.strip().lower(), [value.strip()]
        elif key is None:
            raise InvalidInputError(f"--calib-preprocess: expected key=value, got {piece!r}")
        else:
            parts.append(piece.strip())
    if key is not None:
        yield key, ",".join(parts)


@dataclasses.dataclass
class CalibrationSet:
    samples: list[Sample]
    source: str  # the path, or "synthetic"
    kind: str  # "arrays", "images" or "synthetic"
    available: int  # samples found before --calib-samples
    preprocess: Preprocess | None = None

    @property
    def synthetic(self) -> bool:
        return self.kind == SYNTHETIC

    def to_json(self) -> dict:
        d = {"source": self.source, "kind": self.kind, "samples": len(self.samples),
             "available": self.available}  # fmt: skip
        if self.preprocess is not None:
            d["preprocess"] = self.preprocess.to_json()
        if self.synthetic:
            d["warning"] = SYNTHETIC_WARNING
        return d


def load(
    calib: str,
    inputs: Sequence[TensorSpec],
    *,
    samples: int | None = None,
    preprocess: str | None = None,
    seed: int = 0,
) -> CalibrationSet:
    """The calibration samples for a model with ``inputs`` (each checked against its spec)."""
    if samples is not None and samples <= 0:
        raise InvalidInputError(f"--calib-samples must be positive, not {samples}")
    if calib == SYNTHETIC:
        from edgec.verify import random_inputs

        n = samples or SYNTHETIC_SAMPLES
        return CalibrationSet([random_inputs(inputs, seed + k) for k in range(n)], SYNTHETIC,
                              SYNTHETIC, n)  # fmt: skip
    path = Path(calib)
    if not path.exists():
        raise InvalidInputError(f"--calib {calib}: no such file or directory")
    pre = parse_preprocess(preprocess)
    members = list(_members(path))
    if not members:
        raise InvalidInputError(
            f"--calib {calib}: no samples found (expected .npy/.npz arrays or "
            f"{'/'.join(IMAGE_SUFFIXES)} images)"
        )
    has_images = any(name.lower().endswith(IMAGE_SUFFIXES) for name, _ in members)
    found: list[Sample] = []
    limit = samples or DEFAULT_SAMPLES
    for name, read in members:
        found.extend(_samples(name, read, inputs, pre))
    if not found:
        raise InvalidInputError(f"--calib {calib}: no samples found")
    return CalibrationSet(found[:limit], str(path), "images" if has_images else "arrays",
                          len(found), pre if has_images else None)  # fmt: skip


def _members(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(name, reader) of every sample file under ``path``, in sorted order."""
    wanted = ARRAY_SUFFIXES + IMAGE_SUFFIXES
    name = path.name.lower()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            if f.name.lower().endswith(wanted) or _is_archive(f.name.lower()):
                yield from _members(f)
    elif name.endswith(wanted):
        yield str(path), path.read_bytes
    elif name.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as z:
                for info in sorted(z.infolist(), key=lambda i: i.filename):
                    if not info.is_dir() and info.filename.lower().endswith(wanted):
                        data = z.read(info)
                        yield f"{path}:{info.filename}", (lambda d=data: d)
        except zipfile.BadZipFile as e:
            raise InvalidInputError(f"--calib {path}: not a readable zip archive: {e}") from e
    elif _is_archive(name):
        try:
            with tarfile.open(path) as t:
                for m in sorted(t.getmembers(), key=lambda m: m.name):
                    if m.isfile() and m.name.lower().endswith(wanted):
                        data = t.extractfile(m).read()
                        yield f"{path}:{m.name}", (lambda d=data: d)
        except tarfile.TarError as e:
            raise InvalidInputError(f"--calib {path}: not a readable tar archive: {e}") from e
    else:
        raise InvalidInputError(
            f"--calib {path}: unsupported file (a directory, .zip, .tar, .npz, .npy or an image)"
        )


def _is_archive(name: str) -> bool:
    return name.endswith((".zip", ".tar", ".tar.gz", ".tgz"))


def _samples(
    name: str, read: Callable[[], bytes], inputs: Sequence[TensorSpec], pre: Preprocess
) -> list[Sample]:
    lower = name.lower()
    if lower.endswith(IMAGE_SUFFIXES):
        return [_image(name, read(), inputs, pre)]
    try:
        loaded = np.load(io.BytesIO(read()), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"--calib: cannot read {name}: {e}") from e
    if lower.endswith(".npz"):
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
    else:
        if len(inputs) != 1:
            names = ", ".join(s.name for s in inputs)
            raise InvalidInputError(
                f"--calib: {name} is a .npy but the model has {len(inputs)} inputs ({names}); "
                "use .npz files keyed by input name"
            )
        arrays = {inputs[0].name: loaded}
    return _split(name, arrays, inputs)


def _split(name: str, arrays: dict[str, np.ndarray], inputs: Sequence[TensorSpec]) -> list[Sample]:
    """One record (arrays by input name) -> its samples, each checked against the specs."""
    want = {s.name for s in inputs}
    unknown = sorted(set(arrays) - want)
    missing = sorted(want - set(arrays))
    if unknown or missing:
        raise InvalidInputError(
            f"--calib: {name}: "
            + "; ".join(
                [f"unknown input {k!r}" for k in unknown]
                + [f"missing input {k!r}" for k in missing]
            )
            + f" (the model takes: {_describe(inputs)})"
        )
    stacks, counts = {}, set()
    for spec in inputs:
        arr = np.asarray(arrays[spec.name])
        shape = tuple(int(d) for d in spec.shape)
        if arr.shape == shape:
            arr = arr[None]
        elif arr.shape[1:] == shape:
            pass
        elif shape[:1] == (1,) and arr.shape[1:] == shape[1:]:
            arr = arr[:, None]
        else:
            raise InvalidInputError(
                f"--calib: {name}: input {spec.name!r} has shape {list(arr.shape)}, expected "
                f"{list(shape)} (one sample) or [K, {', '.join(map(str, shape))}] (K samples)"
            )
        stacks[spec.name] = _cast(name, spec, arr)
        counts.add(arr.shape[0])
    if len(counts) != 1:
        raise InvalidInputError(f"--calib: {name}: inputs hold different numbers of samples")
    return [{k: v[i] for k, v in stacks.items()} for i in range(counts.pop())]


def _cast(name: str, spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    dtype = np.dtype(spec.dtype)
    if arr.dtype == dtype:
        return arr
    if (
        dtype.kind == "f"
        and arr.dtype.kind in "fiub"
        or dtype.kind in "iu"
        and arr.dtype.kind in "iu"
    ):
        return arr.astype(dtype)
    raise InvalidInputError(
        f"--calib: {name}: input {spec.name!r} has dtype {arr.dtype}, expected {dtype}"
    )


def _describe(inputs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.name} {list(s.shape)} {s.dtype}" for s in inputs)


def _image(name: str, data: bytes, inputs: Sequence[TensorSpec], pre: Preprocess) -> Sample:
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise InvalidInputError(
            f"--calib: {name}: images need a model with one 4-D input, not {_describe(inputs)}"
        )
    try:
        from PIL import Image
    except ImportError as e:  # pillow is a dependency; a broken install lands here
        raise InvalidInputError("--calib with images needs Pillow: pip install pillow") from e
    spec = inputs[0]
    n, *dims = (int(d) for d in spec.shape)
    channels, h, w = (dims[0], *dims[1:]) if pre.layout == "NCHW" else (dims[2], *dims[:2])
    if n != 1 or channels not in (1, 3):
        raise InvalidInputError(
            f"--calib: {name}: input {spec.name!r} {list(spec.shape)} is not a batch-1 "
            f"{pre.layout} image with 1 or 3 channels (--calib-preprocess layout=...)"
        )
    if pre.size is not None and pre.size != (h, w):
        raise InvalidInputError(
            f"--calib-preprocess size={pre.size[0]}x{pre.size[1]} but the model input is {h}x{w}"
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((w, h), Image.BILINEAR)
            x = np.asarray(img, np.float32).reshape(h, w, channels)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise InvalidInputError(f"--calib: cannot read image {name}: {e}") from e
    mean, std = (
        np.broadcast_to(np.asarray(v, np.float32), (channels,)) for v in (pre.mean, pre.std)
    )
    x = (x * pre.scale - mean) / std
    x = x.transpose(2, 0, 1) if pre.layout == "NCHW" else x
    return {spec.name: _cast(name, spec, x[None].astype(np.float32))}


def method(name: str):
    """onnxruntime's CalibrationMethod for ``--calib-method`` (and its extra options)."""
    from onnxruntime.quantization import CalibrationMethod

    table = {
        "minmax": (CalibrationMethod.MinMax, {}),
        "percentile": (CalibrationMethod.Percentile, {"CalibPercentile": 99.999}),
        "entropy": (CalibrationMethod.Entropy, {}),
    }
    if name not in table:
        raise InvalidInputError(f"unknown --calib-method {name!r}: use one of {', '.join(METHODS)}")
    return table[name]


def reader(samples: Sequence[Sample], log: Log, what: str = "calibration"):
    """An onnxruntime CalibrationDataReader over ``samples`` that logs progress."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0
            self.step = max(1, len(samples) // 10)

        def get_next(self) -> Sample | None:
            if self.i >= len(samples):
                return None
            self.i += 1
            if self.i % self.step == 0 or self.i == len(samples):
                log(f"{what}: {self.i}/{len(samples)} samples")
            return dict(samples[self.i - 1])

        def __len__(self) -> int:
            return len(samples)

        def rewind(self) -> None:
            self.i = 0

    return _Reader()
