"""The latency-measured kernel search (edgec.search) and its tuning cache.

Most tests replace the TVM half (``edgec.lower.measure.measure`` / ``outputs``) with fakes that
return fixed times and outputs, so they test the search logic in milliseconds; one test runs a
real search on a tiny conv model, one measures real candidates directly.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgec
from edgec import search
from edgec.lower import measure, metaschedule
from tests.conftest import RNG_SEED, make_model

SHAPE = {"x": (1, 3, 16, 16)}


def two_conv_model() -> onnx.ModelProto:
    """Conv 3->8 + Relu, then Conv 8->16: two kernels, the second with 5x the FLOPs."""
    rng = np.random.default_rng(RNG_SEED)
    return make_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        two (float[1,3,16,16] x) => (float[1,16,16,16] y) {
            a = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
            r = Relu (a)
            y = Conv <pads = [1, 1, 1, 1]> (r, W2, B2)
        }
        """,
        W1=rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        B1=rng.standard_normal(8).astype(np.float32),
        W2=(rng.standard_normal((16, 8, 3, 3)) / 8).astype(np.float32),
        B2=rng.standard_normal(16).astype(np.float32),
    )


@pytest.fixture
def two_conv(tmp_path: Path) -> Path:
    path = tmp_path / "two_conv.onnx"
    onnx.save(two_conv_model(), path)
    return path


class Fake:
    """Stands in for edgec.lower.measure: times from ``times(task, knobs)`` (seconds; an
    exception raises), outputs equal for every candidate unless ``wrong(task, knobs)``."""

    def __init__(self, monkeypatch, times=None, wrong=None, sleep=0.0, ms_found=None):
        self.calls: list[tuple[str, dict, dict]] = []  # (kernel, knobs, kwargs)
        self.checks: list[tuple[str, dict]] = []
        self.times = times or self.by_position
        self.wrong = wrong or (lambda task, knobs: False)
        self.sleep = sleep
        monkeypatch.setattr(measure, "measure", self.measure)
        monkeypatch.setattr(measure, "outputs", self.outputs)
        self.metaschedule: list = []  # the PrimFuncs MetaSchedule was asked to tune
        # what MetaSchedule returns (an exception: raised; by default it finds nothing)
        self.ms_found = RuntimeError("fake: nothing found") if ms_found is None else ms_found
        monkeypatch.setattr(metaschedule, "tune", self.tune)

    def tune(self, func, target, **kw) -> list[dict]:
        self.metaschedule.append(func)
        if isinstance(self.ms_found, BaseException):
            raise self.ms_found
        return self.ms_found

    @staticmethod
    def by_position(task, knobs) -> float:
        """Default 1 ms; each later candidate of the space a little faster: the last wins."""
        return 1e-3 / (1 + task.space.index(knobs))

    def measure(self, task, knobs, target, **kw) -> float:
        self.calls.append((task.name, knobs, kw))
        if self.sleep:
            time.sleep(self.sleep)
        result = self.times(task, knobs)
        if isinstance(result, BaseException):
            raise result
        return result

    def outputs(self, task, knobs, target, **kw) -> list[np.ndarray]:
        self.checks.append((task.name, knobs))
        out = np.arange(12, dtype=np.float32)
        return [out + 1 if self.wrong(task, knobs) else out]


def compile_(model, out, db, search_mode="fast", budget=None, log=None):
    # the knob search alone: conv algorithms (auto) are tested in tests/lower/test_conv_algos.py
    return edgec.compile(
        model, out, input_shapes=SHAPE, bench=False, search=search_mode, search_budget_s=budget,
        tuning_db=db, log=log or (lambda _: None), conv_algo="direct", bundle=False,
    ).report  # fmt: skip


def conv_kernels(report: dict) -> list[dict]:
    return [k for k in report["kernels"] if k.get("template") == "conv2d"]


@pytest.fixture
def tasks_spy(monkeypatch):
    """Record the tasks the search receives (kernel name -> measure.Task)."""
    seen: dict[str, measure.Task] = {}
    real = measure.kernel_tasks

    def spy(mod, lanes):
        tasks = real(mod, lanes)
        seen.update({t.name: t for t in tasks})
        return tasks

    monkeypatch.setattr(measure, "kernel_tasks", spy)
    return seen


# --------------------------------------------------------------------------------------------
# the search logic, with fake measurements


def test_search_picks_the_fastest_candidate_biggest_kernel_first(
    two_conv, tmp_path, monkeypatch, tasks_spy
):
    fake = Fake(monkeypatch)
    report = compile_(two_conv, tmp_path / "out", tmp_path / "t.db")
    kernels = conv_kernels(report)
    assert len(kernels) == 2
    for k in kernels:
        task = tasks_spy[k["kernel"]]
        assert k["knobs"] == task.space[-1]  # the fake's fastest
        assert len(k["candidates"]) == len(task.space)
        assert k["ms"] == pytest.approx(1.0 / len(task.space))
        assert k["candidates"][0]["knobs"] == k["knobs"]  # sorted fastest first
    # the first measurement is the biggest kernel's default
    big = max(kernels, key=lambda k: k["flops"])
    assert fake.calls[0][:2] == (big["kernel"], tasks_spy[big["kernel"]].default)
    s = report["search"]
    assert s["mode"] == "fast" and s["budget_s"] == search.DEFAULT_BUDGET_S
    assert s["kernels_measured"] == 2 and s["cache_hits"] == 0
    assert s["candidates_tried"] == len(fake.calls) == sum(len(k["candidates"]) for k in kernels)
    assert report["verification"]["passed"]  # the chosen knobs compile into a correct model
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["search"] == json.loads(json.dumps(s))


def test_crashing_candidate_scores_infinity_and_the_search_goes_on(
    conv_relu, tmp_path, monkeypatch, tasks_spy
):
    def times(task, knobs):
        i = task.space.index(knobs)
        if i == len(task.space) - 1:
            return RuntimeError("candidate crashed")  # would be the fastest
        return 1e-3 / (1 + i)

    fake = Fake(monkeypatch, times=times)
    (k,) = conv_kernels(compile_(conv_relu, tmp_path / "out", tmp_path / "t.db"))
    space = tasks_spy[k["kernel"]].space
    assert len(fake.calls) == len(space)  # every candidate after the crash was still tried
    assert k["knobs"] == space[-2]
    (crashed,) = [c for c in k["candidates"] if c["knobs"] == space[-1]]
    assert crashed["ms"] is None and "RuntimeError: candidate crashed" in crashed["error"]


def test_wrong_result_candidate_is_rejected(conv_relu, tmp_path, monkeypatch, tasks_spy):
    db = tmp_path / "t.db"
    fake = Fake(monkeypatch, wrong=lambda task, knobs: knobs == task.space[-1])
    (k,) = conv_kernels(compile_(conv_relu, tmp_path / "out", db))
    space = tasks_spy[k["kernel"]].space
    assert k["knobs"] == space[-2]  # the next fastest, checked
    (bad,) = [c for c in k["candidates"] if c["knobs"] == space[-1]]
    assert bad["ms"] is None and bad["error"].startswith("wrong result")
    # checked against the default's outputs: the default, the wrong one, the next one
    assert [knobs for _, knobs in fake.checks] == [space[0], space[-1], space[-2]]
    # the rejection is cached too: a second compile measures nothing and keeps the verdict
    fake.calls.clear()
    (k2,) = conv_kernels(compile_(conv_relu, tmp_path / "out2", db))
    assert fake.calls == [] and k2["knobs"] == space[-2]


def test_default_wins_without_a_check(conv_relu, tmp_path, monkeypatch):
    fake = Fake(monkeypatch, times=lambda task, knobs: 1e-3 * (1 + task.space.index(knobs)))
    (k,) = conv_kernels(compile_(conv_relu, tmp_path / "out", tmp_path / "t.db"))
    assert fake.checks == []  # nothing to verify when the default is fastest
    assert k["candidates"][0]["knobs"] == k["knobs"]


def test_warm_cache_measures_nothing(two_conv, tmp_path, monkeypatch):
    db = tmp_path / "t.db"
    fake = Fake(monkeypatch)
    first = compile_(two_conv, tmp_path / "a", db)
    assert fake.calls
    fake.calls.clear()
    fake.checks.clear()
    lines: list[str] = []
    second = compile_(two_conv, tmp_path / "b", db, log=lines.append)
    assert fake.calls == [] and fake.checks == []
    s = second["search"]
    assert s["cache_hits"] == 2 and s["kernels_measured"] == 0 and s["candidates_tried"] == 0
    assert [k["knobs"] for k in conv_kernels(second)] == [k["knobs"] for k in conv_kernels(first)]
    assert [k["candidates"] for k in conv_kernels(second)] == [
        k["candidates"] for k in conv_kernels(first)
    ]
    assert sum("cached" in line for line in lines) == 2
    # another thread count is another target: measured again
    edgec.compile(two_conv, tmp_path / "c", input_shapes=SHAPE, bench=False, search="fast",
                  tuning_db=db, threads=1)  # fmt: skip
    assert fake.calls


def test_full_times_the_top_three_again(conv_relu, tmp_path, monkeypatch, tasks_spy):
    def times(task, knobs):
        return 1e-3 / (1 + task.space.index(knobs))

    fake = Fake(monkeypatch, times=times)
    report = compile_(conv_relu, tmp_path / "out", tmp_path / "t.db", search_mode="full")
    (k,) = conv_kernels(report)
    space = tasks_spy[k["kernel"]].space
    refined = [(knobs, kw) for _, knobs, kw in fake.calls if kw]
    assert [knobs for knobs, _ in refined] == [space[-1], space[-2], space[-3]]
    assert all(kw["repeat"] == search.REFINE_REPEAT for _, kw in refined)
    assert len(fake.calls) == len(space) + 3
    assert report["search"]["budget_s"] == search.DEFAULT_BUDGET_S_FULL
    assert sum(bool(c.get("refined")) for c in k["candidates"]) == 3
    # a fast compile on top of a full entry is a cache hit; full on a fast entry only refines
    fake.calls.clear()
    compile_(conv_relu, tmp_path / "out2", tmp_path / "t.db")
    assert fake.calls == []
    compile_(conv_relu, tmp_path / "out3", tmp_path / "u.db")
    fake.calls.clear()
    compile_(conv_relu, tmp_path / "out4", tmp_path / "u.db", search_mode="full")
    assert len(fake.calls) == 3 and all(kw for _, _, kw in fake.calls)


def test_full_adds_metaschedule_whose_schedule_can_win(conv_relu, tmp_path, monkeypatch):
    trace = {"metaschedule": "FAKE-TRACE"}

    def times(task, knobs):
        return 1e-5 if "metaschedule" in knobs else 1e-3 / (1 + task.space.index(knobs))

    fake = Fake(monkeypatch, times=times, ms_found=[trace])
    replayed = []

    def apply(func, t):  # a replayed trace: here the unscheduled function (correct, slow)
        replayed.append(t)
        return func

    monkeypatch.setattr(metaschedule, "apply", apply)
    report = compile_(conv_relu, tmp_path / "out", tmp_path / "t.db", search_mode="full")
    (k,) = conv_kernels(report)
    assert len(fake.metaschedule) == 1 and replayed == ["FAKE-TRACE"]
    assert k["knobs"] == metaschedule.label(trace) and k["ms"] == pytest.approx(1e-2)
    assert k["knobs"]["metaschedule"].startswith("trace sha256:")
    assert any(c["knobs"] == k["knobs"] for c in k["candidates"])
    assert ("conv", trace) in [("conv", knobs) for _, knobs in fake.checks]  # checked first
    assert report["search"]["metaschedule_runs"] == 1
    assert report["verification"]["passed"]
    # cached: a second full compile tunes and measures nothing and replays the same trace
    fake.calls.clear()
    fake.metaschedule.clear()
    again = compile_(conv_relu, tmp_path / "out2", tmp_path / "t.db", search_mode="full")
    assert fake.calls == [] and fake.metaschedule == [] and replayed[-1] == "FAKE-TRACE"
    assert conv_kernels(again)[0]["knobs"] == k["knobs"]


def test_metaschedule_failure_scores_infinity_and_search_goes_on(conv_relu, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    fake = Fake(monkeypatch, ms_found=RuntimeError("builder crashed"))
    report = compile_(conv_relu, tmp_path / "out", tmp_path / "t.db", search_mode="full")
    (k,) = conv_kernels(report)
    assert fake.metaschedule and "metaschedule" not in k["knobs"]
    failed = [c for c in k["candidates"] if "metaschedule" in c["knobs"]]
    assert failed == [{"knobs": {"metaschedule": ""}, "ms": None,
                       "error": "RuntimeError: builder crashed"}]  # fmt: skip
    # the failure is cached too: the next full compile does not try again
    fake.metaschedule.clear()
    compile_(conv_relu, tmp_path / "out2", tmp_path / "t.db", search_mode="full")
    assert fake.metaschedule == []


def test_fast_never_runs_metaschedule(conv_relu, tmp_path, monkeypatch):
    fake = Fake(monkeypatch, ms_found=[{"metaschedule": "X"}])
    report = compile_(conv_relu, tmp_path / "out", tmp_path / "t.db")
    assert fake.metaschedule == [] and "metaschedule_runs" not in report["search"]


def test_metaschedule_tunes_a_real_kernel(conv_relu, tmp_path):
    """TVM's MetaSchedule on one small conv kernel (2 trials): its schedules replay and compute
    what the template's default computes."""
    from tvm import relax

    from edgec import frontend, lower, targets

    target = targets.get("x86_64")
    tj = lower.target_json(target, 2)
    tvm = lower._tvm()
    model = frontend.import_model(conv_relu, {"x": (1, 3, 16, 16)}).model
    with tvm.target.Target(tj):
        mod = relax.get_pipeline("zero")(lower.to_relax(model))
    (task,) = [t for t in measure.kernel_tasks(mod, lower.vector_lanes(target))
               if t.template == "conv2d"]  # fmt: skip
    found = metaschedule.tune(task.func, tj, trials=2, threads=2)
    assert 1 <= len(found) <= metaschedule.TOP_K
    measure.prepare(2)
    want = measure.outputs(task, task.default, tj)
    for knobs in found:
        got = measure.outputs(task, knobs, tj)
        assert search._compare(got, want) is None
        assert measure.measure(task, knobs, tj, repeat=1, min_repeat_ms=1) > 0


def test_budget_cuts_candidates_and_the_rest_keeps_defaults(
    two_conv, tmp_path, monkeypatch, tasks_spy
):
    fake = Fake(monkeypatch, sleep=0.05)
    db = tmp_path / "t.db"
    report = compile_(two_conv, tmp_path / "out", db, budget=0.6)
    s = report["search"]
    assert s["seconds"] < 1.5
    total = sum(len(t.space) for t in tasks_spy.values())
    assert 2 <= s["candidates_tried"] < total
    big = max(conv_kernels(report), key=lambda k: k["flops"])
    assert fake.calls[0][0] == big["kernel"]
    for k in conv_kernels(report):  # whatever was measured, the choice is the fastest of it
        measured = [c for c in k["candidates"] if c["ms"] is not None]
        if measured:
            assert k["knobs"] == min(measured, key=lambda c: c["ms"])["knobs"]
        else:
            assert k["knobs"] == tasks_spy[k["kernel"]].default
    # the next compile goes on where this one stopped, without measuring anything twice
    before = {(k, json.dumps(kn, sort_keys=True)) for k, kn, _ in fake.calls}
    fake.calls.clear()
    fake.sleep = 0
    compile_(two_conv, tmp_path / "out2", db)
    again = {(k, json.dumps(kn, sort_keys=True)) for k, kn, _ in fake.calls}
    assert len(before) + len(again) == total
    defaults = {(t.name, json.dumps(t.default, sort_keys=True)) for t in tasks_spy.values()}
    assert not (before & again) - defaults


def test_ctrl_c_keeps_what_was_measured(conv_relu, tmp_path, monkeypatch, tasks_spy):
    db = tmp_path / "t.db"
    n = {"calls": 0}

    def times(task, knobs):
        n["calls"] += 1
        if n["calls"] == 4:
            return KeyboardInterrupt()
        return 1e-3 / (1 + task.space.index(knobs))

    fake = Fake(monkeypatch, times=times)
    lines: list[str] = []
    report = compile_(conv_relu, tmp_path / "out", db, log=lines.append)
    assert report["search"]["interrupted"] and report["verification"]["passed"]
    assert any("interrupted" in line for line in lines)
    (k,) = conv_kernels(report)
    space = tasks_spy[k["kernel"]].space
    assert len(k["candidates"]) == 3 and k["knobs"] == space[2]  # the best so far, checked
    # what was measured is in the cache: the next compile measures only the rest
    fake.calls.clear()
    (k2,) = conv_kernels(compile_(conv_relu, tmp_path / "out2", db))
    assert [knobs for _, knobs, _ in fake.calls] == space[3:]
    assert k2["knobs"] == space[-1]


def test_search_none_is_the_default_and_touches_no_cache(conv_relu, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fake = Fake(monkeypatch)
    report = edgec.compile(
        conv_relu, tmp_path / "out", input_shapes=SHAPE, bench=False, bundle=False
    ).report  # (the deploy bundle's runner cache is not the tuning cache)
    assert report["search"]["mode"] == "none" and fake.calls == []
    assert not (tmp_path / "xdg" / "edgec" / "tuning.db").exists()  # (the build cache is there)
    assert all("candidates" not in k for k in report["kernels"])


def test_no_search_for_a_target_that_cannot_run_here(conv_relu, tmp_path, monkeypatch):
    from edgec import lower

    monkeypatch.setattr(lower, "host_can_run", lambda target: False)
    fake = Fake(monkeypatch)
    report = compile_(conv_relu, tmp_path / "out", tmp_path / "t.db")
    assert "cannot run" in report["search"]["skipped"] and fake.calls == []
    assert not (tmp_path / "t.db").exists()


# --------------------------------------------------------------------------------------------
# the tuning cache


_WRITER = """
import sys
from edgec.search import TuningDB
path, tag = sys.argv[1], sys.argv[2]
fields = {"workload": "w", "target": {"kind": "llvm"}, "cpu": "c", "edgec": "e", "tvm": "t",
          "template": "conv2d", "kernel": "k", "space": 100}
with TuningDB(path) as db:
    for i in range(40):
        db.put(f"{tag}-{i}", fields, [{"knobs": {"i": i}, "ms": 1.0}], {"i": i}, False)
        db.put("shared", fields, [{"knobs": {"tag": tag, "i": i}, "ms": 1.0 + i}], None, False)
"""


def test_concurrent_writers_do_not_corrupt_the_cache(tmp_path):
    db = tmp_path / "shared" / "tuning.db"
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(db), tag], cwd=root)
        for tag in ("a", "b", "c")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with search.TuningDB(db) as tdb:
        assert tdb.count() == 3 * 40 + 1
        shared = tdb.get("shared")
        assert len(shared["candidates"]) == 3 * 40  # merged, none lost
        assert tdb.get("b-7")["best"] == {"i": 7}


def test_default_path_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv(search.DB_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert search.default_db_path() == tmp_path / "xdg" / "edgec" / "tuning.db"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert search.default_db_path() == Path.home() / ".cache" / "edgec" / "tuning.db"
    monkeypatch.setenv(search.DB_ENV, str(tmp_path / "ci.db"))
    assert search.default_db_path() == tmp_path / "ci.db"


def test_cache_info_and_clear(cli, conv_relu, tmp_path, monkeypatch):
    monkeypatch.delenv(search.DB_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    default = tmp_path / "xdg" / "edgec" / "tuning.db"
    r = cli("cache", "info", "--json")
    assert r.code == 0 and json.loads(r.out)["path"] == str(default)
    assert json.loads(r.out)["entries"] == 0 and not default.exists()
    assert cli("cache", "clear").code == 0  # nothing to clear

    Fake(monkeypatch)
    compile_(conv_relu, tmp_path / "out", None)  # the default path
    r = cli("cache", "info")
    assert r.code == 0 and str(default) in r.out and "entries: 1" in r.out and "KiB" in r.out
    info = json.loads(cli("cache", "info", "--json").out)
    assert info["entries"] == 1 and info["size_bytes"] > 0

    r = cli("cache", "clear")  # stdin is not a terminal: refuses without --yes
    assert r.code == 2 and "--yes" in r.err
    r = cli("cache", "clear", "--yes")
    assert r.code == 0 and "1 entry deleted" in r.out
    assert json.loads(cli("cache", "info", "--json").out)["entries"] == 0

    other = tmp_path / "other.db"
    search.TuningDB(other).close()
    r = cli("cache", "info", "--tuning-db", other)
    assert r.code == 0 and "entries: 0" in r.out
    other.write_bytes(b"not a database at all, definitely not sqlite" * 100)
    assert cli("cache", "info", "--tuning-db", other).code == 2
    assert cli("cache", "clear", "--yes", "--tuning-db", other).code == 0
    assert not other.exists()


def test_compare_outputs():
    a = np.linspace(-2, 2, 50, dtype=np.float32)
    assert search._compare([a + 1e-5], [a]) is None
    assert "max abs diff" in search._compare([a + 1e-3], [a])
    assert "NaN" in search._compare([np.where(a > 1, np.nan, a)], [a])
    assert "shape" in search._compare([a[:10]], [a])
    assert search._compare([np.zeros(3, np.int64)], [np.zeros(3, np.int64)]) is None


# --------------------------------------------------------------------------------------------
# real measurements


def test_real_candidates_agree_and_time(tmp_path):
    from edgec import lower, targets
    from tests.conftest import conv_relu_model

    tvm = lower._tvm()
    from tvm import relax
    from tvm.relax import transform

    target = targets.get("x86_64")
    tj = lower.target_json(target, 2)
    model = conv_relu_model(dynamic_batch=False)
    with tvm.target.Target(tj):
        mod = relax.get_pipeline("zero")(transform.DecomposeOpsForInference()(
            lower.to_relax(model)))  # fmt: skip
    (task,) = [t for t in measure.kernel_tasks(mod, lower.vector_lanes(target))
               if t.template == "conv2d"]  # fmt: skip
    assert task.space[0] == task.default and task.flops > 0 and task.calls == 1
    ref = measure.outputs(task, task.default, tj)
    assert len(ref) == 1 and ref[0].shape == (1, 8, 16, 16) and np.isfinite(ref[0]).all()
    for knobs in task.space[-2:]:
        seconds = measure.measure(task, knobs, tj, repeat=2, min_repeat_ms=1)
        assert 0 < seconds < 0.1
        assert search._compare(measure.outputs(task, knobs, tj), ref) is None
    with pytest.raises(Exception):  # noqa: B017 - whatever the template raises
        measure.measure(task, {"vec": "nonsense"}, tj)


def test_cli_fast_search_with_a_small_budget(cli, two_conv, tmp_path):
    t0 = time.perf_counter()
    r = cli("compile", two_conv, "-o", tmp_path / "out", "--search", "fast", "--budget", "5",
            "--tuning-db", tmp_path / "t.db", "--no-bench", "--conv-algo", "direct")  # fmt: skip
    assert r.code == 0, r.err
    assert time.perf_counter() - t0 < 30
    assert "search:    fast (budget 5 s)" in r.out
    assert "search 1/2" in r.err  # progress, one line per kernel
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    s = report["search"]
    assert {"mode", "budget_s", "seconds", "kernels_measured", "candidates_tried",
            "cache_hits"} <= set(s)  # fmt: skip
    assert s["mode"] == "fast" and s["budget_s"] == 5 and s["seconds"] < 8
    assert s["kernels_measured"] >= 1 and s["candidates_tried"] >= 2
    for k in conv_kernels(report):
        if k.get("candidates"):
            best = min(c["ms"] for c in k["candidates"] if c["ms"] is not None)
            assert math.isclose(k["ms"], best) and k["ms"] > 0
    assert report["verification"]["passed"]
    db = tmp_path / "t.db"
    r = cli("compile", two_conv, "-o", tmp_path / "out", "--force", "--search", "fast",
            "--budget", "0.5", "--tuning-db", db, "--no-bench", "--json",
            "--conv-algo", "direct")  # fmt: skip
    assert r.code == 0, r.err
    again = json.loads(r.out)["search"]
    assert again["budget_s"] == 0.5 and again["seconds"] < 3


def test_bad_search_options(cli, conv_relu, tmp_path):
    r = cli("compile", conv_relu, "-o", tmp_path / "o", "--input-shape", "x=1,3,16,16",
            "--search", "slow")  # fmt: skip
    assert r.code == 2
    r = cli("compile", conv_relu, "-o", tmp_path / "o", "--input-shape", "x=1,3,16,16",
            "--search", "fast", "--budget", "-1")  # fmt: skip
    assert r.code == 2 and "budget" in r.err
