"""Loading and running an artifact, without the compiler: ``load(path)(**arrays)``.

This package imports only ``tvm.runtime``, numpy and ``tvmforge.targets`` data (checked by the
import contracts in ``pyproject.toml``): a machine that only runs models needs no onnx.
"""

from __future__ import annotations

from tvmforge.runtime.executor import CompiledModel, load, random_inputs
from tvmforge.runtime.tensors import TensorInfo

__all__ = ["CompiledModel", "TensorInfo", "load", "random_inputs"]
