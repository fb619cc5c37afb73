"""What a pass is: a named, documented rewrite of an ONNX model that reports what it changed."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import onnx


@dataclasses.dataclass
class PassResult:
    model: onnx.ModelProto
    stats: dict[str, int]  # applications per rule; all zero (or empty) = nothing changed
    declined: list[str] = dataclasses.field(default_factory=list)  # near-matches refused, why

    @property
    def changed(self) -> bool:
        return any(self.stats.values())


class Pass(Protocol):
    name: str
    summary: str  # one line, for `edgec passes`

    def __call__(self, model: onnx.ModelProto) -> PassResult: ...
