"""tvmforge.load(path)(**arrays): names, dtypes, shape checks, timing."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

import tvmforge
from onnx_builders import conv_relu_model, two_io_model
from tvmforge.bench.reference import compare, run_onnxruntime
from tvmforge.frontend.importer import TensorInfo
from tvmforge.runtime import executor as runtime
from tvmforge.runtime.executor import check_inputs, random_inputs


@pytest.fixture(scope="module")
def conv_artifact(tmp_path_factory):
    return tvmforge.compile_model(
        conv_relu_model(), "x86", tmp_path_factory.mktemp("a") / "conv.tar"
    )


def test_call_returns_dict_by_onnx_output_name(conv_artifact):
    model = tvmforge.load(conv_artifact)
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    out = model(x=x)
    assert list(out) == ["y"] and out["y"].shape == (1, 5)
    ref = run_onnxruntime(tvmforge.frontend.importer.load(conv_relu_model()), {"x": x})
    assert all(c.ok for c in compare(out, ref))


def test_float64_input_is_cast_int_to_float_is_not(conv_artifact):
    model = tvmforge.load(conv_artifact)
    x = np.random.default_rng(0).random((1, 3, 16, 16))
    np.testing.assert_allclose(model(x=x)["y"], model(x=x.astype(np.float32))["y"])
    infos = [TensorInfo("k", (2,), "int64")]
    with pytest.raises(tvmforge.InputError, match="dtype float32"):
        check_inputs(infos, {"k": np.zeros(2, np.float32)})


def test_time_returns_one_figure_per_repeat(conv_artifact):
    model = tvmforge.load(conv_artifact, threads=1)
    times = model.time(random_inputs(model.inputs), repeat=4)
    assert len(times) == 4 and all(t > 0 for t in times)


def test_random_inputs_follow_dtypes():
    infos = [
        TensorInfo("f", (2, 2), "float16"),
        TensorInfo("i", (3,), "int32"),
        TensorInfo("b", (1,), "bool"),
    ]
    arrays = random_inputs(infos, seed=1)
    assert arrays["f"].dtype == np.float16 and arrays["i"].dtype == np.int32
    assert arrays["b"].dtype == bool
    assert set(np.unique(arrays["i"])) <= {0, 1}


def test_multiple_outputs_in_order(tmp_path):
    model = tvmforge.load(tvmforge.compile_model(two_io_model(), "x86", tmp_path / "t.tar"))
    out = model(
        a=np.ones((2, 3), np.float32), b=np.ones((2, 3), np.float32), k=np.arange(4, dtype=np.int64)
    )
    assert list(out) == ["s", "c"]
    np.testing.assert_array_equal(out["c"], np.arange(4) * 2.0)


def test_artifact_for_a_cpu_this_host_lacks_is_refused(tmp_path, monkeypatch):
    from tvmforge.runtime import executor
    from tvmforge.targets.features import from_flags

    path = tvmforge.compile_model(two_io_model(), "x86:avx512-vnni", tmp_path / "v.tar")
    haswell = from_flags({"avx", "avx2", "fma"}, arch="x86_64")
    monkeypatch.setattr(executor, "detect_host", lambda: haswell)
    with pytest.raises(tvmforge.TvmforgeError, match="this CPU only has x86-avx2"):
        tvmforge.load(path)


def test_default_threads_are_the_usable_physical_cores(monkeypatch):
    import psutil

    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    expected = min(len(os.sched_getaffinity(0)), psutil.cpu_count(logical=False))
    assert runtime.default_threads() == expected
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.default_threads() is None  # the environment's count wins, TVM reads it


def test_load_without_threads_uses_every_physical_core(conv_artifact, monkeypatch):
    """TVM alone halves the logical CPUs on x86: one thread on a 2-core VM without SMT.

    In a fresh process: TVM's pool is per-thread process state that earlier tests resize (and
    that keeps the size cap it was created with)."""
    import subprocess
    import sys

    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    expected = runtime.default_threads()
    script = (
        "from tvmforge.runtime import executor as runtime\n"
        f"runtime.load({str(conv_artifact)!r})\n"
        "print('POOL', runtime.pool_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"POOL {expected}" in out.stdout, out.stdout


def _thread_cpus() -> dict[str, str]:
    """Each thread of this process: the CPUs it may run on (``Cpus_allowed_list``)."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out[task.name] = line.split()[-1]
    return out


@pytest.mark.skipif(
    not Path("/proc/self/task").exists() or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux's /proc and at least two usable CPUs",
)
def test_pool_workers_are_not_pinned_to_cores(conv_artifact, monkeypatch):
    """TVM pins its workers but not the calling thread, which then shares a worker's core
    whenever the scheduler puts it there (ShuffleNet: 2.2 or 3.7 ms from round to round);
    the pool's threads may run on every CPU the process may, unless the user says so."""
    monkeypatch.delenv("TVM_BIND_THREADS", raising=False)
    model = runtime.load(conv_artifact, threads=2)
    model.run(runtime.random_inputs(model.inputs, 0))  # the workers exist and ran
    assert os.environ["TVM_BIND_THREADS"] == "0"
    cpus = _thread_cpus()
    everywhere = cpus[str(threading.get_native_id())]  # the calling thread's CPUs
    assert len(cpus) >= 2 and all(c == everywhere for c in cpus.values()), cpus
    # a user's own setting is kept ("00" also unpins: a "1" here would leave this process's
    # workers pinned for the tests after this one)
    monkeypatch.setenv("TVM_BIND_THREADS", "00")
    runtime.load(conv_artifact, threads=2)
    assert os.environ["TVM_BIND_THREADS"] == "00"


def test_pool_workers_spin_between_kernels_unless_told_otherwise(conv_artifact, monkeypatch):
    """TVM's default lets workers sleep between the kernels of one inference (SqueezeNet
    6.24 -> 4.92 ms on 2 threads with the spin); a user's own setting is kept."""
    monkeypatch.delenv("TVM_THREAD_POOL_SPIN_COUNT", raising=False)
    runtime.load(conv_artifact, threads=2)
    assert os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == str(runtime.SPIN_COUNT)
    monkeypatch.setenv("TVM_THREAD_POOL_SPIN_COUNT", "0")
    runtime.load(conv_artifact, threads=2)
    assert os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == "0"


def test_loading_and_running_an_artifact_imports_no_compiler_and_no_onnx(tmp_path):
    import subprocess
    import sys

    path = tvmforge.compile_model(conv_relu_model(), "x86", tmp_path / "m.tar")
    script = (
        "import sys, numpy as np, tvmforge\n"
        f"m = tvmforge.load({str(path)!r})\n"
        "out = m(**{i.name: np.ones(i.shape, i.dtype) for i in m.inputs})\n"
        "assert all(np.isfinite(v).all() for v in out.values())\n"
        "compiler = ('tvmforge.frontend', 'tvmforge.driver', 'tvmforge.passes',\n"
        "            'tvmforge.tuning', 'tvmforge.bench', 'tvmforge.cli')\n"
        "bad = [k for k in sys.modules if k == 'onnx' or k.startswith('onnx.')\n"
        "       or k == 'onnxruntime' or k.startswith(compiler)]\n"
        "print('LOADED', sorted(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED []" in result.stdout, result.stdout


def test_a_container_cpu_quota_caps_the_default_thread_count(tmp_path, monkeypatch):
    """cgroup v2 ``cpu.max`` of 1.5 CPUs on a bigger machine: 2 threads; v1 1 CPU: 1."""
    from tvmforge.targets import features

    proc = tmp_path / "cgroup"
    proc.write_text("0::/box\n")
    (tmp_path / "fs" / "box").mkdir(parents=True)
    (tmp_path / "fs" / "box" / "cpu.max").write_text("150000 100000\n")
    assert features.cpu_quota(tmp_path / "fs", proc) == 1.5
    (tmp_path / "fs" / "box" / "cpu.max").write_text("max 100000\n")
    assert features.cpu_quota(tmp_path / "fs", proc) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu" / "docker" / "c1").mkdir(parents=True)
    (v1 / "cpu" / "docker" / "c1" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "docker" / "c1" / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("4:cpu,cpuacct:/docker/c1\n")
    assert features.cpu_quota(v1, proc) == 1.0

    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(features, "cpu_quota", lambda: 1.0)
    threads, why = runtime.thread_choice()
    assert threads == 1 and "quota" in why
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert runtime.thread_choice() == (None, "TVM_NUM_THREADS=3")


def test_reused_input_tensors_never_leak_between_calls(tmp_path):
    """Inputs are copied into the last call's tensors and outputs copied out: a reshaped
    input returned as an output, edited in place or read after the next call, stays what its
    call returned; a new batch size gets new tensors."""
    from onnx import TensorProto, helper

    import tvmforge
    from onnx_builders import dynamic_batch, make_model

    model = dynamic_batch(make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
         helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 6]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [0, -1])],
    ), "N")
    compiled = tvmforge.load(tvmforge.compile_model(model, "x86", tmp_path / "m.tar"))
    a = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    first = compiled(x=a)
    first["flat"][:] = -1.0  # the caller's copy, not the model's
    second = compiled(x=a + 100)
    np.testing.assert_array_equal(first["y"], a)
    np.testing.assert_array_equal(second["flat"], (a + 100).reshape(2, 6))
    third = compiled(x=a[:1] - 5)  # another batch size
    np.testing.assert_array_equal(third["y"], np.zeros((1, 2, 3), np.float32))
    np.testing.assert_array_equal(compiled(x=a)["flat"], a.reshape(2, 6))
