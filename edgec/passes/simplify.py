"""simplify: onnxsim's constant folding, shape-op elimination and redundant-node removal.

Runs onnxsim (its own check disabled: every pass is verified by the pipeline instead). A model
onnxsim cannot handle is left as it is and the reason is reported.
"""

from __future__ import annotations

from collections import Counter

import onnx

from edgec._imports import import_without_torch
from edgec.passes.base import PassResult


class Simplify:
    name = "simplify"
    summary = "onnxsim: fold constants, remove shape computations and redundant nodes"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        onnxsim = import_without_torch("onnxsim")
        before = Counter(n.op_type for n in model.graph.node)
        try:
            simplified, _ = onnxsim.simplify(model, check_n=0)
        except Exception as e:  # onnxsim raises bare RuntimeErrors from C++
            return PassResult(model, {}, [f"onnxsim failed: {str(e).strip().splitlines()[0]}"])
        after = Counter(n.op_type for n in simplified.graph.node)
        # Signed change per op type: onnxsim also converts (e.g. MatMul+Add -> Gemm).
        stats = {op: after[op] - before[op] for op in sorted(before | after)}
        stats = {op: d for op, d in stats.items() if d}
        # A rewrite that leaves every op count as it was is not worth a verification run.
        return PassResult(simplified, stats) if stats else PassResult(model, {})
