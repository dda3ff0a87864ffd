"""Shared fixtures: a folder to save models in, a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from tvmforge.cli import main


def _test_cache() -> Path:
    """Where the tests keep what is slow to make and safe to share between runs (the fetched
    ``zoo:`` wheels, the emulated aarch64 runtime): a folder of the system's temporary
    directory, never the user's ``~/.cache``."""
    return Path(tempfile.gettempdir()) / f"tvmforge-test-cache-{os.getuid()}"


@pytest.fixture(autouse=True, scope="session")
def _private_caches(tmp_path_factory):
    """Tuning records go to the user cache by default: tests get a fresh one per session.
    Downloaded models and the aarch64 runtime go to the tests' shared temporary cache unless
    the caller points them elsewhere."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    shared = _test_cache()
    if not os.environ.get("TVMFORGE_CACHE"):
        mp.setenv("TVMFORGE_CACHE", str(shared))
    if not os.environ.get("TVMFORGE_AARCH64_ROOT"):
        mp.setenv("TVMFORGE_AARCH64_ROOT", str(shared / "aarch64"))
    yield
    mp.undo()


@pytest.fixture
def tmp_model(tmp_path: Path):
    """Save a ModelProto to a file in the test's folder and return the path."""

    def save(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        onnx.save(model, str(path))
        return path

    return save


@pytest.fixture
def cli(tmp_path: Path, monkeypatch):
    """Run the CLI in the test's folder; returns click's Result."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


# The aarch64 runtime under qemu (target tests, the loopback fleet's ARM device).
CROSS_CC = "aarch64-linux-gnu-gcc"


@pytest.fixture(scope="session")
def aarch64_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tvmforge.targets import qemu

    for tool in (qemu.QEMU, CROSS_CC):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found")
    # gcc-aarch64-linux-gnu only recommends the arm64 libc headers and crt files that linking
    # a shared library needs; without them export_library fails with "cannot find crti.o".
    probe = tmp_path_factory.mktemp("cc") / "probe.c"
    probe.write_text("int probe(void) { return 0; }\n")
    cmd = [CROSS_CC, "-shared", "-fPIC", "-o", str(probe.with_suffix(".so")), str(probe)]
    if subprocess.run(cmd, capture_output=True, check=False).returncode != 0:
        pytest.skip(f"{CROSS_CC} cannot link: apt-get install libc6-dev-arm64-cross")
    return qemu.prepare(quiet=True)
