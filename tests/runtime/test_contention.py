"""The thread count follows contention (``tvmforge.runtime.contention``): fewer threads while
busy processes share the cores, all of them again once they stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmforge
from onnx_builders import make_model
from tvmforge.runtime import contention
from tvmforge.runtime.contention import ThreadGovernor

LINUX = Path("/proc/self/task").is_dir()


def _governor(threads: int = 4) -> tuple[ThreadGovernor, list[int]]:
    sizes: list[int] = []
    return ThreadGovernor(threads, sizes.append), sizes


def test_contended_calls_shrink_the_pool_by_at_least_a_thread():
    """4 threads of which 0.5 waited on average, 3 measured calls in a row: 3 threads; a
    quiet call in between resets the count."""
    gov, sizes = _governor(4)
    gov._after(0.5)
    gov._after(0.5)
    gov._after(0.0)
    gov._after(0.5)
    gov._after(0.5)
    assert sizes == [] and gov.current == 4
    gov._after(0.5)
    assert sizes == [3] and gov.current == 3
    assert gov.changes[-1][1:] == (3, 0.5)


def test_two_starved_calls_shrink_the_pool_to_the_threads_that_ran():
    """1.6 of 4 threads waiting in two calls in a row: 2 threads (the rounded 4 - 1.6); one
    such call alone (another library's threads spinning a moment) changes nothing."""
    gov, sizes = _governor(4)
    gov._after(1.6)
    gov._after(0.0)
    gov._after(1.6)
    assert sizes == []
    gov._after(1.6)
    assert sizes == [2] and gov.current == 2


def test_a_pool_of_one_never_shrinks():
    gov, sizes = _governor(1)
    assert not gov.enabled
    for _ in range(5):
        with gov.call():
            pass
    assert sizes == []


@pytest.mark.skipif(not LINUX, reason="reads Linux's /proc/self/task/*/schedstat")
def test_a_quiet_probe_restores_every_thread(monkeypatch):
    """Shrunk, the first call after PROBE_CALLS calls and the interval runs on all the
    threads; measured quiet (nothing waits in this test), the pool stays whole."""
    monkeypatch.setattr(contention, "FIRST_PROBE_S", 0.0)
    gov, sizes = _governor(2)
    gov.probe_interval = 0.0
    gov._after(1.0)
    gov._after(1.0)
    assert gov.current == 1
    for _ in range(contention.PROBE_CALLS):
        with gov.call():
            pass
    assert sizes == [1, 2] and gov.current == 2


def test_a_busy_probe_shrinks_back_and_waits_twice_as_long():
    gov, sizes = _governor(2)
    gov._after(1.0)
    gov._after(1.0)
    gov._probing = True  # what call() sets before a probe
    interval = gov.probe_interval
    gov._after(0.9)
    assert gov.current == 1 and sizes[-1] == 1
    assert gov.probe_interval == 2 * interval


@pytest.mark.skipif(not LINUX, reason="reads Linux's /proc/self/task/*/schedstat")
def test_measuring_reads_this_process_threads_wait():
    """The counters move: a thread that sleeps has waited for no CPU, the sum is the
    process's total."""
    gov, _ = _governor(2)
    first = gov._waits()
    assert first >= 0 and gov._fds
    assert gov._waits() >= first
    gov.close()
    assert not gov._fds


def _matmul_model() -> bytes:
    """y = relu(x @ w1) @ w2, 256x512x512: a few ms of parallel kernels on two threads."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.05, (512, 512)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.05, (512, 512)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 512])],
        [w1, w2],
    )


SCENARIO = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    import numpy as np
    import tvmforge
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        print(json.dumps({"skip": f"this process may run on {len(cpus)} CPU only"}))
        sys.exit(0)
    os.sched_setaffinity(0, cpus)  # this process and its busy neighbours share two CPUs
    model = tvmforge.load(sys.argv[1], threads=2)
    x = {"x": np.random.default_rng(0).random((256, 512), dtype=np.float32)}
    expected = model(**x)["y"]
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                             preexec_fn=lambda: os.sched_setaffinity(0, cpus))
            for _ in range(2)]
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        while model.governor.current == 2 and time.monotonic() - t0 < 30:
            got = model(**x)["y"]
        shrunk = model.governor.current
        same = bool(np.array_equal(got, expected))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    t0 = time.monotonic()
    while model.governor.current < 2 and time.monotonic() - t0 < 30:
        model(**x)
    print(json.dumps({"shrunk_to": shrunk, "back_to": model.governor.current, "same": same,
                      "changes": [c[1] for c in model.governor.changes]}))
    """
)


@pytest.mark.skipif(
    not LINUX or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux's /proc and two usable CPUs to share with busy processes",
)
def test_busy_neighbours_shrink_the_pool_and_it_grows_back_when_they_stop(tmp_path):
    """A real model on two threads beside two busy processes on the same two CPUs goes to
    one thread (same outputs), and back to two once they are gone."""
    artifact = tvmforge.compile_model(_matmul_model(), "x86", tmp_path / "mm.tar")
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, str(script), str(artifact)], capture_output=True, text=True,
        timeout=120, env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result["shrunk_to"] == 1, result
    assert result["back_to"] == 2, result
    assert result["same"]


@pytest.mark.skipif(
    not LINUX or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux's /proc and two usable CPUs to see a thread pinned to one",
)
def test_resizing_the_pool_pins_no_thread(tmp_path, monkeypatch):
    """TVM pins the pool's threads, the caller included, on every reconfiguration unless
    ``TVM_BIND_THREADS`` says not to; with it removed (as a test's monkeypatch left it), a
    shrink and a grow must still leave every thread free to run on every CPU."""
    from onnx_builders import conv_relu_model
    from tvmforge.runtime import executor

    artifact = tvmforge.compile_model(conv_relu_model(), "x86", tmp_path / "c.tar")
    before = os.sched_getaffinity(0)
    model = tvmforge.load(artifact, threads=2)
    model(**executor.random_inputs(model.inputs, 0))
    monkeypatch.delenv("TVM_BIND_THREADS", raising=False)
    model.governor._set_pool(1)
    model(**executor.random_inputs(model.inputs, 0))
    model.governor._set_pool(2)
    model(**executor.random_inputs(model.inputs, 0))
    assert os.sched_getaffinity(0) == before
    for task in Path("/proc/self/task").iterdir():
        status = (task / "status").read_text()
        allowed = next(ln for ln in status.splitlines() if ln.startswith("Cpus_allowed_list"))
        assert "-" in allowed or "," in allowed, (task.name, allowed)
