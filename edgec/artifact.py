"""The artifact directory: written whole or not at all, and read back with its manifest.

Layout of OUT/: ``model.so`` (the compiled library), ``model.onnx`` (the graph that was lowered,
after the passes), ``manifest.json`` (what the library is and how it was made) and
``report.json`` (verification and latency, see docs/report.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from edgec.errors import InvalidInputError

FORMAT = "edgec.artifact/1"
LIBRARY = "model.so"
ONNX = "model.onnx"
MANIFEST = "manifest.json"
REPORT = "report.json"


def check_destination(out: Path, force: bool) -> None:
    """Refuse an existing OUT without --force (before any work is done)."""
    if out.exists() or out.is_symlink():
        if not force:
            raise InvalidInputError(f"{out} already exists; pass --force to replace it")
        if not out.is_dir():
            raise InvalidInputError(f"{out} exists and is not a directory; not replacing it")


@contextlib.contextmanager
def staging(out: Path, force: bool) -> Iterator[Path]:
    """A temp dir beside ``out``, renamed to ``out`` only if the block completes."""
    check_destination(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Above this a model no longer fits one protobuf (2 GiB): weights go to ``NAME.data`` beside it.
_PROTOBUF_LIMIT = 2**31 - 2**26


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Write an ONNX model atomically (temp file + rename), with external data when too big."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if model.ByteSize() > _PROTOBUF_LIMIT:
            onnx.save(model, tmp, save_as_external_data=True, location=f"{path.name}.data")
        else:
            onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_manifest(out: Path) -> dict:
    """The manifest of an artifact directory, checked for completeness."""
    out = Path(out)
    path = out / MANIFEST
    if not out.is_dir():
        raise InvalidInputError(f"{out}: no such artifact directory")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidInputError(
            f"{out}: not an edgec artifact (cannot read {MANIFEST}: {e})"
        ) from e
    if manifest.get("format") != FORMAT:
        raise InvalidInputError(
            f"{out}: unsupported artifact format {manifest.get('format')!r} (expected {FORMAT})"
        )
    if not (out / manifest["library"]).is_file():
        raise InvalidInputError(f"{out}: library {manifest['library']} is missing")
    return manifest
