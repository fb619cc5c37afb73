"""Facts about the machine edgec runs on, shared by the tuning cache and the peak probe."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edgec``, or ``~/.cache/edgec`` (a relative XDG path is ignored)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "edgec"


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo reports it (platform.processor() elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Processor", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU feature flags /proc/cpuinfo lists (x86 "flags", ARM "Features"); empty elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return set(value.split())
    return set()
