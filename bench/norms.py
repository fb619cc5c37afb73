"""Softmax and LayerNorm kernels alone: the norms templates vs generic vs onnxruntime.

.venv/bin/python bench/norms.py [--threads 2] [--rounds 5]

Each case is a one-op ONNX model (DeiT-tiny's shapes first). The kernel is built three ways from
the same fused PrimFunc: ``generic`` (what scheduled it before edgec.lower.norms), the norms
template with its default knobs, and with every other candidate of its space; onnxruntime runs
the one-op model (ORT_ENABLE_ALL, same threads). Engines are timed in interleaved rounds
(``time_evaluator`` min of 3 x 25 ms per round; onnxruntime: min of 3 blocks of calls over as
long); the table reports each engine's median over rounds, in microseconds. Markdown to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx

from edgec import lower, verify
from edgec.lower import norms, schedules

OPSET = '<ir_version: 9, opset_import: ["" : 17]>'
CASES = {  # name: (ONNX body, input shape)
    "softmax 1x3x197x197 (DeiT-tiny)": ("y = Softmax <axis = -1> (x)", (1, 3, 197, 197)),
    "layer_norm 1x197x192 (DeiT-tiny)": ("y = LayerNormalization <axis = -1> (x, s, b)",
                                         (1, 197, 192)),
    "softmax 1x12x197x197 (ViT-B)": ("y = Softmax <axis = -1> (x)", (1, 12, 197, 197)),
    "layer_norm 1x197x768 (ViT-B)": ("y = LayerNormalization <axis = -1> (x, s, b)",
                                     (1, 197, 768)),
    "softmax 8x50x50": ("y = Softmax <axis = -1> (x)", (8, 50, 50)),
}  # fmt: skip


def model_of(body: str, shape: tuple[int, ...]) -> onnx.ModelProto:
    from onnx import parser

    dims = ",".join(map(str, shape))
    c = shape[-1]
    text = (f"{OPSET} m (float[{dims}] x, float[{c}] s, float[{c}] b) => (float[{dims}] y) "
            f"{{ {body} }}") if "(x, s, b)" in body else (
            f"{OPSET} m (float[{dims}] x) => (float[{dims}] y) {{ {body} }}")  # fmt: skip
    return parser.parse_model(text)


def kernel(model: onnx.ModelProto, target_json: dict):
    tvm = lower._tvm()
    from tvm import relax, tirx
    from tvm.relax import transform

    with tvm.target.Target(target_json):
        mod = transform.FastMathTransform()(lower.to_relax(model))
        mod = relax.get_pipeline("zero")(mod)
    (func,) = [f for f in mod.functions.values() if isinstance(f, tirx.PrimFunc)]
    return func


def timer(func, target_json: dict, args):
    tvm = lower._tvm()
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    lib = tvm.tirx.build(mod, target=tvm.target.Target(target_json))
    dev = tvm.cpu(0)
    tensors = [tvm.runtime.tensor(a, dev) for a in args]
    evaluate = lib.time_evaluator("main", dev, number=1, repeat=3, min_repeat_ms=25)
    return lambda: min(evaluate(*tensors).results) * 1e6


def ort_timer(model: onnx.ModelProto, feeds: dict, threads: int):
    session = verify.ort_session(model, optimize=True, threads=threads)

    def run() -> float:
        best = float("inf")
        for _ in range(3):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 0.025:
                session.run(None, feeds)
                n += 1
            best = min(best, (time.perf_counter() - t0) / n)
        return best * 1e6

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from edgec import targets

    target = targets.get("x86_64")
    tj = lower.target_json(target, args.threads)
    lanes = lower.vector_lanes(target)
    lower.set_threads(args.threads)
    print("| kernel | generic us | norms default us | best candidate us (knobs) | "
          "onnxruntime us | generic / norms | norms / ORT |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, (body, shape) in CASES.items():
        model = model_of(body, shape)
        func = kernel(model, tj)
        template = next(t for t in norms.TEMPLATES if _matches(t, func))
        info = template.match(func)
        rng = np.random.default_rng(0)
        arrays = [rng.standard_normal([int(d) for d in p.ty.shape]).astype(np.float32)
                  for p in func.params]  # fmt: skip
        feeds = {"x": arrays[0], **({"s": arrays[1], "b": arrays[2]} if len(arrays) == 4 else {})}
        generic = schedules.Generic()
        engines = {"generic": timer(generic.apply(func, generic.match(func), {"vectorize": True}),
                                    tj, arrays)}  # fmt: skip
        space = template.space(info, lanes)
        for knobs in space:
            engines[str(knobs)] = timer(template.apply(func, info, knobs), tj, arrays)
        engines["onnxruntime"] = ort_timer(model, feeds, args.threads)
        times: dict[str, list[float]] = {k: [] for k in engines}
        for _ in range(args.rounds):
            for k, run in engines.items():
                times[k].append(run())
        med = {k: statistics.median(v) for k, v in times.items()}
        default = med[str(space[0])]
        best = min((k for k in med if k.startswith("{")), key=med.get)
        print(f"| {name} | {med['generic']:.1f} | {default:.1f} | {med[best]:.1f} ({best}) | "
              f"{med['onnxruntime']:.1f} | {med['generic'] / default:.1f}x | "
              f"{default / med['onnxruntime']:.2f}x |")  # fmt: skip


def _matches(template, func) -> bool:
    try:
        template.match(func)
    except schedules.Decline:
        return False
    return True


if __name__ == "__main__":
    main()
