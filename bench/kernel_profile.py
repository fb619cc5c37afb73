"""Per-kernel profile of a compiled artifact: where the time goes.

.venv/bin/python bench/kernel_profile.py OUT/ [--reps 20] [--top 15]
"""

from __future__ import annotations

import argparse
import json

from edgec import api, verify
from edgec.lower.profile import profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    model = api.load(args.artifact)
    feeds = verify.random_inputs(model.inputs, 0)
    rows = profile(model._runtime, [feeds[s.name] for s in model.inputs], args.reps)
    report = json.loads((model.path / "report.json").read_text())
    knobs = {k["kernel"]: k for k in report.get("kernels", [])}
    print(f"{'ms':>8} {'share':>6} {'calls':>5}  kernel  [template knobs, GFLOP/s]")
    for r in rows[: args.top]:
        k = knobs.get(r["kernel"].replace("_prepacked", ""), {})
        gflops = k.get("flops", 0) * r["calls"] / (r["ms"] * 1e6) if r["ms"] else 0
        extra = f"[{k.get('template')} {k.get('knobs', '')}, {gflops:.0f} GFLOP/s]" if k else ""
        print(f"{r['ms']:8.3f} {r['share'] * 100:5.1f}% {r['calls']:5d}  {r['kernel']}  {extra}")


if __name__ == "__main__":
    main()
