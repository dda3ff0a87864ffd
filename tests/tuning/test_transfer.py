"""The pre-trained cost model (``tvmforge.tuning.transfer``): trained on a real tune's records,
loaded by the next tune of the same tuning key."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.utils import shash2hex

from onnx_builders import conv_relu_model
from tvmforge.targets import resolve
from tvmforge.tuning import transfer
from tvmforge.tuning import tune as tuning


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    work = tmp_path_factory.mktemp("logs")
    res = tuning.tune(conv_relu_model(), "x86", trials=12, work_dir=work, threads=1,
                      cost_model="xgb-fresh")
    return res


def _target():
    return resolve("x86", threads=1).tvm_target()


def test_train_replays_every_measured_record(tuned, tmp_path):
    out = tmp_path / transfer.MODEL_FILE
    info = transfer.train([tuned.database], _target(), out)
    measured = [r for r in ms.database.JSONDatabase(work_dir=str(tuned.database))
                .get_all_tuning_records() if r.run_secs]
    assert info["records"] == len(measured) == tuned.records_after
    assert info["workloads"] == len(tuned.tasks)
    assert json.loads(out.with_name(transfer.INFO_FILE).read_text())["records"] == len(measured)

    model = transfer.load(out)
    assert model.booster is not None
    assert model.data_size == len(measured)
    # the booster scores candidates (MetaSchedule scores at random below 100 samples: this
    # small test data is under it, a real corpus is thousands)
    model.num_warmup_samples = 0
    rec_groups: dict[str, list] = {}
    for r in measured:
        rec_groups.setdefault(shash2hex(r.workload.mod), []).append(r)
    recs = max(rec_groups.values(), key=len)
    ctx = ms.TuneContext(mod=recs[0].workload.mod, target=_target(), num_threads=1)
    scores = model.predict(ctx, [r.as_measure_candidate() for r in recs])
    assert np.all(np.isfinite(scores))
    again = model.predict(ctx, [r.as_measure_candidate() for r in recs])
    np.testing.assert_array_equal(scores, again)  # the booster, not the random warm-up


def test_tune_starts_from_the_model_beside_its_database(tuned, tmp_path):
    work = tmp_path / "logs"
    shutil.copytree(tuned.database, work / tuned.database.name)
    transfer.train([tuned.database], _target(), work / tuned.database.name / transfer.MODEL_FILE)
    said: list[str] = []
    tuning.tune(conv_relu_model(), "x86", trials=2, work_dir=work, threads=1, echo=said.append)
    line = next(s for s in said if s.startswith("cost model: "))
    assert f"pre-trained on {tuned.records_after} records of {len(tuned.tasks)} kernels" in line
    said.clear()
    tuning.tune(conv_relu_model(), "x86", trials=2, work_dir=work, threads=1, echo=said.append,
                cost_model="xgb-fresh")
    assert not any(s.startswith("cost model: ") for s in said)


def test_pretrained_for_prefers_the_users_own(tmp_path):
    db = tmp_path / "user" / "x86-avx2"
    shipped = tmp_path / "shipped"
    (shipped / "x86-avx2").mkdir(parents=True)
    (shipped / "x86-avx2" / transfer.MODEL_FILE).write_bytes(b"")
    assert transfer.pretrained_for(db, [shipped]) == shipped / "x86-avx2" / transfer.MODEL_FILE
    db.mkdir(parents=True)
    (db / transfer.MODEL_FILE).write_bytes(b"")
    assert transfer.pretrained_for(db, [shipped]) == db / transfer.MODEL_FILE
    assert transfer.pretrained_for(tmp_path / "x" / "arm-cortex-a72-neon", [shipped]) is None


def test_train_refuses_a_database_without_records(tmp_path):
    (tmp_path / "db").mkdir()
    ms.database.JSONDatabase(work_dir=str(tmp_path / "db"))
    with pytest.raises(ValueError, match="no measured record"):
        transfer.train([tmp_path / "db"], tvm.target.Target("llvm"), tmp_path / "m.tar")
    assert transfer.main([str(tmp_path / "db"), "--out", str(tmp_path / "m.tar")]) == 2
