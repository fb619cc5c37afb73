"""Shared machinery for passes: onnx_ir conversion, rule application with counts and reasons,
constant access, and BatchNormalization as a per-channel affine map.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter import MatchingTracer, MatchStatus, RewriteRule, RewriteRuleSet

from edgec.passes.base import PassResult

MAX_ROUNDS = 16  # fixpoint iterations of a rule set


def to_ir(model: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(model)


def to_proto(model: ir.Model) -> onnx.ModelProto:
    return ir.serde.serialize_model(model)


def apply_rules(model: onnx.ModelProto, rules: Sequence[RewriteRule]) -> PassResult:
    """Apply ``rules`` to a fixpoint; count applications per rule and collect refusals.

    Each rule runs as its own rule set so the counts are per rule. A refusal is a match whose
    ``check`` failed; its reason (from ``MatchResult.fail``) is reported as ``declined``.
    """
    ir_model = to_ir(model)
    stats: Counter[str] = Counter()
    for _ in range(MAX_ROUNDS):
        changed = 0
        for rule in rules:
            n = RewriteRuleSet([rule]).apply_to_model(ir_model)
            stats[rule.name] += n
            changed += n
        if not changed:
            break
    declined = _declined(ir_model, rules)
    if not sum(stats.values()):
        return PassResult(model, {r.name: 0 for r in rules}, declined)
    remove_unused(ir_model)
    return PassResult(to_proto(ir_model), {r.name: stats[r.name] for r in rules}, declined)


def _declined(model: ir.Model, rules: Sequence[RewriteRule]) -> list[str]:
    """Near-matches that a rule's check refused, as 'rule: node: reason' lines."""
    tracer = MatchingTracer()
    for rule in rules:
        for node in list(model.graph):
            rule.try_rewrite(model, model.graph, node, tracer=tracer)
    reasons = []
    for rule, matches in tracer.best_matches_map.items():
        for match in matches:
            if match.status == MatchStatus.CONDITION_FAILED:
                reason = match.match_result.reason or "condition failed"
                reasons.append(f"{rule.name}: {match.root_node.name or match.root_node.op_type}: "
                               f"{reason}")  # fmt: skip
    return sorted(set(reasons))


def remove_unused(model: ir.Model) -> None:
    """Drop nodes whose outputs nobody uses, and initializers no node reads."""
    ir.passes.common.RemoveUnusedNodesPass()(model)


def const(value: ir.Value | None) -> np.ndarray | None:
    """The constant behind ``value`` (an initializer or a Constant node), else None."""
    if value is None:
        return None
    if value.const_value is not None and not value.is_graph_input():
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain == "":
        attr = producer.attributes.get("value")
        if attr is not None:
            return attr.as_tensor().numpy()
    return None


def bn_affine(node: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """BatchNormalization (inference mode) as ``y = a*x + c`` per channel (axis 1), in float64.

    ``a = gamma / sqrt(var + eps)``, ``c = beta - mean * a``; eps is read as stored (float32).
    None if the parameters are not constant, or the node is in training mode / has extra outputs.
    """
    if node.op_type != "BatchNormalization" or node.domain != "":
        return None
    mode = node.attributes.get("training_mode")
    if (mode is not None and mode.as_int() != 0) or len(node.outputs) > 1:
        return None
    params = [const(v) for v in node.inputs[1:5]]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (np.asarray(p, np.float64) for p in params)
    eps_attr = node.attributes.get("epsilon")
    eps = float(np.float32(eps_attr.as_float() if eps_attr is not None else 1e-5))
    a = gamma / np.sqrt(var + eps)
    return a, beta - mean * a


def count_ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)
