"""I-ViT on DeiT-tiny (edgec zoo, random init): accuracy of the integer ops and their kernels.

    python bench/ivit.py accuracy   # cosine vs fp32 of QDQ and I-ViT integer; per-op error table
    python bench/ivit.py kernels    # I-ViT TVM kernels vs edgec's fp32 kernels, DeiT-tiny shapes
    python bench/ivit.py latency [bench/int8.py options]  # whole model, integer-only vs fp32

``accuracy`` exports DeiT-tiny, quantizes it with onnxruntime's quantize_static (QDQ, int8,
per-channel weights, ``--calib`` random N(0, 1) images: a random-init model has no data
distribution to respect), rewrites it (``edgec.quant.ivit``) and compares on other random
images: the fp32 model, the QDQ model (onnxruntime, optimizations off) and the rewritten model
(numpy: the ai.edgec nodes in integers, the linear ops as QDQ). ``kernels`` times each I-ViT
kernel against the fp32 kernel edgec builds for the same op (interleaved, same process).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx


def deit_qdq(calib: int, seed: int = 0) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    import torch

    from edgec.models.vit import deit_tiny
    from edgec.quant import quantize_qdq

    torch.manual_seed(seed)
    model = deit_tiny().eval()
    rng = np.random.default_rng(seed)
    samples = [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
               for _ in range(calib)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "deit.onnx"
        torch.onnx.export(
            model, (torch.zeros(1, 3, 224, 224),), str(src), opset_version=17, dynamo=False,
            input_names=["input"], output_names=["output"],
        )  # fmt: skip
        fp32 = onnx.load(src)
    return fp32, quantize_qdq(fp32, samples, activation="int8")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def accuracy(calib: int, images: int) -> dict:
    from edgec import verify
    from edgec.quant import ivit

    t0 = time.perf_counter()
    fp32, qdq = deit_qdq(calib)
    t1 = time.perf_counter()
    result = ivit.rewrite(qdq)
    t2 = time.perf_counter()
    rng = np.random.default_rng(1)
    cos_qdq, cos_int, cos_int_qdq = [], [], []
    rows: list[dict] = []
    for _ in range(images):
        x = {"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
        ref = verify.run_onnxruntime(fp32, x)["output"]
        summary, per_op = ivit.verify(qdq, result, x)
        q = verify.run_onnxruntime(qdq, x)["output"]
        got = ivit.evaluate(result.model, x)["output"]
        cos_qdq.append(_cos(q, ref))
        cos_int.append(_cos(got, ref))
        cos_int_qdq.append(summary["output"]["cosine"])
        rows += per_op
    table = {}
    for op in ivit.OPS:
        mine = [r for r in rows if r["op"] == op]
        if mine:
            table[op] = {
                "islands": len(mine) // images,
                "max_steps": max(r["max_steps"] for r in mine),
                "mean_steps": round(float(np.mean([r["mean_steps"] for r in mine])), 4),
                "max_rel_err": round(max(r["rel_err"] for r in mine), 4),
            }
    return {
        "model": "deit_tiny (random init)",
        "calibration_images": calib,
        "images": images,
        "rewrites": result.stats,
        "declined": result.declined,
        "cosine_vs_fp32": {"qdq": min(cos_qdq), "integer": min(cos_int)},
        "cosine_integer_vs_qdq": min(cos_int_qdq),
        "per_op": table,
        "seconds": {"export+calibrate": round(t1 - t0, 1), "rewrite": round(t2 - t1, 1)},
    }


def kernels(repeats: int) -> dict:
    """Median ms of each I-ViT kernel vs the fp32 kernel edgec builds for the same op."""
    import tvm
    from tvm import relax

    from edgec import lower, targets
    from edgec.lower import ivit as livit
    from edgec.quant import intops

    threads = lower.set_threads(0)
    target = targets.get("x86_64")
    tgt = tvm.target.Target(lower.target_json(target, threads))
    rng = np.random.default_rng(0)
    shapes = {"softmax": (1, 3, 197, 197), "gelu": (1, 197, 768), "layernorm": (1, 197, 192)}

    def fp32_model(op: str, shape) -> onnx.ModelProto:
        from onnx import helper

        nodes = {
            "softmax": [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
            "gelu": [helper.make_node("Gelu", ["x"], ["y"])],
            "layernorm": [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"])],
        }[op]
        inits = []
        if op == "layernorm":
            ones, zeros = np.ones(shape[-1], np.float32), np.zeros(shape[-1], np.float32)
            inits = [onnx.numpy_helper.from_array(ones, "g"),
                     onnx.numpy_helper.from_array(zeros, "b")]  # fmt: skip
        graph = helper.make_graph(
            nodes, op, [helper.make_tensor_value_info("x", 1, shape)],
            [helper.make_tensor_value_info("y", 1, shape)], inits,
        )  # fmt: skip
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
        m.ir_version = 9
        return m

    def int_module(op: str, shape):
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(shape, "int8"))
        with bb.function("main", [x]):
            with bb.dataflow():
                c = shape[-1]
                if op == "softmax":
                    rq = livit.Requant.to_scale(2.0**-15, 1 / 127, 0, "int8")
                    out = livit.emit(bb, "shiftmax", x, scale=0.05, requant=rq)
                elif op == "gelu":
                    attrs = {"scale": 0.05, "zero_point": 0, "in_dtype": "int8", "factor": 1.0,
                             "division_bits": 62, "offset": "element", "out_scale": 0.03,
                             "out_zero_point": 0, "out_dtype": "int8"}  # fmt: skip
                    out = livit.convert_node(bb, "ShiftGELU", [x], attrs)
                else:
                    g, b = np.ones(c), np.zeros(c)
                    _, s_c = intops.layernorm_bias(g, b, c)
                    rq = livit.Requant.to_scale(s_c, 0.03, 0, "int8")
                    out = livit.emit(bb, "layernorm", x, gamma=g, beta=b, sqrt_start="bitlen",
                                     shift=16, requant=rq)  # fmt: skip
                out = bb.emit_output(out)
            bb.emit_func_output(out)
        return tvm.compile(bb.get(), target=tgt)

    result = {}
    for op, shape in shapes.items():
        ex_f, _ = lower.build(fp32_model(op, shape), target, threads)
        ex_i = int_module(op, shape)
        vm_f = relax.VirtualMachine(ex_f.module(), tvm.cpu())
        vm_i = relax.VirtualMachine(ex_i, tvm.cpu())
        xf = tvm.runtime.tensor(rng.standard_normal(shape).astype(np.float32))
        xi = tvm.runtime.tensor(rng.integers(-128, 128, shape).astype(np.int8))
        times: dict[str, list[float]] = {"fp32": [], "ivit": []}
        for _ in range(repeats):  # interleaved
            for name, vm, x in (("fp32", vm_f, xf), ("ivit", vm_i, xi)):
                t = vm.time_evaluator("main", tvm.cpu(), number=20, repeat=1)(x)
                times[name].append(t.mean * 1e3)
        med = {k: round(float(np.median(v)), 4) for k, v in times.items()}
        result[op] = {"shape": list(shape), **{f"{k}_ms": v for k, v in med.items()},
                      "ivit_over_fp32": round(med["ivit"] / med["fp32"], 3)}  # fmt: skip
    result["threads"] = threads
    return result


def latency(argv: list[str]) -> dict:
    """Whole DeiT-tiny: edgec integer-only int8 (the QDQ model, I-ViT rewritten, compiled with
    --integer-only) vs edgec fp32 vs onnxruntime fp32 and int8 (the same QDQ model), same run:
    bench/int8.py's measurement with ``--integer-only`` (its table goes to stdout)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import int8 as int8_bench

    (row,) = int8_bench.main(["--models", "deit_tiny", "--integer-only", *argv])
    row["int8_vs_edgec_fp32"] = row["p50_ms"]["edgec int8"] / row["p50_ms"]["edgec fp32"]
    return row


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["accuracy", "kernels", "latency"])
    ap.add_argument("--calib", type=int, default=8, help="calibration images")
    ap.add_argument("--images", type=int, default=2, help="evaluation images")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    args, rest = ap.parse_known_args(argv)
    if args.command == "accuracy":
        out = accuracy(args.calib, args.images)
    elif args.command == "kernels":
        out = kernels(args.repeats)
    else:
        out = latency(rest)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
