"""ONNX's operator conformance suite: the node test cases that ship inside the ``onnx`` package,
run through tvmforge and through ONNX Runtime, each against the case's expected outputs.

``onnx.backend.test.case.node.collect_testcases()`` builds every case's model and its
input/expected-output sets in memory (it takes ~10 s). ``write_cases`` saves the cases whose
inputs and outputs are all plain tensors (sequences, optionals and maps are left out) as one
folder each: ``model.onnx`` and ``data.npz`` (``in_K``/``out_K``, in graph order, from
``test_data_set_0``). ``run_case`` then compiles one folder for ``x86`` with the Python API,
the way a user would, and compares at ``rtol 1e-3, atol 1e-5``. Where tvmforge refuses a
shape-fixing value that the case feeds as a graph input (a reduce's ``axes``) and names the
``--freeze`` that fixes it, the case is rebuilt with that input frozen to the case's value, as
the user would, and the outcome says which inputs were frozen; ``run_ort`` does the same for
ONNX Runtime. A case counts only where ONNX Runtime passes it.

``benchmarks/conformance.py`` drives the whole suite in worker processes with a timeout per
case and writes the table.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

RTOL = 1e-3
ATOL = 1e-5


@dataclass
class Outcome:
    """How one engine did on one case: ``pass``, ``fail`` (a wrong result) or ``error``
    (refused or crashed while compiling or running), with the one-line reason."""

    status: str
    reason: str = ""
    seconds: float = 0.0
    frozen: list[str] = field(default_factory=list)  # inputs frozen as the error told to

    def to_json(self) -> dict:
        return asdict(self)


def suite_version() -> str:
    return onnx.__version__


def write_cases(dest: Path, names: list[str] | None = None) -> list[str]:
    """Write every plain-tensor node case (or those in ``names``) under ``dest``; returns
    their names, sorted. Cases already written are kept."""
    from onnx.backend.test.case import node

    dest.mkdir(parents=True, exist_ok=True)
    index = dest / "index.json"
    if index.exists() and names is None:
        return json.loads(index.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases()
    written = []
    wanted = set(names) if names is not None else None
    for case in cases:
        if wanted is not None and case.name not in wanted:
            continue
        if not case.data_sets:
            continue
        inputs, outputs = (_plain(v) for v in case.data_sets[0])
        if inputs is None or outputs is None:
            continue
        inputs_are_strings = any(a.dtype == object for a in [*inputs, *outputs])
        folder = dest / case.name
        folder.mkdir(exist_ok=True)
        onnx.save(case.model, str(folder / "model.onnx"))
        arrays = {f"in_{k}": a for k, a in enumerate(inputs)}
        arrays.update({f"out_{k}": a for k, a in enumerate(outputs)})
        np.savez(folder / "data.npz", **arrays, allow_pickle=inputs_are_strings)
        (folder / "meta.json").write_text(
            json.dumps({"rtol": case.rtol, "atol": case.atol, "strings": inputs_are_strings})
        )
        written.append(case.name)
    written.sort()
    if names is None:
        index.write_text(json.dumps(written))
    return written


def _plain(values: list) -> list[np.ndarray] | None:
    """The values as standard numpy arrays; ``None`` when one is a sequence, an optional, a
    map, or of a type numpy has no dtype for (float8, int4: ``ml_dtypes`` arrays)."""
    from onnx import numpy_helper

    out = []
    for v in values:
        if isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        if isinstance(v, np.generic):
            v = np.asarray(v)
        if not isinstance(v, np.ndarray):
            return None
        if v.dtype.kind not in "biufcOSU" or v.dtype.type.__module__ != "numpy":
            return None
        out.append(v)
    return out


def read_case(folder: Path) -> tuple[onnx.ModelProto, list[np.ndarray], list[np.ndarray]]:
    model = onnx.load(str(folder / "model.onnx"))
    with np.load(folder / "data.npz", allow_pickle=True) as data:
        inputs = [data[f"in_{k}"] for k in range(sum(n.startswith("in_") for n in data.files))]
        outputs = [data[f"out_{k}"] for k in range(sum(n.startswith("out_") for n in data.files))]
    return model, inputs, outputs


def _input_names(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in inits]


def compare(ours: list[np.ndarray], expected: list[np.ndarray]) -> str:
    """'' when every output matches (shape, dtype and values at RTOL/ATOL, NaN where NaN);
    otherwise the first difference, in words."""
    if len(ours) != len(expected):
        return f"{len(ours)} outputs, expected {len(expected)}"
    for k, (o, e) in enumerate(zip(ours, expected, strict=True)):
        o = np.asarray(o)
        if o.shape != e.shape:
            return f"output {k}: shape {list(o.shape)}, expected {list(e.shape)}"
        if o.dtype != e.dtype:
            return f"output {k}: dtype {o.dtype}, expected {e.dtype}"
        if e.dtype == object or e.dtype.kind in "SU":
            if not np.array_equal(o, e):
                return f"output {k}: values differ"
            continue
        if e.dtype.kind in "biu":
            if not np.array_equal(o, e):
                bad = int(np.count_nonzero(o != e))
                return f"output {k}: {bad} of {e.size} values differ"
            continue
        a, b = o.astype(np.float64), e.astype(np.float64)
        if not np.allclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True):
            finite = np.isfinite(a) & np.isfinite(b)
            err = float(np.max(np.abs(a[finite] - b[finite]))) if finite.any() else float("nan")
            return f"output {k}: max abs err {err:.3g}"
    return ""


def run_ort(folder: Path) -> Outcome:
    """ONNX Runtime (CPU, one thread) on the case."""
    import time

    import onnxruntime as ort

    t0 = time.perf_counter()
    model, inputs, expected = read_case(folder)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, ["CPUExecutionProvider"])
        feed = dict(zip(_input_names(model), inputs, strict=False))
        feed = {i.name: feed[i.name] for i in sess.get_inputs() if i.name in feed}
        ours = sess.run(None, feed)
    except Exception as err:
        return Outcome("error", first_line(err), time.perf_counter() - t0)
    diff = compare(ours, expected)
    return Outcome("fail" if diff else "pass", diff, time.perf_counter() - t0)


def run_case(folder: Path, target: str = "x86") -> Outcome:
    """tvmforge on the case: compile with the data's input shapes, run, compare."""
    import tempfile
    import time

    from tvmforge.driver.build import build_model
    from tvmforge.errors import TvmforgeError
    from tvmforge.frontend.importer import load
    from tvmforge.runtime.executor import LocalVM

    t0 = time.perf_counter()
    proto, inputs, expected = read_case(folder)
    frozen: dict[str, np.ndarray] = {}
    while True:
        try:
            model = load(proto)
            names = [i.name for i in model.inputs]
            by_name = dict(zip(names, inputs, strict=False))
            shapes = {n: tuple(a.shape) for n, a in by_name.items() if n not in frozen}
            built = build_model(
                model, target, input_shapes=shapes, frozen_inputs=frozen, use_shipped_logs=False
            )
            with tempfile.TemporaryDirectory() as tmp:
                lib = Path(tmp) / "lib.so"
                built.executable.export_library(str(lib))
                ours = LocalVM(lib, "cpu").run([by_name[i.name] for i in built.inputs])
            break
        except TvmforgeError as err:
            # The user's fix for a shape-fixing value fed at run time: freeze it and retry.
            named = [m["name"] for m in _FREEZE.finditer(err.line())]
            new = [n for n in named if n in by_name and n not in frozen]
            if new:
                frozen.update({n: by_name[n] for n in new})
                continue
            return Outcome("error", err.line(), time.perf_counter() - t0, sorted(frozen))
        except Exception as err:
            reason = f"{type(err).__name__}: {first_line(err)}"
            return Outcome("error", reason, time.perf_counter() - t0, sorted(frozen))
    diff = compare(ours, expected)
    return Outcome("fail" if diff else "pass", diff, time.perf_counter() - t0, sorted(frozen))


_FREEZE = re.compile(r"--freeze (?P<name>[^=\s]+)=V1")


def first_line(err: BaseException) -> str:
    from tvmforge.frontend.importer import _first_line

    return _first_line(err)[:300]


def op_of(folder: Path) -> str:
    """The case's operator: the op of its model's (first non-Constant) node."""
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for n in model.graph.node:
        if n.op_type != "Constant":
            return f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
    return model.graph.node[0].op_type if model.graph.node else "?"


_NUMBERS = re.compile(r"\b\d+(\.\d+)?(e-?\d+)?\b")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def cause(reason: str) -> str:
    """A reason with case-specific details (numbers, names, the file) removed, to group by."""
    text = reason.split(": ", 1)[1] if reason.startswith("<in-memory model>: ") else reason
    text = _QUOTED.sub("'…'", text)
    text = _NUMBERS.sub("N", text)
    return text[:140]
