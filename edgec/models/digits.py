"""Two small classifiers trained on scikit-learn's bundled digits (8x8 grey images, 10 classes).

They are the int8 accuracy testbed (tests/quant, docs/BENCHMARKS.md "int8 accuracy (digits)"):
``digits_cnn`` (3 Conv+BN+ReLU, max pool, global pool, Linear) and ``digits_mobilenet``
(MobileNet-style: depthwise separable blocks with BN and ReLU6, one inverted residual).

    python -m edgec.models.digits OUT_DIR      # trains both (< 1 min on 2 cores), exports ONNX

The ONNX files keep their BatchNormalization nodes (exported in eval mode without constant
folding): data-free quantization reads the BN statistics. The split is deterministic:
``split()`` returns the same held-out test set on every machine. Inputs are
``(pixel / 16 - 0.5) / 0.5`` (``normalize``), shape [1, 1, 8, 8].
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

import numpy as np

NAMES = ("digits_cnn", "digits_mobilenet")
TEST_FRACTION = 0.2
SPLIT_SEED = 0
INPUT_SHAPE = (1, 1, 8, 8)


def normalize(pixels: np.ndarray) -> np.ndarray:
    """sklearn digits pixels (0..16) -> the models' input scale (about [-1, 1])."""
    return ((np.asarray(pixels, np.float32) / 16.0 - 0.5) / 0.5).astype(np.float32)


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): normalized [K, 1, 8, 8] float32 images and labels,
    split by a seeded permutation (the same on every machine)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = normalize(data.images).reshape(-1, 1, 8, 8)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_test = int(round(len(y) * TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _build(name: str):
    from torch import nn

    def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act=nn.ReLU):
        return [
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            act(),
        ]

    if name == "digits_cnn":
        return nn.Sequential(
            *cbr(1, 16), *cbr(16, 32), nn.MaxPool2d(2), *cbr(32, 32),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
        )  # fmt: skip
    if name == "digits_mobilenet":

        class MobileNet(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.stem, self.down, self.block, self.head = _mobilenet_layers()

            def forward(self, x):
                x = self.down(self.stem(x))
                return self.head(x + self.block(x))  # the inverted residual

        return MobileNet()
    raise ValueError(f"unknown digits model {name!r}; known: {', '.join(NAMES)}")


def _mobilenet_layers():
    from torch import nn

    def cbr6(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        return [
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        ]

    stem = nn.Sequential(*cbr6(1, 16, 3), *cbr6(16, 16, 3, groups=16), *cbr6(16, 32, 1))
    down = nn.Sequential(*cbr6(32, 32, 3, 2, groups=32), *cbr6(32, 48, 1))
    # inverted residual: 1x1 expand, 3x3 depthwise, 1x1 linear projection, + input
    block = nn.Sequential(
        *cbr6(48, 96, 1), *cbr6(96, 96, 3, groups=96), nn.Conv2d(96, 48, 1, bias=False),
        nn.BatchNorm2d(48),
    )  # fmt: skip
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10))
    return stem, down, block, head


def train(name: str, *, epochs: int = 15, seed: int = 0, log=print):
    """Train ``name`` on the training split (Adam, cross-entropy); returns the eval-mode module
    and its test accuracy."""
    import torch

    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = split()
    model = _build(name)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(yt), generator=gen).split(128):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        sched.step()
        if (epoch + 1) % 5 == 0:
            log(f"{name}: epoch {epoch + 1}/{epochs}, loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    return model, acc


def export(model, path: str | os.PathLike) -> pathlib.Path:
    """Export to ONNX (opset 17, input ``input`` [1, 1, 8, 8], output ``output`` [1, 10]) with
    the BatchNormalization nodes kept."""
    import torch

    from edgec.models import _quiet_exporter

    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), _quiet_exporter():
        torch.onnx.export(
            model, (torch.zeros(INPUT_SHAPE),), str(out), dynamo=False, opset_version=17,
            do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE,
            input_names=["input"], output_names=["output"],
        )  # fmt: skip
    return out


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)
    out = pathlib.Path(argv[0] if argv else "tests/quant/data")
    for name in NAMES:
        t0 = time.perf_counter()
        model, acc = train(name)
        path = export(model, out / f"{name}.onnx")
        print(
            f"{name}: test top-1 {acc:.4f}, trained in {time.perf_counter() - t0:.1f} s -> {path}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
