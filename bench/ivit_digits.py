"""A tiny ViT on scikit-learn's digits: train (under a minute), export, and measure top-1 of
fp32, int8 QDQ and I-ViT integer-only int8 (``edgec.quant.ivit``) on the held-out split.

    python bench/ivit_digits.py train     # writes tests/data/ivit_digits.onnx and .npz
    python bench/ivit_digits.py evaluate  # top-1: fp32 / QDQ (onnxruntime) / integer-only
    (--tvm: also through TVM; --official: the official QAT-simulation kernel variants)

Needs torch and scikit-learn (training only). The split is deterministic: scikit-learn's
``train_test_split(test_size=0.2, random_state=0, stratify=y)``; calibration uses the first
64 training images. The integer-only number runs the rewritten graph in numpy
(``ivit.evaluate``): the ai.edgec nodes in integers, the linear ops as QDQ (their integer
lowering is edgec's int8 pipeline), and with ``--tvm`` also through TVM (``edgec.lower``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
MODEL, SPLIT = DATA / "ivit_digits.onnx", DATA / "ivit_digits.npz"


def train(seed: int = 0, epochs: int = 60) -> None:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    from edgec.models.vit import DeiT

    torch.set_num_threads(1)  # a tiny model: threads only add synchronization
    digits = load_digits()
    x, y = digits.images.astype(np.uint8), digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    torch.manual_seed(seed)
    model = DeiT(img=8, patch=2, dim=32, depth=2, heads=2, mlp_ratio=2, num_classes=10)
    model.patch_embed.proj = nn.Conv2d(1, 32, 2, 2)  # grayscale
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * 23)
    xt = torch.tensor(x_tr[:, None] / 16.0, dtype=torch.float32)
    yt = torch.tensor(y_tr)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if epoch % 10 == 9:
            print(
                f"epoch {epoch + 1}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    model.eval()
    with torch.no_grad():
        acc = (model(torch.tensor(x_te[:, None] / 16.0, dtype=torch.float32)).argmax(1).numpy()
               == y_te).mean()  # fmt: skip
    print(f"torch fp32 top-1 {acc:.4f}, {time.perf_counter() - t0:.0f} s")
    DATA.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, (torch.zeros(1, 1, 8, 8),), str(MODEL), opset_version=17, dynamo=False,
        input_names=["input"], output_names=["logits"],
    )  # fmt: skip
    np.savez_compressed(SPLIT, x_test=x_te, y_test=y_te, x_calib=x_tr[:64])


def images(x: np.ndarray) -> np.ndarray:
    return (x[:, None] / 16.0).astype(np.float32)


def quantize(model: onnx.ModelProto, calib: np.ndarray) -> onnx.ModelProto:
    """int8 QDQ by onnxruntime's quantize_static (per-channel weights, MinMax calibration)."""
    from edgec.quant import quantize_qdq

    samples = ({"input": images(calib[i : i + 1])} for i in range(len(calib)))
    return quantize_qdq(model, samples, activation="int8")


def _runner(session):
    return lambda x: session.run(None, {"input": x})[0]


def top1(run, x: np.ndarray, y: np.ndarray) -> float:
    pred = [int(np.argmax(run(images(x[i : i + 1])))) for i in range(len(x))]
    return float(np.mean(np.array(pred) == y))


OFFICIAL = dict(shiftmax_shift=False, gelu_division_bits=31, gelu_offset="row_max",
                sqrt_start="fixed")  # fmt: skip


def evaluate(use_tvm: bool = False, official: bool = False) -> dict:
    from edgec import verify
    from edgec.quant import ivit

    data = np.load(SPLIT)
    fp32 = onnx.load(MODEL)
    qdq = quantize(fp32, data["x_calib"])
    result = ivit.rewrite(qdq, ivit.Options(**OFFICIAL) if official else ivit.Options())
    sessions = {"fp32": verify.ort_session(fp32), "qdq": verify.ort_session(qdq)}
    runs = {name: _runner(s) for name, s in sessions.items()}
    runs["integer"] = lambda x: ivit.evaluate(result.model, {"input": x})["logits"]
    if use_tvm:
        import tvm
        from tvm import relax

        from edgec import lower, targets

        ex, _ = lower.build(result.model, targets.get("x86_64"), 2)
        lower.set_threads(2)
        vm = relax.VirtualMachine(ex, tvm.cpu())
        runs["integer_tvm"] = lambda x: vm["main"](tvm.runtime.tensor(x)).numpy()
    acc = {name: top1(run, data["x_test"], data["y_test"]) for name, run in runs.items()}
    return {"top1": acc, "rewrites": result.stats, "declined": result.declined}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["train", "evaluate"])
    ap.add_argument("--tvm", action="store_true", help="also run the integer model through TVM")
    ap.add_argument("--official", action="store_true", help="the official kernel variants")
    args = ap.parse_args(argv)
    if args.command == "train":
        train()
    else:
        print(evaluate(args.tvm, args.official))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
