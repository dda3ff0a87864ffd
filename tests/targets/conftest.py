"""Fixtures for target tests: the aarch64 runtime under qemu."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tvmforge.targets import qemu

CROSS_CC = "aarch64-linux-gnu-gcc"


@pytest.fixture(scope="session")
def aarch64_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
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
