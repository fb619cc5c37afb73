"""QDQ -> integer lowering: the Relax pass that turns fake quantization into integer kernels.

TVM's ONNX importer keeps a QDQ model (onnxruntime ``quantize_static``, ``QuantFormat.QDQ``) as
fake quantization: ``dequantize -> float conv -> quantize``. ``lower_qdq`` rewrites every
``quantize`` whose producer has an integer form into integer ops on the quantized tensors:

* conv2d / matmul (Gemm) with constant int8 weights (zero point 0, per-channel or per-tensor
  scale): the activation (uint8, or int8 moved to uint8 by +128) padded with its zero point
  (and its channels to a multiple of 4, or, where fewer MACs, a thin input's row of taps),
  uint8 x int8 -> int32 accumulation, then ``acc - zx * sum(w) + bias`` with the bias in int32
  (``signed_conv``, arm64 sdot targets: dense convs and matmuls take the activations as
  int8, uint8 ones moved by -128, for ``edgec.lower.int8_arm``: int8 x int8, the same integer
  result);
* conv2d_transpose (ConvTranspose) as a plain int32 transposed convolution of ``x - zx``, and
  matmul of two quantized activations (attention) as an int32 matmul of ``a - za``, ``b - zb``;
* add, concat, max/avg pooling, global average pooling (mean), relu/clip, and layout ops
  (reshape, transpose, slice) on quantized tensors;
* requantization by a dyadic multiplier, exactly: ``y = ((acc * M + 2**(n-1)) >> n) + zp``
  in int64 (``M`` in [2**30, 2**31), ``n`` per output channel), clamped to the output type and
  to a fused relu/clip's range; sums of 8-bit terms (adds) in int32 with ``M`` of up to 22 bits
  (``requant_multipliers``: half the vector width of int64; ResNet-18's layer-1 residual convs
  331 -> 315 us).

Everything else stays float (the importer's fake quantization); ``float_ops`` lists the float ops
left between an input ``quantize`` and an output ``dequantize``.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from edgec.errors import FloatOpsError
from edgec.lower import _tvm

QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}
MAX_SHIFT = 62
NARROW_BITS = 22  # sums of 8-bit terms: 2 * 255 * 2**22 < 2**31
CHANNEL_GROUP = 4  # dense convs get their input channels padded to a multiple of this


# --------------------------------------------------------------------------------------------
# dyadic requantization (numpy; the tests' reference uses the same functions)


def multipliers(reals: list[np.ndarray], bits: int = 31) -> tuple[list[np.ndarray], np.ndarray]:
    """Integer multipliers ``M_t`` with one shift ``n`` (per channel) for a sum of terms:
    ``sum_t x_t * real_t ~= (sum_t x_t * M_t) / 2**n``. The largest term gets ``M`` in
    [2**(bits-1), 2**bits); ``n`` is clamped to [1, 62]."""
    reals = [np.asarray(r, np.float64) for r in reals]
    biggest = np.maximum.reduce([np.abs(r) for r in reals]) if len(reals) > 1 else np.abs(reals[0])
    _, exp = np.frexp(biggest)  # biggest = mant * 2**exp, mant in [0.5, 1)
    n = np.clip(bits - exp.astype(np.int64), 1, MAX_SHIFT)
    ms = [np.round(r * np.exp2(n.astype(np.float64))).astype(np.int64) for r in reals]
    if any(np.any(np.abs(m) >= 2**31) for m in ms):
        raise ValueError("requantization multiplier too large (scale ratio >= 2**30)")
    return ms, n


def requant_multipliers(reals: list[np.ndarray], bounds=None) -> tuple[list, np.ndarray, bool]:
    """``multipliers`` for a requantization, and whether it runs in int32: where every term's
    magnitude is bounded (``bounds``, e.g. 255 for 8-bit codes minus their zero point), the
    largest multiplier keeps ``NARROW_BITS`` down to 20 bits so that ``|sum x*M| + 2**(n-1)``
    stays below 2**31; otherwise 31-bit multipliers in int64."""
    if bounds is not None:
        for bits in range(NARROW_BITS, 19, -1):
            ms, n = multipliers(reals, bits)
            worst = sum(b * np.abs(m) for b, m in zip(bounds, ms, strict=True))
            if np.all(worst + np.left_shift(np.int64(1), n - 1) < 2**31):
                return ms, n, True
    return *multipliers(reals), False


def requantize_ref(terms: list[tuple[np.ndarray, np.ndarray]], zp, dtype: str, lo=None, hi=None,
                   bounds=None):  # fmt: skip
    """Numpy reference of ``_requant``: terms of (int accumulator, real multiplier)."""
    ms, n, _ = requant_multipliers([r for _, r in terms], bounds)
    total = sum(np.asarray(x, np.int64) * m for (x, _), m in zip(terms, ms, strict=True))
    y = ((total + (np.int64(1) << (n - 1))) >> n) + np.int64(zp)
    qmin, qmax = QRANGE[dtype]
    return np.clip(
        y, max(qmin, lo if lo is not None else qmin), min(qmax, hi if hi is not None else qmax)
    ).astype(dtype)


# --------------------------------------------------------------------------------------------
# the pass


class Decline(Exception):
    """This quantize has no integer form here (the message says why)."""


@dataclasses.dataclass
class QTensor:
    """A dequantized tensor: ``real = (data - zp) * scale``; scalar scale/zp or per ``axis``."""

    data: object  # relax expr (integer) or np.ndarray for constants
    scale: np.ndarray
    zp: np.ndarray
    axis: int
    dtype: str

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1 and self.zp.size == 1

    @property
    def zp_scalar(self) -> int:
        return int(self.zp.reshape(-1)[0])

    @property
    def scale_scalar(self) -> float:
        return float(self.scale.reshape(-1)[0])


@dataclasses.dataclass
class Result:
    """What ``lower_qdq`` did: the rewritten module and the report's ``int8`` section."""

    mod: object
    qdq: bool  # the model holds quantize/dequantize ops
    integer_ops: list[str]  # kinds of the quantized ops lowered to integer arithmetic
    declined: list[dict]  # quantize ops left float, and why
    float_ops: list[dict]  # float ops between an input quantize and an output dequantize

    def section(self) -> dict:
        return {
            "qdq": self.qdq,
            "integer_ops": len(self.integer_ops),
            "integer_op_kinds": dict(sorted(_count(self.integer_ops).items())),
            "declined": self.declined,
            "float_ops": self.float_ops,
        }


def _count(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def has_qdq(mod) -> bool:
    names = {"relax.quantize", "relax.dequantize"}
    return any(op in names for op in _op_names(mod["main"]))


def _op_names(func) -> list[str]:
    from tvm import relax

    names = []
    for block in func.body.blocks:
        for b in block.bindings:
            if isinstance(b.value, relax.Call) and hasattr(b.value.op, "name"):
                names.append(str(b.value.op.name))
    return names


@contextlib.contextmanager
def onnx_node_names():
    """While importing with TVM's ONNX frontend, collect {Relax var or call: ONNX node name}
    for the outputs of every node (to name the float ops in the report)."""
    _tvm()
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend

    names: dict = {}
    cls = onnx_frontend.ONNXGraphImporter
    original = cls._construct_nodes

    def construct(self, graph):
        original(self, graph)
        for node in graph.node:
            for out in node.output:
                expr = self._nodes.get(out)  # a bound var, or a call emitted later as is
                if isinstance(expr, relax.Var | relax.Call):
                    names[expr] = node.name or f"<{node.op_type}>"

    cls._construct_nodes = construct
    try:
        yield names
    finally:
        cls._construct_nodes = original


def lower_qdq(mod, names: dict | None = None, signed_conv: bool = False) -> Result:
    """Rewrite ``mod['main']`` (straight from the ONNX importer: weights still constant
    ``dequantize`` calls, nothing folded) into integer ops wherever they have an integer form.
    ``names`` ({original var: ONNX node}, from ``onnx_node_names``) names the float ops;
    ``signed_conv``: dense convolutions and weight matmuls take int8 activations (sdot
    targets), else uint8."""
    if not has_qdq(mod):
        return Result(mod, False, [], [], [])
    tvm = _tvm()
    from tvm import relax

    rw = _Rewriter(mod["main"], signed_conv)
    func = rw.run()
    mod = tvm.IRModule({**{gv: f for gv, f in mod.functions.items() if gv.name_hint != "main"}})
    mod["main"] = func
    mod = relax.transform.DeadCodeElimination()(mod)
    # a binding belongs to the node of the first named var at or after it (a node's bindings
    # are emitted together, its output last)
    node_of, carry = {}, None
    for b in reversed([b for block in rw.func.body.blocks for b in block.bindings]):
        carry = (names or {}).get(b.var) or (names or {}).get(b.value) or carry
        node_of[b.var] = carry
    nodes = {new: node_of.get(old) for new, old in rw.origin.items()}
    return Result(mod, True, rw.lowered, rw.declined, float_ops(mod["main"], nodes))


def lower(
    mod,
    integer_only: bool = False,
    quant: dict | None = None,
    names: dict | None = None,
    signed_conv: bool = False,
):
    """``lower.build``'s hook: the rewritten module; ``quant`` receives ``Result.section()``
    (when the model holds QDQ); FloatOpsError with ``integer_only`` if float ops remain."""
    result = lower_qdq(mod, names, signed_conv)
    if quant is not None and result.qdq:
        quant.update(result.section())
    if integer_only:
        if not result.qdq:
            raise FloatOpsError("--integer-only: the model has no quantize/dequantize ops", [])
        if result.float_ops:
            lines = [f"  {o['op']} (node {o['node']}) -> {o['var']} {o['dtype']}{o['shape']}"
                     for o in result.float_ops]  # fmt: skip
            why = [f"  {d['var']}: {d['reason']}" for d in result.declined]
            raise FloatOpsError(
                f"--integer-only: {len(result.float_ops)} float op(s) remain between the input "
                "quantize and the output dequantize:\n"
                + "\n".join(lines)
                + ("\nquantized ops left float:\n" + "\n".join(why) if why else ""),
                result.float_ops,
            )
    return result.mod


def float_ops(func, nodes: dict | None = None) -> list[dict]:
    """Float ops (a float tensor in or out) that have an integer tensor upstream and an integer
    tensor downstream (or produce one): what stays float between input quantize and output
    dequantize. Each: op name, Relax variable, output shape and dtype."""
    from tvm import relax

    bindings = [b for block in func.body.blocks for b in block.bindings]
    inputs: dict = {}
    for b in bindings:
        used = []
        relax.analysis.post_order_visit(
            b.value, lambda e, used=used: used.append(e) if isinstance(e, relax.Var) else None
        )
        inputs[b.var] = used
    is_int = {b.var: _is_int(b.var) for b in bindings}
    anc: dict = {}
    for b in bindings:
        anc[b.var] = any(_is_int(u) or anc.get(u, False) for u in inputs[b.var])
    desc: dict = {b.var: False for b in bindings}
    for b in reversed(bindings):
        if is_int[b.var] or desc[b.var]:
            for u in inputs[b.var]:
                if u in desc:
                    desc[u] = True
    out = []
    for b in bindings:
        if not isinstance(b.value, relax.Call) or not hasattr(b.value.op, "name"):
            continue
        tensors = [b.var] + [a for a in inputs[b.var]]
        if not any(_is_float(t) for t in tensors):
            continue
        if anc[b.var] and (desc[b.var] or is_int[b.var]):
            sinfo = b.var.ty
            out.append(
                {
                    "op": str(b.value.op.name).removeprefix("relax."),
                    "node": (nodes or {}).get(b.var),
                    "var": b.var.name,
                    "shape": [int(d) for d in sinfo.shape] if hasattr(sinfo, "shape") else None,
                    "dtype": str(getattr(sinfo, "dtype", "")),
                }
            )
    return out


def _dtype(expr) -> str:
    return str(getattr(expr.ty, "dtype", ""))


def _is_int(expr) -> bool:
    d = _dtype(expr)
    return d.startswith("int") or d.startswith("uint")


def _is_float(expr) -> bool:
    return _dtype(expr).startswith(("float", "bfloat"))


_ANCHORS = ("relax.nn.conv2d", "relax.matmul", "relax.nn.conv2d_transpose")
_LAYOUT_OPS = (
    "relax.reshape", "relax.permute_dims", "relax.strided_slice", "relax.squeeze",
    "relax.expand_dims", "relax.flatten", "relax.take",
)  # fmt: skip


class _Rewriter:
    def __init__(self, func, signed_conv: bool = False):
        tvm = _tvm()
        from tvm import relax

        self.tvm, self.relax, self.R = tvm, relax, relax.op
        self.func = func
        self.signed_conv = signed_conv  # dense convs, matmuls on int8 activations (arm64 sdot)
        self.orig: dict = {}  # original var -> its original value
        self.map: dict = {}  # original var -> new expr
        self.origin: dict = {}  # new var -> the original var it was re-emitted for
        self.lowered: list[str] = []
        self.declined: list[dict] = []
        self.bb = relax.BlockBuilder()

    # --- driver ---------------------------------------------------------------------------

    def run(self):
        relax, bb, func = self.relax, self.bb, self.func
        attrs = {k: v for k, v in func.attrs.items()} if func.attrs else None
        with bb.function("main", list(func.params), attrs=attrs):
            for block in func.body.blocks:
                if isinstance(block, relax.DataflowBlock):
                    with bb.dataflow():
                        for b in block.bindings:
                            new = self._binding(b)
                            output = not isinstance(b.var, relax.DataflowVar)
                            self.map[b.var] = bb.emit_output(new) if output else new
                            self.origin[self.map[b.var]] = b.var
                else:
                    for b in block.bindings:
                        self.map[b.var] = self._binding(b)
            bb.emit_func_output(self._sub(func.body.body))
        return bb.get()["main"]

    def _binding(self, b):
        self.orig[b.var] = b.value
        new = None
        if self._op(b.value) == "relax.shape_of":  # of the integer tensor: no float kept alive
            inner = self._value(b.value.args[0])
            if self._op(inner) == "relax.dequantize":
                new = self.bb.emit(self.R.shape_of(self._sub(inner.args[0])))
                self.origin[new] = b.var
                return new
        if self._op(b.value) == "relax.quantize":
            try:
                new = self._quantize(b.value)
            except Decline as e:
                if not isinstance(self._value(b.value.args[0]), self.relax.Var):  # input: boundary
                    self.declined.append({"var": b.var.name, "reason": str(e)})
            except Exception as e:  # a rule's bug costs the integer form, never the build
                reason = f"internal error {type(e).__name__}: {str(e)[-200:]}"
                self.declined.append({"var": b.var.name, "reason": reason})
        if new is None:
            value = self._sub(b.value)
            local = (
                isinstance(b.var, self.relax.DataflowVar) or not self.bb.current_block_is_dataflow()
            )
            new = self.bb.emit(value) if local else value
            self.origin[new] = b.var
        return new

    def _sub(self, expr):
        relax = self.relax
        if isinstance(expr, relax.Var):
            return self.map.get(expr, expr)
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self._sub(f) for f in expr.fields])
        if isinstance(expr, relax.TupleGetItem):
            return relax.TupleGetItem(self._sub(expr.tuple_value), expr.index)
        if isinstance(expr, relax.Call):
            return relax.Call(expr.op, [self._sub(a) for a in expr.args], expr.attrs,
                              expr.ty_args)  # fmt: skip
        return expr

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _op(expr) -> str | None:
        from tvm import relax

        if isinstance(expr, relax.Call) and hasattr(expr.op, "name"):
            return str(expr.op.name)
        return None

    def _value(self, expr):
        """The original value bound to a var (following vars), or the expr itself."""
        while isinstance(expr, self.relax.Var) and expr in self.orig:
            expr = self.orig[expr]
        return expr

    def _const(self, expr) -> np.ndarray | None:
        """A constant (folded through dequantize/reshape/permute_dims) as numpy, else None."""
        expr = self._value(expr)
        if isinstance(expr, self.tvm.ir.expr.Constant):
            return expr.value.numpy()
        op = self._op(expr)
        if op == "relax.dequantize":
            q = self._qconst(expr)
            return None if q is None else _dequant(q)
        if op == "relax.isnan":
            inner = self._const(expr.args[0])
            return None if inner is None else np.isnan(inner)
        if op == "relax.where":
            parts = [self._const(a) for a in expr.args]
            return None if any(p is None for p in parts) else np.where(*parts)
        if op in ("relax.reshape", "relax.permute_dims"):
            inner = self._const(expr.args[0])
            if inner is None:
                return None
            if op == "relax.reshape":
                return inner.reshape([int(d) for d in expr.ty.shape])
            axes = expr.attrs.axes
            return np.transpose(inner, [int(a) for a in axes] if axes is not None else None)
        return None

    def _qparams(self, call) -> tuple[np.ndarray, np.ndarray, int]:
        scale, zp = self._const(call.args[1]), self._const(call.args[2])
        if scale is None or zp is None:
            raise Decline("quantization parameters are not constants")
        return scale.astype(np.float64), zp.astype(np.int64), int(call.attrs.axis)

    def _qconst(self, dq) -> QTensor | None:
        data = self._value(dq.args[0])
        if not isinstance(data, self.tvm.ir.expr.Constant):
            return None
        scale, zp, axis = self._qparams(dq)
        q = data.value.numpy()
        return QTensor(q, scale, zp, axis, str(q.dtype))

    def _qin(self, expr) -> QTensor:
        """The quantized tensor behind a float input (a dequantize of an integer tensor)."""
        value = self._value(expr)
        if self._op(value) != "relax.dequantize":
            raise Decline(f"input {getattr(expr, 'name', '?')} is not dequantized")
        data = value.args[0]
        if isinstance(self._value(data), self.tvm.ir.expr.Constant):
            raise Decline("a constant operand where an activation was expected")
        scale, zp, axis = self._qparams(value)
        dtype = _dtype(data)
        if dtype not in QRANGE:
            raise Decline(f"quantized type {dtype}")
        if scale.size != 1 or zp.size != 1:
            raise Decline("per-channel activation quantization")
        return QTensor(self._sub(data), scale, zp, axis, dtype)

    def _emit(self, expr):
        return self.bb.emit(expr)

    def _c(self, value, dtype: str):
        return self.relax.const(np.asarray(value).astype(dtype), dtype)

    def _as_u8(self, x: QTensor) -> tuple[object, int]:
        """The activation as uint8 and its zero point (int8 + 128: the same real values)."""
        if x.dtype == "uint8":
            return x.data, x.zp_scalar
        R = self.R
        shifted = self._emit(R.add(self._emit(R.astype(x.data, "int32")), self._c(128, "int32")))
        return self._emit(R.astype(shifted, "uint8")), x.zp_scalar + 128

    def _as_dot(self, x: QTensor, dense: bool = True) -> tuple[object, int]:
        """The activation operand of a dot-product kernel: int8 on sdot targets
        (``signed_conv``; grouped convs excepted: no sdot template), else uint8."""
        return self._as_s8(x) if self.signed_conv and dense else self._as_u8(x)

    def _as_s8(self, x: QTensor) -> tuple[object, int]:
        """The activation as int8 and its zero point (uint8 - 128: the same real values)."""
        if x.dtype == "int8":
            return x.data, x.zp_scalar
        R = self.R
        wide = self._emit(R.astype(x.data, "int32"))
        shifted = self._emit(R.subtract(wide, self._c(128, "int32")))
        return self._emit(R.astype(shifted, "int8")), x.zp_scalar - 128

    def _requant(self, terms, zp: int, dtype: str, lo=None, hi=None, bounds=None):
        """``terms``: (int32 expr, real multiplier: scalar or per-channel array broadcast to the
        expr); emits the dyadic requantization of their sum to ``dtype``, in int32 where the
        terms' ``bounds`` allow it (``requant_multipliers``), else in int64."""
        R = self.R
        ms, n, narrow = requant_multipliers([np.asarray(r) for _, r in terms], bounds)
        wide = "int32" if narrow else "int64"
        total = None
        for (x, _), m in zip(terms, ms, strict=True):
            xw = x if narrow else self._emit(R.astype(x, "int64"))
            prod = self._emit(R.multiply(xw, self._c(m, wide)))
            total = prod if total is None else self._emit(R.add(total, prod))
        rounding = np.left_shift(np.int64(1), n - 1)
        total = self._emit(R.add(total, self._c(rounding, wide)))
        total = self._emit(R.right_shift(total, self._c(n, wide)))
        total = self._emit(R.add(total, self._c(zp, wide)))
        qmin, qmax = QRANGE[dtype]
        lo = qmin if lo is None else max(qmin, lo)
        hi = qmax if hi is None else min(qmax, hi)
        total = self._emit(R.clip(total, self.relax.prim_value(lo), self.relax.prim_value(hi)))
        return self._emit(R.astype(total, dtype))

    # --- the rules --------------------------------------------------------------------------

    def _quantize(self, q):
        scale, zp, _ = self._qparams(q)
        if scale.size != 1 or zp.size != 1:
            raise Decline("per-channel output quantization")
        out = QTensor(None, scale, zp, 0, str(q.attrs.out_dtype))
        if out.dtype not in QRANGE:
            raise Decline(f"output type {out.dtype}")
        y = self._value(q.args[0])
        lo = hi = None
        bounds = self._activations(y)  # relu / clip / max / min with constant bounds
        if bounds is not None:
            act = "nn.relu" if self._op(y) == "relax.nn.relu" else "clip"
            y, real_lo, real_hi = bounds
            if self._op(y) == "relax.dequantize":
                self.lowered.append(act)
                return self._clamp(self._qin(y), out, real_lo, real_hi)
            if self._op(y) not in ("relax.add", *_ANCHORS):
                raise Decline(f"an activation after {self._op(y)}")
            # Q is monotone: Q(clip(v, a, b)) = clip(Q(v), Q(a), Q(b)), a clamp of the requant
            lo = None if real_lo == -np.inf else self._q(real_lo, out)
            hi = None if real_hi == np.inf else self._q(real_hi, out)
        op = self._op(y)
        rules = {
            "relax.add": self._add, "relax.nn.conv2d": self._conv, "relax.matmul": self._matmul,
            "relax.nn.conv2d_transpose": self._conv_transpose,
            "relax.concat": self._concat, "relax.nn.max_pool2d": self._max_pool,
            "relax.nn.avg_pool2d": self._avg_pool, "relax.mean": self._mean,
        }  # fmt: skip
        kind = op
        if op == "relax.add":
            anchors = [self._op(self._value(a)) for a in y.args]
            kind = next((a for a in anchors if a in _ANCHORS), op)
        if op in _LAYOUT_OPS:
            result = self._layout(y, out)
        elif op in rules:
            result = rules[op](y, out, lo, hi)
        elif op == "relax.dequantize":
            result = self._identity(self._qin(y), out)
        else:
            raise Decline(f"{(op or 'a graph input').removeprefix('relax.')} has no integer form")
        self.lowered.append(kind.removeprefix("relax."))
        return result

    @staticmethod
    def _q(value: float, out: QTensor) -> int:
        return int(np.round(value / out.scale_scalar)) + out.zp_scalar

    def _activations(self, y) -> tuple[object, float, float] | None:
        """Peel relu, clip and elementwise max/min with a constant scalar bound (how the
        importer writes Clip with tensor bounds) off ``y``: (inner value, real lo, real hi)."""
        lo, hi, peeled = -np.inf, np.inf, False
        while True:
            op = self._op(y)
            if op == "relax.nn.relu":
                lo, y = max(lo, 0.0), self._value(y.args[0])
            elif op == "relax.clip":
                a, b = (float(v.value) for v in y.args[1:3])
                lo, hi, y = max(lo, a), min(hi, b), self._value(y.args[0])
            elif op == "relax.call_tir" and y.args[0].name_hint.rstrip("0123456789") in (
                "maximum", "minimum",
            ):  # fmt: skip
                args = list(y.args[1].fields) if isinstance(y.args[1], self.relax.Tuple) else []
                bound = self._const(args[1]) if len(args) == 2 else None
                if bound is None or bound.size != 1:
                    break
                if y.args[0].name_hint.startswith("maximum"):
                    lo = max(lo, float(bound.reshape(-1)[0]))
                else:
                    hi = min(hi, float(bound.reshape(-1)[0]))
                y = self._value(args[0])
            else:
                break
            peeled = True
        return (y, lo, hi) if peeled else None

    def _identity(self, x: QTensor, out: QTensor, data=None):
        """Re-quantize ``x`` (or ``data`` with x's parameters) to ``out``'s parameters."""
        data = x.data if data is None else data
        same = (x.zp_scalar == out.zp_scalar and x.scale_scalar == out.scale_scalar
                and x.dtype == out.dtype)  # fmt: skip
        if same:
            return data
        centered = self._emit(
            self.R.subtract(self._emit(self.R.astype(data, "int32")), self._c(x.zp_scalar, "int32"))
        )
        return self._requant([(centered, x.scale_scalar / out.scale_scalar)], out.zp_scalar,
                             out.dtype)  # fmt: skip

    def _layout(self, y, out: QTensor):
        x = self._qin(y.args[0])
        moved = self._emit(self.relax.Call(y.op, [x.data, *map(self._sub, y.args[1:])], y.attrs,
                                           y.ty_args))  # fmt: skip
        return self._identity(x, out, moved)

    def _clamp(self, x: QTensor, out: QTensor, real_lo: float, real_hi: float):
        """Q(clip(DQ(x), lo, hi)): x clamped to the codes whose real value is in [lo, hi]."""
        qmin, qmax = QRANGE[x.dtype]
        a, b = qmin, qmax
        if real_lo > -np.inf:
            a = max(qmin, int(np.ceil(real_lo / x.scale_scalar + x.zp_scalar)))
        if real_hi < np.inf:
            b = min(qmax, int(np.floor(real_hi / x.scale_scalar + x.zp_scalar)))
        clamped = self._emit(
            self.R.clip(x.data, self.relax.prim_value(a), self.relax.prim_value(b))
        )
        return self._identity(x, out, clamped)

    def _centered(self, x: QTensor):
        R = self.R
        return self._emit(R.subtract(self._emit(R.astype(x.data, "int32")),
                                     self._c(x.zp_scalar, "int32")))  # fmt: skip

    def _add(self, y, out: QTensor, lo=None, hi=None):
        anchors = {"relax.nn.conv2d": self._conv, "relax.matmul": self._matmul,
                   "relax.nn.conv2d_transpose": self._conv_transpose}  # fmt: skip
        for i in (0, 1):
            anchor = self._value(y.args[i])
            if self._op(anchor) in anchors:
                try:  # conv/matmul + bias
                    return anchors[self._op(anchor)](anchor, out, lo, hi, bias=y.args[1 - i])
                except Decline:
                    if self._const(y.args[1 - i]) is not None:
                        raise
        terms = [self._term(y.args[0], out), self._term(y.args[1], out)]
        return self._requant([t[:2] for t in terms], out.zp_scalar, out.dtype, lo, hi,
                             bounds=[t[2] for t in terms])  # fmt: skip

    def _term(self, expr, out: QTensor):
        """An addend as (int32 expr, real multiplier to ``out``, bound on its magnitude): a
        quantized activation centred on its zero point, or a constant (a position embedding) as
        integers: its own codes if it is a per-tensor dequantized constant, else quantized at
        compile time to 16 bits (the sum is exact up to that rounding)."""
        value = self._const(expr)
        if value is None:
            q = self._qin(expr)
            return self._centered(q), q.scale_scalar / out.scale_scalar, 255
        dq = self._value(expr)
        q = self._qconst(dq) if self._op(dq) == "relax.dequantize" else None
        if q is not None and q.per_tensor:
            ints, scale = q.data.astype(np.int64) - q.zp_scalar, q.scale_scalar
        else:
            scale = float(np.abs(value).max()) / 32767 or 1.0
            ints = np.round(value.astype(np.float64) / scale).astype(np.int64)
        return self._c(ints, "int32"), scale / out.scale_scalar, int(np.abs(ints).max(initial=0))

    def _concat(self, y, out: QTensor, lo=None, hi=None):
        fields = self._value(y.args[0])
        if not isinstance(fields, self.relax.Tuple):
            raise Decline("concat of a non-tuple")
        parts = []
        for f in fields.fields:
            value = self._const(f)  # a constant part (a class token): quantized at compile time
            if value is None:
                parts.append(self._identity(self._qin(f), out))
                continue
            qmin, qmax = QRANGE[out.dtype]
            codes = np.clip(np.round(value / out.scale_scalar) + out.zp_scalar, qmin, qmax)
            parts.append(self._c(codes, out.dtype))
        return self._emit(self.R.concat(parts, axis=int(y.attrs.axis)))

    def _max_pool(self, y, out: QTensor, lo=None, hi=None):
        x = self._qin(y.args[0])
        pooled = self._emit(self.relax.Call(y.op, [x.data], y.attrs, y.ty_args))
        return self._identity(x, out, pooled)

    def _pool_sum(self, x: QTensor, pool, strides, padding, channels: int):
        """Window sums as a depthwise conv with ones (padding counts as the zero point)."""
        data, zx = self._as_u8(x)
        if any(padding):
            data = self._pad(data, padding, zx)
        ones = np.ones((channels, 1, *pool), np.int8)
        acc = self._emit(self.R.nn.conv2d(data, self.relax.const(ones), strides=strides,
                                          groups=channels, out_dtype="int32"))  # fmt: skip
        return acc, zx

    def _avg_pool(self, y, out: QTensor, lo=None, hi=None):
        a = y.attrs
        if [int(d) for d in a.dilation] != [1, 1] or bool(a.ceil_mode) or str(a.layout) != "NCHW":
            raise Decline("avg_pool2d with dilation, ceil_mode or a non-NCHW layout")
        padding = [int(p) for p in a.padding]
        if any(padding) and not bool(a.count_include_pad):
            raise Decline("avg_pool2d with padding not counted (per-position divisors)")
        x = self._qin(y.args[0])
        pool = [int(p) for p in a.pool_size]
        acc, zx = self._pool_sum(x, pool, [int(s) for s in a.strides], padding,
                                 int(y.args[0].ty.shape[1]))  # fmt: skip
        count = pool[0] * pool[1]
        centered = self._emit(self.R.subtract(acc, self._c(count * zx, "int32")))
        return self._requant([(centered, x.scale_scalar / (out.scale_scalar * count))],
                             out.zp_scalar, out.dtype, lo, hi)  # fmt: skip

    def _mean(self, y, out: QTensor, lo=None, hi=None):
        x = self._qin(y.args[0])
        shape = [int(d) for d in y.args[0].ty.shape]
        axes = [int(a) % len(shape) for a in y.attrs.axis]
        count = int(np.prod([shape[a] for a in axes]))
        if count >= 2**23:
            raise Decline("mean over too many elements for an int32 sum")
        wide = self._emit(self.R.astype(x.data, "int32"))
        acc = self._emit(self.R.sum(wide, axes, keepdims=bool(y.attrs.keepdims)))
        centered = self._emit(self.R.subtract(acc, self._c(count * x.zp_scalar, "int32")))
        return self._requant([(centered, x.scale_scalar / (out.scale_scalar * count))],
                             out.zp_scalar, out.dtype, lo, hi)  # fmt: skip

    def _pad(self, data, padding: list[int], value: int, channels: int = 0):
        top, left, bottom, right = padding
        return self._emit(self.R.nn.pad(data, [0, 0, 0, channels, top, bottom, left, right],
                                        pad_value=float(value)))  # fmt: skip

    def _weight(self, expr) -> QTensor:
        w = self._value(expr)
        if self._op(w) != "relax.dequantize":
            raise Decline("the weight is not a dequantized constant")
        q = self._qconst(w)
        if q is None:
            raise Decline("the weight is not a constant")
        if q.dtype != "int8":
            raise Decline(f"weight type {q.dtype}")
        if np.any(q.zp != 0):
            raise Decline("weight zero point is not 0")
        return q

    def _bias(self, bias, channels: int, acc_scale: np.ndarray) -> np.ndarray:
        """The bias in the accumulator's units (int64, per output channel)."""
        if bias is None:
            return np.zeros(channels, np.int64)
        value = self._const(bias)
        if value is None:
            raise Decline("the bias is not a constant")
        value = np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,))
        return np.round(value / acc_scale).astype(np.int64)

    def _conv(self, conv, out: QTensor, lo=None, hi=None, bias=None):
        a = conv.attrs
        if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
            raise Decline("conv2d layout is not NCHW/OIHW")
        x, w = self._qin(conv.args[0]), self._weight(conv.args[1])
        channels = w.data.shape[0]
        w_scale = np.broadcast_to(w.scale.reshape(-1), (channels,))
        acc_scale = x.scale_scalar * w_scale
        bias_int = self._bias(bias, channels, acc_scale)
        data, zx = self._as_dot(x, dense=int(a.groups) == 1)
        padding = [int(p) for p in a.padding]
        wq = w.data
        extra = -wq.shape[1] % CHANNEL_GROUP if int(a.groups) == 1 else 0
        taps = -wq.shape[3] % CHANNEL_GROUP
        if (
            extra
            and not self.signed_conv
            and wq.shape[1] * (wq.shape[3] + taps) < (wq.shape[1] + extra) * wq.shape[3]
        ):  # e.g. a 3-channel 7x7 stem: words of 4 taps of a row, not 4 channels
            wq = np.pad(wq, [(0, 0), (0, 0), (0, 0), (0, taps)])  # zero taps on the right
            padding[3] += taps  # (reading zero-point columns: the output width is unchanged)
            extra = 0
        elif extra:  # zero weights on zero-point channels: the dot-product kernels take C % 4 == 0
            wq = np.pad(wq, [(0, 0), (0, extra), (0, 0), (0, 0)])
        if any(padding) or extra:
            data = self._pad(data, padding, zx, extra)
        strides = [int(s) for s in a.strides]
        if wq.shape[2:] == (1, 1) and strides != [1, 1] and not any(padding):
            # a strided 1x1 conv reads every s-th pixel: slice them first, so the kernel's
            # per-call input copy (edgec.lower.int8) covers 1/s^2 of the input, not all of it
            data = self._emit(self.R.strided_slice(
                data, axes=[2, 3], begin=[0, 0], end=[int(d) for d in data.ty.shape][2:],
                strides=strides))  # fmt: skip
            strides = [1, 1]
        acc = self._emit(self.R.nn.conv2d(
            data, self.relax.const(wq), strides=strides,
            dilation=[int(d) for d in a.dilation], groups=int(a.groups), out_dtype="int32",
        ))  # fmt: skip
        wsum = w.data.astype(np.int64).reshape(channels, -1).sum(axis=1)
        offset = bias_int - zx * wsum
        if np.any(np.abs(offset) >= 2**31):
            raise Decline("bias out of the int32 range")
        acc = self._emit(self.R.add(acc, self._c(offset.reshape(1, -1, 1, 1), "int32")))
        real = (acc_scale / out.scale_scalar).reshape(1, -1, 1, 1)
        return self._requant([(acc, real)], out.zp_scalar, out.dtype, lo, hi)

    def _conv_transpose(self, conv, out: QTensor, lo=None, hi=None, bias=None):
        """Exact but plain: int32 transposed convolution of ``x - zx`` (the zero point cannot
        be folded into a bias: the number of taps per output varies)."""
        a = conv.attrs
        if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "IOHW" or int(a.groups) != 1:
            raise Decline("conv2d_transpose: only NCHW/IOHW, groups = 1")
        x, w = self._qin(conv.args[0]), self._weight(conv.args[1])
        channels = w.data.shape[1]
        if w.scale.size > 1 and w.axis % 4 != 1:
            raise Decline("conv2d_transpose weight not quantized per output channel (axis 1)")
        w_scale = np.broadcast_to(w.scale.reshape(-1), (channels,))
        acc_scale = x.scale_scalar * w_scale
        bias_int = self._bias(bias, channels, acc_scale)
        acc = self._emit(self.R.nn.conv2d_transpose(
            self._centered(x), self.relax.const(w.data.astype(np.int32)),
            strides=[int(v) for v in a.strides], padding=[int(v) for v in a.padding],
            output_padding=[int(v) for v in a.output_padding],
            dilation=[int(v) for v in a.dilation], out_dtype="int32",
        ))  # fmt: skip
        acc = self._emit(self.R.add(acc, self._c(bias_int.reshape(1, -1, 1, 1), "int32")))
        real = (acc_scale / out.scale_scalar).reshape(1, -1, 1, 1)
        return self._requant([(acc, real)], out.zp_scalar, out.dtype, lo, hi)

    def _matmul_act(self, mm, out: QTensor, lo=None, hi=None, bias=None):
        """Two quantized activations (attention): u8 x s8 -> s32 like the weight matmuls (so
        the dot-product kernels apply; s8 x s8 on sdot targets), exactly. With ``a`` as uint8
        (zero point ``za``; int8 on sdot targets) and ``b' = b - 128`` as int8 for a uint8 ``b``
        (``b`` itself for int8; ``d = 128 - zb`` resp. ``-zb``):
        ``sum (a - za)(b - zb) = a @ b' + d * rowsum(a) - za * colsum(b') - za * d * K``."""
        R = self.R
        qa, bexpr = self._qin(mm.args[0]), self._value(mm.args[1])
        transposed = self._op(bexpr) == "relax.permute_dims"
        qb = self._qin(bexpr.args[0] if transposed else mm.args[1])
        a, za = self._as_dot(qa)
        b, zb = self._as_s8(qb)
        d = -zb
        if transposed:
            b = self._emit(self.relax.Call(bexpr.op, [b], bexpr.attrs))
        k = int(mm.args[0].ty.shape[-1])
        acc = self._emit(R.matmul(a, b, out_dtype="int32"))
        if d:
            rows = self._emit(R.sum(self._emit(R.astype(a, "int32")), [-1], keepdims=True))
            acc = self._emit(R.add(acc, self._emit(R.multiply(rows, self._c(d, "int32")))))
        if za:
            cols = self._emit(R.sum(self._emit(R.astype(b, "int32")), [-2], keepdims=True))
            acc = self._emit(R.subtract(acc, self._emit(R.multiply(cols, self._c(za, "int32")))))
        if za * d:
            acc = self._emit(R.subtract(acc, self._c(za * d * k, "int32")))
        scale = qa.scale_scalar * qb.scale_scalar
        n = int(mm.ty.shape[-1])
        if bias is not None:
            acc = self._emit(R.add(acc, self._c(self._bias(bias, n, np.full(n, scale)), "int32")))
        return self._requant([(acc, scale / out.scale_scalar)], out.zp_scalar, out.dtype, lo, hi)

    def _matmul(self, mm, out: QTensor, lo=None, hi=None, bias=None):
        if self._const(mm.args[1]) is None:
            return self._matmul_act(mm, out, lo, hi, bias)
        x = self._qin(mm.args[0])
        wexpr = self._value(mm.args[1])
        if self._op(wexpr) == "relax.permute_dims":
            axes = wexpr.attrs.axes
            w = self._weight(wexpr.args[0])
            if w.data.ndim != 2:
                raise Decline("transposed weight is not 2-D")
            if axes is not None and [int(i) for i in axes] != [1, 0]:
                raise Decline("weight permutation is not a transpose")
            wq, w_axis = w.data.T, 1 - (w.axis % 2)
        else:
            w = self._weight(wexpr)
            if w.data.ndim != 2:
                raise Decline("matmul weight is not 2-D")
            wq, w_axis = w.data, w.axis % 2
        k, n = wq.shape
        if w.scale.size == 1:
            w_scale = np.full(n, float(w.scale.reshape(-1)[0]))
        elif w_axis == 1:
            w_scale = w.scale.reshape(-1).astype(np.float64)
        else:
            raise Decline("weight quantized per input channel")
        acc_scale = x.scale_scalar * w_scale
        bias_int = self._bias(bias, n, acc_scale)
        data, zx = self._as_dot(x)
        acc = self._emit(self.R.matmul(data, self.relax.const(np.ascontiguousarray(wq)),
                                       out_dtype="int32"))  # fmt: skip
        offset = bias_int - zx * wq.astype(np.int64).sum(axis=0)
        acc = self._emit(self.R.add(acc, self._c(offset, "int32")))
        return self._requant([(acc, acc_scale / out.scale_scalar)], out.zp_scalar, out.dtype,
                             lo, hi)  # fmt: skip


def _dequant(q: QTensor) -> np.ndarray:
    scale, zp = q.scale, q.zp
    if scale.size > 1:
        shape = [1] * q.data.ndim
        shape[q.axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q.data.astype(np.float64) - zp) * scale
