"""The build cache: exported model libraries keyed by what determines their bytes.

The key is a sha256 over the structural hash of the final scheduled IRModule (it covers every
kernel, every chosen knob and the constants' data), the TVM target, the way the library is
linked and the TVM version. A hit skips ``tvm.compile`` and the export (LLVM code generation and
linking: most of a recompile). Entries are written to a temporary file and renamed (concurrent
compiles never see a partial library); the oldest entries go when the cache passes ``MAX_BYTES``.
``EDGEC_BUILD_CACHE=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from edgec import host

ENV = "EDGEC_BUILD_CACHE"
MAX_BYTES = 2 << 30
SUFFIX = ".so"


def directory() -> Path:
    return host.cache_dir() / "builds"


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def key(module_hash: int, target: str, linker: str, tvm_version: str) -> str:
    blob = json.dumps([str(module_hash), target, linker, tvm_version], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def lookup(k: str) -> Path | None:
    """The cached library for key ``k`` (its mtime refreshed, for eviction), or None."""
    path = directory() / f"{k}{SUFFIX}"
    try:
        os.utime(path)
    except OSError:
        return None
    return path


def store(k: str, library: Path) -> None:
    """Copy ``library`` into the cache under ``k``; a failure only costs the next compile time."""
    folder = directory()
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=SUFFIX)
        os.close(fd)
        try:
            shutil.copyfile(library, tmp)
            os.replace(tmp, folder / f"{k}{SUFFIX}")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _evict(folder, MAX_BYTES)


def _entries(folder: Path) -> list[Path]:
    return [p for p in folder.glob(f"*{SUFFIX}") if not p.name.startswith(".")]


def _evict(folder: Path, max_bytes: int) -> None:
    entries = sorted(_entries(folder), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for p in entries:
        total += p.stat().st_size
        if total > max_bytes:
            with contextlib.suppress(OSError):
                p.unlink()


def info() -> dict:
    folder = directory()
    entries = _entries(folder) if folder.is_dir() else []
    return {
        "path": str(folder),
        "entries": len(entries),
        "size_bytes": sum(p.stat().st_size for p in entries),
    }


def clear() -> int:
    """Delete every cached library; returns how many there were."""
    folder = directory()
    if not folder.is_dir():
        return 0
    entries = _entries(folder)
    for p in entries:
        with contextlib.suppress(OSError):
            p.unlink()
    return len(entries)
