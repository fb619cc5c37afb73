"""fuse_batchnorm: fold BatchNormalization and per-channel Mul/Add into Conv/Gemm/MatMul weights.

An *affine* is a node computing ``y = a*x + c`` per channel along one axis of ``x`` (a and c are
vectors over that axis, or scalars): ``BatchNormalization`` in inference mode with constant
parameters (``a = gamma/sqrt(var + eps)``, ``c = beta - mean*a``, eps read as stored, float32),
``Mul(x, s)`` and ``Add(x, t)`` by a constant in either operand order whose shape broadcasts along
at most one axis of x (``[C,1,1]``, ``[1,C,1,1]``, ``[C]`` on the last axis of tokens, scalars).
Affines compose: ``(a2, c2) o (a1, c1) = (a2*a1, a2*c1 + c2)``. All arithmetic is float64, cast
once to the weight dtype.

Folds, for a linear op with weight W (constant, used by no other node) and bias B:

* affine after the op (``FoldAffineIntoProducer``), channel = its output channel:
  Conv ``W' = a[o]*W[o]``; ConvTranspose ``W[g, Ci/g, Co/g, k]`` scaled along Co/g;
  Gemm ``W' = alpha*a*W`` along N (transB 0/1), ``C' = a*beta*C + c``;
  MatMul ``W[K, N]' = W*a[None, :]``; in all cases ``B' = a*B + c``.
* affine before the op (``FoldAffineIntoConsumer``), channel = its input channel i:
  ``W'[:, i] = W[:, i]*a[i]``, ``B' = B + sum_{i,k} W[:, i, k]*c[i]`` (Gemm: ``C' = beta*C +
  alpha*c@W``; MatMul: a new ``Add(c@W)``). Exact for Conv only without padding: with zero
  padding the padded zeros are not transformed, so the shift becomes a constant bias map
  ``Bmap[o, h, w] = B[o] + sum_{i,u,v} W[o,i,u,v]*c[i]*[input pixel of (h, w, u, v) is inside]``
  (rewrites.md 3.5, option 1): ``Conv(x, W', no bias) + Bmap[1, O, H_out, W_out]``, which needs
  the static spatial shape.
* SLAB RepBN ``Add(BN(T), alpha*T)`` (also ``Add(BN(T), T)``) is the affine
  ``(a_bn + alpha, c_bn)`` (``MergeRepBN``); it then folds like any other affine.
* two adjacent affines become one (``ComposeAffines``) where that saves a node.

Between the linear op and the affine there may be ops that keep the channel as a whole axis and
commute with a per-channel affine: Transpose, Reshape, Flatten, Squeeze, Unsqueeze, Identity,
ReduceMean and GlobalAveragePool over other axes. The channel axis is tracked through them with
static shapes and must land on the linear op's channel axis (LeViT ``MatMul -> Flatten -> BN ->
Reshape``, ``MatMul+Add -> Transpose -> BN1d -> Transpose``); Reshape/Flatten and Transpose pairs
that become identities are removed (``CancelLayoutPair``). Nothing folds through any other op.

Rules, in order (each to a fixpoint by ``_ir.apply_rules``): onnxscript's Conv/ConvTranspose/Gemm
+ BN fusions (guarded against training mode), MergeRepBN, FoldAffineIntoProducer (preferred: never
needs a bias map), FoldAffineIntoConsumer, ComposeAffines, CancelLayoutPair. A rewrite must save
work: a pure shift is not moved behind a bias-less MatMul or a padded Conv.

Preconditions: static shapes (the pass runs ONNX shape inference first), constant weights.
Refused, with the reason reported as ``declined``: training-mode BN, non-constant parameters, a
weight shared with another node, an intermediate value with several consumers (or a graph
output), a channel axis that does not map to the linear op's channel axis (constant varying along
a spatial or token axis included), zero padding without static spatial shapes. A Mul/Add whose
constant varies along several axes is not an affine and is skipped silently.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

from edgec.passes import _ir
from edgec.passes.base import PassResult

# Ops that keep a channel axis whole and commute with a per-channel affine on it.
CARRIERS = frozenset(
    {"Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "ReduceMean",
     "GlobalAveragePool"}
)  # fmt: skip
_RESHAPES = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})


# ---------------------------------------------------------------------------------------------
# Affine maps


@dataclasses.dataclass(frozen=True)
class Affine:
    """``y = scale*x + shift`` along ``axis`` of x; axis None: scalars for every element."""

    axis: int | None
    scale: np.ndarray  # float64, [C] or ()
    shift: np.ndarray

    def then(self, after: Affine) -> Affine | None:
        """``after o self``; None if the two act on different axes."""
        if None not in (self.axis, after.axis) and self.axis != after.axis:
            return None
        axis = self.axis if after.axis is None else after.axis
        return Affine(axis, after.scale * self.scale, after.scale * self.shift + after.shift)

    def vectors(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """scale and shift as length-n vectors."""
        return np.broadcast_to(self.scale, (n,)), np.broadcast_to(self.shift, (n,))

    @property
    def has_shift(self) -> bool:
        return bool(np.any(self.shift != 0))

    @property
    def has_scale(self) -> bool:
        return bool(np.any(self.scale != 1))


def _is_const(value: ir.Value | None) -> bool:
    if value is None or value.is_graph_input():
        return False
    producer = value.producer()
    return value.const_value is not None or (
        producer is not None and producer.op_type == "Constant" and producer.domain == ""
    )


def _shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The static shape of ``value``, else None."""
    if value is None or value.shape is None:
        return None
    dims = tuple(value.shape.dims)
    return dims if all(isinstance(d, int) for d in dims) else None


def affine_input(node: ir.Node) -> ir.Value | None:
    """The data input of an affine-shaped node: a BatchNormalization, or a Mul/Add with exactly
    one constant operand that varies along at most one axis. None for any other node (the
    values are checked by ``affine_of``)."""
    if node.domain != "":
        return None
    if node.op_type == "BatchNormalization":
        return node.inputs[0]
    if node.op_type in ("Mul", "Add") and len(node.inputs) == 2:
        x, k = node.inputs
        if _is_const(x):
            x, k = k, x
        if _is_const(k) and not _is_const(x):
            shape = k.const_value.shape if k.const_value is not None else _shape(k)
            if shape is not None and sum(d != 1 for d in shape) <= 1:
                return x
    return None


def _dims(value: ir.Value) -> tuple[int | None, ...] | None:
    """The shape of ``value`` with None for symbolic dims; None if even the rank is unknown."""
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in value.shape.dims)


def affine_of(node: ir.Node) -> Affine | str:
    """The affine computed by an affine-shaped node, or why it is not usable."""
    x = affine_input(node)
    assert x is not None
    dims = _dims(x)
    if dims is None:
        return f"the rank of {node.op_type}'s input is unknown"
    if node.op_type == "BatchNormalization":
        mode = node.attributes.get("training_mode")
        if mode is not None and mode.as_int() != 0:
            return "BatchNormalization is in training mode (batch statistics)"
        if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
            return "BatchNormalization's running statistics are used"
        if any(_ir.const(v) is None for v in node.inputs[1:5]):
            return "BatchNormalization parameters are not constant"
        if len(dims) < 2:
            return "BatchNormalization input has rank < 2"
        a, c = _ir.bn_affine(node)
        return Affine(1, a, c) if dims[1] != 1 else Affine(None, a[0], c[0])
    k = _ir.const(node.inputs[0] if node.inputs[1] is x else node.inputs[1])
    assert k is not None
    if not np.issubdtype(k.dtype, np.floating):
        return f"{node.op_type} by a non-float constant"
    if k.ndim > len(dims):
        return f"{node.op_type} constant has a higher rank than its input"
    kshape = (1,) * (len(dims) - k.ndim) + k.shape
    if any(d not in (1, s) for d, s in zip(kshape, dims, strict=True)):
        return f"{node.op_type} constant {k.shape} does not broadcast along its input {dims}"
    varying = [i for i, d in enumerate(kshape) if d != 1]
    axis = varying[0] if varying else None
    v = np.asarray(k, np.float64).reshape(-1 if varying else ())
    one, zero = np.ones_like(v), np.zeros_like(v)
    return Affine(axis, v, zero) if node.op_type == "Mul" else Affine(axis, one, v)


def _bn_channels(affine: Affine, dims: Sequence[int | None]) -> int | None:
    """The channel count of a BatchNormalization that can compute ``affine``, else None."""
    if len(dims) < 2 or affine.axis not in (None, 1):
        return None
    return len(affine.scale) if affine.axis == 1 else dims[1]


def _emitted_nodes(affine: Affine, dims: Sequence[int | None], bn: bool) -> int:
    """How many nodes ``_emit_affine`` needs."""
    if not affine.has_shift or not affine.has_scale or (bn and _bn_channels(affine, dims)):
        return 1
    return 2


def _emit_affine(op, graph: ir.Graph, x: ir.Value, affine: Affine, name: str, bn: bool) -> ir.Value:
    """Emit ``affine`` on x: one Mul or Add when the other half is trivial, else (if ``bn``: it
    replaces a BatchNormalization) a BatchNormalization with gamma = scale, beta = shift, mean 0,
    var 1, epsilon 0 when the channel is axis 1, else Mul + Add."""
    dims = _dims(x)
    dtype = x.dtype.numpy() if x.dtype is not None else np.float32

    def const(v: np.ndarray, tag: str) -> ir.Value:
        if affine.axis is not None:
            v = v.reshape((-1,) + (1,) * (len(dims) - 1 - affine.axis))
        return _initializer(op, graph, f"{name}_{tag}", v.astype(dtype))

    if not affine.has_shift:
        return op.Mul(x, const(affine.scale, "scale"))
    if not affine.has_scale:
        return op.Add(x, const(affine.shift, "shift"))
    channels = _bn_channels(affine, dims) if bn else None
    if channels:
        a, c = (v.astype(dtype) for v in affine.vectors(channels))
        params = {"scale": a, "shift": c, "mean": np.zeros_like(a), "var": np.ones_like(a)}
        inputs = [_initializer(op, graph, f"{name}_{tag}", v) for tag, v in params.items()]
        return op.BatchNormalization(x, *inputs, epsilon=0.0)
    return op.Add(op.Mul(x, const(affine.scale, "scale")), const(affine.shift, "shift"))


# ---------------------------------------------------------------------------------------------
# The channel axis through carrier ops


def _prod(dims: Sequence[int]) -> int:
    return math.prod(dims)


def _same_dim(src: Sequence[int], dst: Sequence[int], axis: int) -> int | None:
    """The axis of dst that is axis of src kept whole by a reshape (same size, same prefix)."""
    size, prefix = src[axis], _prod(src[:axis])
    for j, d in enumerate(dst):
        if d == size and _prod(dst[:j]) == prefix:
            return j
    return None


def _reduced_axes(node: ir.Node, rank: int) -> tuple[set[int], bool] | None:
    """(reduced axes, keepdims) of a ReduceMean or GlobalAveragePool; None if not constant."""
    if node.op_type == "GlobalAveragePool":
        return set(range(2, rank)), True
    keep = node.attributes.get("keepdims")
    keepdims = keep is None or keep.as_int() != 0
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = _ir.const(node.inputs[1])
        if axes is None:
            return None
        axes = axes.reshape(-1).tolist()
    else:
        attr = node.attributes.get("axes")
        axes = list(attr.as_ints()) if attr is not None else []
    if not axes:
        noop = node.attributes.get("noop_with_empty_axes")
        axes = [] if noop is not None and noop.as_int() else list(range(rank))
    return {a % rank for a in axes}, keepdims


def carry_axis(node: ir.Node, axis: int, forward: bool) -> int | None:
    """Where channel ``axis`` of the carrier's input (forward) or output (backward) goes on the
    other side; None when the carrier splits, merges or reduces it, or shapes are unknown."""
    src, dst = _shape(node.inputs[0]), _shape(node.outputs[0])
    if src is None or dst is None:
        return None
    if node.op_type == "Transpose":
        attr = node.attributes.get("perm")
        perm = list(attr.as_ints()) if attr is not None else list(reversed(range(len(src))))
        return perm.index(axis) if forward else perm[axis]
    if node.op_type in ("ReduceMean", "GlobalAveragePool"):
        reduced = _reduced_axes(node, len(src))
        if reduced is None:
            return None
        axes, keepdims = reduced
        kept = [i for i in range(len(src)) if i not in axes]
        if forward:
            return None if axis in axes else (axis if keepdims else kept.index(axis))
        if keepdims:
            return None if axis in axes else axis
        return kept[axis]
    return _same_dim(src, dst, axis) if forward else _same_dim(dst, src, axis)


def _carry_through(affine: Affine, nodes: Sequence[ir.Node], forward: bool) -> int | None | str:
    """The affine's axis after carrying it through ``nodes`` (in the order given), or a reason."""
    axis = affine.axis
    for node in nodes:
        if axis is None:
            return None
        axis = carry_axis(node, axis, forward)
        if axis is None:
            return f"the channel axis does not survive {_describe(node)}"
    return axis


# ---------------------------------------------------------------------------------------------
# Small helpers


def _initializer(op, graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    """A new initializer named after ``base``, unique in ``graph``."""
    name, i = base, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    return op.initializer(ir.tensor(np.ascontiguousarray(array)), name=name)


def _like(new: ir.Value, old: ir.Value) -> ir.Value:
    new.shape, new.type = old.shape, old.type
    return new


def _users(value: ir.Value) -> list[ir.Node]:
    """The nodes reading ``value``, less those left dead by an earlier rewrite of this sweep
    (the rule set removes them after the sweep)."""
    return [
        user
        for user, _ in value.uses()
        if any(out.uses() or out.is_graph_output() for out in user.outputs)
    ]


def _single_use(values: Sequence[ir.Value]) -> str | None:
    """Why one of these intermediate values cannot disappear, else None."""
    for v in values:
        what = _describe(v.producer()) if v.producer() else v.name
        if v.is_graph_output():
            return f"output of {what} is a graph output"
        if len(_users(v)) != 1:
            return f"output of {what} has {len(_users(v))} consumers"
    return None


def _private_params(node: ir.Node, params: Sequence[ir.Value | None]) -> str | None:
    """Why a weight/bias of ``node`` cannot be rewritten (not constant, shared), else None."""
    for v in params:
        if v is None:
            continue
        if _ir.const(v) is None:
            return f"{node.op_type} parameter {v.name} is not constant"
        if any(user is not node for user in _users(v)):
            return f"{node.op_type} parameter {v.name} is shared with another node"
    return None


def _weight_refusal(linear: ir.Node) -> str | None:
    """Why the weight (and bias) of ``linear`` cannot take a fold: shared with another node,
    not float, or (MatMul) not 2-D."""
    reason = _private_params(linear, linear.inputs[1:3])
    if reason:
        return reason
    w = _ir.const(linear.inputs[1])
    if not np.issubdtype(w.dtype, np.floating):
        return f"{_describe(linear)} weight is not float"
    if linear.op_type == "MatMul" and w.ndim != 2:
        return f"{_describe(linear)} weight is not 2-D"
    return None


def _reemit(op, x: ir.Value, carriers: Sequence[ir.Node]) -> ir.Value:
    """Apply copies of ``carriers`` (graph order) to x."""
    for node in carriers:
        x = _like(op.op(node.op_type, x, *node.inputs[1:], **node.attributes), node.outputs[0])
    return x


def _attr_f(node: ir.Node, name: str, default: float) -> float:
    a = node.attributes.get(name)
    return a.as_float() if a is not None else default


def _attr_i(node: ir.Node, name: str, default: int) -> int:
    a = node.attributes.get(name)
    return a.as_int() if a is not None else default


def _describe(node: ir.Node) -> str:
    return f"{node.op_type} {node.name or ''}".rstrip()


# ---------------------------------------------------------------------------------------------
# Rule plumbing


class _ScreenedRule(RewriteRule):
    """A rule that first asks ``candidate(node)`` whether ``node`` has the structure the rule
    is about; other nodes are skipped silently, so a failed ``check`` is a real near-miss."""

    def __init__(self, impl: _Rule) -> None:
        super().__init__(impl.pattern, impl.rewrite, impl.check, name=impl.name,
                         remove_nodes=False)  # fmt: skip
        self._impl = impl

    def match(self, model, graph_or_function, node, **kwargs):
        if node.op_type != self._impl.op_type or not self._impl.candidate(node):
            return None
        return super().match(model, graph_or_function, node, **kwargs)


class _Rule(RewriteRuleClassBase):
    """pattern (the anchor op) + candidate (the structure around it, silent) + check (refusals
    with a reason) + rewrite. One rule object per anchor op type, all sharing the class name.

    Matched nodes are not removed by the matcher (``remove_nodes=False``): a rewrite may leave
    some in use (an affine feeding several linear ops); the rule set drops those left unused.
    """

    def __init__(self, op_type: str) -> None:
        super().__init__(type(self).__name__, remove_nodes=False)
        self.op_type = op_type

    @classmethod
    def rule(cls, op_type: str) -> RewriteRule:
        return _ScreenedRule(cls(op_type))

    def pattern(self, op, x):
        return getattr(op, self.op_type)(x, _allow_other_inputs=True, _outputs=["out"])

    def candidate(self, node: ir.Node) -> bool:
        raise NotImplementedError


def _checked(reason: str | None) -> MatchResult:
    return MatchResult().fail(reason) if reason else MatchResult()


def _inference_only(rule: RewriteRule) -> RewriteRule:
    """onnxscript's BN fusion ``rule``, also refusing a training-mode BatchNormalization
    (onnxscript 0.7.2 does not check the mode and would fold batch statistics away). Rebuilt
    from the rule's own pattern, replacement and condition (private fields of 0.7.2)."""
    condition = rule._condition_function

    def check(context, **bindings):
        mode = context.root.attributes.get("training_mode")
        if mode is not None and mode.as_int() != 0:
            return MatchResult().fail("BatchNormalization is in training mode (batch statistics)")
        return condition(context, **bindings)

    return RewriteRule(rule._target_pattern, rule._replacement_pattern, check, name=rule.name)


# ---------------------------------------------------------------------------------------------
# Affine after a linear op


@dataclasses.dataclass(frozen=True)
class _Producer:
    linear: ir.Node  # Conv, ConvTranspose, Gemm, or MatMul with a constant 2-D weight
    bias_add: ir.Node | None  # MatMul's Add(bias)
    carriers: tuple[ir.Node, ...]  # between the linear op and the affine, graph order
    affine: ir.Node


def _matmul_weight(node: ir.Node) -> bool:
    return node.op_type == "MatMul" and node.domain == "" and _is_const(node.inputs[1])


def find_producer(affine: ir.Node) -> _Producer | None:
    """The linear op an affine-shaped node could fold into, if any (structure only)."""
    x = affine_input(affine)
    if x is None:
        return None
    carriers: list[ir.Node] = []
    node = x.producer()
    while node is not None and node.op_type in CARRIERS and node.domain == "":
        carriers.insert(0, node)
        node = node.inputs[0].producer()
    if node is None or node.domain != "":
        return None
    if node.op_type in ("Conv", "ConvTranspose", "Gemm") or _matmul_weight(node):
        if node.op_type == "MatMul" and affine.op_type == "Add":
            return None  # that Add is the MatMul's bias: nothing to fold
        return _Producer(node, None, tuple(carriers), affine)
    bias_input = affine_input(node)
    if node.op_type == "Add" and bias_input is not None:
        mm = bias_input.producer()
        if mm is not None and _matmul_weight(mm):
            return _Producer(mm, node, tuple(carriers), affine)
    return None


def _out_channel_axis(linear: ir.Node) -> int | None:
    if linear.op_type == "MatMul":
        shape = _shape(linear.outputs[0])
        return None if shape is None else len(shape) - 1
    return 1


def producer_refusal(p: _Producer) -> str | None:
    affine = affine_of(p.affine)
    if isinstance(affine, str):
        return affine
    mid = [p.linear.outputs[0]] + ([p.bias_add.outputs[0]] if p.bias_add else [])
    reason = _single_use(mid + [c.outputs[0] for c in p.carriers])
    if reason:
        return reason
    reason = _weight_refusal(p.linear)
    if reason:
        return reason
    w = _ir.const(p.linear.inputs[1])
    group = _attr_i(p.linear, "group", 1)
    if p.linear.op_type == "ConvTranspose" and w.shape[0] % group:
        return f"ConvTranspose in_channels {w.shape[0]} not divisible by group {group}"
    axis = _carry_through(affine, p.carriers[::-1], forward=False)
    if isinstance(axis, str):
        return axis
    want = _out_channel_axis(p.linear)
    if axis is not None and axis != want:
        return (f"{p.affine.op_type} channel axis maps to axis {axis} of {_describe(p.linear)}'s "
                f"output, not its output-channel axis {want}")  # fmt: skip
    return None


def _fold_after(p: _Producer, affine: Affine) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(W', B' or None, attributes) of the linear op with ``affine`` applied to its output."""
    node = p.linear
    w = np.asarray(_ir.const(node.inputs[1]), np.float64)
    attrs = dict(node.attributes)
    b_in = node.inputs[2] if len(node.inputs) > 2 else None
    if p.bias_add is not None:
        b_in = next(v for v in p.bias_add.inputs if _is_const(v))
    b = None if b_in is None else np.asarray(_ir.const(b_in), np.float64)
    if node.op_type == "Conv":
        a, c = affine.vectors(w.shape[0])
        w = w * a.reshape((-1,) + (1,) * (w.ndim - 1))
    elif node.op_type == "ConvTranspose":
        g = _attr_i(node, "group", 1)
        a, c = affine.vectors(w.shape[1] * g)
        grouped = w.reshape(g, w.shape[0] // g, *w.shape[1:])
        scale = a.reshape((g, 1, w.shape[1]) + (1,) * (w.ndim - 2))
        w = (grouped * scale).reshape(w.shape)
    elif node.op_type == "Gemm":
        trans_b = _attr_i(node, "transB", 0)
        a, c = affine.vectors(w.shape[0] if trans_b else w.shape[1])
        w = _attr_f(node, "alpha", 1.0) * (w * a[:, None] if trans_b else w * a[None, :])
        if b is not None:
            b = b * _attr_f(node, "beta", 1.0)
        attrs.pop("alpha", None)
        attrs.pop("beta", None)
    else:  # MatMul
        a, c = affine.vectors(w.shape[1])
        w = w * a[None, :]
    if b is not None:
        b = a * b + c
    elif affine.has_shift:
        b = c.copy()
    return w, b, attrs


class FoldAffineIntoProducer(_Rule):
    """``affine(carriers(Linear(x)))`` -> ``carriers(Linear'(x))`` (a, b, e of the brief)."""

    def candidate(self, node: ir.Node) -> bool:
        return find_producer(node) is not None

    def check(self, context, **_) -> MatchResult:
        return _checked(producer_refusal(find_producer(context.root)))

    def rewrite(self, op, out: ir.Value, **_):
        p = find_producer(out.producer())
        affine = affine_of(p.affine)
        w, b, attrs = _fold_after(p, affine)
        node, graph = p.linear, p.linear.graph
        w_old = node.inputs[1]
        w_new = _initializer(op, graph, f"{w_old.name}_fused", w.astype(_ir.const(w_old).dtype))
        x = node.inputs[0]
        dtype = _ir.const(w_old).dtype
        if node.op_type == "MatMul":
            y = _like(op.MatMul(x, w_new), node.outputs[0])
            if b is not None:
                bias = _initializer(op, graph, f"{w_old.name}_bias_fused", b.astype(dtype))
                y = op.Add(y, bias)
                if p.bias_add is not None:
                    _like(y, p.bias_add.outputs[0])
                else:
                    _like(y, node.outputs[0])
        else:
            inputs = [x, w_new]
            if b is not None:
                inputs.append(_initializer(op, graph, f"{w_old.name}_bias_fused", b.astype(dtype)))
            y = _like(op.op(node.op_type, *inputs, **attrs), node.outputs[0])
        return _reemit(op, y, p.carriers)


# ---------------------------------------------------------------------------------------------
# Affine before a linear op


@dataclasses.dataclass(frozen=True)
class _Consumer:
    linear: ir.Node  # Conv, Gemm, or MatMul with a constant 2-D weight
    carriers: tuple[ir.Node, ...]  # between the affine and the linear op, graph order
    affine: ir.Node


def _conv_pads(node: ir.Node, in_shape, out_shape) -> list[int] | None:
    """Begin/end pads of a Conv ([b1, b2, ..., e1, e2, ...]); None if they need shapes we lack."""
    w_shape = _shape(node.inputs[1])
    n = len(w_shape) - 2 if w_shape else None
    auto = node.attributes.get("auto_pad")
    auto = auto.as_string() if auto is not None else "NOTSET"
    if auto in ("NOTSET", ""):
        pads = node.attributes.get("pads")
        return list(pads.as_ints()) if pads is not None else [0] * (2 * (n or 0))
    if auto == "VALID":
        return [0] * (2 * n)
    if in_shape is None or out_shape is None:
        return None
    strides = node.attributes.get("strides")
    strides = list(strides.as_ints()) if strides is not None else [1] * n
    dil = node.attributes.get("dilations")
    dil = list(dil.as_ints()) if dil is not None else [1] * n
    begin, end = [], []
    for d in range(n):
        size, k = in_shape[2 + d], w_shape[2 + d]
        total = max((out_shape[2 + d] - 1) * strides[d] + (k - 1) * dil[d] + 1 - size, 0)
        small = total // 2
        begin.append(small if auto == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin + end


def find_consumer(linear: ir.Node) -> _Consumer | None:
    """The affine a linear op could absorb from its input side, if any (structure only)."""
    if linear.domain != "" or not (linear.op_type in ("Conv", "Gemm") or _matmul_weight(linear)):
        return None
    carriers: list[ir.Node] = []
    node = linear.inputs[0].producer()
    while node is not None and node.op_type in CARRIERS and node.domain == "":
        carriers.insert(0, node)
        node = node.inputs[0].producer()
    if node is None or affine_input(node) is None:
        return None
    if node.op_type == "Add" and linear.op_type == "MatMul":
        # moving a pure shift behind a MatMul only pays if the MatMul has a bias Add to merge into
        users = _users(linear.outputs[0])
        if len(users) != 1 or users[0].op_type != "Add" or affine_input(users[0]) is None:
            return None
    if node.op_type == "Add" and linear.op_type == "Conv":
        pads = _conv_pads(linear, _shape(linear.inputs[0]), _shape(linear.outputs[0]))
        if pads is None or any(pads):
            return None  # the shift would only turn into a bias map Add
    return _Consumer(linear, tuple(carriers), node)


def _in_channel_axis(linear: ir.Node) -> int | None:
    if linear.op_type == "Conv":
        return 1
    if linear.op_type == "Gemm":
        return 0 if _attr_i(linear, "transA", 0) else 1
    shape = _shape(linear.inputs[0])
    return None if shape is None else len(shape) - 1


def _consumer_refusal_one(q: _Consumer, affine: Affine) -> str | None:
    reason = _single_use([c.outputs[0] for c in q.carriers])
    if reason:
        return reason
    reason = _weight_refusal(q.linear)
    if reason:
        return reason
    w = _ir.const(q.linear.inputs[1])
    axis = _carry_through(affine, q.carriers, forward=True)
    if isinstance(axis, str):
        return axis
    want = _in_channel_axis(q.linear)
    if axis is not None and axis != want:
        return (f"{q.affine.op_type} channel axis maps to axis {axis} of {_describe(q.linear)}'s "
                f"input, not its input-channel axis {want}")  # fmt: skip
    if q.linear.op_type == "Conv":
        x_dims, group = _dims(q.linear.inputs[0]), _attr_i(q.linear, "group", 1)
        if x_dims is None or x_dims[1] != w.shape[1] * group or w.shape[0] % group:
            return f"input channels do not match the weight {w.shape} and group {group}"
        x_shape, y_shape = _shape(q.linear.inputs[0]), _shape(q.linear.outputs[0])
        pads = _conv_pads(q.linear, x_shape, y_shape)
        if pads is None or (any(pads) and affine.has_shift and None in (x_shape, y_shape)):
            return ("the Conv pads its input with zeros: folding the shift needs static "
                    "spatial shapes for a bias map")  # fmt: skip
    return None


def _consumers_of(affine_node: ir.Node) -> list[_Consumer] | str:
    """Every linear op the affine's output reaches (through private carriers), or why one is
    not a linear op that could absorb it."""
    found = []
    for user in _users(affine_node.outputs[0]):
        node = user
        while node.op_type in CARRIERS and len(_users(node.outputs[0])) == 1:
            node = _users(node.outputs[0])[0]
        q = find_consumer(node)
        if q is None or q.affine is not affine_node:
            return (
                f"{affine_node.op_type} output also feeds {_describe(user)}, which cannot absorb it"
            )
        found.append(q)
    return found


def consumer_refusal(q: _Consumer) -> str | None:
    affine = affine_of(q.affine)
    if isinstance(affine, str):
        return affine
    if q.affine.outputs[0].is_graph_output():
        return f"output of {_describe(q.affine)} is a graph output"
    siblings = _consumers_of(q.affine)
    if isinstance(siblings, str):
        return siblings
    for sibling in siblings:
        reason = _consumer_refusal_one(sibling, affine)
        if reason:
            return reason
    return None


def _bias_map(w: np.ndarray, c_full: np.ndarray, b: np.ndarray, node: ir.Node, pads, x_shape,
              y_shape) -> np.ndarray:  # fmt: skip
    """``Conv(c over the unpadded input, zero padding; W, B)`` as a [1, O, *out] constant:
    ``B[o] + sum_{u} (sum_j W[o, j, u] c[o, j]) * prod_d [0 <= h_d*s_d + u_d*dil_d - p_d < n_d]``.
    """
    n = w.ndim - 2
    strides = node.attributes.get("strides")
    strides = list(strides.as_ints()) if strides is not None else [1] * n
    dil = node.attributes.get("dilations")
    dil = list(dil.as_ints()) if dil is not None else [1] * n
    m = np.einsum("oj...,oj->o...", w, c_full)  # [O, k1, ..., kn]
    for d in range(n):
        h = np.arange(y_shape[2 + d])[:, None]
        u = np.arange(w.shape[2 + d])[None, :]
        pos = h * strides[d] + u * dil[d] - pads[d]
        inside = ((pos >= 0) & (pos < x_shape[2 + d])).astype(np.float64)  # [out_d, k_d]
        m = np.tensordot(m, inside, axes=([1], [1]))  # contracts k_d, appends out_d
    return (m + b.reshape((-1,) + (1,) * n))[None]


class FoldAffineIntoConsumer(_Rule):
    """``Linear(carriers(affine(x)))`` -> ``Linear'(carriers(x))`` (c of the brief)."""

    def candidate(self, node: ir.Node) -> bool:
        return find_consumer(node) is not None

    def check(self, context, **_) -> MatchResult:
        return _checked(consumer_refusal(find_consumer(context.root)))

    def rewrite(self, op, out: ir.Value, **_):
        node = out.producer()
        q = find_consumer(node)
        affine = affine_of(q.affine)
        graph = node.graph
        w_old = node.inputs[1]
        dtype = _ir.const(w_old).dtype
        w = np.asarray(_ir.const(w_old), np.float64)
        b_in = node.inputs[2] if len(node.inputs) > 2 else None
        b = None if b_in is None else np.asarray(_ir.const(b_in), np.float64)
        x = _reemit(op, affine_input(q.affine), q.carriers)
        attrs = dict(node.attributes)

        def init(tag: str, v: np.ndarray) -> ir.Value:
            return _initializer(op, graph, f"{w_old.name}_{tag}", v.astype(dtype))

        if node.op_type == "Conv":
            group = _attr_i(node, "group", 1)
            out_g, in_g = w.shape[0] // group, w.shape[1]
            idx = (np.arange(w.shape[0]) // out_g)[:, None] * in_g + np.arange(in_g)[None, :]
            a, c = affine.vectors(in_g * group)
            w_new = w * a[idx].reshape(idx.shape + (1,) * (w.ndim - 2))
            b = np.zeros(w.shape[0]) if b is None else b
            x_shape, y_shape = _shape(node.inputs[0]), _shape(node.outputs[0])
            pads = _conv_pads(node, x_shape, y_shape)
            if any(pads) and affine.has_shift:
                bmap = _bias_map(w, c[idx], b, node, pads, x_shape, y_shape)
                attrs.pop("auto_pad", None)
                attrs["pads"] = ir.AttrInt64s("pads", pads)
                y = _like(op.Conv(x, init("fused", w_new), **attrs), node.outputs[0])
                return op.Add(y, init("bias_map", bmap))
            b_new = b + np.einsum("oj...,oj->o...", w, c[idx]).reshape(w.shape[0], -1).sum(1)
            return op.Conv(x, init("fused", w_new), init("bias_fused", b_new), **attrs)
        if node.op_type == "Gemm":
            trans_b = _attr_i(node, "transB", 0)
            w_kn = w.T if trans_b else w
            a, c = affine.vectors(w_kn.shape[0])
            alpha, beta = _attr_f(node, "alpha", 1.0), _attr_f(node, "beta", 1.0)
            w_kn = alpha * w_kn
            bias = c @ w_kn + (0.0 if b is None else beta * b)
            w_new = (w_kn * a[:, None]).T if trans_b else w_kn * a[:, None]
            attrs.pop("alpha", None)
            attrs.pop("beta", None)
            return op.Gemm(x, init("fused", w_new), init("bias_fused", bias), **attrs)
        a, c = affine.vectors(w.shape[0])  # MatMul
        y = op.MatMul(x, init("fused", w * a[:, None]))
        if not affine.has_shift:
            return y
        return op.Add(_like(y, node.outputs[0]), init("bias_fused", c @ w))


# ---------------------------------------------------------------------------------------------
# RepBN, affine chains, layout pairs


def find_repbn(add: ir.Node) -> tuple[ir.Node, ir.Node | None, ir.Value] | None:
    """(BN, Mul or None, T) if add is ``Add(BN(T), Mul(alpha, T))`` or ``Add(BN(T), T)``."""
    if add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
        return None
    for u, v in (add.inputs, add.inputs[::-1]):
        bn = u.producer()
        if bn is None or bn.op_type != "BatchNormalization" or bn.domain != "":
            continue
        t = bn.inputs[0]
        if v is t:
            return bn, None, t
        mul = v.producer()
        if mul is not None and mul.op_type == "Mul" and affine_input(mul) is t:
            return bn, mul, t
    return None


class MergeRepBN(_Rule):
    """SLAB RepBN ``Add(BN(T), alpha*T)`` -> one affine ``(a_bn + alpha, c_bn)`` of T (d)."""

    def candidate(self, node: ir.Node) -> bool:
        return find_repbn(node) is not None

    def _parts(self, add: ir.Node) -> tuple[Affine, ir.Value] | str:
        """(the summed affine, T), or why the block does not merge."""
        bn, mul, t = find_repbn(add)
        bn_part = affine_of(bn)
        x_part = affine_of(mul) if mul else Affine(None, np.float64(1), np.float64(0))
        for part in (bn_part, x_part):
            if isinstance(part, str):
                return part
        reason = _single_use([bn.outputs[0]] + ([mul.outputs[0]] if mul else []))
        if reason:
            return reason
        if x_part.axis not in (None, bn_part.axis):
            return f"alpha varies along axis {x_part.axis}, not the BatchNormalization channel"
        summed = Affine(bn_part.axis, bn_part.scale + x_part.scale, bn_part.shift + x_part.shift)
        return summed, t

    def check(self, context, **_) -> MatchResult:
        parts = self._parts(context.root)
        return _checked(parts if isinstance(parts, str) else None)

    def rewrite(self, op, out: ir.Value, **_):
        add = out.producer()
        affine, t = self._parts(add)
        return _emit_affine(op, add.graph, t, affine, f"{add.name or 'repbn'}_affine", bn=True)


def find_affine_pair(node: ir.Node) -> tuple[ir.Node, ir.Node] | None:
    """(first, second) if node is an affine fed directly by another affine-shaped node."""
    x = affine_input(node)
    first = None if x is None else x.producer()
    if first is None or affine_input(first) is None:
        return None
    return first, node


class ComposeAffines(_Rule):
    """``affine2(affine1(x))`` -> one affine of x, where that takes fewer nodes (e)."""

    def _compose(self, node: ir.Node) -> tuple[Affine, ir.Node] | str:
        """(the composed affine, the first node), or why the two do not compose."""
        first, second = find_affine_pair(node)
        f, s = affine_of(first), affine_of(second)
        if isinstance(f, str) or isinstance(s, str):
            return f if isinstance(f, str) else s
        both = f.then(s)
        return (both, first) if both else f"channel axes differ ({f.axis} then {s.axis})"

    def _saves_a_node(self, both: Affine, first: ir.Node, second: ir.Node) -> bool:
        bn = "BatchNormalization" in (first.op_type, second.op_type)
        return _emitted_nodes(both, _dims(affine_input(first)), bn) < 2

    def candidate(self, node: ir.Node) -> bool:
        if find_affine_pair(node) is None:
            return False
        composed = self._compose(node)
        return isinstance(composed, str) or self._saves_a_node(*composed, node)

    def check(self, context, **_) -> MatchResult:
        composed = self._compose(context.root)
        return _checked(
            composed if isinstance(composed, str) else _single_use([composed[1].outputs[0]])
        )

    def rewrite(self, op, out: ir.Value, **_):
        node = out.producer()
        both, first = self._compose(node)
        bn = "BatchNormalization" in (first.op_type, node.op_type)
        name = f"{node.name or 'affine'}_composed"
        return _emit_affine(op, node.graph, affine_input(first), both, name, bn)


def _cancelled_input(node: ir.Node) -> ir.Value | None:
    """x if node undoes its producer: ``Transpose(Transpose(x))`` with inverse perms, or a
    reshape of a reshape back to x's shape."""
    first = node.inputs[0].producer()
    if first is None or not first.inputs or first.domain != "" or node.domain != "":
        return None
    x = first.inputs[0]
    if node.op_type == "Transpose" and first.op_type == "Transpose":
        shape = _shape(x)
        if shape is None:
            return None
        p1, p2 = (n.attributes.get("perm") for n in (first, node))
        rank = len(shape)
        p1 = list(p1.as_ints()) if p1 is not None else list(reversed(range(rank)))
        p2 = list(p2.as_ints()) if p2 is not None else list(reversed(range(rank)))
        return x if [p1[i] for i in p2] == list(range(rank)) else None
    if node.op_type in _RESHAPES and first.op_type in _RESHAPES:
        src, dst = _shape(x), _shape(node.outputs[0])
        return x if src is not None and src == dst else None
    return None


class CancelLayoutPair(_Rule):
    """``Transpose(Transpose(x))`` / ``Reshape(Reshape(x))`` that is the identity -> x."""

    def candidate(self, node: ir.Node) -> bool:
        return _cancelled_input(node) is not None

    def check(self, context, **_) -> MatchResult:
        return MatchResult()

    def rewrite(self, op, out: ir.Value, **_):
        x = _cancelled_input(out.producer())
        # the replacement takes over the name of `out`: never rename a graph input or output
        return op.Identity(x) if x.is_graph_input() or x.is_graph_output() else x


# ---------------------------------------------------------------------------------------------

RULES: tuple[RewriteRule, ...] = (
    _inference_only(fuse_batchnorm_into_conv_rule),
    _inference_only(fuse_batchnorm_into_conv_transpose_rule),
    _inference_only(fuse_batchnorm_into_gemm_rule),
    MergeRepBN.rule("Add"),
    *(FoldAffineIntoProducer.rule(op) for op in ("BatchNormalization", "Mul", "Add")),
    *(FoldAffineIntoConsumer.rule(op) for op in ("Conv", "Gemm", "MatMul")),
    *(ComposeAffines.rule(op) for op in ("BatchNormalization", "Mul", "Add")),
    *(CancelLayoutPair.rule(op) for op in ("Transpose", "Reshape", "Flatten")),
)


class FuseBatchNorm:
    name = "fuse_batchnorm"
    summary = "fold BatchNorm and per-channel Mul/Add into neighbouring Conv/Gemm/MatMul weights"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        try:  # the rules track channel axes through static shapes
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # noqa: BLE001 - a model shape inference rejects keeps what it has
            inferred = model
        result = _ir.apply_rules(inferred, RULES)
        if not result.changed:
            return PassResult(model, result.stats, result.declined)
        return result
