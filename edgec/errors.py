"""Errors and the exit codes they map to (documented in README.md and `edgec --help`)."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  # verification or a gate failed
    INVALID = 2  # bad usage or invalid input
    UNSUPPORTED = 3  # the model uses something edgec cannot lower
    INTERNAL = 4  # a bug in edgec or TVM: rerun with --debug and report it


class EdgecError(Exception):
    """Base class: an error the user can act on; the CLI prints it without a traceback."""

    exit_code = ExitCode.INVALID


class InvalidInputError(EdgecError):
    """Bad usage or input: missing file, not ONNX, bad shape spec, unknown target, ..."""


class UnsupportedModelError(EdgecError):
    """The model contains ops (or features) that cannot be lowered for the target."""

    exit_code = ExitCode.UNSUPPORTED

    def __init__(self, message: str, nodes: list[dict] | None = None):
        super().__init__(message)
        self.nodes = nodes or []


class VerificationError(EdgecError):
    """The compiled artifact does not match onnxruntime within tolerance."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


class GateError(EdgecError):
    """A CI gate (--max-latency-ms, --min-cosine, ...) was violated; the artifact is kept."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


class FloatOpsError(EdgecError):
    """``--integer-only``: float ops remain between the input quantize and output dequantize."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, ops: list[dict] | None = None):
        super().__init__(message)
        self.ops = ops or []
