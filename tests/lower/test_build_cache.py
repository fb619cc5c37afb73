"""The build cache (edgec.lower.build_cache) and the torch-free imports of TVM and onnxsim."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgec import frontend, lower, targets, verify
from edgec.lower import build_cache
from tests.conftest import conv_relu_model


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(build_cache.ENV, raising=False)
    return tmp_path / "xdg" / "edgec" / "builds"


def _build_and_run(model, path: Path) -> tuple[lower.Library, np.ndarray]:
    target = targets.get("x86_64")
    library, _ = lower.build(model, target, threads=1)
    lower.export(library, path, target)
    inputs, _ = frontend.signature(model)
    feeds = verify.random_inputs(inputs, seed=0)
    (y,) = lower.Runtime(path, 1).run([feeds[s.name] for s in inputs])
    return library, y


def _static_conv_relu(scale: float = 1.0):
    model = conv_relu_model(dynamic_batch=False)
    w = model.graph.initializer[0]
    arr = np.frombuffer(w.raw_data, np.float32) * scale
    w.raw_data = arr.astype(np.float32).tobytes()
    return model


def test_second_build_is_a_cache_hit_without_tvm_compile(cache_home, tmp_path, monkeypatch):
    model = _static_conv_relu()
    first, y1 = _build_and_run(model, tmp_path / "a.so")
    assert first.cached is None and first.key is not None
    assert build_cache.info()["entries"] == 1 and cache_home.is_dir()

    def no_compile(*_, **__):
        raise AssertionError("tvm.compile called on a cache hit")

    monkeypatch.setattr(lower._tvm(), "compile", no_compile)
    second, y2 = _build_and_run(model, tmp_path / "b.so")
    assert second.cached is not None and second.cached.parent == cache_home
    assert (tmp_path / "a.so").read_bytes() == (tmp_path / "b.so").read_bytes()
    np.testing.assert_array_equal(y1, y2)


def test_other_weights_miss_the_cache(cache_home, tmp_path):
    _build_and_run(_static_conv_relu(), tmp_path / "a.so")
    other, y = _build_and_run(_static_conv_relu(scale=2.0), tmp_path / "b.so")
    assert other.cached is None and build_cache.info()["entries"] == 2
    _, y1 = _build_and_run(_static_conv_relu(), tmp_path / "c.so")
    assert not np.array_equal(y, y1)


def test_disabled_by_environment(cache_home, tmp_path, monkeypatch):
    monkeypatch.setenv(build_cache.ENV, "0")
    library, _ = _build_and_run(_static_conv_relu(), tmp_path / "a.so")
    assert library.key is None and library.cached is None
    assert build_cache.info()["entries"] == 0


def test_eviction_keeps_the_newest(cache_home, tmp_path):
    cache_home.mkdir(parents=True)
    import os

    for i, name in enumerate("abc"):
        p = cache_home / f"{name}.so"
        p.write_bytes(b"x" * 100)
        os.utime(p, (1000 + i, 1000 + i))
    build_cache._evict(cache_home, max_bytes=250)
    assert sorted(p.name for p in cache_home.iterdir()) == ["b.so", "c.so"]
    assert build_cache.lookup("a") is None and build_cache.lookup("c") is not None


def test_cache_info_and_clear_cover_builds(cli, cache_home, tmp_path):
    _build_and_run(_static_conv_relu(), tmp_path / "a.so")
    info = json.loads(cli("cache", "info", "--json").out)["builds"]
    assert info["entries"] == 1 and info["size_bytes"] > 0 and info["path"] == str(cache_home)
    assert "builds:  1 libraries" in cli("cache", "info").out
    assert cli("cache", "clear").code == 2  # not a terminal, no --yes
    r = cli("cache", "clear", "--yes")
    assert r.code == 0 and "1 library deleted" in r.out
    assert build_cache.info()["entries"] == 0


@pytest.mark.parametrize("module", ["tvm", "onnxsim"])
def test_imports_do_not_load_torch(module):
    code = (
        "import sys; from edgec._imports import import_without_torch as i; "
        f"i({module!r}); assert 'torch' not in sys.modules, 'torch imported'; "
        "import torch; print(torch.__version__)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("2.")
