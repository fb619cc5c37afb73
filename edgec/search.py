"""The latency-measured kernel search, and its tuning cache.

``edgec compile --search fast|full`` times the candidates of every kernel's schedule template
(``space(info, lanes)``, the default first) on this machine and compiles each kernel with the
fastest one whose outputs match the default's. Kernels are the PrimFuncs of the lowered model;
kernels with the same *workload* (structural hash of the PrimFunc, template, space) share one
search. Results go to a tuning cache (sqlite, ``tuning.db``), keyed by workload, TVM target,
CPU model, edgec version (with a hash of the template code) and TVM version, so a second compile
of the same model measures nothing.

* ``fast``: kernels in order of their FLOPs (x calls), biggest first; each gets a share of the
  remaining ``budget_s`` in proportion to its FLOPs, and stops trying candidates (in space
  order, the default first) when its share is spent; leftovers pass to the next kernels.
  Unmeasured kernels keep the default knobs.
* ``full``: every candidate of every kernel, then the 3 fastest of each again with more repeats
  (the more robust time decides); then, with the budget left (20 min by default), TVM's
  MetaSchedule tunes the kernels in order of their measured time share (most expensive first,
  ``metaschedule.TRIALS`` trials each, kernels without a template included) and its best
  schedules compete as candidates like any other: timed by the same timer, checked against the
  default, cached (``edgec.lower.metaschedule``).

Crash isolation: candidates are built and timed in this process (a build error or a template
that declines the knobs is an exception and scores infinity). Candidates are schedules of the
same computation by TVM, so a crash (segfault) is a TVM bug, not an expected outcome, and a
subprocess per candidate would cost more than the measurement itself; the guard that matters is
on wrong results: before a candidate other than the default is chosen, its outputs on seeded
random inputs are compared with the default's (max |diff| <= 1e-4 x max |default|); a mismatch
rejects it (scored infinity) and the next fastest is checked.

This module does not import TVM; the TVM half is ``edgec.lower.measure``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from edgec import host

MODES = ("none", "fast", "full")
DEFAULT_BUDGET_S = 120.0  # fast
DEFAULT_BUDGET_S_FULL = 1200.0  # full: templates, then MetaSchedule with what is left
TOP_K = 3  # full: candidates timed again
REFINE_REPEAT = 10  # full: repeats of the second timing pass
RTOL = 1e-4  # wrong result: max |candidate - default| > RTOL x max |default|
SCREEN_SHARE = 0.5  # two-phase search: at most this share of the budget times the variants
MIN_SHARE = 0.02  # a kernel's budget share is at least this fraction of the FLOPs weight
DB_ENV = "EDGEC_TUNING_DB"

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------------------------
# the tuning cache


def default_db_path() -> Path:
    """``$EDGEC_TUNING_DB``, else ``$XDG_CACHE_HOME/edgec/tuning.db`` (``~/.cache`` when unset)."""
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV]).expanduser()
    return host.cache_dir() / "tuning.db"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tuning (
    key TEXT PRIMARY KEY,      -- sha256 of (workload, target, cpu, edgec, tvm)
    workload TEXT NOT NULL,    -- structural hash of the PrimFunc + template/space digest
    target TEXT NOT NULL,      -- TVM target JSON
    cpu TEXT NOT NULL,
    edgec TEXT NOT NULL,
    tvm TEXT NOT NULL,
    template TEXT NOT NULL,
    kernel TEXT NOT NULL,      -- a kernel name it was measured for (informative)
    best TEXT,                 -- JSON knobs, verified against the default; NULL: none yet
    candidates TEXT NOT NULL,  -- JSON [{knobs, ms, error?, refined?}]
    space INTEGER NOT NULL,    -- number of candidates in the space
    refined INTEGER NOT NULL,  -- the full second pass was done
    created TEXT NOT NULL,
    updated TEXT NOT NULL
)
"""


class TuningDB:
    """The tuning cache: one sqlite file in WAL mode, so concurrent compiles (processes) can
    read while one writes; writers serialize on sqlite's lock (busy timeout 60 s), and each
    write is a read-merge-write transaction, so results of two compiles tuning the same kernel
    are merged rather than lost."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        try:
            self._conn.execute("PRAGMA busy_timeout = 60000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute(_SCHEMA)
        except sqlite3.DatabaseError:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> TuningDB:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    @staticmethod
    def key(workload: str, target: dict, cpu: str, edgec: str, tvm: str) -> str:
        text = json.dumps([workload, target, cpu, edgec, tvm], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        row = self._conn.execute(
            "SELECT best, candidates, refined, updated FROM tuning WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return {
            "best": json.loads(row[0]) if row[0] else None,
            "candidates": json.loads(row[1]),
            "refined": bool(row[2]),
            "updated": row[3],
        }

    def put(self, key: str, fields: dict, candidates: list[dict], best: dict | None,
            refined: bool) -> None:  # fmt: skip
        """Merge ``candidates`` (by knobs; the new result wins) into the entry and set ``best``
        (None keeps the stored one)."""
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        with self._transaction():
            row = self._conn.execute(
                "SELECT best, candidates, refined, created FROM tuning WHERE key = ?", (key,)
            ).fetchone()
            merged = {_canonical(c["knobs"]): c for c in json.loads(row[1])} if row else {}
            merged.update({_canonical(c["knobs"]): c for c in candidates})
            best_json = json.dumps(best) if best is not None else (row[0] if row else None)
            self._conn.execute(
                "INSERT OR REPLACE INTO tuning (key, workload, target, cpu, edgec, tvm, template,"
                " kernel, best, candidates, space, refined, created, updated) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key, fields["workload"], json.dumps(fields["target"], sort_keys=True),
                    fields["cpu"], fields["edgec"], fields["tvm"], fields["template"],
                    fields["kernel"], best_json, json.dumps(list(merged.values())),
                    int(fields["space"]), int(refined or bool(row and row[2])),
                    row[3] if row else now, now,
                ),
            )  # fmt: skip

    @contextlib.contextmanager
    def _transaction(self):
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM tuning").fetchone()[0])

    def summary(self) -> dict:
        rows = self._conn.execute(
            "SELECT edgec, tvm, cpu, COUNT(*) FROM tuning GROUP BY edgec, tvm, cpu"
        ).fetchall()
        return {
            "entries": self.count(),
            "by_version": [{"edgec": e, "tvm": t, "cpu": c, "entries": n} for e, t, c, n in rows],
        }

    def clear(self) -> int:
        with self._transaction():
            n = self.count()
            self._conn.execute("DELETE FROM tuning")
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.execute("VACUUM")
        return n


def _files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def cache_info(path: str | os.PathLike | None = None) -> dict:
    """Path, number of entries and size on disk of the tuning cache."""
    path = Path(path) if path else default_db_path()
    info: dict = {"path": str(path), "exists": path.exists(), "entries": 0, "size_bytes": 0}
    if path.exists():
        with TuningDB(path) as db:
            info.update(db.summary())
        info["size_bytes"] = sum(p.stat().st_size for p in _files(path))
    return info


def cache_clear(path: str | os.PathLike | None = None) -> int:
    """Delete every entry of the tuning cache; returns how many there were. A file that is not
    a tuning cache (corrupt) is removed."""
    path = Path(path) if path else default_db_path()
    if not path.exists():
        return 0
    try:
        with TuningDB(path) as db:
            return db.clear()
    except sqlite3.DatabaseError:
        for p in _files(path):
            p.unlink()
        return 0


# --------------------------------------------------------------------------------------------
# the search


def _canonical(knobs: dict) -> str:
    return json.dumps(knobs, sort_keys=True, separators=(",", ":"))


@dataclasses.dataclass
class _Workload:
    """Kernels with the same work: one search, one result."""

    tasks: list  # edgec.lower.measure.Task, the first one is measured
    weight: float  # flops x calls, over the kernels
    key: str = ""
    results: dict = dataclasses.field(default_factory=dict)  # canonical knobs -> candidate
    best: dict | None = None
    verified: set = dataclasses.field(default_factory=set)  # canonical knobs checked correct
    refined: bool = False
    cached: bool = False  # served from the cache entirely

    @property
    def metascheduled(self) -> bool:
        """MetaSchedule was tried (its candidates, or its failure, are in the results)."""
        return any(_is_ms(c["knobs"]) for c in self.results.values())

    @property
    def task(self):
        return self.tasks[0]

    @property
    def label(self) -> str:
        more = f" (+{len(self.tasks) - 1} alike)" if len(self.tasks) > 1 else ""
        return f"{self.task.name}{more}"

    def score(self, knobs: dict) -> float:
        c = self.results.get(_canonical(knobs))
        return c["ms"] if c and c.get("ms") is not None else math.inf

    def todo(self) -> list[dict]:
        return [k for k in self.task.space if _canonical(k) not in self.results]


class Search:
    """The ``tune`` hook of ``edgec.lower.build``: called with the model's kernel tasks and the
    TVM target JSON, it measures (or looks up) candidates and returns the ``choose`` hook of
    ``schedules.apply_all``. Afterwards ``summary()`` is the report's ``search`` section and
    ``annotate(records)`` adds each kernel's candidates and time to the report's kernels."""

    def __init__(
        self,
        mode: str = "fast",
        *,
        budget_s: float | None = None,
        tuning_db: str | os.PathLike | None = None,
        threads: int = 0,
        log: Log = _quiet,
        measurer=None,
    ):
        """``measurer`` times candidates elsewhere (``edgec.lower.rpc.RemoteMeasure``: on a
        device over RPC); default: ``edgec.lower.measure``, on this machine."""
        if mode not in MODES or mode == "none":
            raise ValueError(f"search mode must be fast or full, not {mode!r}")
        self.mode = mode
        self.budget_s = budget_s if budget_s is not None else (
            DEFAULT_BUDGET_S if mode == "fast" else DEFAULT_BUDGET_S_FULL
        )  # fmt: skip
        self.db_path = Path(tuning_db) if tuning_db else default_db_path()
        self.threads, self.log, self.measurer = threads, log, measurer
        self.workloads: list[_Workload] = []
        self.by_kernel: dict[str, _Workload] = {}
        self.seconds = 0.0
        self.candidates_tried = 0
        self._measured: set[str] = set()  # workloads measured by this search
        self._cost = [0.0, 0]  # seconds spent timing candidates, and how many
        self.interrupted = False
        self.cache_error: str | None = None
        self.metaschedule_runs = 0
        self.metaschedule_skipped: str | None = None
        self._ms_cost = 10.0  # seconds one MetaSchedule run takes at least (worker start-up)
        self._start: float | None = None

    # the tune hook ---------------------------------------------------------------------------

    def _measure_module(self):
        from edgec.lower import measure

        return self.measurer or measure

    def __call__(self, tasks: list, target: dict) -> Callable:
        start = self._begin()
        self.workloads = self._workloads(tasks, target, least=1 if self.mode == "full" else 2)
        db = self._open_db()
        try:
            self._lookup(db)
            n = len(self.workloads)
            for i, w in enumerate(self.workloads, 1):
                if w.cached:
                    self.log(
                        f"search {i}/{n} {w.label}: cached, {len(w.results)} candidates, best "
                        f"{_ms(w.score(w.best))} (default {_ms(w.score(w.task.default))})"
                    )
            todo = [w for w in self.workloads if not w.cached]
            if todo:
                self._measure_module().prepare(self.threads)
                self._measure_all(todo, db, start)
                if self.mode == "full" and not self.interrupted:
                    self._metaschedule_all(todo, db, start)
        finally:
            if db is not None:
                db.close()
            self.seconds = time.perf_counter() - start
        return self.choose

    def screen(self, tasks: list, target: dict) -> None:
        """The first phase of a two-phase search (``edgec.lower.conv_algos``: one kernel per
        algorithm variant of each conv layer): time only the default knobs of each kernel, in
        the order given, within ``SCREEN_SHARE`` of the budget, so the caller can pick a
        variant per layer (``score``) and then search the knobs of the chosen kernels alone
        (``__call__``, with what is left of the same budget). Cached results count; kernels
        with a single candidate are timed too (a variant is compared, not its knobs)."""
        start = self._begin()
        order = {t.workload: i for i, t in reversed(list(enumerate(tasks)))}
        screened = sorted(self._workloads(tasks, target, least=1),
                          key=lambda w: order[w.task.workload])  # fmt: skip
        deadline = start + SCREEN_SHARE * self.budget_s if self.budget_s is not None else math.inf
        db = self._open_db()
        try:
            self._lookup_into(db, screened)
            todo = [w for w in screened if math.isinf(w.score(w.best or w.task.default))]
            if todo:
                self._measure_module().prepare(self.threads)
            for i, w in enumerate(todo, 1):
                if self.interrupted or time.perf_counter() + self.avg_cost > deadline:
                    self.log(f"search: screening budget spent; {len(todo) - i + 1} kernel "
                             f"variant(s) not timed")  # fmt: skip
                    break
                try:
                    self._try(w, w.task.default, self._measure_module())
                except KeyboardInterrupt:
                    self.interrupted = True
                    break
                self._measured.add(w.key)
                if db is not None:
                    self._store(db, w, [w.results[_canonical(w.task.default)]])
                self.log(f"search screening {i}/{len(todo)} {w.label}: default "
                         f"{_ms(w.score(w.task.default))}")  # fmt: skip
        finally:
            if db is not None:
                db.close()
            self.seconds = time.perf_counter() - start

    def score(self, kernel: str) -> float:
        """Milliseconds of a kernel's best (else default) knobs as measured; inf if untimed."""
        w = self.by_kernel.get(kernel)
        return w.score(w.best or w.task.default) if w is not None else math.inf

    def _begin(self) -> float:
        """The search's start: the first call's (a two-phase search shares one budget)."""
        if self._start is None:
            self._start = time.perf_counter()
        return self._start

    def _workloads(self, tasks: list, target: dict, least: int) -> list[_Workload]:
        """Tasks grouped by workload, biggest first, those with at least ``least`` candidates
        (a kernel with a single candidate has nothing to choose, unless MetaSchedule offers
        more: full); registers them in ``by_kernel``."""
        measure = self._measure_module()
        self.target = target
        groups: dict[str, _Workload] = {}
        for task in tasks:
            w = groups.setdefault(task.workload, _Workload([], 0.0))
            w.tasks.append(task)
            w.weight += float(task.flops) * max(1, task.calls)
        found = sorted(
            (w for w in groups.values() if len(w.task.space) >= least),
            key=lambda w: (-w.weight, w.task.name),
        )
        for w in found:
            for t in w.tasks:
                self.by_kernel[t.name] = w
        cpu, versions = measure.cpu_model(), measure.versions()
        self._fields = {"target": target, "cpu": cpu, **versions}
        return found

    def _open_db(self) -> TuningDB | None:
        try:
            return TuningDB(self.db_path)
        except (OSError, sqlite3.Error) as e:
            self.cache_error = f"{type(e).__name__}: {e}"
            self.log(f"search: tuning cache {self.db_path} unusable ({e}); nothing is cached")
            return None

    def _lookup(self, db: TuningDB | None) -> None:
        self._lookup_into(db, self.workloads)

    def _lookup_into(self, db: TuningDB | None, workloads: list[_Workload]) -> None:
        for w in workloads:
            w.key = TuningDB.key(
                w.task.workload, self.target, self._fields["cpu"], self._fields["edgec"],
                self._fields["tvm"],
            )  # fmt: skip
            entry = db.get(w.key) if db is not None else None
            if entry is None:
                continue
            space = {_canonical(k) for k in w.task.space}
            w.results = {
                _canonical(c["knobs"]): c for c in entry["candidates"]
                if _canonical(c["knobs"]) in space or _is_ms(c["knobs"])
            }  # fmt: skip
            best = entry["best"]
            if best is not None and (_canonical(best) in space or _is_ms(best)):
                w.best = best
                w.verified.add(_canonical(best))
            w.refined = entry["refined"]
            complete = self.mode == "fast" or (w.refined and w.metascheduled)
            w.cached = w.best is not None and not w.todo() and complete

    def _measure_all(self, todo: list[_Workload], db: TuningDB | None, start: float) -> None:
        """Rounds over the workloads, biggest first: each gets a share of the budget left in
        proportion to its FLOPs; a later round gives what the finished ones left over to those
        whose candidates were cut, until the budget or the candidates run out."""
        deadline = start + self.budget_s if self.budget_s is not None else math.inf
        total = sum(w.weight for w in self.workloads) or 1.0
        floor = MIN_SHARE * sum(w.weight for w in todo) or 1.0
        weights = {id(w): max(w.weight, floor) for w in todo}
        n = len(self.workloads)
        index = {id(w): i for i, w in enumerate(self.workloads, 1)}
        pending = list(todo)  # biggest first
        try:
            while pending and not self.interrupted:
                for j, w in enumerate(pending):
                    left = deadline - time.perf_counter()
                    if left <= 0 or (self._cost[1] and left < 2 * self.avg_cost):
                        cut = sum(1 for v in pending[j:] if not v.results)
                        if cut:
                            self.log(f"search: budget spent; {cut} kernel(s) keep the defaults")
                        return
                    rest = sum(weights[id(v)] for v in pending[j:])
                    self._tune(w, db, left * weights[id(w)] / rest, deadline)
                    share = w.weight / total
                    self.log(
                        f"search {index[id(w)]}/{n} {w.label} ({share:.1%} of FLOPs): "
                        f"{len(w.results)}/{len(w.task.space)} candidates, best "
                        f"{_ms(w.score(w.best or w.task.default))} (default "
                        f"{_ms(w.score(w.task.default))}), "
                        + (f"{max(0.0, deadline - time.perf_counter()):.0f} s of budget left"
                           if math.isfinite(deadline) else "no budget limit")
                    )  # fmt: skip
                    if self.interrupted:
                        break
                pending = [w for w in pending if w.todo()]
        except KeyboardInterrupt:
            if self.interrupted:  # a second Ctrl-C (while checking the best): stop everything
                raise
            self.interrupted = True
        if self.interrupted:
            self.log("search: interrupted; compiling with the best knobs found so far")

    def _metaschedule_all(self, todo: list[_Workload], db: TuningDB | None, start: float) -> None:
        """full, after the templates: MetaSchedule on each workload not yet tried, in order of
        measured time share (best ms x calls), while the budget lasts; its schedules are timed,
        checked and stored like the templates' candidates."""
        from edgec.lower import measure, metaschedule

        reason = metaschedule.available()
        if reason:
            self.metaschedule_skipped = reason
            self.log(f"search: MetaSchedule skipped: {reason}")
            return
        deadline = start + self.budget_s if self.budget_s is not None else math.inf
        share = {id(w): w.score(w.best or w.task.default) * sum(t.calls for t in w.tasks)
                 for w in todo}  # fmt: skip
        pending = sorted(
            (w for w in todo if not w.metascheduled),
            key=lambda w: -share[id(w)] if math.isfinite(share[id(w)]) else 0.0,
        )
        for i, w in enumerate(pending, 1):
            left = deadline - time.perf_counter()
            if left < self._ms_cost:
                self.log(f"search: budget spent; MetaSchedule skipped {len(pending) - i + 1} "
                         f"kernel(s)")  # fmt: skip
                return
            t0 = time.perf_counter()
            fresh: list[dict] = []
            try:
                try:
                    found = metaschedule.tune(w.task.func, self.target, threads=self.threads)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # scored as a failed candidate; the search goes on
                    failed = {"knobs": {metaschedule.KEY: ""}, "ms": None, "error": _error(e)}
                    w.results[_canonical(failed["knobs"])] = failed
                    fresh.append(failed)
                    found = []
                for knobs in found:
                    fresh.append(self._time(w, knobs, measure, repeat=REFINE_REPEAT))
                    self.candidates_tried += 1
                self._choose_best(w, measure)
            except KeyboardInterrupt:
                self.interrupted = True
            finally:
                self.metaschedule_runs += 1
                self._ms_cost = max(self._ms_cost, 0.5 * (time.perf_counter() - t0))
                if fresh:
                    self._measured.add(w.key)
                if db is not None and fresh:
                    self._store(db, w, fresh)
            best = w.score(w.best or w.task.default)
            ms_best = min((c["ms"] for c in fresh if c.get("ms") is not None), default=math.inf)
            self.log(f"search MetaSchedule {i}/{len(pending)} {w.label}: best of its schedules "
                     f"{_ms(ms_best)}, chosen {_ms(best)}"
                     + (" (MetaSchedule)" if w.best and _is_ms(w.best) else ""))  # fmt: skip
            if self.interrupted:
                self.log("search: interrupted; compiling with the best knobs found so far")
                return

    @property
    def avg_cost(self) -> float:
        """Seconds per candidate so far (0.3 s, typical here for a conv, before any)."""
        total, n = self._cost
        return total / n if n else 0.3

    def _tune(self, w: _Workload, db: TuningDB | None, allowance: float, deadline: float) -> None:
        """Time the workload's unmeasured candidates (default first) within ``allowance``
        seconds, (full) time the top 3 again, choose the fastest correct one, store it. Ctrl-C
        stops the timing; the best of what was timed is still chosen and stored."""
        measure = self._measure_module()

        t0 = time.perf_counter()
        fresh: list[dict] = []
        try:
            try:
                for count, knobs in enumerate(w.todo()):  # space order: the default first
                    now = time.perf_counter()
                    over_share = now - t0 + self.avg_cost > allowance
                    over_budget = now + self.avg_cost > deadline
                    if (count >= 2 and over_share) or (count >= 1 and over_budget):
                        break
                    fresh.append(self._try(w, knobs, measure))
                if self.mode == "full" and not w.refined and not w.todo():
                    fresh.extend(self._refine(w, measure))
                    w.refined = True
            except KeyboardInterrupt:
                self.interrupted = True
            self._choose_best(w, measure)
        finally:
            if fresh:
                self._measured.add(w.key)
            if db is not None and (fresh or w.best is not None):
                self._store(db, w, fresh)

    def _try(self, w: _Workload, knobs: dict, measure) -> dict:
        """``_time`` of one candidate of the first pass, counted in ``avg_cost``."""
        now = time.perf_counter()
        result = self._time(w, knobs, measure)
        self.candidates_tried += 1
        self._cost[0] += time.perf_counter() - now
        self._cost[1] += 1
        return result

    def _time(self, w: _Workload, knobs: dict, measure, repeat: int | None = None) -> dict:
        kw = {"repeat": repeat} if repeat else {}
        try:
            seconds = measure.measure(w.task, knobs, self.target, **kw)
            if not (isinstance(seconds, float | int) and math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"measured time {seconds!r}")
            result = {"knobs": knobs, "ms": float(seconds) * 1e3}
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a candidate that fails scores infinity; the search goes on
            result = {"knobs": knobs, "ms": None, "error": _error(e)}
        if repeat:
            result["refined"] = True
        w.results[_canonical(knobs)] = result
        return result

    def _refine(self, w: _Workload, measure) -> list[dict]:
        ranked = sorted((c for c in w.results.values() if c.get("ms") is not None),
                        key=lambda c: c["ms"])[:TOP_K]  # fmt: skip
        return [self._time(w, c["knobs"], measure, repeat=REFINE_REPEAT) for c in ranked]

    def _choose_best(self, w: _Workload, measure) -> None:
        """The fastest candidate whose outputs match the default's (the default needs no
        check); wrong or uncheckable candidates are marked and skipped. After full's second
        pass, its (longer) times rank the top 3 ahead of the rest."""
        default = _canonical(w.task.default)
        ranked = sorted((c for c in w.results.values() if c.get("ms") is not None),
                        key=lambda c: (not (w.refined and c.get("refined")), c["ms"]))  # fmt: skip
        reference = None
        for c in ranked:
            key = _canonical(c["knobs"])
            if key == default or key in w.verified:
                w.best = c["knobs"]
                return
            try:
                if reference is None:
                    reference = measure.outputs(w.task, w.task.default, self.target)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                self.log(f"search: {w.label}: default outputs failed ({_error(e)}); keeping it")
                w.best = None
                return
            try:
                got = measure.outputs(w.task, c["knobs"], self.target)
                problem = _compare(got, reference)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                problem = f"check failed: {_error(e)}"
            if problem is None:
                w.verified.add(key)
                w.best = c["knobs"]
                return
            c.update(ms=None, error=problem, rejected_ms=c["ms"])
        w.best = None  # nothing measured works: the default stays

    def _store(self, db: TuningDB, w: _Workload, fresh: list[dict]) -> None:
        fields = {**self._fields, "workload": w.task.workload, "template": w.task.template,
                  "kernel": w.task.name, "space": len(w.task.space)}  # fmt: skip
        # rejected candidates were updated in place in w.results: store those too
        changed = {_canonical(c["knobs"]): c for c in fresh}
        changed.update({k: c for k, c in w.results.items() if "rejected_ms" in c})
        try:
            db.put(w.key, fields, list(changed.values()), w.best, w.refined)
        except sqlite3.Error as e:
            self.log(f"search: could not write the tuning cache: {e}")

    # the choose hook -------------------------------------------------------------------------

    def choose(self, name: str, info: dict, space: list, default: dict) -> dict:
        w = self.by_kernel.get(name)
        if w is None or w.best is None or _canonical(default) != _canonical(w.task.default):
            return default  # not searched, nothing better, or another template is asking
        if not _is_ms(w.best) and not any(
            _canonical(k) == _canonical(w.best) for k in [default, *space]
        ):
            return default
        return w.best

    def adopt(self, tasks: Iterable) -> None:
        """Answer for kernels searched under other names: tasks of a module lowered after the
        search (edgec.lower.conv_algos) whose workloads were measured."""
        by_workload = {w.task.workload: w for w in self.workloads}
        for task in tasks:
            w = by_workload.get(task.workload)
            if w is not None:
                self.by_kernel[task.name] = w

    # reporting -------------------------------------------------------------------------------

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "budget_s": self.budget_s,
            "seconds": round(self.seconds, 3),
            "kernels_measured": len(self._measured),
            "candidates_tried": self.candidates_tried,
            "cache_hits": sum(1 for w in self.workloads if w.cached),
            "workloads": len(self.workloads),
            "interrupted": self.interrupted,
            **({"metaschedule_runs": self.metaschedule_runs} if self.mode == "full" else {}),
            **(
                {"metaschedule_skipped": self.metaschedule_skipped}
                if self.metaschedule_skipped
                else {}
            ),  # fmt: skip
            "tuning_db": str(self.db_path),
            **({"cache_error": self.cache_error} if self.cache_error else {}),
        }

    def annotate(self, records: Iterable[dict]) -> None:
        """Add ``candidates`` and ``ms`` (of the chosen knobs) to the report's kernel records."""
        for rec in records:
            w = self.by_kernel.get(rec["kernel"])
            if w is None or rec.get("template") != w.task.template:
                continue
            rec["candidates"] = [
                {k: _shown(v) if k == "knobs" else v for k, v in c.items()
                 if k in ("knobs", "ms", "error", "refined")}
                for c in sorted(w.results.values(), key=lambda c: c.get("ms") or math.inf)
            ]  # fmt: skip
            chosen = w.best if w.best is not None and _is_ms(w.best) else None
            ms = w.score(chosen or rec.get("knobs", w.task.default))
            rec["ms"] = ms if math.isfinite(ms) else None


def _is_ms(knobs: dict | None) -> bool:
    """Knobs that are a MetaSchedule trace (or the record of its failure)."""
    return bool(knobs) and "metaschedule" in knobs


def _shown(knobs: dict) -> dict:
    if not _is_ms(knobs):
        return knobs
    from edgec.lower import metaschedule

    return metaschedule.label(knobs)


def _ms(ms: float) -> str:
    return f"{ms:.3g} ms" if math.isfinite(ms) else "-"


def _error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1][:200] if text else ''}".rstrip(": ")


def _compare(got: list, want: list) -> str | None:
    """None when ``got`` matches ``want`` (max |diff| <= RTOL x max |want|, NaN/Inf where the
    reference has them), else what differs."""
    if len(got) != len(want):
        return f"wrong result: {len(got)} outputs, expected {len(want)}"
    for i, (g, r) in enumerate(zip(got, want, strict=True)):
        g, r = np.asarray(g), np.asarray(r)
        if g.shape != r.shape:
            return f"wrong result: output {i} shape {g.shape}, expected {r.shape}"
        if r.dtype.kind not in "fc":
            if not np.array_equal(g, r):
                return f"wrong result: output {i} differs"
            continue
        finite = np.isfinite(r)
        if not np.array_equal(finite, np.isfinite(g)) or not np.array_equal(
            np.isnan(r), np.isnan(g)
        ):
            return f"wrong result: output {i} has NaN/Inf where the default has none (or v.v.)"
        if not finite.any():
            continue
        scale = float(np.abs(r[finite]).max())
        diff = float(np.abs(g[finite].astype(np.float64) - r[finite]).max())
        if diff > RTOL * max(scale, 1e-30):
            return f"wrong result: output {i} max abs diff {diff:.3g} > {RTOL:g} x {scale:.3g}"
    return None
