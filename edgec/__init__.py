"""edgec: compile ONNX models into fast, verified TVM artifacts for edge targets."""

__version__ = "0.1.0"

from edgec.api import CompiledModel, CompileResult, bench, compile, load  # noqa: E402

__all__ = ["CompileResult", "CompiledModel", "__version__", "bench", "compile", "load"]
