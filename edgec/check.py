"""``edgec check``: before compiling, what of a model lowers for a target and what the passes do.

The op-coverage matrix lists every op type with its node count and whether TVM's ONNX importer
(with edgec's converters) lowers it; unsupported ones come with a suggestion. The pass pipeline
runs once on a copy of the model, without verification, to show which rules would fire and
which near-matches would be declined (nothing is written).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Mapping

import onnx

from edgec import frontend, passes, targets
from edgec.errors import InvalidInputError

__all__ = ["check", "suggestion", "text", "unsupported_text"]

# What to do about an op TVM's importer lacks; the fallback covers the rest.
SUGGESTIONS = {
    "Loop": "unroll it at export (a static trip count), or run the loop outside the model",
    "Scan": "unroll it at export, or run the scan outside the model",
    "NonMaxSuppression": "cut the model before NMS and run NMS in post-processing",
    "Celu": "export it as Elu-style ops: max(0,x) + min(0, alpha*(exp(x/alpha)-1))",
    "LpNormalization": "export it as ReduceL2 (or ReduceL1) + Div",
    "QLinearConv": "export QDQ form (QuantizeLinear/DequantizeLinear around a float Conv)",
    "QLinearMatMul": "export QDQ form (QuantizeLinear/DequantizeLinear around a float MatMul)",
    "ConvInteger": "export QDQ form (QuantizeLinear/DequantizeLinear around a float Conv)",
    "DeformConv": "no TVM lowering: replace by a regular Conv, or run it outside the model",
    "RNN": "export the recurrence unrolled (static sequence length)",
    "GRU": "export the recurrence unrolled (static sequence length)",
    "LSTM": "export the recurrence unrolled (static sequence length)",
    "DFT": "compute it with MatMul against a constant DFT matrix",
    "STFT": "compute it with Conv/MatMul against constant windowed DFT bases",
}
FALLBACK = (
    "not in TVM's ONNX importer: decompose it into standard ops at export "
    "(torch.onnx: a different module or a newer opset), or run it outside the model"
)


def suggestion(op_type: str, domain: str) -> str:
    if domain not in ("", "ai.onnx"):
        return (f"custom domain {domain}: export with standard ONNX ops "
                "(no custom/contrib ops; onnxruntime-only fusions are not portable)")  # fmt: skip
    return SUGGESTIONS.get(op_type, FALLBACK)


def unsupported_text(nodes: list[dict]) -> str:
    """The unsupported part of the matrix, by op type with node names and a suggestion; the
    message `edgec compile` fails with (exit 3), and the end of `edgec check`'s listing."""
    by_op: dict[tuple[str, str], list[str]] = {}
    for n in nodes:
        by_op.setdefault((n["op_type"], n["domain"]), []).append(n["node"])
    lines = [f"the model uses {len(by_op)} unsupported op type(s) in {len(nodes)} node(s):"]
    for (op, domain), names in by_op.items():
        label = op if domain == "ai.onnx" else f"{domain}.{op}"
        lines.append(f"  {label} ({len(names)}): {', '.join(names)}")
        lines.append(f"      suggestion: {suggestion(op, domain)}")
    return "\n".join(lines)


def check(
    model: str | os.PathLike,
    target: str = "x86_64",
    *,
    input_shapes: Mapping[str, Iterable[int]] | None = None,
    skip_passes: Iterable[str] = (),
    only_passes: Iterable[str] = (),
    seed: int = 0,
) -> dict:
    """The op-coverage matrix of ``model`` for ``target`` (JSON-ready)."""
    from edgec import lower

    tgt = targets.get(target)
    pipeline = passes.select(skip_passes, only_passes)
    proto, _ = frontend.load(model)
    unsupported = lower.unsupported_nodes(proto)
    bad_nodes = {(n["op_type"], n["domain"]) for n in unsupported}
    nodes = [
        {"node": prefix + (node.name or f"<unnamed {node.op_type}>"), "op_type": node.op_type,
         "domain": node.domain or "ai.onnx"}
        for prefix, node in lower._all_nodes(proto.graph)
    ]  # fmt: skip
    for n in nodes:
        n["lowers"] = (n["op_type"], n["domain"]) not in bad_nodes
    counts = collections.Counter((n["op_type"], n["domain"]) for n in nodes)
    ops = [
        {"op_type": op, "domain": domain, "nodes": n, "lowers": (op, domain) not in bad_nodes,
         **({"suggestion": suggestion(op, domain)} if (op, domain) in bad_nodes else {})}
        for (op, domain), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]  # fmt: skip
    result = {
        "model": str(model),
        "target": tgt.name,
        "nodes": sum(counts.values()),
        "ops": ops,
        "node_coverage": nodes,
        "unsupported": unsupported,
        "supported": not unsupported,
        "passes": _passes(proto, input_shapes, pipeline, seed),
    }
    return result


def _passes(proto: onnx.ModelProto, shapes, pipeline, seed: int) -> dict:
    """Run the pipeline once on a copy, unverified; what each pass would do."""
    shapes = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
    copy = onnx.ModelProto.FromString(proto.SerializeToString())
    try:
        pinned = frontend.infer_shapes(frontend.pin_input_shapes(copy, shapes))
    except InvalidInputError as e:
        if shapes:  # a wrong --input-shape is an error; a missing one only limits the check
            raise
        return {"evaluated": False, "reason": str(e)}
    try:
        _, reports = passes.run_pipeline(pinned, pipeline, seed=seed, verify_passes=False,
                                         max_rounds=1)  # fmt: skip
    except Exception as e:  # a pass crashing here would be reverted by compile: report it
        return {"evaluated": False, "reason": f"the pass pipeline failed: {type(e).__name__}: {e}"}
    rows = [
        {"name": r["name"], "fires": {k: v for k, v in r["stats"].items() if v},
         "declined": r["declined"], "nodes_before": r["nodes_before"],
         "nodes_after": r["nodes_after"]}
        for r in reports
    ]  # fmt: skip
    return {"evaluated": True, "pipeline": rows}


def text(result: dict) -> str:
    """The human listing of ``check``'s result."""
    lines = [f"{result['model']}: {result['nodes']} node(s), {len(result['ops'])} op type(s), "
             f"target {result['target']}", "",
             f"  {'op type':28s} {'nodes':>5s}  lowers"]  # fmt: skip
    for op in result["ops"]:
        label = op["op_type"] if op["domain"] == "ai.onnx" else f"{op['domain']}.{op['op_type']}"
        lines.append(f"  {label:28s} {op['nodes']:5d}  {'yes' if op['lowers'] else 'NO'}")
    lines += ["", "passes (run once on a copy, unverified):"]
    p = result["passes"]
    if not p["evaluated"]:
        lines.append(f"  not evaluated: {p['reason']}")
    for row in p.get("pipeline", []):
        fires = ", ".join(f"{k} {v}" for k, v in row["fires"].items())
        nodes = f" ({row['nodes_before']} -> {row['nodes_after']} nodes)" if fires else ""
        lines.append(f"  {row['name']:16s} {'fires: ' + fires if fires else 'nothing to do'}"
                     + nodes)  # fmt: skip
        lines += [f"  {'':16s} declines: {d}" for d in row["declined"]]
    lines.append("")
    if result["unsupported"]:
        lines.append(unsupported_text(result["unsupported"]))
    else:
        lines.append(f"every op lowers for {result['target']}")
    return "\n".join(lines)
