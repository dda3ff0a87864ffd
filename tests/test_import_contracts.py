"""The import contracts of ``pyproject.toml`` (``[tool.importlinter]``), checked with
import-linter on a copy of the package laid out under its import names (grimp walks one folder
per package and cannot follow setuptools' ``package-dir`` mapping), and a planted violation
that must fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _stage(dest: Path) -> Path:
    """``compiler/`` as ``tvmforge/``, with ``passes/`` and ``targets/`` inside it."""
    pkg = dest / "tvmforge"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "compiler", pkg, ignore=ignore)
    shutil.copytree(ROOT / "passes", pkg / "passes", ignore=ignore)
    shutil.copytree(ROOT / "targets", pkg / "targets", ignore=ignore)
    return pkg


def _lint(stage: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which(
        "lint-imports"
    )
    if exe is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[test]'")
    env = {**os.environ, "PYTHONPATH": str(stage)}
    return subprocess.run(
        [exe, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=stage, env=env, capture_output=True, text=True, timeout=300,
    )


def test_the_tree_keeps_its_import_contracts(tmp_path):
    _stage(tmp_path)
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def test_a_planted_import_breaks_the_runtime_contract(tmp_path):
    pkg = _stage(tmp_path)
    executor = pkg / "runtime" / "executor.py"
    executor.write_text(executor.read_text() + "\nimport onnx  # planted\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "loading an artifact needs no compiler and no onnx" in result.stdout
    assert "BROKEN" in result.stdout
