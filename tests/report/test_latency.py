import itertools

from edgec.report import latency
from edgec.report.summary import summary


def test_measure_interleaves_engines_and_counts_runs():
    calls = []
    engines = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    result = latency.measure(engines, warmup=2, runs=7, budget_s=100)
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up
    assert calls[4:] == ["a", "b"] * 7  # interleaved rounds
    for name in engines:
        assert result[name]["runs"] == 7 and result[name]["warmup"] == 2
        s = result[name]
        assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]


def test_measure_stops_at_budget_after_min_runs():
    result = latency.measure({"a": lambda: None}, warmup=0, runs=1000, min_runs=3, budget_s=0.0)
    assert result["a"]["runs"] == 3


def test_stats_percentiles_and_noise_flag():
    s = latency.stats([0.001 * i for i in range(1, 101)], warmup=1)
    assert s["p50_ms"] == 50.5 and s["runs"] == 100 and s["noisy"]
    assert not latency.stats([0.01] * 10, warmup=0)["noisy"]


def test_summary_mentions_accuracy_and_speed():
    fast = latency.stats([0.002] * 5, 1)
    slow = latency.stats([0.004] * 5, 1)
    report = {
        "model": "m.onnx", "target": "x86_64", "precision": "fp32", "threads": 2,
        "passes": [{"name": "simplify", "status": "applied", "nodes_before": 9, "nodes_after": 4}],
        "verification": {"passed": True, "min_cosine": 0.9999999, "max_abs_err": 1e-6,
                         "scaled_err": 1e-7, "tolerance": 1e-4, "inputs": "random (seed 0)"},
        "latency": {"edgec": fast, "onnxruntime": slow, "edgec_vs_onnxruntime_p50": 0.5},
    }  # fmt: skip
    text = summary(report)
    assert "simplify (9->4 nodes)" in text
    assert "PASS" in text and "cosine 1.000000" in text
    assert "edgec is 2.00x faster" in text
    report["latency"]["edgec_vs_onnxruntime_p50"] = 30.0
    assert "30.0x slower" in summary(report)
    assert next(itertools.islice(text.splitlines(), 1)) == "m.onnx -> x86_64 (fp32, 2 threads)"
