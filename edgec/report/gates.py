"""CI gates: limits on latency and accuracy that make `edgec compile` / `edgec bench` exit 1.

Each gate compares one measured number of the report with its limit and yields one line,
``PASS name: measured <= limit`` or ``FAIL name: measured > limit``. A gate whose number was not
measured (``--no-bench``, ``--no-verify``, a target that cannot run here) fails: a pipeline that
asked for a limit must not pass silently. The results go to report.json ``gates``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from edgec.errors import InvalidInputError

__all__ = ["Gates", "evaluate", "failed", "load_report", "parse_percent", "summary_lines"]


def parse_percent(text: str | float) -> float:
    """``"5%"`` or ``"5"`` -> 0.05 (a fraction)."""
    raw = str(text).strip()
    try:
        value = float(raw.removesuffix("%"))
    except ValueError:
        raise InvalidInputError(f"bad percentage {raw!r}: write e.g. 5% or 5") from None
    if value < 0:
        raise InvalidInputError(f"bad percentage {raw!r}: must not be negative")
    return value / 100


def load_report(path: str | Path) -> dict:
    """report.json of an artifact directory, a report.json file, or `edgec bench --json` output."""
    p = Path(path)
    file = p / "report.json" if p.is_dir() else p
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"{path}: cannot read an edgec report ({e})") from e
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: not an edgec report (a JSON object expected)")
    return data


def edgec_latency(report: dict) -> dict | None:
    """The artifact's latency statistics in a compile report or a bench result."""
    return (report.get("latency") or {}).get("edgec") or report.get("edgec")


@dataclasses.dataclass(frozen=True)
class Gates:
    max_latency_ms: float | None = None
    max_p99_ms: float | None = None
    baseline: str | None = None  # OLD/ or OLD/report.json
    max_regression: float | None = None  # fraction of the baseline's p50 (0.05 = 5 %)
    min_cosine: float | None = None
    max_abs_err: float | None = None
    min_top1_agreement: float | None = None

    def __post_init__(self):
        if self.max_regression is not None and self.baseline is None:
            raise InvalidInputError("--max-regression needs --baseline OLD/report.json")
        if self.baseline is not None:
            load_report(self.baseline)  # fail before compiling, not after

    @property
    def active(self) -> bool:
        return any(v is not None for v in dataclasses.asdict(self).values())

    @property
    def needs_verification(self) -> bool:
        return any(
            v is not None for v in (self.min_cosine, self.max_abs_err, self.min_top1_agreement)
        )


def _result(gate: str, limit: float, measured: float | None, passed: bool, text: str) -> dict:
    verdict = "PASS" if passed else "FAIL"
    return {"gate": gate, "limit": limit, "measured": measured, "passed": passed,
            "message": f"{verdict} {gate}: {text}"}  # fmt: skip


def _missing(gate: str, limit: float, what: str, why: str) -> dict:
    return _result(gate, limit, None, False, f"{what} not measured ({why}); limit {limit:g}")


def _upper(gate: str, what: str, measured: float, limit: float, unit: str = "") -> dict:
    ok = measured <= limit
    op = "<=" if ok else ">"
    return _result(
        gate, limit, measured, ok, f"{what} {measured:.4g}{unit} {op} limit {limit:g}{unit}"
    )


def _lower(gate: str, what: str, measured: float, limit: float, fmt: str = ".4g") -> dict:
    ok = measured >= limit
    return _result(gate, limit, measured, ok,
                   f"{what} {measured:{fmt}} {'>=' if ok else '<'} limit {limit:g}")  # fmt: skip


def evaluate(report: dict, gates: Gates) -> list[dict]:
    """One result per given gate, in a fixed order."""
    results = []
    lat = edgec_latency(report)
    no_lat = "no latency in the report: --no-bench, or the target cannot run here"
    for gate, key, limit in (("max-latency-ms", "p50_ms", gates.max_latency_ms),
                             ("max-p99-ms", "p99_ms", gates.max_p99_ms)):  # fmt: skip
        if limit is None:
            continue
        what = f"edgec {key.removesuffix('_ms')}"
        results.append(_upper(gate, what, lat[key], limit, " ms") if lat
                       else _missing(gate, limit, what, no_lat))  # fmt: skip
    if gates.baseline is not None:
        results.append(_regression(lat, gates, no_lat))
    v = report.get("verification") or {}
    why = v.get("skipped") or "no verification in the report"
    for gate, key, what, limit, upper in (
        ("min-cosine", "min_cosine", "min cosine", gates.min_cosine, False),
        ("max-abs-err", "max_abs_err", "max abs err", gates.max_abs_err, True),
        ("min-top1-agreement", "top1_agreement", "top-1 agreement", gates.min_top1_agreement,
         False),
    ):  # fmt: skip
        if limit is None:
            continue
        if key not in v:
            reason = why if "skipped" in v or not v else "no output with a class axis"
            results.append(_missing(gate, limit, what, reason))
        elif upper:
            results.append(_upper(gate, what, v[key], limit))
        else:
            results.append(
                _lower(gate, what, v[key], limit, ".6f" if key == "min_cosine" else ".4g")
            )
    return results


def _regression(lat: dict | None, gates: Gates, no_lat: str) -> dict:
    limit = gates.max_regression if gates.max_regression is not None else 0.05
    gate, what = "max-regression", "edgec p50 vs baseline"
    old = edgec_latency(load_report(gates.baseline))
    if not lat:
        return _missing(gate, limit * 100, what, no_lat)
    if not old:
        return _missing(gate, limit * 100, what, f"no latency in the baseline {gates.baseline}")
    change = lat["p50_ms"] / old["p50_ms"] - 1
    ok = change <= limit
    return _result(gate, limit * 100, change * 100, ok,
                   f"{what} {change:+.1%} ({old['p50_ms']:.4g} ms -> {lat['p50_ms']:.4g} ms) "
                   f"{'<=' if ok else '>'} limit +{limit:.1%}")  # fmt: skip


def failed(results: list[dict]) -> list[dict]:
    return [r for r in results if not r["passed"]]


def summary_lines(results: list[dict]) -> list[str]:
    return [r["message"] for r in results]


def error_message(results: list[dict]) -> str:
    bad = failed(results)
    return f"{len(bad)} of {len(results)} gate(s) failed:\n" + "\n".join(
        f"  {r['message']}" for r in bad
    )
