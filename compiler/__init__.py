"""tvmforge: compile ONNX models into fast, deployable modules with Apache TVM (Relax).

Python API::

    import tvmforge
    tvmforge.compile_model("model.onnx", target="x86", output="model.tar")
    model = tvmforge.load("model.tar")
    outputs = model(input_name=array)      # dict: ONNX output name -> numpy array

Names are imported on first use: ``tvmforge.load`` brings in the runtime only (no onnx, no
compiler), ``tvmforge.compile_model`` the whole compiler.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# TVM pins its thread pool's workers to cores, and the calling thread with them, whenever it
# creates or reconfigures a pool, unless this says not to. A pool made while compiling (the
# compiler runs kernels to fold constants and to calibrate) kept its pins when the model was
# loaded in the same process: a worker and the caller shared one core, and the process's
# affinity mask shrank to it. Set before TVM can make any pool; a user's own value is kept
# (``runtime.executor.set_threads`` explains why unpinned is the default).
os.environ.setdefault("TVM_BIND_THREADS", "0")

# public name -> the module that defines it
_LAZY = {
    "build_model": "tvmforge.driver.build",
    "compile_model": "tvmforge.driver.build",
    "CompiledModel": "tvmforge.runtime.executor",
    "load": "tvmforge.runtime.executor",
    "CompileError": "tvmforge.errors",
    "InputError": "tvmforge.errors",
    "TvmforgeError": "tvmforge.errors",
}

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

if TYPE_CHECKING:
    from tvmforge.driver.build import build_model, compile_model
    from tvmforge.errors import CompileError, InputError, TvmforgeError
    from tvmforge.runtime.executor import CompiledModel, load


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tvmforge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
