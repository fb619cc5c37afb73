"""Numerical verification against onnxruntime: seeded inputs, an ORT oracle, error metrics."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgec.errors import EdgecError, InvalidInputError
from edgec.frontend import TensorSpec

# Default --tolerance per precision: the largest allowed max|edgec - ort| / max|ort| per output.
TOLERANCE = {"fp32": 1e-4, "int8": 0.05}  # int8: integer requantization vs float rounding
# --int8 also checks accuracy against the fp32 model: the worst per-sample cosine, on the
# calibration samples (quantization error is expected, so no fp32-style tolerance applies).
MIN_COSINE = {"int8": 0.98}
INT8_VERIFY_SAMPLES = 16  # samples the int8 artifact runs for verification


def random_inputs(specs: Sequence[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs: N(0, 1) floats, integers in [0, 10), random booleans."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = tuple(int(d) for d in spec.shape)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 10, shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        else:
            raise InvalidInputError(f"cannot make random data for input {spec.name!r} ({dtype})")
    return feeds


def load_arrays(specs: Sequence[str]) -> dict[str, np.ndarray]:
    """Parse ``NAME=path.npy`` items (or a single ``.npz`` holding arrays by input name)."""
    arrays: dict[str, np.ndarray] = {}
    for item in specs:
        name, sep, path = item.partition("=")
        if not sep:
            if item.endswith(".npz") and Path(item).is_file():
                with np.load(item) as npz:
                    arrays.update({k: npz[k] for k in npz.files})
                continue
            raise InvalidInputError(f"bad input {item!r}: expected NAME=file.npy or file.npz")
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"cannot read input {name!r} from {path}: {e}") from e
    return arrays


def check_inputs(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> None:
    """Raise InvalidInputError naming every wrong, missing or extra input."""
    want = {s.name: s for s in specs}
    problems = [f"unknown input {n!r}" for n in feeds if n not in want]
    for spec in specs:
        if spec.name not in feeds:
            problems.append(f"missing input {spec.name!r} {list(spec.shape)} {spec.dtype}")
            continue
        arr = np.asarray(feeds[spec.name])
        if tuple(arr.shape) != tuple(spec.shape):
            problems.append(
                f"input {spec.name!r} has shape {list(arr.shape)}, expected {list(spec.shape)}"
            )
        if arr.dtype.name != spec.dtype:
            problems.append(f"input {spec.name!r} has dtype {arr.dtype}, expected {spec.dtype}")
    if problems:
        expected = ", ".join(f"{s.name} {list(s.shape)} {s.dtype}" for s in specs)
        raise InvalidInputError("; ".join(problems) + f" (the model takes: {expected})")


def ort_session(
    model: onnx.ModelProto | str | os.PathLike, *, optimize: bool = False, threads: int = 0
) -> ort.InferenceSession:
    """An onnxruntime CPU session; ``optimize=False`` disables every graph optimization."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_onnxruntime(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, optimize: bool = False
) -> dict[str, np.ndarray]:
    sess = ort_session(model, optimize=optimize)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds)), strict=True))


def reference_outputs(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """onnxruntime's outputs (the oracle); an EdgecError if onnxruntime cannot run the model."""
    try:
        return run_onnxruntime(model, feeds)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgecError(
            f"onnxruntime, the reference for verification, cannot run this model: {first} "
            "(--no-verify compiles without checking results)"
        ) from e


def compare(actual: np.ndarray, expected: np.ndarray) -> dict:
    """Error metrics of one output. ``scaled_err`` = max abs error / max |expected|."""
    if actual.shape != expected.shape:
        return {"shape_mismatch": [list(actual.shape), list(expected.shape)], "scaled_err": np.inf}
    a, e = actual.astype(np.float64).ravel(), expected.astype(np.float64).ravel()
    if a.size == 0:
        return {"max_abs_err": 0.0, "max_rel_err": 0.0, "scaled_err": 0.0, "cosine": 1.0}
    if not np.all(np.isfinite(a) == np.isfinite(e)) or not np.array_equal(
        a[~np.isfinite(e)], e[~np.isfinite(e)]
    ):
        return {"nonfinite_mismatch": True, "scaled_err": np.inf}
    finite = np.isfinite(e)
    a, e = a[finite], e[finite]
    diff = np.abs(a - e)
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    # Relative error only where |expected| is not negligible next to the output's scale.
    significant = np.abs(e) > 1e-3 * scale
    rel = diff[significant] / np.abs(e[significant]) if significant.any() else np.zeros(1)
    denom = np.linalg.norm(a) * np.linalg.norm(e)
    cosine = float(a @ e / denom) if denom > 0 else float(np.array_equal(a, e))
    max_abs = float(diff.max()) if diff.size else 0.0
    return {
        "max_abs_err": max_abs,
        "max_rel_err": float(rel.max()),
        "scaled_err": max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf),
        "cosine": cosine,
        "max_abs_expected": scale,
    }


def compare_all(
    actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]
) -> dict[str, dict]:
    return {name: compare(np.asarray(actual[name]), ref) for name, ref in expected.items()}


def worst(metrics: Mapping[str, dict]) -> dict:
    """The per-output metrics with the largest scaled error."""
    return max(metrics.values(), key=lambda m: m["scaled_err"], default={"scaled_err": 0.0})


def top1_agreement(actual: np.ndarray, expected: np.ndarray) -> float | None:
    """Fraction of rows (all axes but the last) whose argmax over the last axis is the same in
    both: a classifier's top-1 agreement. None when it does not apply (not a float output, no
    class axis of size > 1, or shapes differ)."""
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape or e.ndim == 0 or e.shape[-1] < 2 or e.dtype.kind != "f" or e.size == 0:
        return None
    rows_a, rows_e = a.reshape(-1, e.shape[-1]), e.reshape(-1, e.shape[-1])
    return float(np.mean(np.argmax(rows_a, axis=1) == np.argmax(rows_e, axis=1)))
