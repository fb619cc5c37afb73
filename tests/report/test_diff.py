"""edgec diff: the regression table and its exit codes."""

from __future__ import annotations

import json

from edgec.report import diff


def _report(p50, p99, passed=True, cosine=0.99999, k1=1.0):
    return {
        "latency": {"edgec": {"p50_ms": p50, "p99_ms": p99}, "onnxruntime": {"p50_ms": 2.0},
                    "edgec_vs_onnxruntime_p50": p50 / 2.0},
        "verification": {"passed": passed, "min_cosine": cosine, "max_abs_err": 1e-6,
                         "scaled_err": 1e-7},
        "kernels": [{"kernel": "conv", "profile_ms": k1}, {"kernel": "dense", "profile_ms": 0.5}],
    }  # fmt: skip


def _write(tmp_path, name, data):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_rows_and_regressions():
    rows = diff.compare(_report(2.0, 3.0), _report(2.2, 3.05, k1=1.5), threshold=0.05)
    by = {r["metric"]: r for r in rows}
    assert (
        by["latency p50 (ms)"]["change"] == 2.2 / 2.0 - 1 and by["latency p50 (ms)"]["regression"]
    )
    assert not by["latency p99 (ms)"]["regression"]  # +1.7 % < 5 %
    assert by["kernel conv (ms)"]["regression"] and not by["kernel conv (ms)"]["counts"]
    assert [r["metric"] for r in diff.regressions(rows)] == ["latency p50 (ms)"]
    text = diff.table(rows)
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert lines["latency p50 (ms)"].split() == ["latency", "p50", "(ms)", "2", "2.2", "+10.0%",
                                                 "REGRESSION"]  # fmt: skip
    assert lines["kernel conv (ms)"].split()[-2:] == ["+50.0%", "slower"]
    assert lines["verification"].split() == ["verification", "PASS", "PASS"]


def test_cli_exit_codes(cli, tmp_path):
    old = _write(tmp_path, "old", _report(2.0, 3.0))
    slower = _write(tmp_path, "new", _report(2.3, 3.0))
    broken = _write(tmp_path, "broken", _report(2.0, 3.0, passed=False))
    result = cli("diff", old, slower)
    assert result.code == 0 and "REGRESSION" in result.out  # shown, not failing by default
    result = cli("diff", old, slower, "--fail-on-regression")
    assert result.code == 1
    assert "1 regression(s) over 5.0%: latency p50 (ms)" in result.err
    assert cli("diff", old, slower, "--fail-on-regression", "20%").code == 0
    result = cli("diff", old, broken, "--fail-on-regression", "20")
    assert result.code == 1 and "verification" in result.err
    data = json.loads(cli("diff", old, slower, "--json").out)
    assert data["regressions"] == 1 and data["rows"][0]["new"] == 2.3
    result = cli("diff", old, tmp_path / "missing")
    assert result.code == 2 and "cannot read an edgec report" in result.err


def test_diff_of_an_artifact_with_itself(cli, artifact):
    result = cli("diff", artifact, artifact / "report.json", "--fail-on-regression", "0")
    assert result.code == 0, result.out
    assert "latency p50 (ms)" in result.out and "+0.0%" in result.out
    assert "kernel fused_conv2d_add_relu (ms)" in result.out
