"""Converters for ONNX ops that TVM 0.27's importer lacks or gets wrong (its OnnxOpConverter
interface: ``_impl_vN(bb, inputs, attr, params)`` for opset N and later).

A converter either produces exactly the ONNX semantics or raises OpAttributeUnImplemented,
which edgec reports as an unsupported model (exit code 3): never a silently different result.
Each fix is covered by ONNX's node tests (bench/coverage.py, docs/COVERAGE.md).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.error import OpAttributeUnImplemented
from tvm.relax.frontend.onnx import onnx_frontend as tvm_onnx


def _const(expr, params) -> np.ndarray | None:
    """The value of a constant input, None for an omitted one; refuses a runtime value."""
    if expr is None:
        return None
    value = tvm_onnx.get_constant(expr, params)
    if isinstance(value, tvm.ir.GenericConst):
        return value.value.numpy()
    raise OpAttributeUnImplemented(f"a runtime (non-constant) {getattr(expr, 'name_hint', '')}")


class Resize(tvm_onnx.Resize):
    """Resize (and opset 10's) on constant scales/sizes with ``axes`` and
    ``keep_aspect_ratio_policy``, lowered through TVM's resize with explicit output sizes.

    TVM derives the coordinate scale from the sizes (out/in) whereas ONNX uses the given
    scale, so a scale whose output size is not an exact multiple is refused, as are
    ``antialias`` when downsampling and ``half_pixel_symmetric`` (not in TVM's resize)."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        attr = {**attr, "coordinate_transformation_mode": b"asymmetric", "nearest_mode": b"floor"}
        return cls._impl_v11(bb, [inputs[0], None, inputs[1]], attr, params)

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        x = inputs[0]
        shape = [int(d) for d in x.ty.shape]
        rank = len(shape)
        inputs = list(inputs) + [None] * (4 - len(inputs))
        roi, scales, sizes = (_const(e, params) for e in inputs[1:4])
        scales = None if scales is None or scales.size == 0 else scales.astype(np.float64)
        sizes = None if sizes is None or sizes.size == 0 else sizes.astype(np.int64)
        axes = [int(a) % rank for a in attr.get("axes", range(rank))]
        coord = attr.get("coordinate_transformation_mode", b"half_pixel").decode()
        policy = attr.get("keep_aspect_ratio_policy", b"stretch").decode()
        if coord == "half_pixel_symmetric":
            raise OpAttributeUnImplemented(
                "Resize coordinate_transformation_mode half_pixel_symmetric"
            )
        if (scales is None) == (sizes is None):
            raise OpAttributeUnImplemented("Resize needs exactly one of scales and sizes")
        if sizes is not None:
            ratio = sizes / np.array([shape[a] for a in axes], np.float64)
            if policy != "stretch":
                pick = np.min if policy == "not_larger" else np.max
                ratio = np.full(len(axes), pick(ratio))
                sizes = np.floor(ratio * [shape[a] for a in axes] + 0.5).astype(np.int64)
            scale_of = dict(zip(axes, ratio, strict=True))
            out = dict(zip(axes, sizes.tolist(), strict=True))
        else:
            scale_of = dict(zip(axes, scales.tolist(), strict=True))
            out = {a: int(np.floor(shape[a] * s)) for a, s in scale_of.items()}
        full = [out.get(i, shape[i]) for i in range(rank)]
        by_ratio = coord == "tf_crop_and_resize"  # no scale in its formula
        for i in range(rank):
            s = scale_of.get(i, 1.0)
            if not by_ratio and not np.isclose(full[i], shape[i] * s, rtol=0, atol=1e-6):
                raise OpAttributeUnImplemented(
                    f"Resize scale {s:g} on a dim of {shape[i]} (output not an exact multiple)"
                )
            if attr.get("mode", b"nearest") == b"nearest" and _nearest_tie(
                shape[i], full[i], coord
            ):
                raise OpAttributeUnImplemented(
                    f"Resize nearest {shape[i]}->{full[i]}: exact rounding ties that TVM's "
                    "float32 coordinates break differently"
                )
        if full[:2] != shape[:2]:
            raise OpAttributeUnImplemented("Resize of the batch or channel dim")
        if attr.get("antialias", 0) and any(full[i] < shape[i] for i in range(rank)):
            raise OpAttributeUnImplemented("Resize antialias when downsampling")
        if roi is not None and roi.size and attr.get("axes") is not None:
            full_roi = np.concatenate([np.zeros(rank), np.ones(rank)])
            for j, a in enumerate(axes):
                full_roi[a], full_roi[rank + a] = roi[j], roi[len(axes) + j]
            roi = full_roi
        attr = {k: v for k, v in attr.items()
                if k not in ("axes", "keep_aspect_ratio_policy", "antialias")}  # fmt: skip
        roi_expr = None if roi is None or roi.size == 0 else relax.const(roi.astype(np.float32))
        sizes_expr = relax.const(np.array(full, np.int64))
        return super()._impl_v18(bb, [x, roi_expr, None, sizes_expr], attr, params)

    _impl_v13 = _impl_v11
    _impl_v18 = _impl_v11
    _impl_v19 = _impl_v11


def _nearest_tie(size: int, out: int, coord: str) -> bool:
    """Whether a nearest-neighbour source coordinate falls exactly on a rounding tie while
    in/out is inexact in float32 (TVM computes it in float32, ONNX exactly)."""
    if out == size or float(np.float32(size / out)) == size / out:
        return False
    x = np.arange(out, dtype=np.float64)
    src = {"asymmetric": x * size / out, "align_corners": x * (size - 1) / max(out - 1, 1)}.get(
        coord, (x + 0.5) * size / out - 0.5
    )
    frac = src - np.floor(src)
    return bool(np.any(np.isclose(frac, 0.5, atol=1e-9) | np.isclose(frac, 0.0, atol=1e-9)
                       & (src != np.round(src))))  # fmt: skip


class Upsample(tvm_onnx.OnnxOpConverter):
    """Upsample (deprecated): Resize-10 semantics (asymmetric coordinates, floor rounding)."""

    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        scales = relax.const(np.asarray(attr.pop("scales"), np.float32))
        return Resize._impl_v10(bb, [inputs[0], scales], attr, params)

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        return Resize._impl_v10(bb, inputs, attr, params)


class NonMaxSuppression(tvm_onnx.NonMaxSuppression):
    """TVM's converter needs constant thresholds (it silently takes 0.5 for a runtime
    iou_threshold) and suppresses at IoU >= threshold where ONNX suppresses at IoU >
    threshold: refuse runtime thresholds, and pass the next float32 above the threshold
    (no float32 lies between them, so >= it is exactly > the threshold)."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        inputs = list(inputs) + [None] * (5 - len(inputs))
        values = [_const(e, params) for e in inputs[2:5]]
        if values[1] is not None:
            t = np.float32(values[1].reshape(-1)[0])
            inputs[3] = relax.const(np.array([np.nextafter(t, np.float32(np.inf))], np.float32))
        return super()._impl_v10(bb, inputs, attr, params)


def _with_infinite_identity(tvm_class: type, sign: float) -> type:
    """TVM reduces max (min) from -FLT_MAX (+FLT_MAX), not -inf (+inf): a row of only -inf
    gives -3.4e38 (masked attention rows). Rows with no element beyond that infinity get it
    back: ``where(reduce(x != inf) > 0, reduce(x), inf)``, both reductions TVM's."""

    def convert(cls, bb, inputs, attr, params, version):
        impl = getattr(super(cls, cls), f"_impl_v{version}")
        out = bb.normalize(impl(bb, inputs, attr, params))
        x = inputs[0]
        dtype = str(x.ty.dtype)
        if not dtype.startswith("float"):
            return out
        inf = relax.const(sign * np.inf, dtype)
        seen = bb.normalize(relax.op.astype(relax.op.not_equal(x, inf), dtype))
        has = bb.normalize(impl(bb, [seen, *inputs[1:]], attr, params))
        return relax.op.where(relax.op.greater(has, relax.const(0, dtype)), out, inf)

    versions = sorted(int(n.removeprefix("_impl_v")) for n in dir(tvm_class) if "_impl_v" in n)
    body = {
        f"_impl_v{v}": classmethod(
            lambda cls, bb, inputs, attr, params, v=v: convert(cls, bb, inputs, attr, params, v)
        )
        for v in versions
    }
    return type(tvm_class.__name__, (tvm_class,), {"__doc__": _with_infinite_identity.__doc__,
                                                   **body})  # fmt: skip


ReduceMax = _with_infinite_identity(tvm_onnx.ReduceMax, -1.0)
ReduceMin = _with_infinite_identity(tvm_onnx.ReduceMin, 1.0)


class Clip(tvm_onnx.Clip):
    """Clip as Relax ``maximum``/``minimum`` ops (TVM's converter emits opaque TE calls that
    ``ConvertLayout`` cannot see through, so an NHWC layout stopped at every ReLU6). A NaN bound
    is no bound, as in onnxruntime."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        dtype = inputs[0].ty.dtype
        bounds = [relax.const(attr[k], dtype) if k in attr else None for k in ("min", "max")]
        return cls._clip(bb, inputs[0], *bounds)

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        inputs = list(inputs) + [None] * (3 - len(inputs))
        return cls._clip(bb, *inputs[:3])

    @classmethod
    def _clip(cls, bb, x, lo, hi):
        for bound, op, fill in ((lo, relax.op.maximum, -np.inf), (hi, relax.op.minimum, np.inf)):
            if bound is None:
                continue
            if isinstance(bound, tvm.ir.expr.Constant):
                value = bound.value.numpy()
                if value.dtype.kind == "f" and np.isnan(value).any():
                    bound = relax.const(np.where(np.isnan(value), fill, value), str(value.dtype))
            else:
                bound = cls._sanitize_nan_clip_bound(bb, bound, for_min=op is relax.op.maximum)
            x = bb.normalize(op(x, bound))
        return x


CONVERTERS: dict[str, type] = {
    "Clip": Clip,
    "ReduceMax": ReduceMax,
    "ReduceMin": ReduceMin,
    "Resize": Resize,
    "Upsample": Upsample,
    "NonMaxSuppression": NonMaxSuppression,
}
