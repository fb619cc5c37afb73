"""I-ViT rewrites of a QDQ graph: non-linear islands become integer-only ``ai.edgec`` nodes.

Input: an ONNX model in QDQ form (``onnxruntime.quantization.quantize_static``): every
activation between ``QuantizeLinear`` / ``DequantizeLinear`` pairs. An *island* is the float
subgraph from one ``DequantizeLinear`` (per-tensor, 8/16-bit codes ``x_q``) to the single
``QuantizeLinear`` that ends it, made of elementwise ops with constant operands, interior
Q->DQ pairs, and last-axis row ops (Softmax, LayerNormalization, ReduceMean, Sqrt). Each island
is classified by what it computes, the constants are fitted offline on the island itself, and
it is replaced by one node of the ``ai.edgec`` domain that maps codes to codes:

* ``Shiftmax``: ``DQ -> Softmax(last axis) -> Q``.
* ``ShiftGELU``: any island containing Erf, Tanh or Gelu that computes ``k * GELU(x)`` (the
  erf pattern of PyTorch's export, the tanh approximation, the Gelu op, and the form whose
  trailing ``* 0.5`` fuse_batchnorm moved into the next MatMul: k = 1 there).
* ``ILayerNorm``: an island computing ``gamma * (x - mean) / std + beta`` over the last axis
  (the LayerNormalization op or its ReduceMean/Sub/Pow/Sqrt/Div decomposition); gamma and beta
  are fitted per channel by least squares on the island's own outputs.
* ``Requantize``: an island that only scales (Mul/Div by constants: the attention
  temperature), folded into one dyadic requantization.
* ``QAdd``: ``Add(DQ(a), DQ(b)) -> Q`` of two activations (residual adds): each branch is
  requantized to the output scale with its own (b, c) (I-ViT's residual QuantAct).

The integer semantics of every node are those of ``edgec.quant.intops``; ``evaluate`` runs a
rewritten model in numpy (onnx's reference evaluator plus these kernels), which is how a rewrite
is verified (onnxruntime cannot run the custom nodes): ``verify`` compares it with the QDQ model
in onnxruntime and reports, per rewritten island, the error of the integer kernel on the QDQ
model's own input codes. ``edgec.lower.ivit`` converts the nodes to TVM kernels, bit-exact with
this module.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgec.quant import intops

DOMAIN = "ai.edgec"
OPS = ("Shiftmax", "ShiftGELU", "ILayerNorm", "Requantize", "QAdd")

_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Erf", "Tanh", "Pow", "Sigmoid", "Gelu", "Sqrt"}
_ROW_OPS = {"Softmax", "LayerNormalization", "ReduceMean"}
_CODE_TYPES = {
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.UINT16: "uint16",
}


@dataclasses.dataclass(frozen=True)
class Options:
    """Integer variants (ivit.md 7); defaults favour accuracy for calibrated (not QAT) scales."""

    shiftmax_bits: int = 16  # 16 (ViT/DeiT) or 8 (Swin / the official TVM graph)
    shiftmax_shift: bool = True  # more bits for x0 on coarse logits (intops.shiftmax_params)
    gelu_division_bits: int = 62  # 31: official QAT simulation; 62: int64 division
    gelu_offset: str = "element"  # "row_max": official; "element": no 2^-23 floor collapse
    sqrt_start: str = "bitlen"  # "fixed": official 2^16 start; "bitlen": exact for small var


# ------------------------------------------------------------------ graph access


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        self.shapes: dict[str, list[int]] = {}
        for vi in list(inferred.graph.value_info) + list(g.input) + list(g.output):
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                self.shapes[vi.name] = [d.dim_value for d in dims]

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor: initializer, Constant node, or DQ of a constant."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        if node.op_type == "Identity":
            return self.const(node.input[0])
        if node.op_type == "QuantizeLinear":
            v = self.const(node.input[0])
            s, z, _ = self.qparams(node)
            dtype = self.code_type(node)
            if v is None or s is None or s.size != 1 or dtype is None:
                return None
            info = np.iinfo(dtype)
            codes = np.rint(v.astype(np.float32) / np.float32(s.item())) + z.item()
            return np.clip(codes, info.min, info.max).astype(dtype)
        if node.op_type == "DequantizeLinear" and self.const(node.input[0]) is not None:
            q = np.asarray(self.const(node.input[0]))
            s, z, axis = self.qparams(node)
            if s is None:
                return None
            if np.ndim(s) == 1 and s.size > 1:
                shape = [1] * q.ndim
                shape[axis if -q.ndim <= axis < q.ndim else 0] = -1
                s, z = s.reshape(shape), z.reshape(shape)
            return ((q.astype(np.float64) - z) * s).astype(np.float32)
        return None

    def qparams(self, node: onnx.NodeProto):
        """(scale, zero point, axis) of a Q/DQ node with constant parameters, else Nones."""
        s = self.const(node.input[1])
        z = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if s is None:
            return None, None, None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        z = np.zeros_like(s, dtype=np.int64) if z is None else z.astype(np.int64)
        return s.astype(np.float64), z, axis

    def code_type(self, node: onnx.NodeProto) -> str | None:
        """Element type of the codes of a Q node (from its zero point), default uint8."""
        if len(node.input) > 2 and node.input[2]:
            zp = self.inits.get(node.input[2])
            if zp is None:
                p = self.producer.get(node.input[2])
                if p is None or p.op_type != "Constant":
                    return None
                return _CODE_TYPES.get(p.attribute[0].t.data_type)
            return _CODE_TYPES.get(zp.data_type)
        to = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
        return _CODE_TYPES.get(to or onnx.TensorProto.UINT8)


@dataclasses.dataclass
class _Island:
    dq: onnx.NodeProto  # the DequantizeLinear reading the input codes
    nodes: list[onnx.NodeProto]  # float nodes (and interior Q/DQ), topological order
    q: onnx.NodeProto  # the terminal QuantizeLinear

    @property
    def ops(self) -> set[str]:
        return {n.op_type for n in self.nodes}


def _scalar(v: np.ndarray | None) -> bool:
    return v is not None and v.size == 1


def _last_axis(g: _Graph, node: onnx.NodeProto, rank: int | None) -> bool:
    if node.op_type == "ReduceMean":
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        if len(node.input) > 1 and node.input[1]:  # opset >= 18: axes as an input
            value = g.const(node.input[1])
            axes = None if value is None else [int(v) for v in value.ravel()]
        keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        if not axes or len(axes) != 1 or not keep:
            return False
        axis = axes[0]
    else:
        default = -1 if node.op_type in ("Softmax", "LayerNormalization") else 0
        axis = next((a.i for a in node.attribute if a.name == "axis"), default)
    return axis == -1 or (rank is not None and axis == rank - 1)


def _find_island(g: _Graph, dq: onnx.NodeProto) -> _Island | str:
    """The island starting at ``dq``, or why there is none."""
    x = dq.output[0]
    rank = len(g.shapes[x]) if x in g.shapes else None
    inside = {x}
    nodes: list[onnx.NodeProto] = []
    seen: set[int] = set()
    terminals: list[onnx.NodeProto] = []
    changed = True
    while changed:
        changed = False
        for t in list(inside):
            for n in g.consumers.get(t, []):
                if id(n) in seen:
                    continue
                other = [i for i in n.input if i and i not in inside]
                op = n.op_type
                if op == "QuantizeLinear":
                    if n.input[0] not in inside:
                        continue
                    seen.add(id(n))
                    nodes.append(n)
                    outs = g.consumers.get(n.output[0], [])
                    bias_like = not any(m.op_type in _ROW_OPS for m in nodes) and any(
                        not _scalar(g.const(i))
                        for m in nodes
                        for i in m.input
                        if m.op_type in ("Add", "Sub", "Mul", "Div") and g.const(i) is not None
                    )  # a per-channel bias or scale ends the island (a Linear's epilogue)
                    interior = (
                        not bias_like
                        and outs
                        and n.output[0] not in g.outputs
                        and all(
                            c.op_type == "DequantizeLinear"
                            and all(
                                cc.op_type in _ELEMENTWISE | _ROW_OPS | {"QuantizeLinear"}
                                for cc in g.consumers.get(c.output[0], [])
                            )
                            and c.output[0] not in g.outputs
                            for c in outs
                        )
                    )
                    if interior:
                        for c in outs:
                            seen.add(id(c))
                            nodes.append(c)
                            inside.add(c.output[0])
                    else:
                        terminals.append(n)
                    changed = True
                    continue
                allowed = op in _ELEMENTWISE or (op in _ROW_OPS and _last_axis(g, n, rank))
                if not allowed:
                    continue
                if any(g.const(i) is None for i in other):
                    continue  # an operand from outside (or not reached yet: a later round)
                if op in ("Add", "Sub", "Mul", "Div", "Pow") and not all(
                    _scalar(g.const(i)) or np.ndim(g.const(i)) <= 1 for i in other
                ):
                    return f"{n.name or op}: constant operand is not per channel (last axis)"
                seen.add(id(n))
                nodes.append(n)
                inside.update(o for o in n.output if o)
                changed = True
    if not nodes:
        return "no float ops after the DequantizeLinear"
    if len(terminals) != 1:
        return f"{len(terminals)} QuantizeLinear outputs (need exactly 1)"
    members = {id(n) for n in nodes}
    for n in nodes:
        if n is terminals[0]:
            continue
        for o in n.output:
            if o in g.outputs or any(id(c) not in members for c in g.consumers.get(o, [])):
                return f"{n.name or n.op_type}: output {o!r} is used outside the island"
    # topological order of the island
    order, done = [], {x}
    pending = list(nodes)
    while pending:
        ready = [
            n for n in pending if all(i in done or g.const(i) is not None for i in n.input if i)
        ]
        if not ready:
            return "island has an input from outside"
        for n in ready:
            order.append(n)
            done.update(n.output)
            pending.remove(n)
    return _Island(dq, order, terminals[0])


# ------------------------------------------------------------------ island evaluation (ORT)


def _island_model(g: _Graph, isl: _Island, x_shape, x_type: int) -> onnx.ModelProto:
    members = [isl.dq, *isl.nodes]
    inits: dict[str, onnx.TensorProto] = {}
    consts: list[onnx.NodeProto] = []  # constant subgraphs feeding the island (DQ(Q(Constant)))

    def need(name: str) -> None:
        if not name or name == isl.dq.input[0] or name in inits:
            return
        if name in g.inits:
            inits[name] = g.inits[name]
            return
        p = g.producer.get(name)
        if p is not None and all(p is not m for m in members + consts):
            consts.insert(0, p)
            for i in p.input:
                need(i)

    for n in members:
        for i in n.input:
            need(i)
    out_type = {v: k for k, v in _CODE_TYPES.items()}[g.code_type(isl.q)]
    graph = helper.make_graph(
        [*consts, *members],
        "island",
        [helper.make_tensor_value_info(isl.dq.input[0], x_type, list(x_shape))],
        [
            helper.make_tensor_value_info(isl.q.input[0], onnx.TensorProto.FLOAT, None),
            helper.make_tensor_value_info(isl.q.output[0], out_type, None),
        ],
        list(inits.values()),
    )
    m = helper.make_model(graph, opset_imports=list(g.model.opset_import))
    m.ir_version = min(g.model.ir_version, 9)
    return m


def _run_island(g: _Graph, isl: _Island, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from edgec import verify

    tp = helper.np_dtype_to_tensor_dtype(x.dtype)
    out = verify.run_onnxruntime(_island_model(g, isl, x.shape, tp), {isl.dq.input[0]: x})
    return out[isl.q.input[0]], out[isl.q.output[0]]


def _gelu(v: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * v * (1.0 + erf(v / math.sqrt(2.0)))


# ------------------------------------------------------------------ the rewrite


@dataclasses.dataclass
class Rewrite:
    model: onnx.ModelProto
    stats: dict[str, int]
    declined: list[str]
    islands: list[dict]  # per new node: op, name, output, inputs, fit residual


def rewrite(model: onnx.ModelProto, options: Options = Options()) -> Rewrite:
    """Replace every recognised island of a QDQ model by an ``ai.edgec`` node."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = _Graph(model)
    stats = dict.fromkeys(OPS, 0)
    declined: list[str] = []
    islands: list[dict] = []
    remove: set[int] = set()
    add: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []  # (new node, insert before)
    claimed: set[int] = set()

    for node in list(model.graph.node):
        if node.op_type != "DequantizeLinear" or g.const(node.input[0]) is not None:
            continue
        if id(node) in claimed:  # an interior Q->DQ pair of an island found already
            continue
        s, z, _ = g.qparams(node)
        if s is None or s.size != 1:
            continue
        code = _CODE_TYPES.get(_elem_type(g, node.input[0]))
        if code is None:
            continue
        isl = _find_island(g, node)
        if isinstance(isl, str):
            if any(
                c.op_type in ("Softmax", "Erf", "Tanh", "Gelu", "LayerNormalization")
                for c in g.consumers.get(node.output[0], [])
            ):
                declined.append(f"{node.name or node.output[0]}: {isl}")
            continue
        if any(id(n) in claimed for n in isl.nodes):
            continue
        result = _classify(g, isl, float(s.item()), int(z.item()), code, options)
        if isinstance(result, str):
            if isl.ops - {"Add", "Sub", "Mul", "Div", "QuantizeLinear", "DequantizeLinear"}:
                declined.append(f"{isl.q.output[0]}: {result}")  # else: bias adds, not ours
            continue
        new_node, info = result
        add.append((new_node, isl.q))
        remove.update(id(n) for n in isl.nodes)
        claimed.update(id(n) for n in isl.nodes)
        stats[new_node.op_type] += 1
        islands.append(
            {"op": new_node.op_type, "name": new_node.name, "output": isl.q.output[0], **info}
        )

    for node in list(model.graph.node):  # after the islands: adds inside them are theirs
        if node.op_type == "Add" and id(node) not in claimed:
            new = _qadd(g, node)
            if isinstance(new, tuple):
                new_node, q = new
                add.append((new_node, q))
                remove.update({id(node), id(q)})
                claimed.update({id(node), id(q)})
                stats["QAdd"] += 1
                islands.append({"op": "QAdd", "name": new_node.name, "output": q.output[0]})

    nodes = []
    for n in model.graph.node:
        for new, before in add:
            if before is n:
                nodes.append(new)
        if id(n) not in remove:
            nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(_toposort(nodes, model))
    _remove_dead(model)
    if any(stats.values()) and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return Rewrite(model, stats, declined, islands)


def _elem_type(g: _Graph, name: str) -> int | None:
    p = g.producer.get(name)
    if p is not None and p.op_type == "QuantizeLinear":
        return {v: k for k, v in _CODE_TYPES.items()}.get(g.code_type(p))
    for vi in g.model.graph.input:
        if vi.name == name:
            return vi.type.tensor_type.elem_type
    return None


def _out_attrs(g: _Graph, q: onnx.NodeProto) -> dict | str:
    s, z, _ = g.qparams(q)
    if s is None or s.size != 1:
        return "output quantizer is not per-tensor"
    dtype = g.code_type(q)
    if dtype is None:
        return "unknown output code type"
    return {"out_scale": float(s.item()), "out_zero_point": int(z.item()), "out_dtype": dtype}


def _make(op: str, inputs: list[str], q: onnx.NodeProto, **attrs) -> onnx.NodeProto:
    name = f"ivit_{op}_{q.output[0]}"
    return helper.make_node(op, inputs, [q.output[0]], name=name, domain=DOMAIN, **attrs)


def _classify(g: _Graph, isl: _Island, scale: float, zp: int, code: str, opt: Options):
    out = _out_attrs(g, isl.q)
    if isinstance(out, str):
        return out
    ops = isl.ops - {"QuantizeLinear", "DequantizeLinear"}
    x_q = isl.dq.input[0]
    scalar = all(
        _scalar(g.const(i))
        for n in isl.nodes
        if n.op_type in ("Add", "Sub", "Mul", "Div", "Pow")
        for i in n.input
        if g.const(i) is not None
    )
    if not scalar and not ops & {"LayerNormalization", "ReduceMean"}:
        return "per-channel constants outside a LayerNorm"
    info = np.iinfo(code)
    if ops == {"Softmax"}:
        if len([n for n in isl.nodes if n.op_type == "Softmax"]) != 1:
            return "more than one Softmax"
        shift, n = intops.shiftmax_params(scale) if opt.shiftmax_shift else (0, intops.SHIFTMAX_N)
        node = _make(
            "Shiftmax", [x_q], isl.q, scale=scale, out_bits=opt.shiftmax_bits, shift=shift, n=n,
            **out,
        )  # fmt: skip
        return node, {"fit_residual": 0.0}
    if ops & {"Erf", "Tanh", "Gelu"}:
        codes = np.arange(info.min, info.max + 1).astype(code)
        z, _ = _run_island(g, isl, codes)
        ref = _gelu((codes.astype(np.float64) - zp) * scale)
        k = float(np.dot(z.ravel(), ref) / max(np.dot(ref, ref), 1e-30))
        resid = float(np.abs(z.ravel() - k * ref).max() / max(np.abs(k * ref).max(), 1e-30))
        if not (k > 0 and resid < 0.05):
            return f"elementwise island is not k*GELU (k={k:.3g}, residual {resid:.3g})"
        nice = 2.0 ** round(math.log2(k))  # 1, or 2 when fuse_batchnorm moved the * 0.5 out
        k = nice if abs(k / nice - 1) < 0.01 else k
        node = _make(
            "ShiftGELU", [x_q], isl.q, scale=scale, zero_point=zp, in_dtype=code, factor=k,
            division_bits=opt.gelu_division_bits, offset=opt.gelu_offset, **out,
        )  # fmt: skip
        return node, {"fit_residual": resid, "factor": k}
    if ops & {"LayerNormalization", "ReduceMean"}:
        shape = g.shapes.get(isl.dq.output[0])
        if not shape:
            return "unknown input shape"
        c = shape[-1]
        rng = np.random.default_rng(0)
        rows = 4 * c
        lo, hi = max(info.min, zp - 60), min(info.max, zp + 60)
        xs = rng.integers(lo, hi + 1, (rows, c)) + rng.integers(-40, 41, (rows, 1))
        xs = np.clip(xs, info.min, info.max).astype(code)
        z, _ = _run_island(g, isl, xs)
        xf = xs.astype(np.float64)
        norm = (xf - xf.mean(-1, keepdims=True)) / xf.std(-1, keepdims=True)
        gamma, beta = np.empty(c), np.empty(c)
        for j in range(c):  # z[:, j] = gamma_j * norm[:, j] + beta_j
            a = np.stack([norm[:, j], np.ones(rows)], 1)
            (gamma[j], beta[j]), *_ = np.linalg.lstsq(a, z[:, j].astype(np.float64), rcond=None)
        fit = norm * gamma + beta
        resid = float(np.abs(z - fit).max() / max(np.abs(z).max(), 1e-30))
        # the decomposed form quantizes var and std inside the island (ORT puts Q/DQ on them):
        # its own output then departs from an exact LayerNorm by up to ~15 %
        if resid > 0.25:
            return f"row island is not a LayerNorm (residual {resid:.3g})"
        gamma = np.where(np.abs(gamma) < 1e-12, 1e-12, gamma)
        bias, _ = intops.layernorm_bias(gamma, beta, c)
        if np.abs(bias).max() >= 2**31:
            return "LayerNorm beta/gamma too large for the integer bias (>= 2^31)"
        g_name, b_name = f"{isl.q.output[0]}_ivit_gamma", f"{isl.q.output[0]}_ivit_beta"
        g.model.graph.initializer.extend(
            [numpy_helper.from_array(gamma, g_name), numpy_helper.from_array(beta, b_name)]
        )
        node = _make(
            "ILayerNorm", [x_q, g_name, b_name], isl.q, scale=scale,
            sqrt_start=opt.sqrt_start, shift=max(0, 24 - 8 * np.dtype(code).itemsize), **out,
        )  # fmt: skip
        return node, {"fit_residual": resid}
    if ops <= {"Mul", "Div"}:
        codes = np.arange(info.min, info.max + 1).astype(code)
        z, _ = _run_island(g, isl, codes)
        x = (codes.astype(np.float64) - zp) * scale
        r = 1.0  # the exact factor: the product of the constants
        for n in isl.nodes:
            if n.op_type in ("Mul", "Div"):
                (c,) = [float(g.const(i).item()) for i in n.input if g.const(i) is not None]
                r = r * c if n.op_type == "Mul" else r / c
        resid = float(np.abs(z.ravel() - r * x).max() / max(np.abs(r * x).max(), 1e-30))
        if resid > 1e-2:
            return f"scaling island is not linear (residual {resid:.3g})"
        node = _make("Requantize", [x_q], isl.q, scale=scale * r, zero_point=zp, **out)
        return node, {"fit_residual": resid, "factor": r}
    return f"unrecognised island ops {sorted(ops)}"


def _qadd(g: _Graph, add: onnx.NodeProto):
    """``Add(DQ(a), DQ(b)) -> Q`` of two non-constant per-tensor activations."""
    outs = g.consumers.get(add.output[0], [])
    if len(outs) != 1 or outs[0].op_type != "QuantizeLinear" or add.output[0] in g.outputs:
        return None
    q = outs[0]
    attrs: dict = {}
    inputs = []
    for tag, name in zip("ab", add.input, strict=True):
        dq = g.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or g.const(dq.input[0]) is not None:
            return None
        s, z, _ = g.qparams(dq)
        if s is None or s.size != 1:
            return None
        attrs[f"{tag}_scale"], attrs[f"{tag}_zero_point"] = float(s.item()), int(z.item())
        inputs.append(dq.input[0])
    if g.shapes.get(add.input[0]) != g.shapes.get(add.input[1]):
        return None  # broadcasting adds (bias-like) are not residuals
    out = _out_attrs(g, q)
    if isinstance(out, str):
        return None
    return _make("QAdd", inputs, q, **attrs, **out), q


def _toposort(nodes: list[onnx.NodeProto], model: onnx.ModelProto) -> list[onnx.NodeProto]:
    avail = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    avail.add("")
    out, pending = [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in avail for i in n.input):
                out.append(n)
                avail.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError("I-ViT rewrite produced a cycle or a dangling input")
        pending = rest
    return out


def _remove_dead(model: onnx.ModelProto) -> None:
    g = model.graph
    live = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in live for o in n.output):
            keep.append(n)
            live.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [t for t in g.initializer if t.name in live]
    del g.initializer[:]
    g.initializer.extend(inits)


# ------------------------------------------------------------------ the int8 flow's entry point

# An integer rewrite changes rounding: the gate is the cosine of every output vs the QDQ model.
MIN_COSINE = 0.98  # DeiT-tiny (random init, 12 blocks): 0.989 vs QDQ


def apply(
    qdq: onnx.ModelProto, seed: int = 0, options: Options = Options()
) -> tuple[onnx.ModelProto, dict]:
    """Rewrite a calibrated QDQ model and verify it; returns (model, report entry).

    The check runs both models on seeded random inputs (``edgec.verify.random_inputs``): the
    rewrite is kept only if every output's cosine vs the QDQ model is >= ``MIN_COSINE``;
    otherwise the QDQ model comes back unchanged with status "reverted" and the reason.
    The entry lists the rewrites, declined islands and the per-island error table.
    """
    from edgec import verify as ort_verify
    from edgec.frontend import signature

    t0 = time.perf_counter()
    result = rewrite(qdq, options)
    entry: dict = {"name": "ivit", "stats": result.stats, "declined": result.declined}
    if not any(result.stats.values()):
        entry["status"] = "unchanged"
        return qdq, entry
    inputs, _ = signature(qdq)
    feeds = ort_verify.random_inputs(inputs, seed)
    summary, rows = verify(qdq, result, feeds)
    worst = min(v["cosine"] for v in summary.values())
    entry.update(cosine_vs_qdq=worst, outputs=summary, per_op=rows)
    entry["seconds"] = round(time.perf_counter() - t0, 3)
    if worst < MIN_COSINE:
        entry["status"] = "reverted"
        entry["reason"] = f"cosine {worst:.4f} vs the QDQ model < {MIN_COSINE}"
        return qdq, entry
    entry["status"] = "applied"
    return result.model, entry


# ------------------------------------------------------------------ numpy semantics


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def run_node(op: str, inputs: list[np.ndarray], attrs: Mapping) -> np.ndarray:
    """The integer semantics of one ``ai.edgec`` node (codes in, codes out)."""
    a = {k: _s(v) for k, v in attrs.items()}
    out = (a["out_scale"], a["out_zero_point"], a["out_dtype"])
    x = inputs[0].astype(np.int64)
    if op == "Shiftmax":
        p, s = intops.shiftmax(
            x, a["scale"], a["out_bits"], n=a.get("n", intops.SHIFTMAX_N), shift=a.get("shift", 0)
        )
        return intops.quantize_codes(p, s, *out)
    if op == "ShiftGELU":
        y, s = intops.shift_gelu(
            x - a["zero_point"], a["scale"], division_bits=a["division_bits"], offset=a["offset"]
        )
        return intops.quantize_codes(y, s * a["factor"], *out)
    if op == "ILayerNorm":
        y, s = intops.i_layernorm(
            x, inputs[1], inputs[2], sqrt_start=a["sqrt_start"], shift=a.get("shift", 0)
        )
        return intops.quantize_codes(y, s, *out)
    if op == "Requantize":
        return intops.quantize_codes(x - a["zero_point"], a["scale"], *out)
    if op == "QAdd":
        xb = inputs[1].astype(np.int64)
        ba, ca = intops.dyadic(a["a_scale"] / a["out_scale"])
        bb, cb = intops.dyadic(a["b_scale"] / a["out_scale"])
        v = intops.round_shift((x - a["a_zero_point"]) * ba, ca) + intops.round_shift(
            (xb - a["b_zero_point"]) * bb, cb
        )
        info = np.iinfo(a["out_dtype"])
        return np.clip(v + a["out_zero_point"], info.min, info.max).astype(a["out_dtype"])
    raise ValueError(f"unknown {DOMAIN} op {op!r}")


def gelu_table(attrs: Mapping) -> tuple[np.ndarray, int]:
    """ShiftGELU with the per-element offset as a table over all input codes: (table, first
    code). Exact: that form has no row dependence."""
    a = {k: _s(v) for k, v in attrs.items()}
    if a["offset"] != "element":
        raise ValueError("only the per-element ShiftGELU is a table")
    info = np.iinfo(a["in_dtype"])
    codes = np.arange(info.min, info.max + 1)
    return run_node("ShiftGELU", [codes.reshape(1, -1)], a).ravel(), int(info.min)


def evaluate(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a (rewritten) model in numpy: onnx's reference evaluator plus the ``ai.edgec`` ops
    and opset-13 Q/DQ (the reference evaluator has only opset >= 19 versions)."""
    from onnx.reference import ReferenceEvaluator

    sess = ReferenceEvaluator(model, new_ops=_reference_ops())
    names = [o.name for o in model.graph.output]
    return dict(zip(names, sess.run(None, dict(feeds)), strict=True))


def _reference_ops() -> list:
    from onnx.reference.op_run import OpRun

    def make(op: str, domain: str, fn):
        return type(op, (OpRun,), {"op_domain": domain, "_run": fn})

    def custom(op):
        def _run(self, *inputs, **_):
            attrs = {a.name: helper.get_attribute_value(a) for a in self.onnx_node.attribute}
            return (run_node(op, list(inputs), attrs),)

        return _run

    def _axis(self, s, x):
        axis = next((a.i for a in self.onnx_node.attribute if a.name == "axis"), 1)
        if np.ndim(s) == 0 or s.size == 1:
            return s.reshape(()), None
        shape = [1] * x.ndim
        shape[axis if -x.ndim <= axis < x.ndim else 0] = -1
        return s.reshape(shape), shape

    def dq(self, x, s, z=None, **_):
        s2, shape = _axis(self, s, x)
        z2 = 0 if z is None else (z.reshape(shape) if shape else z.reshape(()))
        return (((x.astype(np.float32) - np.float32(0) - z2) * s2).astype(np.float32),)

    def q(self, x, s, z=None, **_):
        s2, shape = _axis(self, s, x)
        dtype = np.uint8 if z is None else z.dtype
        z2 = 0 if z is None else (z.reshape(shape) if shape else z.reshape(()))
        info = np.iinfo(dtype)
        v = np.rint(x.astype(np.float32) / s2.astype(np.float32)) + z2
        return (np.clip(v, info.min, info.max).astype(dtype),)

    ops = [make(op, DOMAIN, custom(op)) for op in OPS]
    return [*ops, make("DequantizeLinear", "", dq), make("QuantizeLinear", "", q)]


def verify(
    qdq: onnx.ModelProto, result: Rewrite, feeds: Mapping[str, np.ndarray]
) -> tuple[dict, list[dict]]:
    """Compare a rewrite with its QDQ model on ``feeds``.

    Returns (per model output: cosine and max abs error of ``evaluate(rewritten)`` vs the QDQ
    model in onnxruntime, graph optimizations off) and one row per rewritten island: the integer
    kernel run on the QDQ model's own input codes for that island vs the QDQ model's output
    codes (``max_steps``/``mean_steps`` in output quantization steps, ``max_err`` real units,
    ``rel_err`` = max_err / max |output|). Per-island rows isolate each kernel's error from the
    errors upstream of it.
    """
    from edgec import verify as ort_verify

    nodes = {n.name: n for n in result.model.graph.node if n.domain == DOMAIN}
    names = set()
    for isl in result.islands:
        n = nodes[isl["name"]]
        names.update(i for i in n.input if i and i not in {t.name for t in qdq.graph.initializer})
        names.add(n.output[0])
    probe = onnx.ModelProto.FromString(qdq.SerializeToString())
    g = _Graph(probe)
    have = {o.name for o in probe.graph.output}
    for name in sorted(names - have):
        p = g.producer.get(name)
        tp = {v: k for k, v in _CODE_TYPES.items()}[g.code_type(p)] if p is not None else None
        if tp is None:
            continue
        probe.graph.output.append(helper.make_tensor_value_info(name, tp, None))
    ref = ort_verify.run_onnxruntime(probe, dict(feeds))
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    rows = []
    for isl in result.islands:
        n = nodes[isl["name"]]
        args = [ref[i] if i in ref else inits[i] for i in n.input]
        got = run_node(n.op_type, args, _attrs(n)).astype(np.int64)
        want = ref[n.output[0]].astype(np.int64)
        a = {k: _s(v) for k, v in _attrs(n).items()}
        steps = np.abs(got - want)
        real = (want - a["out_zero_point"]) * a["out_scale"]
        max_err = float(steps.max() * a["out_scale"])
        rows.append({
            "op": n.op_type, "output": n.output[0], "max_steps": int(steps.max()),
            "mean_steps": float(steps.mean()), "max_err": max_err,
            "rel_err": max_err / max(float(np.abs(real).max()), 1e-30),
        })  # fmt: skip
    out = evaluate(result.model, feeds)
    summary = {}
    for name, want in ((o.name, ref[o.name]) for o in qdq.graph.output):
        got = out[name].astype(np.float64)
        w = want.astype(np.float64)
        cos = float((got * w).sum() / max(np.linalg.norm(got) * np.linalg.norm(w), 1e-30))
        summary[name] = {"cosine": cos, "max_abs_err": float(np.abs(got - w).max())}
    return summary, rows
