"""Model zoo: hand-written, randomly initialized reference models and their ONNX export.

Importing this package does not import torch; `build` and `export` do.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pathlib
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "ZOO",
    "ZooModel",
    "build",
    "example_input",
    "export",
    "finish_init",
    "get",
    "names",
    "randomize_batchnorm",
]


def _lazy(target: str) -> Callable[[], torch.nn.Module]:
    """A builder that imports "module:function" (relative to this package) on first call."""
    module, func = target.split(":")

    def builder() -> torch.nn.Module:
        return getattr(importlib.import_module(f"{__name__}.{module}"), func)()

    builder.__qualname__ = builder.__name__ = func
    return builder


@dataclass(frozen=True)
class ZooModel:
    name: str
    description: str
    kind: str  # "cnn" or "vit"
    input_shape: tuple[int, ...]  # NCHW, batch 1
    build: Callable[[], torch.nn.Module]  # raw constructor; use `edgec.models.build` instead


IMAGENET = (1, 3, 224, 224)


ZOO: tuple[ZooModel, ...] = (
    ZooModel(
        "resnet18",
        "ResNet-18, 11.7M params",
        "cnn",
        IMAGENET,
        _lazy("resnet:resnet18"),
    ),
    ZooModel(
        "mobilenetv2",
        "MobileNetV2 1.0, 3.5M params",
        "cnn",
        IMAGENET,
        _lazy("mobilenet:mobilenetv2"),
    ),
    ZooModel(
        "repvgg_a0",
        "RepVGG-A0 train form (3x3+BN, 1x1+BN, identity BN branches), 9.1M params",
        "cnn",
        IMAGENET,
        _lazy("repvgg:repvgg_a0"),
    ),
    ZooModel(
        "repvgg_a0_deploy",
        "RepVGG-A0 deploy form (one 3x3 conv+bias per block), 8.3M params",
        "cnn",
        IMAGENET,
        _lazy("repvgg:repvgg_a0_deploy"),
    ),
    ZooModel(
        "mobileone_s0",
        "MobileOne-S0 train form (k=4 conv branches + 1x1 scale + identity BN), 5.3M params",
        "cnn",
        IMAGENET,
        _lazy("mobileone:mobileone_s0"),
    ),
    ZooModel(
        "mobileone_s0_deploy",
        "MobileOne-S0 deploy form (one conv per block), 2.1M params",
        "cnn",
        IMAGENET,
        _lazy("mobileone:mobileone_s0_deploy"),
    ),
    ZooModel(
        "deit_tiny",
        "DeiT-tiny ViT (patch 16, dim 192, depth 12, heads 3, erf GELU), 5.7M params",
        "vit",
        IMAGENET,
        _lazy("vit:deit_tiny"),
    ),
    ZooModel(
        "slab_tiny",
        "SLAB-style ViT, RepBN norms + ReLU linear attention (dim 192, depth 4), 2.2M params",
        "vit",
        IMAGENET,
        _lazy("vit:slab_tiny"),
    ),
)


def names() -> list[str]:
    return [m.name for m in ZOO]


def get(name: str) -> ZooModel:
    for m in ZOO:
        if m.name == name:
            return m
    raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(names())}")


def randomize_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm non-trivial eval statistics and affine params (global torch RNG)."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.1)
    return model


def finish_init(model: torch.nn.Module) -> torch.nn.Module:
    """`randomize_batchnorm`, then the model's own `rescale_init_()` hook if it has one."""
    randomize_batchnorm(model)
    rescale = getattr(model, "rescale_init_", None)
    if rescale is not None:
        rescale()
    return model


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """Build zoo model `name` with random init from `seed`, in eval mode.

    Deploy forms (`*_deploy`) are the exact re-parameterization of their train form built with
    the same seed, so both compute the same function.
    """
    import torch

    spec = get(name)
    torch.manual_seed(seed)
    model = finish_init(spec.build())
    return model.eval()


def example_input(name: str, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """The deterministic N(0, 1) input used by `export` for tracing."""
    import torch

    shape = (batch, *get(name).input_shape[1:])
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence torch.onnx's known noise: the legacy-exporter deprecation, torch-internal
    pytree FutureWarnings and the "torchvision is not installed" registry log lines."""
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        registry_log.setLevel(level)


def _export_to(model: torch.nn.Module, x: Any, path: str, opset: int, dynamo: bool) -> None:
    import torch

    names_kw: dict[str, Any] = {"input_names": ["input"], "output_names": ["output"]}
    with torch.no_grad(), _quiet_exporter():
        if dynamo:
            # The dynamo exporter emits opset >= 18 (its torchlib opset); lower requests get 18.
            program = torch.onnx.export(
                model, (x,), dynamo=True, opset_version=max(opset, 18), verbose=False, **names_kw
            )
            assert program is not None
            program.save(path, external_data=False)
        else:
            torch.onnx.export(
                model,
                (x,),
                path,
                dynamo=False,
                opset_version=opset,
                do_constant_folding=True,
                **names_kw,
            )


def export(
    name: str,
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    dynamo: bool = False,
    seed: int = 0,
    batch: int = 1,
) -> pathlib.Path:
    """Export `build(name, seed)` to ONNX at `path` (atomically); returns the path.

    dynamo=False uses the TorchScript exporter at `opset`; dynamo=True uses torch.export and
    produces opset max(opset, 18).
    """
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = build(name, seed)
    x = example_input(name, seed, batch)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        _export_to(model, x, tmp, opset, dynamo)
        os.replace(tmp, out)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return out
