"""Compilation targets, declared as data.

A target names the machine code to emit (LLVM triple, CPU, features) and how the artifact can be
run from this machine. ``mcpu="host"`` means "the CPU edgec runs on", resolved by the lowering
(TVM 0.27 rejects ``mcpu=native``).

GPU targets (``device`` "cuda" / "opencl") describe the GPU (``gpu``: CUDA arch or OpenCL
device) and the CPU that hosts it (the other fields). ``toolchain`` is the C++ compiler that links
the library and the deploy runner (``edgec.deploy``); ``emulator`` runs the target's code here.
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
    device: str = "cpu"  # "cpu" | "cuda" | "opencl"
    gpu: str = ""  # CUDA arch ("sm_80") or OpenCL device ("mali", "adreno")
    toolchain: str = "g++"  # C++ compiler (PATH name) for the library and edgec-run; "ndk": NDK
    emulator: str = ""  # runs the target's CPU code on this machine (qemu-user), if any

    @property
    def runs_here(self) -> bool:
        """The artifact can be executed natively on this machine."""
        return self.device == "cpu" and self.arch == platform.machine()

    @property
    def cross(self) -> bool:
        """The library is built for another CPU architecture or OS than this machine's."""
        return self.arch != platform.machine() or self.toolchain == "ndk"

    @property
    def int8_dot(self) -> str:
        """The int8 dot-product instructions LLVM may emit for this target ("" if none)."""
        if "+dotprod" in self.mattr or self.mcpu in _DOTPROD_CPUS:
            return "sdot/udot"
        return "VNNI" if "avx512vnni" in self.requires else ""

    def support(self, host_can_run: bool | None = None, emulator_found: bool = False) -> str:
        """How edgec verifies artifacts for this target on this machine, in words."""
        if self.device != "cpu":
            check = "cubin validated by nvcc" if self.device == "cuda" else "source only"
            gpu = "an NVIDIA" if self.device == "cuda" else f"an OpenCL ({self.gpu})"
            return f"compile-only here ({check}); runs on {gpu} GPU"
        if self.runs_here:
            ok = host_can_run in (None, True)
            return "runs here" if ok else "compile-only (this CPU lacks its features)"
        if self.emulator:
            state = "" if emulator_found else f", needs {self.emulator}: make cross-toolchain"
            return f"emulated ({self.emulator}: correctness only{state})"
        return "compile-only (run on the device: edgec bench --rpc)"

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

_DOTPROD_CPUS = ("cortex-a55", "cortex-a76", "cortex-a77", "cortex-a78", "neoverse-n1")
_ARM64 = dict(arch="aarch64", mtriple="aarch64-linux-gnu", mattr=("+neon",),
              toolchain="aarch64-linux-gnu-g++", emulator="qemu-aarch64")  # fmt: skip
_X86_HOST = dict(arch="x86_64", mtriple="x86_64-linux-gnu", mcpu="host")

TARGETS += (
    Target("arm64", "64-bit ARM Linux (aarch64-linux-gnu), any ARMv8-A CPU", mcpu="generic",
           **_ARM64),
    Target("arm64/cortex-a53", "Cortex-A53 boards (Raspberry Pi 3, many SBCs)",
           mcpu="cortex-a53", **_ARM64),
    Target("arm64/cortex-a76", "Cortex-A76 and newer (ARMv8.2 with int8 dot products)",
           mcpu="cortex-a76", **{**_ARM64, "mattr": ("+neon", "+dotprod")}),
    Target("arm64/rpi4", "Raspberry Pi 4 (BCM2711, 4x Cortex-A72)", mcpu="cortex-a72", **_ARM64),
    Target("arm64/rk3588", "Rockchip RK3588 (4x Cortex-A76 + 4x A55; both have dotprod)",
           mcpu="cortex-a76", **{**_ARM64, "mattr": ("+neon", "+dotprod")}),
    Target("android-arm64", "Android on 64-bit ARM (NDK clang: --ndk PATH or ANDROID_NDK_HOME)",
           arch="aarch64", mtriple="aarch64-linux-android", mcpu="generic", mattr=("+neon",),
           toolchain="ndk"),
    Target("cuda", "NVIDIA GPU, CUDA sm_75 baseline (Turing and newer)", device="cuda",
           gpu="sm_75", **_X86_HOST),
    *(
        Target(f"cuda/{sm}", f"NVIDIA GPU, CUDA {sm} ({what})", device="cuda", gpu=sm,
               **_X86_HOST)
        for sm, what in (("sm_75", "Turing: T4, RTX 20xx"), ("sm_80", "Ampere: A100"),
                         ("sm_86", "Ampere: RTX 30xx, A10"), ("sm_89", "Ada: L4, RTX 40xx"),
                         ("sm_90", "Hopper: H100"))
    ),
    Target("opencl/mali", "ARM Mali GPU via OpenCL, on an aarch64 Linux board", device="opencl",
           gpu="mali", mcpu="generic", **{**_ARM64, "emulator": ""}),
    Target("opencl/adreno", "Qualcomm Adreno GPU via OpenCL, on Android (needs the NDK)",
           device="opencl", gpu="adreno", arch="aarch64", mtriple="aarch64-linux-android",
           mcpu="generic", mattr=("+neon",), toolchain="ndk"),
)  # fmt: skip

ALIASES: dict[str, str] = {"host": "x86_64", "aarch64": "arm64", "opencl": "opencl/mali"}


def get(name: str) -> Target:
    """The target called ``name`` (or an alias of it); InvalidInputError if unknown."""
    name = ALIASES.get(name, name)
    for target in TARGETS:
        if target.name == name:
            return target
    known = ", ".join([t.name for t in TARGETS] + list(ALIASES))
    raise InvalidInputError(f"unknown target {name!r}; known targets: {known}")
