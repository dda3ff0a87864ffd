"""The ONNX wheel's own test models (``pytorch-converted``, ``pytorch-operator``), with the
inputs and expected outputs shipped beside each model: a coverage check of the importer on 117
small models that nobody here wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

SUITES = ("pytorch-converted", "pytorch-operator")


def data_root() -> Path:
    return Path(onnx.__file__).parent / "backend" / "test" / "data"


@dataclass(frozen=True)
class OnnxTestCase:
    suite: str
    name: str
    folder: Path

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}"

    @property
    def model_path(self) -> Path:
        return self.folder / "model.onnx"

    def data(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(inputs, expected outputs) of ``test_data_set_0``, in graph order."""
        ds = self.folder / "test_data_set_0"

        def read(prefix: str) -> list[np.ndarray]:
            files = sorted(ds.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
            out = []
            for f in files:
                t = onnx.TensorProto()
                t.ParseFromString(f.read_bytes())
                out.append(numpy_helper.to_array(t))
            return out

        return read("input"), read("output")


def cases() -> list[OnnxTestCase]:
    found = []
    for suite in SUITES:
        for folder in sorted((data_root() / suite).iterdir()):
            if (folder / "model.onnx").is_file():
                found.append(OnnxTestCase(suite, folder.name, folder))
    return found


def run_case(case: OnnxTestCase, target: str = "x86") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Compile the case's model for ``target`` with its data's shapes; return (ours, expected)."""
    from tvmforge.driver.build import build_model
    from tvmforge.frontend.importer import load
    from tvmforge.runtime.executor import LocalVM

    model = load(case.model_path)
    inputs, expected = case.data()
    shapes = {info.name: tuple(arr.shape) for info, arr in zip(model.inputs, inputs, strict=True)}
    built = build_model(model, target, input_shapes=shapes)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "lib.so"
        built.executable.export_library(str(lib))
        ours = LocalVM(lib, "cpu").run(list(inputs))
    return ours, expected
