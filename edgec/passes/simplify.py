"""simplify: onnxsim's constant folding, shape-op elimination and redundant-node removal.

Runs onnxsim (its own check disabled: every pass is verified by the pipeline instead). A model
onnxsim cannot handle is left as it is and the reason is reported.
"""

from __future__ import annotations

from collections import Counter

import onnx

from edgec.passes.base import PassResult


class Simplify:
    name = "simplify"
    summary = "onnxsim: fold constants, remove shape computations and redundant nodes"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        import onnxsim

        before = Counter(n.op_type for n in model.graph.node)
        try:
            simplified, _ = onnxsim.simplify(model, check_n=0)
        except Exception as e:  # onnxsim raises bare RuntimeErrors from C++
            return PassResult(model, {}, [f"onnxsim failed: {str(e).strip().splitlines()[0]}"])
        after = Counter(n.op_type for n in simplified.graph.node)
        removed = before - after
        stats = {f"removed_{op}": n for op, n in sorted(removed.items())}
        if not stats and simplified.SerializeToString() == model.SerializeToString():
            return PassResult(model, {})
        stats["nodes_removed"] = max(0, sum(before.values()) - sum(after.values()))
        return PassResult(simplified, stats)
