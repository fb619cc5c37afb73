"""CI gates: every gate passing and failing, with its exact message and the exit code."""

from __future__ import annotations

import json

import pytest

from edgec.errors import InvalidInputError
from edgec.report.gates import Gates, evaluate, parse_percent

REPORT = {
    "latency": {"edgec": {"p50_ms": 2.0, "p99_ms": 3.0}, "onnxruntime": {"p50_ms": 2.5}},
    "verification": {"passed": True, "min_cosine": 0.9995, "max_abs_err": 2e-5,
                     "top1_agreement": 0.98},
}  # fmt: skip


def _baseline(tmp_path, p50: float) -> str:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"latency": {"edgec": {"p50_ms": p50, "p99_ms": 9.0}}}))
    return str(path)


def test_every_gate_passes_with_its_message(tmp_path):
    gates = Gates(max_latency_ms=2.5, max_p99_ms=3.0, baseline=_baseline(tmp_path, 1.95),
                  max_regression=0.05, min_cosine=0.999, max_abs_err=1e-4,
                  min_top1_agreement=0.98)  # fmt: skip
    results = evaluate(REPORT, gates)
    assert [r["message"] for r in results] == [
        "PASS max-latency-ms: edgec p50 2 ms <= limit 2.5 ms",
        "PASS max-p99-ms: edgec p99 3 ms <= limit 3 ms",
        "PASS max-regression: edgec p50 vs baseline +2.6% (1.95 ms -> 2 ms) <= limit +5.0%",
        "PASS min-cosine: min cosine 0.999500 >= limit 0.999",
        "PASS max-abs-err: max abs err 2e-05 <= limit 0.0001",
        "PASS min-top1-agreement: top-1 agreement 0.98 >= limit 0.98",
    ]
    assert all(r["passed"] for r in results)
    assert results[2]["measured"] == pytest.approx(100 * (2.0 / 1.95 - 1))


def test_every_gate_fails_with_its_message(tmp_path):
    gates = Gates(max_latency_ms=1.5, max_p99_ms=2.9, baseline=_baseline(tmp_path, 1.6),
                  max_regression=0.2, min_cosine=0.9999, max_abs_err=1e-5,
                  min_top1_agreement=0.99)  # fmt: skip
    assert [r["message"] for r in evaluate(REPORT, gates)] == [
        "FAIL max-latency-ms: edgec p50 2 ms > limit 1.5 ms",
        "FAIL max-p99-ms: edgec p99 3 ms > limit 2.9 ms",
        "FAIL max-regression: edgec p50 vs baseline +25.0% (1.6 ms -> 2 ms) > limit +20.0%",
        "FAIL min-cosine: min cosine 0.999500 < limit 0.9999",
        "FAIL max-abs-err: max abs err 2e-05 > limit 1e-05",
        "FAIL min-top1-agreement: top-1 agreement 0.98 < limit 0.99",
    ]


def test_unmeasured_gates_fail(tmp_path):
    report = {"verification": {"skipped": "--no-verify"}}
    gates = Gates(max_latency_ms=1.0, min_cosine=0.9, baseline=_baseline(tmp_path, 1.0))
    assert [r["message"] for r in evaluate(report, gates)] == [
        "FAIL max-latency-ms: edgec p50 not measured (no latency in the report: --no-bench, or "
        "the target cannot run here); limit 1",
        "FAIL max-regression: edgec p50 vs baseline not measured (no latency in the report: "
        "--no-bench, or the target cannot run here); limit 5",
        "FAIL min-cosine: min cosine not measured (--no-verify); limit 0.9",
    ]


def test_bad_gate_usage():
    assert parse_percent("5%") == parse_percent("5") == 0.05
    with pytest.raises(InvalidInputError, match="bad percentage 'five'"):
        parse_percent("five")
    with pytest.raises(InvalidInputError, match="--max-regression needs --baseline"):
        Gates(max_regression=0.05)
    with pytest.raises(InvalidInputError, match="cannot read an edgec report"):
        Gates(baseline="/nonexistent/report.json")


def _bench(cli, artifact, *gates):
    result = cli("-q", "bench", artifact, "--runs", "5", "--budget", "0.1", "--json", *gates)
    return result, json.loads(result.out)


def test_bench_gates_pass_exit_0(cli, artifact):
    result, data = _bench(cli, artifact, "--max-latency-ms", "1e6", "--max-p99-ms", "1e6",
                          "--min-cosine", "0.999", "--max-abs-err", "1e-3",
                          "--min-top1-agreement", "0.99", "--baseline", artifact,
                          "--max-regression", "1e6%")  # fmt: skip
    assert result.code == 0, result.err
    assert [g["gate"] for g in data["gates"]] == ["max-latency-ms", "max-p99-ms", "max-regression",
                                                  "min-cosine", "max-abs-err",
                                                  "min-top1-agreement"]  # fmt: skip
    assert all(g["passed"] for g in data["gates"])
    v = data["verification"]  # accuracy gates make bench verify against onnxruntime
    assert v["passed"] and v["min_cosine"] > 0.9999 and v["top1_agreement"] == 1.0


def test_bench_gates_fail_exit_1_one_line_each(cli, artifact):
    result, data = _bench(cli, artifact, "--max-latency-ms", "1e-9", "--max-p99-ms", "1e6",
                          "--max-abs-err", "-1")  # fmt: skip
    assert result.code == 1
    p50, err = data["edgec"]["p50_ms"], data["verification"]["max_abs_err"]
    assert "edgec: error: 2 of 3 gate(s) failed:" in result.err
    assert f"  FAIL max-latency-ms: edgec p50 {p50:.4g} ms > limit 1e-09 ms" in result.err
    assert f"  FAIL max-abs-err: max abs err {err:.4g} > limit -1" in result.err
    assert "max-p99-ms" not in result.err  # passing gates are not errors


def test_compile_gate_failure_keeps_artifact_and_json_stdout_is_pure(tmp_path):
    """Out of process, so that anything written to file descriptor 1 would show."""
    import subprocess
    import sys

    import onnx

    from tests.conftest import conv_relu_model

    onnx.save(conv_relu_model(dynamic_batch=False), tmp_path / "m.onnx")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "edgec.cli", "compile", tmp_path / "m.onnx", "-o", out,
         "--bench-runs", "5", "--bench-budget", "0.1", "--json", "--no-html",
         "--max-p99-ms", "1e-9", "--min-cosine", "0.99"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)  # nothing but the JSON on stdout
    assert report == json.loads((out / "report.json").read_text())
    assert (out / "model.so").is_file() and not (out / "report.html").exists()
    assert [g["passed"] for g in report["gates"]] == [False, True]
    p99 = report["latency"]["edgec"]["p99_ms"]
    assert f"FAIL max-p99-ms: edgec p99 {p99:.4g} ms > limit 1e-09 ms" in proc.stderr
    assert "build for x86_64" in proc.stderr  # progress went to stderr
