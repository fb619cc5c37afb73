"""int8 kernels of a QDQ model one by one: each template's candidates timed in the same process.

    .venv/bin/python bench/int8_kernels.py [--model mobilenetv2] [--kind depthwise|1x1|dense|all]
                                           [--rounds 3] [--threads 1] [--repeat 40] [--workdir W]

Quantizes the zoo model like ``bench/int8.py`` (QDQ, uint8 activations, 4 synthetic samples),
lowers it as ``edgec compile --int8`` does (``lower.build``'s search hook receives the kernels),
and times, per int8 convolution kernel, the template that schedules it (its default knobs, or
every knob set of its ``space`` with ``--space``) and, for the depthwise ones, the generic
``conv2d`` template (its default knobs: what ``int8_depthwise`` replaces). Each distinct kernel
once (the conv-algorithm plan lists the same direct kernel under several names). Rounds are
interleaved; each number is the fastest single call of ``--repeat`` per round over all rounds
(``edgec.lower.measure.measure``): on a shared machine the fastest call is the one nobody
preempted. Prints a markdown table (us per call, GOP/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import onnx

from edgec import lower, models, targets
from edgec.lower import measure, schedules

sys.path.insert(0, str(Path(__file__).parent))
import contextlib

from int8 import quantize  # noqa: E402


class _Stop(Exception):
    pass


def int8_tasks(model: onnx.ModelProto, threads: int) -> tuple[list[measure.Task], dict]:
    """The kernels of ``model`` as ``edgec compile`` schedules them (the search's view)."""
    got: dict = {}

    def tune(tasks, target_json):
        got.update(tasks=tasks, target=target_json)
        raise _Stop

    with contextlib.suppress(_Stop):
        lower.build(model, targets.get("x86_64"), threads, tune=tune, conv_plan=[])
    return got["tasks"], got["target"]


def _kind(task: measure.Task) -> str | None:
    info = task.info
    if task.template == "int8_depthwise" or (task.template == "conv2d" and info.get("depthwise")):
        return "depthwise"
    if task.template == "int8_conv2d":
        return "1x1" if (info["kh"], info["kw"]) == (1, 1) else "dense"
    return None


def variants(task: measure.Task, space: bool = True) -> list[tuple[str, measure.Task, dict]]:
    out = [(task.template, task, k) for k in (task.space if space else [task.default])]
    if task.template == "int8_depthwise":
        conv = schedules.Conv2d()
        info = conv.match(task.func)
        info["constants"] = task.info.get("constants", set())
        generic = dataclasses.replace(task, template="conv2d", info=info)
        out.insert(0, ("conv2d", generic, conv.default(info, 16)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--kind", default="depthwise", choices=["depthwise", "1x1", "dense", "all"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--space", action="store_true", help="every knob set, not the default only")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args(argv)
    measure.prepare(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        source, qsource = workdir / f"{args.model}.onnx", workdir / f"{args.model}.qdq.onnx"
        if not source.exists():
            models.export(args.model, source)
        if not qsource.exists():
            quantize(source, qsource, 4)
        tasks, target = int8_tasks(onnx.load(qsource), args.threads)
    chosen = list({
        t.workload: t for t in tasks
        if _kind(t) and (args.kind == "all" or _kind(t) == args.kind)
    }.values())  # fmt: skip
    best: dict = {}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}: {len(chosen)} kernels", file=sys.stderr)
        for task in chosen:
            for label, t, knobs in variants(task, args.space):
                key = (task.name, label, measure.canonical(knobs))
                try:
                    s = measure.measure(t, knobs, target, repeat=args.repeat, min_repeat_ms=1)
                except Exception as e:  # noqa: BLE001 - a declined candidate is reported
                    print(f"  {task.name} {label} {knobs}: {type(e).__name__}", file=sys.stderr)
                    s = float("inf")
                best[key] = min(best.get(key, s), s)
    print(f"us per call (fastest of {args.rounds} interleaved rounds x {args.repeat} calls), "
          f"{args.threads} thread(s)\n")  # fmt: skip
    print("| kernel (calls) | shape | template | knobs | us | GOP/s |")
    print("|---|---|---|---|---|---|")
    for task in chosen:
        i = task.info
        shape = f"{i['f']}x{i['h']}x{i['w']} k{i['kh']}" + (" dw" if i.get("depthwise") else "")
        for label, _, knobs in variants(task, args.space):
            s = best[(task.name, label, measure.canonical(knobs))]
            gops = task.flops / s / 1e9 if s < float("inf") else 0
            mark = " (default)" if knobs == task.default and label == task.template else ""
            name = task.name.split("/")[-1][:28]
            print(f"| {name} ({task.calls}) | {shape} | {label} | {knobs}{mark} | "
                  f"{s * 1e6:.1f} | {gops:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
