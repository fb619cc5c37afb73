"""The report's plots as inline SVG (matplotlib, Agg backend; text kept as SVG text).

Each function takes report.json and returns an ``<svg>`` string, or None when the report lacks the
numbers (e.g. ``--no-bench``: no latency, no profile).
"""

from __future__ import annotations

import io
import re

__all__ = ["efficiency", "kernels", "latency", "roofline"]

COLORS = {"edgec": "#1f77b4", "onnxruntime": "#ff7f0e"}
TEMPLATE_COLORS = {"conv2d": "#1f77b4", "matmul": "#2ca02c", "generic": "#9467bd", None: "#7f7f7f"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    matplotlib.rcParams.update({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "edgec"})
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    _pyplot().close(fig)
    text = buf.getvalue()
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF boilerplate
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline in HTML


def _template_legend(rows: list[dict]) -> list:
    from matplotlib.patches import Patch

    used = dict.fromkeys(k.get("template") for k in rows)
    return [Patch(color=TEMPLATE_COLORS.get(t, "#7f7f7f"), label=t or "TVM default") for t in used]


def latency(report: dict) -> str | None:
    """Histogram of the timed calls of each engine, p50 and p99 marked."""
    lat = report.get("latency") or {}
    engines = [e for e in ("edgec", "onnxruntime") if e in lat]
    if not engines:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    samples = {e: lat[e].get("samples_ms") for e in engines}
    if all(samples.values()):
        import numpy as np

        lo = min(min(s) for s in samples.values())
        hi = max(max(s) for s in samples.values())
        log = hi / max(lo, 1e-9) > 20
        bins = np.geomspace(max(lo, 1e-6), hi, 40) if log else np.linspace(lo, hi, 40)
        for e in engines:
            ax.hist(samples[e], bins=bins, alpha=0.55, color=COLORS[e], label=e)
        if log:
            ax.set_xscale("log")
        ax.set_ylabel("calls")
    for e in engines:
        for q, style in (("p50_ms", "-"), ("p99_ms", ":")):
            ax.axvline(lat[e][q], color=COLORS[e], linestyle=style, linewidth=1.2,
                       label=f"{e} {q[:3]} {lat[e][q]:.3g} ms")  # fmt: skip
    ax.set_xlabel("latency per inference (ms)")
    ax.set_title("Latency distribution (interleaved blocks, same run)")
    ax.legend(fontsize=7, loc="upper right")
    return _svg(fig)


def kernels(report: dict, top: int = 15) -> str | None:
    """Time per inference of the slowest kernels (profile), coloured by schedule template."""
    rows = [k for k in report.get("kernels", []) if k.get("profile_ms") is not None]
    if not rows:
        return None
    rows = sorted(rows, key=lambda k: -k["profile_ms"])[:top]
    other = sum((report.get("profile") or {}).get("other_ms", {}).values())
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.28 * (len(rows) + 1)))
    names = [k["kernel"] for k in rows] + (["(VM builtins)"] if other else [])
    values = [k["profile_ms"] for k in rows] + ([other] if other else [])
    colors = [TEMPLATE_COLORS.get(k.get("template"), "#7f7f7f") for k in rows] + ["#bbbbbb"]
    ax.barh(range(len(names)), values, color=colors[: len(names)])
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per inference")
    ax.set_title("Time per kernel (colour: schedule template)")
    ax.legend(handles=_template_legend(rows), fontsize=7, loc="lower right")
    return _svg(fig)


def roofline(report: dict) -> str | None:
    """Achieved GFLOP/s per kernel against the machine's roofline (measured peak and bandwidth)."""
    peak, bandwidth = report.get("peak"), report.get("bandwidth")
    rows = [k for k in report.get("kernels", []) if k.get("intensity") and k.get("gflops")]
    if not (peak and bandwidth and rows):
        return None
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = np.array([k["intensity"] for k in rows])
    ridge = peak["gflops"] / bandwidth["gbps"]
    x = np.geomspace(min(xs.min(), ridge) / 4, max(xs.max(), ridge) * 4, 200)
    ax.plot(x, np.minimum(peak["gflops"], x * bandwidth["gbps"]), color="black", linewidth=1.5,
            label=f"roof: {peak['gflops']:.0f} GFLOP/s, {bandwidth['gbps']:.1f} GB/s")  # fmt: skip
    total = sum(k.get("profile_ms", 0) for k in rows) or 1.0
    sizes = [20 + 400 * k.get("profile_ms", 0) / total for k in rows]
    colors = [TEMPLATE_COLORS.get(k.get("template"), "#7f7f7f") for k in rows]
    ax.scatter(xs, [k["gflops"] for k in rows], s=sizes, c=colors, alpha=0.7, edgecolors="k")
    for i, k in enumerate(sorted(rows, key=lambda k: -k.get("profile_ms", 0))[:3]):
        ax.annotate(f"{k['kernel'][:32]}: {k['roof_fraction']:.0%} of roof",
                    (k["intensity"], k["gflops"]), xytext=(12, -14 - 11 * i),
                    textcoords="offset points", fontsize=6,
                    arrowprops={"arrowstyle": "-", "color": "#888", "linewidth": 0.5})  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte of compulsory traffic)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title("Roofline: the efficiency gap per kernel (size: share of time)")
    ax.legend(handles=[*ax.get_legend_handles_labels()[0], *_template_legend(rows)], fontsize=7,
              loc="lower right")  # fmt: skip
    return _svg(fig)


def efficiency(report: dict, top: int = 15) -> str | None:
    """Per kernel (slowest first): achieved GFLOP/s over its roof and over the machine's peak."""
    peak = report.get("peak")
    rows = [k for k in report.get("kernels", []) if k.get("roof_gflops") and k.get("gflops")]
    if not (peak and rows):
        return None
    rows = sorted(rows, key=lambda k: -k.get("profile_ms", 0))[:top]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.28 * len(rows)))
    y = range(len(rows))
    ax.barh(y, [peak["gflops"]] * len(rows), color="#eeeeee", label="machine peak")
    ax.barh(y, [k["roof_gflops"] for k in rows], color="#c6dbef", label="roof at its intensity")
    ax.barh(y, [k["gflops"] for k in rows], height=0.5,
            color=[TEMPLATE_COLORS.get(k.get("template"), "#7f7f7f") for k in rows],
            label="achieved")  # fmt: skip
    for i, k in enumerate(rows):
        ax.text(k["gflops"], i, f" {k['roof_fraction']:.0%}", va="center", fontsize=6)
    ax.set_yticks(list(y), [k["kernel"] for k in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("GFLOP/s (label: achieved / roof)")
    ax.set_title("Efficiency gap per kernel: achieved vs roof vs peak")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _svg(fig)
