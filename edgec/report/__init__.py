"""The compile report: latency statistics, report.json, and the human summary."""
