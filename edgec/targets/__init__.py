"""Compilation targets, declared as data.

A target names the machine code to emit (LLVM triple, CPU, features) and how the artifact can be
run from this machine. ``mcpu="host"`` means "the CPU edgec runs on", resolved by the lowering
(TVM 0.27 rejects ``mcpu=native``).
"""

from __future__ import annotations

import dataclasses
import platform

from edgec.errors import InvalidInputError


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str  # "x86_64" | "aarch64"
    mtriple: str
    mcpu: str  # an LLVM CPU name, or "host"
    mattr: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()  # CPU features (LLVM names) a machine needs to run the code

    @property
    def runs_here(self) -> bool:
        """The artifact can be executed natively on this machine."""
        return self.arch == platform.machine()

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


TARGETS: tuple[Target, ...] = (
    Target(
        "x86_64",
        "this machine's x86-64 CPU (detected: CPU model and SIMD features)",
        arch="x86_64",
        mtriple="x86_64-linux-gnu",
        mcpu="host",
    ),
    Target(
        "x86_64-avx2",
        "portable x86-64 with AVX2+FMA (Haswell and newer, Zen and newer)",
        arch="x86_64",
        mtriple="x86_64-linux-gnu",
        mcpu="haswell",
        requires=("avx2", "fma"),
    ),
    Target(
        "x86_64-avx512",
        "x86-64 with AVX-512 (Skylake-SP and newer, Zen 4 and newer)",
        arch="x86_64",
        mtriple="x86_64-linux-gnu",
        mcpu="skylake-avx512",
        requires=("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"),
    ),
)

ALIASES: dict[str, str] = {"host": "x86_64"}


def get(name: str) -> Target:
    """The target called ``name`` (or an alias of it); InvalidInputError if unknown."""
    name = ALIASES.get(name, name)
    for target in TARGETS:
        if target.name == name:
            return target
    known = ", ".join([t.name for t in TARGETS] + list(ALIASES))
    raise InvalidInputError(f"unknown target {name!r}; known targets: {known}")
