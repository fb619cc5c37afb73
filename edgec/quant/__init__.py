"""Post-training int8 quantization (``edgec compile --int8``): the fp32 graph after edgec's passes
becomes a QDQ ONNX model that the lowering compiles.

Flow (:func:`quantize`): calibration samples (``calibrate``) -> optional data-free rewrites on the
fp32 graph (``dfq``: ReLU6 -> ReLU, cross-layer equalization, bias absorption) -> RepQ-ViT scales
for post-LayerNorm activations (transformers) -> the layers kept in float (``mixed``:
``--keep-float auto`` or names) -> onnxruntime's ``quantize_static`` (QDQ, activations uint8
asymmetric, weights int8 per-channel symmetric, the chosen calibrator) -> optional bias correction
on the QDQ model (``dfq``) -> accuracy against the fp32 model on the samples (``accuracy``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from edgec.errors import InvalidInputError
from edgec.frontend import TensorSpec
from edgec.quant import accuracy, calibrate, mixed

__all__ = ["AUTO", "Int8Options", "QuantResult", "quantize", "quantize_qdq"]

Log = Callable[[str], None]
AUTO = "auto"
# Op types whose weights are quantized (the "layers" of --keep-float and the per-layer table).
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Samples used for the accuracy section and int8 verification (the first ones of the set).
ACCURACY_SAMPLES = 64


@dataclasses.dataclass(frozen=True)
class Int8Options:
    """The --int8 options of ``edgec compile`` (same names as the keyword arguments of
    ``edgec.api.compile``)."""

    calib: str | None = None  # a path, "synthetic", or None (only with dfq: synthetic)
    calib_samples: int | None = None
    calib_method: str = "minmax"
    calib_preprocess: str | None = None
    dfq: bool = False
    keep_float: str | Sequence[str] | None = None  # "auto", node names, or "a,b,c"

    def check(self) -> None:
        """Refuse bad combinations before any work is done."""
        calibrate.method(self.calib_method)
        if self.calib is None and not self.dfq:
            raise InvalidInputError(
                "--int8 needs calibration data: --calib PATH (a directory or archive of .npy/.npz "
                "samples or images), or --calib synthetic (random data, accuracy unknown), or "
                "--dfq (data-free quantization)"
            )
        if self.calib_samples is not None and self.calib_samples <= 0:
            raise InvalidInputError(f"--calib-samples must be positive, not {self.calib_samples}")
        if self.calib_preprocess:
            calibrate.parse_preprocess(self.calib_preprocess)

    @property
    def keep_float_names(self) -> list[str]:
        if self.keep_float is None or self.keep_float == AUTO:
            return []
        items = [self.keep_float] if isinstance(self.keep_float, str) else self.keep_float
        return [n.strip() for item in items for n in item.split(",") if n.strip()]


@dataclasses.dataclass
class QuantResult:
    model: onnx.ModelProto  # the QDQ model
    calibration: calibrate.CalibrationSet
    samples: list[dict[str, np.ndarray]]  # the accuracy / verification samples
    reference: list[dict[str, np.ndarray]]  # fp32 outputs on ``samples``
    report: dict  # the report's "quantization" section
    accuracy: dict  # the report's "accuracy" section (QDQ model in onnxruntime vs fp32)
    warnings: list[str]


def quantize(
    model: onnx.ModelProto,
    inputs: Sequence[TensorSpec],
    options: Int8Options,
    *,
    source: onnx.ModelProto | None = None,
    verify_samples: Sequence[Mapping[str, np.ndarray]] | None = None,
    layer_latency: mixed.Latency | None = None,
    seed: int = 0,
    log: Log = lambda _: None,
) -> QuantResult:
    """Quantize the fp32 ``model`` (edgec's passes already applied) to QDQ.

    ``source`` is the imported model before the passes: its BatchNormalization statistics feed
    the data-free steps. Accuracy is measured on ``verify_samples`` when given, else on the
    first calibration samples, against the fp32 ``model``. ``layer_latency(node) -> (fp32_ms,
    int8_ms)`` gives ``--keep-float auto`` measured kernel times instead of its roofline proxy.
    """
    from edgec.quant import dfq

    options.check()
    model = _named(model)
    exclude = options.keep_float_names
    unknown = sorted(set(exclude) - {n.name for n in model.graph.node})
    if unknown:
        known = ", ".join(n.name for n in weight_layers(model))
        raise InvalidInputError(
            f"--keep-float: no node named {', '.join(map(repr, unknown))} (quantized layers: "
            f"{known})"
        )
    warnings: list[str] = []
    calib = options.calib or calibrate.SYNTHETIC
    calib_set = calibrate.load(calib, inputs, samples=options.calib_samples,
                               preprocess=options.calib_preprocess, seed=seed)  # fmt: skip
    log(f"calibration data: {len(calib_set.samples)} sample(s) from {calib_set.source}")
    if calib_set.synthetic:
        warnings.append(calibrate.SYNTHETIC_WARNING)
        log(calibrate.SYNTHETIC_WARNING)
    samples = [dict(s) for s in (verify_samples or calib_set.samples[:ACCURACY_SAMPLES])]
    reference = accuracy.run_all(accuracy.ort_runner(model), samples)  # fp32, before DFQ
    section: dict = {
        "format": "QDQ",
        "tool": "onnxruntime.quantization.quantize_static",
        "activations": "uint8, asymmetric, per tensor",
        "weights": "int8, symmetric, per output channel",
        "calibration": {**calib_set.to_json(), "method": options.calib_method},
    }
    real = [] if calib_set.synthetic else calib_set.samples
    bn = dfq.bn_stats(source if source is not None else model)
    if options.dfq:
        model, section["dfq"] = dfq.apply(model, bn=bn, samples=real,
                                          probe=calib_set.samples[:8], log=log)  # fmt: skip
    model, overrides, section["repq_vit"] = _repq_vit(model, calib_set.samples[:32], log)
    layers = weight_layers(model)
    with tempfile.TemporaryDirectory(prefix="edgec-quant-") as tmp:
        quantizer = _Quantizer(model, calib_set.samples, options.calib_method, overrides,
                               Path(tmp) / "calibration.json", log)  # fmt: skip
        if options.keep_float == AUTO:
            exclude, section["mixed_precision"] = mixed.choose(
                model, quantizer, samples, reference, latency=layer_latency, log=log
            )
        qdq = quantizer(exclude)
    if options.dfq:
        qdq, section["dfq"]["bias_correction"] = dfq.bias_correction(
            qdq, model, bn=bn, samples=real, log=log
        )
    section["kept_float"] = list(exclude)
    section["quantized_layers"] = sum(1 for n in layers if n.name not in set(exclude))
    section["layers"] = len(layers)
    acc = {
        "reference": "fp32 model (after edgec's passes) in onnxruntime",
        "quantized": "the QDQ model in onnxruntime (graph optimizations off)",
        "inputs": "--verify-input" if verify_samples else _samples_label(calib_set),
        "outputs": accuracy.compare(accuracy.run_all(accuracy.ort_runner(qdq), samples), reference),
    }
    acc.update(accuracy.summary(acc["outputs"]))
    if calib_set.synthetic:
        acc["warning"] = calibrate.SYNTHETIC_WARNING
    log(_accuracy_line(acc))
    return QuantResult(qdq, calib_set, samples, reference, section, acc, warnings)


def _samples_label(calib: calibrate.CalibrationSet) -> str:
    if calib.synthetic:
        return "synthetic calibration samples (seeded N(0, 1))"
    return f"calibration samples ({calib.source})"


def _accuracy_line(acc: dict) -> str:
    top1 = f", top-1 agreement {acc['top1_agreement']:.4f}" if "top1_agreement" in acc else ""
    return (f"int8 vs fp32 (onnxruntime): cosine {acc['cosine']:.6f} (worst sample "
            f"{acc['min_cosine']:.6f}), max abs err {acc['max_abs_err']:.3g}{top1}")  # fmt: skip


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, with a name (``op_type + index``) for every unnamed node: --keep-float and the
    per-layer table refer to nodes by name."""
    if all(n.name for n in model.graph.node):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    taken = {n.name for n in model.graph.node}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)
    return model


def weight_layers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes whose weight is a constant that quantization turns into int8."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n for n in model.graph.node
            if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in consts]  # fmt: skip


def _repq_vit(
    model: onnx.ModelProto, samples: Sequence[dict], log: Log
) -> tuple[onnx.ModelProto, dict, dict]:
    """RepQ-ViT scales on post-LayerNorm activations: re-parameterize (verified exact in
    onnxruntime) and pin each rewritten LN output's quantizer to the layer-wise (d~, z~)."""
    if not any(n.op_type == "LayerNormalization" for n in model.graph.node):
        return model, {}, {"status": "not applicable (no LayerNormalization)"}
    from edgec.passes import PASS_TOLERANCE
    from edgec.passes.repq_vit import RepQViTScales
    from edgec.verify import compare_all, run_onnxruntime, worst

    rewrite = RepQViTScales(calibration_inputs=list(samples))
    result = rewrite(model)
    report = {"stats": result.stats, "declined": result.declined}
    if not result.changed:
        return model, {}, {**report, "status": "unchanged"}
    err = max(
        worst(compare_all(run_onnxruntime(result.model, s), run_onnxruntime(model, s)))[
            "scaled_err"
        ]
        for s in samples[:4]
    )
    report["verify_scaled_err"] = err
    if err > PASS_TOLERANCE:
        return model, {}, {**report, "status": "reverted", "reason": f"scaled error {err:.3g}"}
    tensors = {
        name: [{"scale": np.array(d, np.float32), "zero_point": np.array(round(z), np.uint8)}]
        for name, (d, z) in rewrite.layerwise_params.items()
    }
    log(f"repq_vit: {len(tensors)} LayerNorm output(s) re-parameterized to layer-wise scales")
    report["layerwise"] = {k: {"scale": d, "zero_point": z}
                           for k, (d, z) in rewrite.layerwise_params.items()}  # fmt: skip
    return result.model, {"TensorQuantOverrides": tensors}, {**report, "status": "applied"}


class _Quantizer:
    """:func:`quantize_qdq` with the calibration done once: later calls (other --keep-float sets)
    reuse the calibration cache."""

    def __init__(self, model, samples, method: str, overrides: dict, cache: Path, log: Log):
        self.model, self.samples, self.method = model, samples, method
        self.overrides, self.cache, self.log = overrides, cache, log

    def __call__(self, exclude: Sequence[str] = (), include: Sequence[str] | None = None):
        log = self.log if not self.cache.exists() else lambda _: None
        return quantize_qdq(self.model, self.samples, method=self.method, exclude=exclude,
                            include=include, overrides=self.overrides, cache=self.cache,
                            log=log)  # fmt: skip


def quantize_qdq(
    model: onnx.ModelProto,
    samples: Iterable[Mapping[str, np.ndarray]],
    *,
    activation: str = "uint8",
    method: str = "minmax",
    exclude: Sequence[str] = (),
    include: Sequence[str] | None = None,
    overrides: Mapping | None = None,
    cache: Path | None = None,
    log: Log = lambda _: None,
) -> onnx.ModelProto:
    """The QDQ model of ``model`` by onnxruntime's quantize_static, calibrated on ``samples``
    (input name -> array) with ``method`` (``--calib-method``): ``activation`` ("uint8", edgec's
    --int8, or "int8") asymmetric per-tensor activations, int8 symmetric per-channel weights.

    ``exclude`` / ``include``: node names kept float / the only ones quantized; ``overrides``:
    its ``TensorQuantOverrides`` pin tensors' scales; ``cache``: a calibration cache file
    (written on the first call, reused by later ones: then ``samples`` are not run).
    """
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    activations = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if activation not in activations:
        raise ValueError(f"activation must be one of {', '.join(activations)}, not {activation!r}")
    calib_method, extra = calibrate.method(method)
    extra = dict(extra)
    if overrides and overrides.get("TensorQuantOverrides"):
        extra["TensorQuantOverrides"] = overrides["TensorQuantOverrides"]
    reader = calibrate.reader(list(samples), log)
    # quantize_static saves a ModelProto with external data in place: give it a copy
    model = onnx.ModelProto.FromString(model.SerializeToString())
    with tempfile.TemporaryDirectory(prefix="edgec-quant-") as tmp, _quiet_ort():
        out = Path(tmp) / "qdq.onnx"
        ort_quantize_static(
            model, str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=activations[activation], weight_type=QuantType.QInt8,
            calibrate_method=calib_method, nodes_to_exclude=list(exclude),
            nodes_to_quantize=list(include) if include else None, extra_options=extra,
            calibration_cache_path=cache,
        )  # fmt: skip
        return onnx.load(out)


@contextlib.contextmanager
def _quiet_ort():
    """quantize_static logs a 'consider pre-processing' warning on every call, and the
    histogram calibrators print to stdout (which carries --json)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
