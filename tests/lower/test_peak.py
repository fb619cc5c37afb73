import json
import os

import pytest

from edgec import host
from edgec.lower import peak

KEYS = {"gflops", "threads", "method", "cpu", "seconds"}


@pytest.fixture
def counted(monkeypatch):
    """measure_peak replaced by a fake that counts its calls."""
    calls = []

    def fake(threads):
        calls.append(threads)
        return {"gflops": 123.0, "threads": threads, "method": "fake", "cpu": "x", "seconds": 0.0}

    monkeypatch.setattr(peak, "measure_peak", fake)
    return calls


def test_measure_and_cache_round_trip(tmp_path, monkeypatch):
    first = peak.cached_peak(2, cache_dir=tmp_path)  # measures (really: a few seconds)
    assert set(first) == KEYS
    assert first["threads"] == 2
    assert first["gflops"] > 10, first
    assert 0 < first["seconds"] < 30
    assert "matmul" in first["method"] and first["cpu"]

    stored = json.loads((tmp_path / "peak.json").read_text())
    assert stored == {peak.cache_key(2): first}
    assert os.listdir(tmp_path) == ["peak.json"], "temporary file left behind"

    def boom(threads):
        raise AssertionError("measured again instead of using the cache")

    monkeypatch.setattr(peak, "measure_peak", boom)
    assert peak.cached_peak(2, cache_dir=tmp_path) == first


def test_cache_is_per_thread_count_and_keeps_other_entries(tmp_path, counted):
    one = peak.cached_peak(1, cache_dir=tmp_path)
    two = peak.cached_peak(2, cache_dir=tmp_path)
    assert peak.cached_peak(1, cache_dir=tmp_path) == one
    assert peak.cached_peak(2, cache_dir=tmp_path) == two
    assert counted == [1, 2]
    stored = json.loads((tmp_path / "peak.json").read_text())
    assert set(stored) == {peak.cache_key(1), peak.cache_key(2)}
    key = peak.cache_key(2)
    assert host.cpu_name() in key and peak.host_cpu()["mcpu"] in key


def test_cache_respects_xdg_cache_home(tmp_path, monkeypatch, counted):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert peak.cache_path() == tmp_path / "xdg" / "edgec" / "peak.json"
    peak.cached_peak(2)
    assert (tmp_path / "xdg" / "edgec" / "peak.json").is_file()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert peak.cache_path() == tmp_path / "home" / ".cache" / "edgec" / "peak.json"


@pytest.mark.parametrize("content", ["{not json", "[]", '{"%s": {"gflops": 0}}'])
def test_corrupt_cache_is_remeasured_and_replaced(tmp_path, counted, content):
    path = tmp_path / "peak.json"
    path.write_text(content.replace("%s", peak.cache_key(2)))
    result = peak.cached_peak(2, cache_dir=tmp_path)
    assert counted == [2]
    assert json.loads(path.read_text()) == {peak.cache_key(2): result}


def test_unwritable_cache_still_returns_a_result(tmp_path, counted):
    blocker = tmp_path / "file"
    blocker.write_text("")  # cache_dir "file/sub" cannot be created
    assert peak.cached_peak(2, cache_dir=blocker / "sub")["gflops"] == 123.0


def test_bandwidth_measured_and_cached_beside_the_peak(tmp_path, monkeypatch, counted):
    peak.cached_peak(2, cache_dir=tmp_path)  # the fake peak: 123 GFLOP/s
    first = peak.cached_bandwidth(2, cache_dir=tmp_path)  # measures (really: about a second)
    assert set(first) == {"gbps", "threads", "method", "cpu", "seconds"}
    assert first["threads"] == 2 and 1 < first["gbps"] < 2000, first
    assert "c = a + b" in first["method"]
    stored = json.loads((tmp_path / "peak.json").read_text())
    assert set(stored) == {peak.cache_key(2), peak.bandwidth_key(2)}
    assert stored[peak.bandwidth_key(2)] == first

    def boom(threads):
        raise AssertionError("measured again instead of using the cache")

    monkeypatch.setattr(peak, "measure_bandwidth", boom)
    assert peak.cached_bandwidth(2, cache_dir=tmp_path) == first
    assert counted == [2]


def test_roofline_annotation():
    from edgec.report import roofline

    kernels = [
        {"kernel": "conv", "flops": 1000, "bytes": 10, "gflops": 50.0},  # intensity 100: compute
        {"kernel": "add", "flops": 100, "bytes": 100, "gflops": 5.0},  # intensity 1: memory
        {"kernel": "copy", "flops": 0, "bytes": 100},
    ]
    roofline.annotate(kernels, {"gflops": 200.0}, {"gbps": 20.0})
    conv, add, copy = kernels
    assert (conv["intensity"], conv["roof_gflops"], conv["bound"]) == (100.0, 200.0, "compute")
    assert conv["roof_fraction"] == 0.25
    assert (add["intensity"], add["roof_gflops"], add["bound"]) == (1.0, 20.0, "memory")
    assert add["roof_fraction"] == 0.25
    assert "intensity" not in copy
    assert roofline.ridge({"gflops": 200.0}, {"gbps": 20.0}) == 10.0
