"""report.json as a list of titled sections (key/value pairs and tables of text), the one source of
the HTML and Markdown reports. Keys this module does not know (e.g. a per-layer quantization table
added by a later feature) are rendered generically: a list of objects becomes a table, an object
of scalars a key/value list."""

from __future__ import annotations

import dataclasses
import json

__all__ = ["KNOWN", "Section", "fmt", "sections"]

KNOWN = {
    "format", "model", "target", "precision", "threads", "passes", "kernels", "search",
    "verification", "latency", "peak", "bandwidth", "profile", "timings_s", "gates",
}  # fmt: skip


@dataclasses.dataclass
class Section:
    id: str
    title: str
    pairs: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    headers: list[str] = dataclasses.field(default_factory=list)
    rows: list[list[str]] = dataclasses.field(default_factory=list)
    plots: list[str] = dataclasses.field(default_factory=list)  # names in edgec.report.plots
    note: str = ""


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def latency_verdict(lat: dict) -> str:
    ratio = lat["edgec_vs_onnxruntime_p50"]
    return f"{1 / ratio:.2f}x faster" if ratio < 1 else f"{ratio:.2f}x slower"


def accuracy_verdict(v: dict) -> str:
    if not v:
        return "-"
    if "skipped" in v:
        return f"not verified ({v['skipped']})"
    text = (f"{'PASS' if v['passed'] else 'FAIL'}: min cosine {v['min_cosine']:.6f}, "
            f"max abs err {v['max_abs_err']:.3g}, scaled err {v['scaled_err']:.3g} "
            f"(tolerance {v['tolerance']:g})")  # fmt: skip
    if "top1_agreement" in v:
        text += f", top-1 agreement {v['top1_agreement']:.1%}"
    return text


def _summary(r: dict) -> Section:
    s = Section("summary", "Summary")
    applied = [p["name"] for p in r.get("passes", []) if p["status"].startswith("applied")]
    reverted = [p["name"] for p in r.get("passes", []) if p["status"] == "reverted"]
    s.pairs += [("model", fmt(r.get("model"))), ("target", fmt(r.get("target"))),
                ("precision", fmt(r.get("precision"))), ("threads", fmt(r.get("threads"))),
                ("passes applied", ", ".join(applied) or "none changed the graph")]  # fmt: skip
    if reverted:
        s.pairs.append(("passes reverted", ", ".join(reverted)))
    s.pairs.append(("accuracy vs onnxruntime", accuracy_verdict(r.get("verification") or {})))
    lat = r.get("latency")
    if lat and "skipped" in lat:
        s.pairs.append(("latency", f"not measured ({lat['skipped']})"))
    elif lat:
        e = lat["edgec"]
        text = f"edgec p50 {e['p50_ms']:.4g} ms, p99 {e['p99_ms']:.4g} ms"
        if "onnxruntime" in lat:
            text += (f"; onnxruntime p50 {lat['onnxruntime']['p50_ms']:.4g} ms: edgec is "
                     f"{latency_verdict(lat)}")  # fmt: skip
        s.pairs.append(("latency", text))
    else:
        s.pairs.append(("latency", "not measured"))
    if r.get("peak"):
        roof = f"{r['peak']['gflops']:.0f} GFLOP/s fp32 peak"
        if r.get("bandwidth"):
            roof += f", {r['bandwidth']['gbps']:.1f} GB/s memory bandwidth"
        s.pairs.append(("machine (measured)", f"{roof} ({r['peak'].get('cpu', '?')})"))
    search = r.get("search") or {}
    if search:
        s.pairs.append(("search", search_line(search)))
    if r.get("gates"):
        bad = [g for g in r["gates"] if not g["passed"]]
        s.pairs.append(("gates", f"{len(bad)} of {len(r['gates'])} failed" if bad else
                        f"all {len(r['gates'])} passed"))  # fmt: skip
    return s


def search_line(s: dict) -> str:
    if s.get("mode", "none") == "none":
        return "none (template defaults, nothing measured)"
    if "skipped" in s:
        return f"{s['mode']}: skipped ({s['skipped']})"
    budget = f" of {s['budget_s']:g}" if s.get("budget_s") else ""
    return (f"{s['mode']}: {s['seconds']:.1f}{budget} s, {s['kernels_measured']} kernel(s) "
            f"measured, {s['candidates_tried']} candidates tried, {s['cache_hits']} from the cache"
            + (", interrupted" if s.get("interrupted") else ""))  # fmt: skip


def _gates(r: dict) -> Section | None:
    if not r.get("gates"):
        return None
    s = Section("gates", "CI gates", headers=["gate", "measured", "limit", "result"])
    for g in r["gates"]:
        s.rows.append([g["gate"], fmt(g["measured"]), fmt(g["limit"]),
                       "PASS" if g["passed"] else "FAIL"])  # fmt: skip
    s.note = "\n".join(g["message"] for g in r["gates"])
    return s


def _latency(r: dict) -> Section | None:
    lat = r.get("latency")
    if not lat or "skipped" in lat:
        return None
    s = Section("latency", "Latency", plots=["latency"],
                headers=["engine", "p50 ms", "p90 ms", "p99 ms", "mean ms", "stddev ms", "runs",
                         "noisy"])  # fmt: skip
    for e in ("edgec", "onnxruntime"):
        if e in lat:
            st = lat[e]
            s.rows.append([e] + [fmt(st[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms",
                          "stddev_ms", "runs", "noisy")])  # fmt: skip
    s.note = f"{lat.get('method', '')}; onnxruntime: {lat.get('onnxruntime_config', '')}"
    return s


def _kernels(r: dict) -> Section | None:
    ks = r.get("kernels") or []
    if not ks:
        return None
    s = Section("kernels", "Kernels: time and efficiency",
                plots=["kernels", "roofline", "efficiency"],
                headers=["kernel", "template", "ms", "calls", "GFLOP/s", "of peak", "FLOP/byte",
                         "roof GFLOP/s", "of roof", "bound"])  # fmt: skip
    order = sorted(ks, key=lambda k: -(k.get("profile_ms") or 0))
    for k in order:
        s.rows.append([k["kernel"], fmt(k.get("template")), fmt(k.get("profile_ms"), 3),
                       fmt(k.get("calls")), fmt(k.get("gflops"), 3), _pct(k.get("peak_fraction")),
                       fmt(k.get("intensity"), 3), fmt(k.get("roof_gflops"), 3),
                       _pct(k.get("roof_fraction")), fmt(k.get("bound"))])  # fmt: skip
    if r.get("peak") and r.get("bandwidth"):
        ridge = r["peak"]["gflops"] / r["bandwidth"]["gbps"]
        s.note = (f"roof = min({r['peak']['gflops']:.0f} GFLOP/s, FLOP/byte x "
                  f"{r['bandwidth']['gbps']:.1f} GB/s); ridge point {ridge:.1f} FLOP/byte. "
                  "Bytes: compulsory traffic (buffers read/written once).")  # fmt: skip
    return s


def _passes(r: dict) -> Section | None:
    ps = r.get("passes") or []
    if not ps:
        return None
    s = Section("passes", "Passes",
                headers=["pass", "round", "status", "nodes", "fired", "declined / reverted",
                         "seconds"])  # fmt: skip
    for p in ps:
        fired = ", ".join(f"{k} {v}" for k, v in (p.get("stats") or {}).items() if v) or "-"
        why = list(p.get("declined") or [])
        if p.get("reason"):
            why.insert(0, f"REVERTED: {p['reason']}")
        s.rows.append([p["name"], fmt(p.get("round")), p["status"],
                       f"{p['nodes_before']} -> {p['nodes_after']}", fired,
                       "; ".join(why) or "-", fmt(p.get("seconds"), 3)])  # fmt: skip
    return s


def _accuracy(r: dict) -> Section | None:
    v = r.get("verification") or {}
    if not v:
        return None
    s = Section("accuracy", "Accuracy (vs onnxruntime)", note=accuracy_verdict(v))
    if "outputs" in v:
        s.headers = ["output", "max abs err", "max rel err", "scaled err", "cosine", "top-1"]
        for name, m in v["outputs"].items():
            s.rows.append([name, fmt(m.get("max_abs_err"), 3), fmt(m.get("max_rel_err"), 3),
                           fmt(m.get("scaled_err"), 3), fmt(m.get("cosine"), 8),
                           _pct(m.get("top1_agreement"))])  # fmt: skip
        s.pairs = [("inputs", fmt(v.get("inputs"))), ("reference", fmt(v.get("reference")))]
    return s


def _search(r: dict) -> Section | None:
    sr = r.get("search") or {}
    if not sr:
        return None
    s = Section("search", "Kernel search", note=search_line(sr))
    s.pairs = [(k, fmt(v)) for k, v in sr.items()]
    tuned = [k for k in r.get("kernels", []) if k.get("candidates")]
    if tuned:
        s.headers = ["kernel", "chosen knobs", "ms", "candidates", "fastest ms", "slowest ms"]
        for k in tuned:
            times = [c["ms"] for c in k["candidates"] if c.get("ms") is not None]
            s.rows.append([k["kernel"], fmt(k.get("knobs")), fmt(k.get("ms"), 3),
                           str(len(k["candidates"])), fmt(min(times, default=None), 3),
                           fmt(max(times, default=None), 3)])  # fmt: skip
    return s


def _timings(r: dict) -> Section | None:
    t = r.get("timings_s")
    if not t:
        return None
    return Section("timings", "Compile time", pairs=[(k, f"{v:.2f} s") for k, v in t.items()])


def _generic(key: str, value) -> Section:
    """A key this module does not know: tables for lists of objects, pairs for flat objects."""
    s = Section(f"extra-{key}", key.replace("_", " ").capitalize())
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        s.headers = list(dict.fromkeys(k for v in value for k in v))
        s.rows = [[fmt(v.get(h)) for h in s.headers] for v in value]
    elif isinstance(value, dict):
        tables = {k: v for k, v in value.items()
                  if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}  # fmt: skip
        s.pairs = [(k, fmt(v)) for k, v in value.items() if k not in tables]
        if tables:  # the first list of objects becomes the table (e.g. per-layer errors)
            name, rows = next(iter(tables.items()))
            s.note = f"{name}:"
            s.headers = list(dict.fromkeys(k for v in rows for k in v))
            s.rows = [[fmt(v.get(h)) for h in s.headers] for v in rows]
            s.pairs += [(k, fmt(v)) for k, v in list(tables.items())[1:]]
    else:
        s.pairs = [(key, fmt(value))]
    return s


def _as_report(data: dict) -> dict:
    """`edgec bench --json` output keeps the engines at the top level: move them under
    ``latency`` as in report.json."""
    if "latency" in data or "edgec" not in data:
        return data
    moved = ("edgec", "onnxruntime", "edgec_vs_onnxruntime_p50", "threads")
    return {**{k: v for k, v in data.items() if k not in moved[:3]},
            "latency": {k: data[k] for k in moved if k in data}}  # fmt: skip


def sections(report: dict) -> list[Section]:
    report = _as_report(report)
    builders = (_summary, _gates, _latency, _kernels, _accuracy, _passes, _search, _timings)
    found = [b(report) for b in builders]
    extra = [_generic(k, v) for k, v in report.items() if k not in KNOWN]
    # extra sections (quantization, per-layer errors) go right after accuracy
    at = next(i for i, b in enumerate(builders) if b is _accuracy) + 1
    return [s for s in found[:at] + extra + found[at:] if s is not None]
