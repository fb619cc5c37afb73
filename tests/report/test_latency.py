import itertools
import time

from edgec.report import latency
from edgec.report.summary import summary


def test_measure_interleaves_blocks_and_counts_runs():
    calls = []

    def engine(name, seconds):
        return lambda: (calls.append(name), time.sleep(seconds))

    engines = {"fast": engine("fast", 0.001), "slow": engine("slow", 0.06)}
    result = latency.measure(engines, warmup=2, runs=12, budget_s=100, settle_s=0)
    assert calls[:4] == ["fast", "fast", "slow", "slow"]  # warm-up
    # fast: 1 untimed re-warm call + a block of 10; slow (> 50 ms): no re-warm, blocks of 1
    assert calls[4:20] == ["fast"] * 11 + ["slow"] + ["fast"] * 3 + ["slow"]
    assert result["fast"]["runs"] == result["slow"]["runs"] == 12
    assert calls.count("slow") == 2 + 12
    for name in engines:
        assert result[name]["warmup"] == 2
        s = result[name]
        assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]


def test_measure_stops_at_budget_after_min_runs():
    result = latency.measure({"a": lambda: time.sleep(0.06)}, warmup=1, runs=1000, min_runs=3,
                             budget_s=0.0, settle_s=0)  # fmt: skip
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
