"""Accuracy of a quantized model against the fp32 model on the same samples.

Per output: ``cosine`` (of all samples' outputs taken together), ``min_cosine`` (the worst single
sample), ``max_abs_err``, ``scaled_err`` (max abs error / max |fp32|) and, for classifier-like
outputs (float, shape [1, classes >= 2]), ``top1_agreement``: the fraction of samples whose
arg-max class is the same as fp32's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Outputs = dict[str, np.ndarray]
Sample = dict[str, np.ndarray]


def compare(actual: Sequence[Outputs], expected: Sequence[Outputs]) -> dict[str, dict]:
    """Metrics per output name over paired per-sample outputs."""
    metrics = {}
    for name in expected[0]:
        a = np.stack([np.asarray(o[name], np.float64) for o in actual])
        e = np.stack([np.asarray(o[name], np.float64) for o in expected])
        if a.shape != e.shape:
            metrics[name] = {"shape_mismatch": [list(a.shape[1:]), list(e.shape[1:])]}
            continue
        flat_a, flat_e = a.reshape(len(a), -1), e.reshape(len(e), -1)
        scale = float(np.abs(e).max()) if e.size else 0.0
        max_abs = float(np.abs(a - e).max()) if e.size else 0.0
        m = {
            "samples": len(a),
            "cosine": _cosine(flat_a.ravel(), flat_e.ravel()),
            "min_cosine": min(_cosine(x, y) for x, y in zip(flat_a, flat_e, strict=True)),
            "max_abs_err": max_abs,
            "scaled_err": max_abs / scale if scale > 0 else float(max_abs > 0) * np.inf,
        }
        if is_classifier(e[0]):
            agree = flat_a.argmax(1) == flat_e.argmax(1)
            m["top1_agreement"] = float(agree.mean())
        metrics[name] = m
    return metrics


def is_classifier(output: np.ndarray) -> bool:
    """Float logits/probabilities of one sample: shape [1, C] or [C] with C >= 2."""
    shape = tuple(output.shape)
    return (
        output.dtype.kind == "f"
        and len(shape) in (1, 2)
        and shape[-1] >= 2
        and (len(shape) == 1 or shape[0] == 1)
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))


def summary(metrics: dict[str, dict]) -> dict:
    """The worst value of each metric over the outputs."""
    rows = [m for m in metrics.values() if "cosine" in m]
    if len(rows) != len(metrics):
        return {"min_cosine": -1.0, "cosine": -1.0, "max_abs_err": np.inf, "scaled_err": np.inf,
                "shape_mismatch": True}  # fmt: skip
    out = {
        "min_cosine": min(m["min_cosine"] for m in rows),
        "cosine": min(m["cosine"] for m in rows),
        "max_abs_err": max(m["max_abs_err"] for m in rows),
        "scaled_err": max(m["scaled_err"] for m in rows),
    }
    agreements = [m["top1_agreement"] for m in rows if "top1_agreement" in m]
    if agreements:
        out["top1_agreement"] = min(agreements)
    return out


def run_all(run: Callable[[Sample], Outputs], samples: Sequence[Sample]) -> list[Outputs]:
    return [run(s) for s in samples]


def ort_runner(model, *, optimize: bool = False) -> Callable[[Sample], Outputs]:
    """Run ``model`` in onnxruntime (graph optimizations off unless ``optimize``), one sample
    at a time, returning outputs by name."""
    from edgec.verify import ort_session

    sess = ort_session(model, optimize=optimize)
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(names, dict(feeds)), strict=True))
