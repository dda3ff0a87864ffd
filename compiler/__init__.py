"""tvmforge: compile ONNX models into fast, deployable modules with Apache TVM (Relax).

Python API::

    import tvmforge
    tvmforge.compile_model("model.onnx", target="x86", output="model.tar")
    model = tvmforge.load("model.tar")
    outputs = model(input_name=array)      # dict: ONNX output name -> numpy array
"""

from __future__ import annotations

__version__ = "0.1.0"

from .build import build_model, compile_model
from .errors import CompileError, InputError, TvmforgeError
from .runtime import CompiledModel, load

__all__ = [
    "CompileError",
    "CompiledModel",
    "InputError",
    "TvmforgeError",
    "__version__",
    "build_model",
    "compile_model",
    "load",
]
