"""Tuning databases with damaged lines: a compile skips them with a warning naming the file and
line, and ``tune`` moves them aside and appends as usual."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from onnx_builders import conv_relu_model
from tvmforge.tuning import databases

SHIPPED = Path(__file__).resolve().parents[2] / "tuning_logs" / "x86-avx512-vnni"


def _damaged_copy(tmp_path: Path) -> tuple[Path, int]:
    """The shipped database with its last record cut in half; its line number."""
    db = tmp_path / "db"
    shutil.copytree(SHIPPED, db)
    records = db / databases.RECORDS
    lines = records.read_bytes().splitlines()
    lines[-1] = lines[-1][: len(lines[-1]) // 2]
    records.write_bytes(b"\n".join(lines) + b"\n")
    return db, len(lines)


def test_a_sound_database_is_used_as_it_is():
    assert databases.readable(SHIPPED) == SHIPPED


def test_a_damaged_record_is_skipped_with_a_warning(tmp_path, caplog):
    db, line = _damaged_copy(tmp_path)
    with caplog.at_level(logging.WARNING):
        clean = databases.readable(db)
    assert clean != db and databases.is_database(clean)
    assert databases.count_records(clean) == databases.count_records(SHIPPED) - 1
    assert f"{db / databases.RECORDS}: line {line} is damaged" in caplog.text
    from tvm.s_tir import meta_schedule as ms

    assert len(ms.database.JSONDatabase(work_dir=str(clean))) == line - 1  # TVM reads it


def test_compile_with_a_damaged_log_succeeds(cli, tmp_model, tmp_path, caplog):
    db, line = _damaged_copy(tmp_path)
    with caplog.at_level(logging.WARNING):
        res = cli("compile", tmp_model(conv_relu_model()), "-o", "m.tar", "--tuning-log", db)
    assert res.exit_code == 0, res.output
    assert f"line {line} is damaged" in caplog.text


def test_tune_moves_damaged_lines_aside(tmp_path):
    db, _line = _damaged_copy(tmp_path)
    assert databases.repair(db) == 1
    assert databases.readable(db) == db  # sound now
    assert (db / f"{databases.RECORDS}.damaged").is_file()
    assert databases.repair(db) == 0
