"""Each conv kernel of a model alone, NCHW (template conv2d) vs NHWC (conv2d_nhwc): ms, GFLOP/s.

    .venv/bin/python bench/conv_layouts.py MODEL.onnx [--threads 2] [--kinds 1x1,depthwise]

Both layouts are lowered as ``edgec compile`` does (passes, ``--search none``, direct convs: no
Winograd), and every conv kernel is timed alone as deployed (weights pre-packed) with its default
knobs: the fastest of 5 repeats of >= 50 ms (``edgec.lower.measure``), which a busy machine
disturbs less than whole-model timings. Kernels are paired by name (the same fused op chain).
"""

from __future__ import annotations

import argparse

import onnx

from edgec import lower, passes, targets
from edgec.lower import conv_nhwc, measure


def conv_tasks(model: onnx.ModelProto, layout: str, threads: int) -> dict:
    import tvm
    from tvm import relax

    tgt = targets.get("x86_64")
    mod = lower.to_relax(model)
    with tvm.target.Target(lower.target_json(tgt, threads)):
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.CanonicalizeBindings()(mod)
        if layout == "nhwc":
            mod = conv_nhwc.convert(mod)
        mod = relax.get_pipeline("zero")(mod)
    tasks = measure.kernel_tasks(mod, lower.vector_lanes(tgt))
    return {t.name: t for t in tasks if t.template in ("conv2d", "conv2d_nhwc")}


def kind(info: dict) -> str:
    if info.get("depthwise"):
        return "depthwise"
    return f"{info['kh']}x{info['kw']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kinds", default="", help="only these kinds (1x1, 3x3, depthwise, ...)")
    args = ap.parse_args()
    model, _ = passes.run_pipeline(onnx.load(args.model), passes.select((), ()), seed=0)
    measure.prepare(args.threads)
    target = lower.target_json(targets.get("x86_64"), args.threads)
    nchw, nhwc = (conv_tasks(model, layout, args.threads) for layout in ("nchw", "nhwc"))
    kinds = set(filter(None, args.kinds.split(",")))
    print(
        "| kernel | kind | out HxWxF | calls | NCHW ms | GFLOP/s | NHWC ms | GFLOP/s | NCHW/NHWC |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    total = [0.0, 0.0]
    for name, b in nhwc.items():
        a = nchw.get(name)
        if a is None or a.flops != b.flops or (kinds and kind(b.info) not in kinds):
            continue
        ms = [measure.measure(t, t.default, target, repeat=5, min_repeat_ms=50) * 1e3
              for t in (a, b)]  # fmt: skip
        total = [t + m * b.calls for t, m in zip(total, ms, strict=True)]
        i = b.info
        print(f"| {name} | {kind(i)} | {i['h']}x{i['w']}x{i['f']} | {b.calls} | {ms[0]:.3f} | "
              f"{a.flops / ms[0] / 1e6:.0f} | {ms[1]:.3f} | {b.flops / ms[1] / 1e6:.0f} | "
              f"{ms[0] / ms[1]:.2f}x |", flush=True)  # fmt: skip
    print(
        f"| total (x calls) | | | | {total[0]:.3f} | | {total[1]:.3f} | | "
        f"{total[0] / total[1]:.2f}x |"
    )


if __name__ == "__main__":
    main()
