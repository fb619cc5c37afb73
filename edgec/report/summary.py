"""A short human summary of report.json, for the terminal."""

from __future__ import annotations


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def summary(report: dict) -> str:
    lines = [f"{report.get('model', 'model')} -> {report['target']} ({report['precision']}, "
             f"{report['threads']} threads)"]  # fmt: skip
    applied = [p for p in report.get("passes", []) if p["status"].startswith("applied")]
    reverted = [p for p in report.get("passes", []) if p["status"] == "reverted"]
    if report.get("passes"):
        text = ", ".join(f"{p['name']} ({p['nodes_before']}->{p['nodes_after']} nodes)"
                         for p in applied) or "none changed the graph"  # fmt: skip
        lines.append(f"  passes:    {text}")
        for p in reverted:
            lines.append(f"  REVERTED:  {p['name']}: {p['reason']}")
    v = report.get("verification", {})
    if "skipped" in v:
        lines.append(f"  accuracy:  not verified ({v['skipped']})")
    elif "cubin_bytes" in v:
        lines.append(f"  accuracy:  not run ({v['run']}); device code: {v['method']}: PASS")
    elif v:
        verdict = "PASS" if v["passed"] else "FAIL"
        lines.append(
            f"  accuracy:  {verdict} vs onnxruntime: cosine {v['min_cosine']:.6f}, "
            f"max abs err {v['max_abs_err']:.2g}, scaled err {v['scaled_err']:.2g} "
            f"(tolerance {v['tolerance']:g}; inputs {v['inputs']})"
            + (f" [emulated: {v['emulated']}]" if v.get("emulated") else "")
        )
    lat = report.get("latency")
    if lat and "skipped" in lat:
        lines.append(f"  latency:   not measured ({lat['skipped']})")
    elif lat:
        e, o = lat["edgec"], lat["onnxruntime"]
        ratio = lat["edgec_vs_onnxruntime_p50"]
        verdict = f"{1 / ratio:.2f}x faster" if ratio < 1 else f"{ratio:.1f}x slower"
        lines.append(
            f"  latency:   edgec p50 {_fmt_ms(e['p50_ms'])} (p90 {_fmt_ms(e['p90_ms'])}, "
            f"p99 {_fmt_ms(e['p99_ms'])}, {e['runs']} runs) vs onnxruntime p50 "
            f"{_fmt_ms(o['p50_ms'])}: edgec is {verdict}"
        )
        noisy = [name for name in ("edgec", "onnxruntime") if lat[name]["noisy"]]
        if noisy:
            lines.append(
                f"  note:      noisy measurement ({', '.join(noisy)}: stddev > 10 % of mean)"
            )
    prof, peak = report.get("profile"), report.get("peak")
    if prof and peak:
        top = sorted((k for k in report.get("kernels", []) if "profile_ms" in k),
                     key=lambda k: -k["profile_ms"])[:3]  # fmt: skip
        parts = [
            f"{k['kernel']} {k['profile_ms']:.2g} ms"
            + (f" ({k['peak_fraction']:.0%} of peak)" if "peak_fraction" in k else "")
            for k in top
        ]
        lines.append(f"  kernels:   {'; '.join(parts)} [peak {peak['gflops']:.0f} GFLOP/s]")
    if "timings_s" in report:
        t = report["timings_s"]
        lines.append("  time:      " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    return "\n".join(lines)
