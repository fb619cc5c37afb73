"""``edgec diff OLD NEW``: what changed between two reports (latency, kernels, accuracy).

A row is a regression when the NEW number is worse by more than the threshold: latency p50/p99
and the per-kernel times grown by more than PCT %, top-1 agreement down by more than PCT
percentage points, or verification passing in OLD and failing in NEW. Only latency p50/p99 and
accuracy rows count for ``--fail-on-regression``: per-kernel times come from 3 profiled runs and
are too noisy to gate on (they are marked, not counted).
"""

from __future__ import annotations

from edgec.report.gates import edgec_latency

__all__ = ["compare", "regressions", "table"]


def _row(metric: str, old, new, *, threshold: float, higher_is_worse: bool = True,
         counts: bool = True, relative: bool = True) -> dict:  # fmt: skip
    row = {"metric": metric, "old": old, "new": new, "change": None, "regression": False,
           "counts": counts}  # fmt: skip
    if isinstance(old, int | float) and isinstance(new, int | float) and not isinstance(old, bool):
        if relative:
            row["change"] = new / old - 1 if old else None
        else:
            row["change"] = new - old
        worse = row["change"] if higher_is_worse else -(row["change"] or 0)
        row["regression"] = row["change"] is not None and worse > threshold
    return row


def compare(old: dict, new: dict, threshold: float = 0.05) -> list[dict]:
    """Rows of the comparison; ``threshold`` is a fraction (0.05 = 5 %)."""
    rows = []
    lo, ln = edgec_latency(old) or {}, edgec_latency(new) or {}
    for key in ("p50_ms", "p99_ms"):
        rows.append(_row(f"latency {key[:3]} (ms)", lo.get(key), ln.get(key), threshold=threshold))
    ratio = "edgec_vs_onnxruntime_p50"
    ro = (old.get("latency") or old).get(ratio)
    rn = (new.get("latency") or new).get(ratio)
    rows.append(_row("edgec / onnxruntime p50", ro, rn, threshold=threshold, counts=False))
    vo, vn = old.get("verification") or {}, new.get("verification") or {}
    if "passed" in vo or "passed" in vn:
        row = {"metric": "verification", "old": _verdict(vo), "new": _verdict(vn),
               "change": None, "counts": True,
               "regression": vo.get("passed") is True and vn.get("passed") is False}  # fmt: skip
        rows.append(row)
    for key, label in (("min_cosine", "min cosine"), ("max_abs_err", "max abs err"),
                       ("scaled_err", "scaled err")):  # fmt: skip
        if key in vo or key in vn:
            rows.append(_row(label, vo.get(key), vn.get(key), threshold=threshold, counts=False,
                             higher_is_worse=key != "min_cosine", relative=False))  # fmt: skip
            rows[-1]["regression"] = False  # shown, not judged: errors near 0 have no scale
    if "top1_agreement" in vo or "top1_agreement" in vn:
        rows.append(_row("top-1 agreement", vo.get("top1_agreement"), vn.get("top1_agreement"),
                         threshold=threshold, higher_is_worse=False, relative=False))  # fmt: skip
    ko = {k["kernel"]: k.get("profile_ms") for k in old.get("kernels", [])}
    kn = {k["kernel"]: k.get("profile_ms") for k in new.get("kernels", [])}
    for name in dict.fromkeys([*ko, *kn]):
        rows.append(_row(f"kernel {name} (ms)", ko.get(name, "absent"), kn.get(name, "absent"),
                         threshold=threshold, counts=False))  # fmt: skip
    return rows


def _verdict(v: dict) -> str:
    return "skipped" if "skipped" in v else "PASS" if v.get("passed") else "FAIL" if v else "-"


def regressions(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["regression"] and r["counts"]]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _change(row: dict) -> str:
    c = row["change"]
    if c is None:
        return ""
    if row["metric"].startswith(("latency", "kernel", "edgec /")):
        return f"{c:+.1%}"
    return f"{c:+.3g}"


def table(rows: list[dict]) -> str:
    cells = [["metric", "old", "new", "change", ""]]
    for r in rows:
        flag = ("REGRESSION" if r["counts"] else "slower") if r["regression"] else ""
        cells.append([r["metric"], _cell(r["old"]), _cell(r["new"]), _change(r), flag])
    widths = [max(len(row[i]) for row in cells) for i in range(5)]
    return "\n".join(
        "  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in
                  enumerate(zip(row, widths, strict=True))).rstrip()
        for row in cells
    )  # fmt: skip
