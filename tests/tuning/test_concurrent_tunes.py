"""Two ``tvmforge tune`` processes into one database folder at once: the second waits for the
first (saying so), then continues from its records; the folder holds each workload once and
every record points at the kernel it was measured for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx

from onnx_builders import conv_relu_model

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def _tune(model: Path, logs: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tvmforge.cli", "tune", str(model), "--target", "x86",
         "--trials", "8", "--tuning-log", str(logs)],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_two_tunes_into_one_folder_neither_duplicate_nor_corrupt_it(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), model)
    logs = tmp_path / "logs"
    first, second = _tune(model, logs, tmp_path), _tune(model, logs, tmp_path)
    outs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert any("waiting for tvmforge tune (pid" in out for out in outs), outs
    (db,) = [d for d in logs.iterdir() if (d / WORKLOADS).is_file()]
    workloads = [json.loads(line) for line in (db / WORKLOADS).read_text().splitlines() if line]
    hashes = [w[0] for w in workloads]
    assert len(hashes) == len(set(hashes)), "a workload is stored twice"
    records = [json.loads(line) for line in (db / RECORDS).read_text().splitlines() if line]
    assert records and all(0 <= r[0] < len(workloads) for r in records)
    # the database still opens and answers for every workload it holds
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=str(db))
    assert len(database) == len(records)
    # and a compile applies it
    res = subprocess.run(
        [sys.executable, "-m", "tvmforge.cli", "compile", str(model), "--target", "x86",
         "--tuning-log", str(logs), "-o", str(tmp_path / "m.tar")],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr
