"""Running a Relax module on this machine to look at its values: what calibration (int8
ranges, pruning's moments and refit) and sensitivity probes need. One implementation for every
pass that probes a model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax

__all__ = ["Run", "build_runner", "flatten_outputs"]

Run = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


def flatten_outputs(out: Any) -> list[np.ndarray]:
    """A VM result (a tensor or nested tuples of them) as a flat list of numpy arrays."""
    if hasattr(out, "numpy"):
        return [out.numpy()]
    return [a for item in out for a in flatten_outputs(item)]


def build_runner(
    mod: tvm.IRModule, target: tvm.target.Target, pipeline: tvm.transform.Pass | None = None
) -> Run:
    """Compile ``mod`` for ``target`` (a CPU of this machine) with ``pipeline`` (TVM's default
    when ``None``); a function that runs it on a list of input arrays."""
    if pipeline is None:
        executable = tvm.compile(mod, target=target)
    else:
        executable = tvm.compile(mod, target=target, relax_pipeline=pipeline)
    vm = relax.VirtualMachine(executable, tvm.cpu())

    def run(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        return flatten_outputs(vm["main"](*[tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]))

    return run
