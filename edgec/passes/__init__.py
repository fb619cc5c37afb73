"""Rewrite passes on the ONNX graph, in an explicit order, each verified in onnxruntime.

``run_pipeline`` runs the passes in ``PASSES`` order. After each pass that changed the graph, the
graph before and after are run in onnxruntime (all graph optimizations off) on seeded random
inputs; a pass whose outputs differ beyond the tolerance is reverted and reported, never shipped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import onnx

from edgec import verify
from edgec.errors import InvalidInputError
from edgec.frontend import signature
from edgec.passes.base import Pass, PassResult
from edgec.passes.extract_conv import ExtractConv
from edgec.passes.fuse_batchnorm import FuseBatchNorm
from edgec.passes.reparameterize import Reparameterize
from edgec.passes.repq_vit import RepQViTScales
from edgec.passes.simplify import Simplify

# The default pipeline, in order: clean up, fold affines, merge branches, then the
# probe-and-verify fallback for what the patterns left (DBB-style soups).
PASSES: tuple[Pass, ...] = (Simplify(), FuseBatchNorm(), Reparameterize(), ExtractConv())

# Passes run only when asked for (--only-pass, or by the int8 pipeline with calibration data).
ON_REQUEST: tuple[Pass, ...] = (RepQViTScales(),)

# A rewrite may change rounding, not results: max |after - before| / max |before| per output.
PASS_TOLERANCE = 1e-4

__all__ = ["ON_REQUEST", "PASSES", "Pass", "PassResult", "get", "run_pipeline", "select"]


def get(name: str) -> Pass:
    for p in PASSES + ON_REQUEST:
        if p.name == name:
            return p
    known = ", ".join(p.name for p in PASSES + ON_REQUEST)
    raise InvalidInputError(f"unknown pass {name!r}; known passes: {known}")


def select(skip: Iterable[str] = (), only: Iterable[str] = ()) -> tuple[Pass, ...]:
    """The default pipeline without ``skip``; or only the passes in ``only`` (default and
    on-request ones), in pipeline order."""
    skip, only = [get(n).name for n in skip], [get(n).name for n in only]
    if skip and only:
        raise InvalidInputError("--skip-pass and --only-pass cannot be combined")
    if only:
        return tuple(p for p in PASSES + ON_REQUEST if p.name in only)
    return tuple(p for p in PASSES if p.name not in skip)


def run_pipeline(
    model: onnx.ModelProto,
    passes: Sequence[Pass],
    *,
    seed: int = 0,
    verify_passes: bool = True,
    max_rounds: int = 4,
) -> tuple[onnx.ModelProto, list[dict]]:
    """Run ``passes`` in order, then again while any of them changes the graph (a fold can
    expose a merge and vice versa), at most ``max_rounds`` times. Returns the final model and
    one report entry per pass run (later rounds report only passes that did something new)."""
    inputs, _ = signature(model)
    feeds = verify.random_inputs(inputs, seed)
    state = _State(model, None)
    reports: list[dict] = []
    for round_ in range(1, max_rounds + 1):
        entries = [_run_one(p, state, feeds, verify_passes) for p in passes]
        reverted = {r["name"] for r in reports if r["status"] == "reverted"}
        for entry in entries:
            entry["round"] = round_
            if (
                round_ == 1
                or entry["status"].startswith("applied")
                or (entry["status"] == "reverted" and entry["name"] not in reverted)
            ):
                reports.append(entry)
        if not any(e["status"].startswith("applied") for e in entries):
            break
    return state.model, reports


class _State:
    """The current model and, once computed, its onnxruntime outputs on the pipeline's feeds."""

    def __init__(self, model: onnx.ModelProto, reference: dict | None):
        self.model, self.reference = model, reference


def _run_one(p: Pass, state: _State, feeds: dict, verify_passes: bool) -> dict:
    """Run one pass on ``state``; keep its result only if it verifies."""
    t0 = time.perf_counter()
    before = state.model
    result = p(before)
    entry: dict = {
        "name": p.name,
        "stats": result.stats,
        "declined": result.declined,
        "nodes_before": len(before.graph.node),
        "nodes_after": len(result.model.graph.node),
    }
    if not result.changed:
        entry["status"] = "unchanged"
    elif not verify_passes:
        entry["status"] = "applied (unverified)"
        state.model, state.reference = result.model, None
    else:
        outputs = None
        try:
            if state.reference is None:  # unverifiable (onnxruntime cannot run it): reverted
                state.reference = verify.reference_outputs(before, feeds)
            outputs = verify.run_onnxruntime(result.model, feeds)
            err = verify.worst(verify.compare_all(outputs, state.reference))["scaled_err"]
            problem = None if err <= PASS_TOLERANCE else f"scaled error {err:.3g}"
        except Exception as e:  # a graph does not even run: the rewrite is not verified
            err, problem = float("inf"), f"graph fails in onnxruntime, not verified: {e}"
        entry["verify_scaled_err"] = err
        if problem:
            entry["status"] = "reverted"
            entry["reason"] = f"{problem} > tolerance {PASS_TOLERANCE:g}"
            entry["nodes_after"] = entry["nodes_before"]
        else:
            entry["status"] = "applied"
            state.model, state.reference = result.model, outputs
    entry["seconds"] = round(time.perf_counter() - t0, 3)
    return entry
