"""Imports of heavy optional dependencies, without the torch they drag in.

tvm_ffi and onnxsim import torch whenever it is installed (1-4 s on this machine), for interop
(DLPack, a PPQ bridge) that edgec never uses. ``import_without_torch`` hides torch during that
one import only, so a user's later ``import torch`` still works; nothing changes when torch was
already imported.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def import_without_torch(name: str) -> ModuleType:
    if name in sys.modules or "torch" in sys.modules:
        return importlib.import_module(name)
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise
    try:
        return importlib.import_module(name)
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
