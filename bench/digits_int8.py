"""int8 top-1 on the held-out digits test set: fp32 vs edgec's int8 front end (onnxruntime on
the QDQ model), per model and quantization mode.

    python bench/digits_int8.py [--compiled]

--compiled also runs `edgec compile --int8` (calibrated) and measures the compiled artifact.
Calibration: the first 100 training images (tests/quant use the same).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from edgec import api, frontend, passes
from edgec.models import digits
from edgec.quant import Int8Options, accuracy, quantize

ROOT = Path(__file__).resolve().parents[1]


def top1(run, x, y) -> float:
    hits = [int(np.argmax(run({"input": x[i : i + 1]})["output"])) == y[i] for i in range(len(y))]
    return 100.0 * float(np.mean(hits))


def main(argv: list[str]) -> int:
    x_train, _, x_test, y_test = digits.split()
    tmp = Path(tempfile.mkdtemp(prefix="digits-int8-"))
    calib = tmp / "calib.npz"
    np.savez(calib, input=x_train[:100])
    modes = {
        "minmax": Int8Options(calib=str(calib)),
        "percentile": Int8Options(calib=str(calib), calib_method="percentile"),
        "entropy": Int8Options(calib=str(calib), calib_method="entropy"),
        "dfq + minmax": Int8Options(calib=str(calib), dfq=True),
        "dfq, no data": Int8Options(dfq=True),
        "synthetic": Int8Options(calib="synthetic"),
        "keep-float auto": Int8Options(calib=str(calib), keep_float="auto"),
    }
    print(f"held-out test set: {len(y_test)} images\n")
    print("| model | fp32 | " + " | ".join(modes) + " |")
    print("|---" * (len(modes) + 2) + "|")
    for name in digits.NAMES:
        path = ROOT / "tests" / "quant" / "data" / f"{name}.onnx"
        imported = frontend.import_model(path, {})
        fp32, _ = passes.run_pipeline(imported.model, passes.select())
        cells = [f"{top1(accuracy.ort_runner(fp32), x_test, y_test):.2f}"]
        for options in modes.values():
            q = quantize(fp32, imported.inputs, options, source=imported.model)
            cells.append(f"{top1(accuracy.ort_runner(q.model), x_test, y_test):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
        if "--compiled" in argv:
            out = tmp / name
            api.compile(path, out, int8=True, calib=calib, bench=False)
            acc = top1(api.load(out).run, x_test, y_test)
            print(f"|   compiled artifact (edgec compile --int8 --calib, minmax) | {acc:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
