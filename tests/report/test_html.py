"""report.html, `edgec report --format md|html|json`, and the page as headless Chromium shows it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgec.report import html, markdown

SECTIONS = ("summary", "latency", "kernels", "accuracy", "passes", "search", "timings")


def test_compile_writes_a_self_contained_html(artifact):
    page = (artifact / "report.html").read_text()
    report = json.loads((artifact / "report.json").read_text())
    for s in SECTIONS:
        assert f'<section id="{s}">' in page
    for plot in ("latency", "kernels", "roofline", "efficiency"):
        assert f'<figure id="plot-{plot}" class="plot"><svg' in page
    # nothing to fetch: no scripts, stylesheets, or resources by URL
    assert "<script" not in page and "<link" not in page and "<img" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", page)
    assert not re.search(r"https?://(?!www\.w3\.org/)", page), "a URL other than XML namespaces"
    k = report["kernels"][0]  # the roofline numbers are in the report and the page
    assert k["bytes"] == 4 * (3 * 16 * 16 + 8 * 3 * 3 * 3 + 8 + 8 * 16 * 16)
    assert k["intensity"] == k["flops"] / k["bytes"]
    assert k["roof_gflops"] == min(
        report["peak"]["gflops"], k["intensity"] * report["bandwidth"]["gbps"]
    )
    assert f"{k['roof_gflops']:.3g}" in page


def test_report_formats(cli, artifact, tmp_path):
    report = json.loads((artifact / "report.json").read_text())
    assert json.loads(cli("report", artifact, "--format", "json").out) == report
    md = cli("report", artifact).out
    assert md == markdown.render(report)
    assert md.startswith("## edgec: model.onnx -> x86_64\n")
    assert "| engine | p50 ms |" in md and "| fused_conv2d_add_relu | conv2d |" in md
    out = tmp_path / "r.html"
    assert cli("report", artifact, "-f", "html", "-o", out).code == 0
    assert out.read_text() == html.render(report)
    result = cli("report", artifact, "-f", "html", "-o", out)
    assert result.code == 2 and "already exists" in result.err


def test_unknown_report_keys_render_generically():
    report = {"model": "m.onnx", "target": "x86_64", "precision": "int8",
              "accuracy": {"top1": 0.91, "layers": [{"layer": "conv1", "sqnr_db": 31.5},
                                                    {"layer": "fc", "sqnr_db": 24.25}]},
              "float_ops": ["Softmax"]}  # fmt: skip
    page, md = html.render(report), markdown.render(report)
    assert '<section id="extra-accuracy">' in page and "<td>conv1</td>" in page
    assert "| layer | sqnr_db |" in md and "| fc | 24.25 |" in md
    assert "Float ops" in md and '["Softmax"]' in md


def test_an_emulated_compile_renders_its_skipped_latency():
    """A foreign target verified under qemu has no latency (report latency.skipped)."""
    report = {"model": "m.onnx", "target": "arm64", "precision": "fp32",
              "latency": {"skipped": "emulated: correctness only"}}  # fmt: skip
    page, md = html.render(report), markdown.render(report)
    assert "not measured (emulated: correctness only)" in page
    assert "not measured (emulated: correctness only)" in md
    assert '<section id="latency">' not in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make chromium)")
def test_screenshot_in_headless_chromium(artifact, tmp_path):
    """The page as a browser sees it: the DOM after parsing has the summary, gates-free page
    sections and three SVG plots with their titles; the screenshot is saved under build/."""
    page = (artifact / "report.html").resolve().as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120).stdout  # fmt: skip
    assert '<section id="summary">' in dom and "accuracy vs onnxruntime" in dom
    for title in ("Latency distribution", "Time per kernel", "Roofline", "Efficiency gap"):
        assert title in dom
    assert dom.count("<svg") >= 4
    shot = Path(__file__).resolve().parents[2] / "build" / "report-screenshot.png"
    shot.parent.mkdir(exist_ok=True)
    subprocess.run([*flags, f"--screenshot={shot.resolve()}", "--window-size=1200,2400", page],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1200, 2400)
    dark = sum(image.histogram()[:128]) / (image.size[0] * image.size[1])
    assert dark > 0.01, f"the page looks blank ({dark:.2%} dark pixels)"
    shutil.copy(shot, tmp_path / shot.name)


def test_passes_and_search_tables():
    report = {
        "model": "m.onnx", "target": "x86_64", "precision": "fp32", "threads": 2,
        "passes": [
            {"name": "fuse_batchnorm", "round": 1, "status": "applied", "nodes_before": 5,
             "nodes_after": 3, "stats": {"FuseBatchNormIntoConv": 2, "CancelLayoutPair": 0},
             "declined": ["bn7: weight W shared with node n3"], "seconds": 0.01},
            {"name": "extract_conv", "round": 1, "status": "reverted", "nodes_before": 3,
             "nodes_after": 3, "stats": {"regions_extracted": 1}, "declined": [],
             "reason": "scaled error 0.3 > tolerance 0.0001", "seconds": 0.2},
        ],
        "search": {"mode": "fast", "budget_s": 60.0, "seconds": 12.5, "kernels_measured": 1,
                   "candidates_tried": 3, "cache_hits": 0},
        "kernels": [{"kernel": "conv", "template": "conv2d", "knobs": {"fb": 16}, "ms": 0.5,
                     "candidates": [{"knobs": {"fb": 16}, "ms": 0.5}, {"knobs": {"fb": 8},
                                    "ms": 0.75}, {"knobs": {"fb": 4}, "ms": None}]}],
    }  # fmt: skip
    md = markdown.render(report)
    assert ("| fuse_batchnorm | 1 | applied | 5 -> 3 | FuseBatchNormIntoConv 2 | "
            "bn7: weight W shared with node n3 | 0.01 |") in md  # fmt: skip
    assert ("| extract_conv | 1 | reverted | 3 -> 3 | regions_extracted 1 | "
            "REVERTED: scaled error 0.3 > tolerance 0.0001 | 0.2 |") in md  # fmt: skip
    assert "fast: 12.5 of 60 s, 1 kernel(s) measured, 3 candidates tried, 0 from the cache" in md
    assert '| conv | {"fb": 16} | 0.5 | 3 | 0.5 | 0.75 |' in md
    assert "passes reverted**: extract_conv" in md
    page = html.render(report)
    assert '<section id="search">' in page and "<td>REVERTED: scaled error 0.3" in page


def test_a_bench_result_renders_its_latency(cli, artifact, tmp_path):
    result = cli("-q", "bench", artifact, "--runs", "5", "--budget", "0.1", "--no-reference",
                 "--json")  # fmt: skip
    (tmp_path / "bench.json").write_text(result.out)
    md = cli("report", tmp_path / "bench.json").out
    p50 = json.loads(result.out)["edgec"]["p50_ms"]
    assert f"- **latency**: edgec p50 {p50:.4g} ms" in md and "| edgec |" in md


def test_a_plotting_failure_costs_the_page_not_the_artifact(conv_relu, tmp_path, monkeypatch):
    from edgec import api

    def broken(report, path):
        raise RuntimeError("no plots today")

    monkeypatch.setattr(html, "write", broken)
    result = api.compile(conv_relu, tmp_path / "out", input_shapes={"x": (1, 3, 16, 16)},
                         bench=False)  # fmt: skip
    assert result.report["html_error"] == "RuntimeError: no plots today"
    assert not (tmp_path / "out" / "report.html").exists()
    assert (tmp_path / "out" / "model.so").is_file()
