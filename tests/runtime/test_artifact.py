"""The artifact: what the manifest records, loading with nothing but TVM, atomic writes."""

from __future__ import annotations

import hashlib
import tarfile

import numpy as np
import pytest

import tvmforge
from onnx_builders import conv_relu_model, two_io_model
from tvmforge import build_model
from tvmforge.driver.build import export
from tvmforge.runtime import artifact


@pytest.fixture(scope="module")
def built():
    return build_model(conv_relu_model(), "x86")


def test_manifest_records_io_target_passes_source_versions(built, tmp_path):
    import tvm

    path = export(built, tmp_path / "m.tar")
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == ["manifest.json", "model.so"]
    m = artifact.read_manifest(path)
    assert m["format"] == artifact.FORMAT
    assert m["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert m["outputs"] == [{"name": "y", "shape": [1, 5], "dtype": "float32"}]
    assert m["target"]["key"] == "x86" and m["target"]["device"] == "cpu"
    assert m["model"]["sha256"] == hashlib.sha256(conv_relu_model().SerializeToString()).hexdigest()
    assert m["versions"] == {"tvmforge": tvmforge.__version__, "tvm": tvm.__version__}
    # the record is what compile ran: the pipeline's passes before scheduling, then the
    # databases applied, the default schedules and the buffer passes
    from tvmforge.driver.pipeline import pre_schedule_passes

    # (the kernel-provenance recorders around fusion only read the module: not listed)
    ran = [p.info.name for p in pre_schedule_passes(built.target.tvm_target())
           if not p.info.name.startswith("tvmforge.RecordKernels.")]
    assert [p["name"] for p in m["passes"]] == [
        *ran, "MetaScheduleApplyDatabase", "default_schedules", "ReuseResidualBuffers"
    ]
    assert {"FoldConvBatchNorm", "FoldChannelShuffle", "NchwcLayout"} <= set(ran)
    assert next(p for p in m["passes"] if p["name"] == "NchwcLayout")["winograd"] is True


def test_manifest_leaves_out_cpu_only_passes_for_gpus_and_places_the_callers():
    """On a GPU target the CPU-only graph passes rewrite nothing and are not recorded; pruning
    and quantization sit where the pipeline runs the caller's graph passes."""
    from tvmforge.driver.manifest import pass_list
    from tvmforge.targets import resolve

    caller = [{"name": "prune_channels"}, {"name": "quantize_int8"}]
    names = [p["name"] for p in pass_list(resolve("cuda"), [], caller)]
    assert "NchwcLayout" not in names and "FoldChannelShuffle" not in names
    assert names.index("ConvTransposeDirect") < names.index("prune_channels")
    assert names.index("prune_channels") + 1 == names.index("quantize_int8")
    assert names.index("quantize_int8") < names.index("SinkTransposes") < names.index("LegalizeOps")


def test_weights_are_inside_the_library(built, tmp_path):
    # The conv/fc weights are compile-time constants: the artifact needs no separate params.
    path = export(built, tmp_path / "m.tar")
    model = tvmforge.load(path)
    assert [i.name for i in model.inputs] == ["x"]


def test_plain_tvm_loads_the_library(tmp_path):
    """What the README shows: untar, tvm.runtime.load_module, relax.VirtualMachine."""
    import tvm
    from tvm import relax

    path = tvmforge.compile_model(two_io_model(), "x86", tmp_path / "two.tar")
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    lib = tvm.runtime.load_module(str(tmp_path / "x" / "model.so"))
    vm = relax.VirtualMachine(lib, tvm.cpu())
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    k = np.array([1, 2, 3, 4], np.int64)
    s, c = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(a), tvm.runtime.tensor(k))
    np.testing.assert_array_equal(s.numpy(), a + a)
    np.testing.assert_array_equal(c.numpy(), k.astype(np.float32) * 2)
    ours = tvmforge.load(path)(a=a, b=a, k=k)
    np.testing.assert_array_equal(ours["s"], s.numpy())


def test_write_is_atomic(tmp_path):
    dest = tmp_path / "m.tar"
    dest.write_bytes(b"previous artifact")
    with pytest.raises(FileNotFoundError):
        artifact.write(dest, tmp_path / "missing.so", {"inputs": []})
    assert dest.read_bytes() == b"previous artifact"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.tar"]  # no temp file left


def test_interrupted_export_leaves_nothing(built, tmp_path, monkeypatch):
    def boom(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "add", boom)
    with pytest.raises(KeyboardInterrupt):
        export(built, tmp_path / "m.tar")
    assert list(tmp_path.iterdir()) == []


def test_rejects_other_tars(tmp_path):
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as tar:
        (tmp_path / "a.txt").write_text("x")
        tar.add(tmp_path / "a.txt", arcname="a.txt")
    assert not artifact.is_artifact(other)
    with pytest.raises(tvmforge.InputError, match="not a tvmforge artifact"):
        artifact.read_manifest(other)
