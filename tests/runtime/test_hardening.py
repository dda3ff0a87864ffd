"""Loading and running artifacts safely: scalar inputs, integer inputs that do not fit,
artifact permissions, a tampered, truncated or malformed artifact."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile

import numpy as np
import pytest
from onnx import TensorProto, helper

import tvmforge
from onnx_builders import make_model
from tvmforge.errors import InputError


def _scalar_model():
    """``y = x * s``: ``s`` a 0-d input (silero VAD's ``sr`` is one)."""
    return make_model(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )


def _int_model(elem: int):
    """``y = float(i) + 1``, ``i`` an integer input of type ``elem``."""
    return make_model(
        [helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["f", "one"], ["y"])],
        [helper.make_tensor_value_info("i", elem, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )


@pytest.fixture(scope="module")
def scalar_artifact(tmp_path_factory):
    return tvmforge.compile_model(_scalar_model(), "x86", tmp_path_factory.mktemp("s") / "s.tar")


def test_a_scalar_input_runs(scalar_artifact):
    model = tvmforge.load(scalar_artifact)
    out = model(x=np.arange(4, dtype=np.float32), s=np.float32(3.0))
    np.testing.assert_array_equal(out["y"], np.arange(4, dtype=np.float32) * 3)
    out = model(x=np.ones(4, np.float32), s=np.array(2.0, np.float32))
    np.testing.assert_array_equal(out["y"], np.full(4, 2, np.float32))


@pytest.mark.parametrize(
    ("elem", "value", "dtype"),
    [(TensorProto.INT32, 2**40 + 7, np.int64), (TensorProto.INT64, 2**63 + 5, np.uint64)],
    ids=["int64-into-int32", "uint64-into-int64"],
)
def test_integer_values_the_input_cannot_hold_are_refused(tmp_path, elem, value, dtype):
    model = tvmforge.load(tvmforge.compile_model(_int_model(elem), "x86", tmp_path / "i.tar"))
    fits = np.array([1, 2, 3], dtype)
    np.testing.assert_array_equal(model(i=fits)["y"], np.array([2, 3, 4], np.float32))
    with pytest.raises(InputError, match=rf"input 'i' holds {value}, which int\d+ cannot"):
        model(i=np.array([1, value, 3], dtype))


def test_the_artifact_gets_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = tvmforge.compile_model(_scalar_model(), "x86", tmp_path / "m.tar")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def _rewrite(src, dest, *, manifest=None, library=None, cut: int | None = None):
    """A copy of the artifact ``src`` with its manifest or library replaced, or truncated."""
    with tarfile.open(src) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    if manifest is not None:
        members["manifest.json"] = json.dumps(manifest).encode()
    if library is not None:
        members["model.so"] = library
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    dest.write_bytes(data[:cut] if cut else data)
    return dest


def test_a_tampered_library_is_refused_before_it_loads(scalar_artifact, tmp_path):
    with tarfile.open(scalar_artifact) as tar:
        lib = bytearray(tar.extractfile("model.so").read())
    lib[len(lib) // 2] ^= 0xFF
    bad = _rewrite(scalar_artifact, tmp_path / "bad.tar", library=bytes(lib))
    with pytest.raises(InputError, match="does not match the sha256"):
        tvmforge.load(bad)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [([1, 2], "not a JSON object"), ({"format": "tvmforge-artifact/1"}, "lacks or mistypes")],
    ids=["a-list", "no-keys"],
)
def test_a_malformed_manifest_is_one_clear_error(scalar_artifact, tmp_path, manifest, message):
    bad = _rewrite(scalar_artifact, tmp_path / "bad.tar", manifest=manifest)
    with pytest.raises(InputError, match=message):
        tvmforge.load(bad)


def test_a_truncated_artifact_is_one_clear_error(scalar_artifact, tmp_path):
    size = scalar_artifact.stat().st_size
    bad = _rewrite(scalar_artifact, tmp_path / "cut.tar", cut=size // 2)
    with pytest.raises(InputError, match="truncated|not a tvmforge artifact|cannot be read"):
        tvmforge.load(bad)
