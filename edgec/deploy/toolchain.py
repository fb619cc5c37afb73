"""The tools that build and run code for a target: cross compilers, the Android NDK, qemu-user."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgec.errors import InvalidInputError
from edgec.targets import Target

NDK_API = 24  # oldest Android API level the NDK compilers are picked for (Android 7)
_INSTALL = "run `make cross-toolchain` (apt-get install g++-aarch64-linux-gnu qemu-user)"


def ndk_root(ndk: str | os.PathLike | None = None) -> Path:
    """The Android NDK: ``ndk`` (--ndk), else $ANDROID_NDK_HOME; InvalidInputError if missing."""
    given = str(ndk) if ndk else os.environ.get("ANDROID_NDK_HOME", "")
    if not given:
        raise InvalidInputError(
            "this target needs the Android NDK: pass --ndk PATH or set ANDROID_NDK_HOME "
            "(neither is set); get it from https://developer.android.com/ndk/downloads"
        )
    root = Path(given)
    if not root.is_dir():
        raise InvalidInputError(f"Android NDK not found: {root} is not a directory")
    return root


def ndk_compiler(ndk: str | os.PathLike | None = None) -> str:
    """NDK clang++ for aarch64 Android at API level NDK_API (or the lowest one above it)."""
    root = ndk_root(ndk)
    bindir = root / "toolchains" / "llvm" / "prebuilt" / "linux-x86_64" / "bin"
    found = sorted(
        (int(p.name.removeprefix("aarch64-linux-android").removesuffix("-clang++")), p)
        for p in bindir.glob("aarch64-linux-android*-clang++")
        if p.name.removeprefix("aarch64-linux-android").removesuffix("-clang++").isdigit()
    )
    usable = [p for api, p in found if api >= NDK_API] or [p for _, p in found]
    if not usable:
        raise InvalidInputError(
            f"{root} is not an Android NDK: no {bindir.relative_to(root)}/"
            "aarch64-linux-android<API>-clang++"
        )
    return str(usable[0])


def compiler(target: Target, ndk: str | os.PathLike | None = None) -> str:
    """The C++ compiler that links libraries and edgec-run for ``target``."""
    if target.toolchain == "ndk":
        return ndk_compiler(ndk)
    path = shutil.which(target.toolchain)
    if path is None and not target.cross:  # on the board itself: its native g++
        path = shutil.which("g++")
    if path is None:
        raise InvalidInputError(f"{target.toolchain} not found (for {target.name}): {_INSTALL}")
    return path


def sysroot(target: Target) -> Path:
    """Where Debian's cross packages put the target's libc and libstdc++."""
    return Path("/usr") / target.mtriple


def emulator(target: Target) -> list[str] | None:
    """The command prefix that runs ``target``'s Linux binaries here, or None if not installed."""
    if not target.emulator:
        return None
    path = shutil.which(target.emulator)
    return [path, "-L", str(sysroot(target))] if path else None


def require_emulator(target: Target) -> list[str]:
    cmd = emulator(target)
    if cmd is None:
        raise InvalidInputError(f"{target.emulator} not found (to run {target.name}): {_INSTALL}")
    return cmd
