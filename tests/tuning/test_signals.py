"""Real signals to a real ``tvmforge`` process: Ctrl-C (SIGINT) and SIGTERM during ``tune``
keep every measured record and exit 130, and a rerun continues; SIGTERM during ``compile``
leaves no artifact and no ``.part``; what a SIGKILLed compile leaves is swept by the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from onnx_builders import conv_relu_model

RECORDS = "database_tuning_record.json"


def _spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tvmforge.cli", *args], cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _records(logs: Path) -> int:
    files = list(logs.glob(f"*/{RECORDS}"))
    if not files:
        return 0
    return sum(1 for line in files[0].read_bytes().splitlines() if line.strip())


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the process ended early: {proc.stdout.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("timed out waiting for the tune to get there")
        time.sleep(0.2)


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), path)
    return path


@pytest.mark.parametrize(
    ("sig", "when"),
    [
        pytest.param(signal.SIGINT, "after-defaults", id="sigint-after-defaults"),
        # 75 s of tuning before the signal: with -m slow
        pytest.param(signal.SIGTERM, "mid-search", id="sigterm-mid-search",
                     marks=pytest.mark.slow),
    ],
)
def test_an_interrupted_tune_keeps_its_records_and_exits_130(model, tmp_path, sig, when):
    logs = tmp_path / "logs"
    proc = _spawn(["tune", str(model), "--target", "x86", "--trials", "256",
                   "--tuning-log", str(logs)], tmp_path)
    _wait_for(lambda: _records(logs) >= 1, proc)  # the defaults are committed
    if when == "mid-search":
        first = _records(logs)
        _wait_for(lambda: _records(logs) > first, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 130, out
    assert "Segmentation" not in out and "Traceback" not in out
    kept = _records(logs)
    assert kept >= 1 and f"{kept} records kept" in out
    # the database is whole: a rerun reads it and continues
    rerun = subprocess.run(
        [sys.executable, "-m", "tvmforge.cli", "tune", str(model), "--target", "x86",
         "--trials", "8", "--tuning-log", str(logs)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _records(logs) >= kept


def test_sigterm_during_compile_leaves_nothing(model, tmp_path):
    proc = _spawn(["compile", "zoo:resnet50", "--target", "x86", "-o", "out.tar"], tmp_path)
    time.sleep(8)  # importing, building
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    if proc.returncode == 0:
        pytest.skip("the compile finished before the signal")
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    assert not (tmp_path / "out.tar").exists()
    assert not list(tmp_path.glob(".*.part"))


def test_what_a_killed_compile_left_is_swept_by_the_next(model, tmp_path):
    import tempfile

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid no process has now
    stale_dir = Path(tempfile.gettempdir()) / f"tvmforge-build-{dead.pid}-test"
    stale_dir.mkdir(exist_ok=True)
    (stale_dir / "lib.so").write_bytes(b"x" * 1024)
    stale_part = tmp_path / f".out.tar.{dead.pid}.abcd.part"
    stale_part.write_bytes(b"half an artifact")
    proc = _spawn(["compile", str(model), "--target", "x86", "-o", "out.tar"], tmp_path)
    time.sleep(3)
    os.kill(proc.pid, signal.SIGKILL)  # nothing of it can clean up
    proc.wait(timeout=60)
    res = subprocess.run(
        [sys.executable, "-m", "tvmforge.cli", "compile", str(model), "--target", "x86",
         "-o", "out.tar"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "out.tar").exists()
    assert not stale_dir.exists() and not stale_part.exists()
    assert not list(tmp_path.glob(".*.part"))
    leftovers = Path(tempfile.gettempdir()).glob(f"tvmforge-*-{proc.pid}-*")
    assert not list(leftovers)
