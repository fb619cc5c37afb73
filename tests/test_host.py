from pathlib import Path

from edgec import host


def test_cache_dir_follows_xdg_and_ignores_relative_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert host.cache_dir() == tmp_path / "edgec"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec: ignore it
    assert host.cache_dir() == Path.home() / ".cache" / "edgec"


def test_cpu_name_is_not_empty():
    assert host.cpu_name().strip()
