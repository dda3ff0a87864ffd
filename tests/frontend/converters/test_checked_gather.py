"""``Gather`` with indices fed at run time: in-range and negative indices match ONNX Runtime,
an index past the table (or a huge one) is refused with the input's name instead of reading
memory it does not own."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmforge
from onnx_builders import make_model
from tvmforge.errors import InputError

ROWS = 50


def _embedding(elem: int = TensorProto.INT64):
    table = np.random.default_rng(0).standard_normal((ROWS, 8)).astype(np.float32)
    return make_model(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
        [helper.make_tensor_value_info("ids", elem, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 8])],
        [numpy_helper.from_array(table, "table")],
    )


@pytest.fixture(scope="module")
def embedding(tmp_path_factory):
    path = tmp_path_factory.mktemp("g") / "g.tar"
    return tvmforge.load(tvmforge.compile_model(_embedding(), "x86", path))


def test_in_range_and_negative_indices_match_onnxruntime(embedding):
    ids = np.array([[0, 1, ROWS - 1], [-1, -ROWS, 7]], np.int64)
    ref = ort.InferenceSession(_embedding().SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    np.testing.assert_array_equal(embedding(ids=ids)["y"], ref)


@pytest.mark.parametrize("bad", [ROWS, -ROWS - 1, 2**40], ids=["rows", "below", "huge"])
def test_an_index_outside_the_table_is_refused_with_the_inputs_name(embedding, bad):
    ids = np.array([[0, 1, 2], [3, bad, 4]], np.int64)
    with pytest.raises(InputError, match=rf"input 'ids' .*outside \[-{ROWS}, {ROWS}\)"):
        embedding(ids=ids)


def test_run_cli_exits_2_with_one_line(cli, tmp_model, tmp_path):
    assert cli("compile", tmp_model(_embedding()), "-o", "g.tar").exit_code == 0
    np.savez(tmp_path / "in.npz", ids=np.full((2, 3), ROWS, np.int64))
    res = cli("run", "g.tar", "--inputs", "in.npz")
    assert res.exit_code == 2, res.output
    assert "index outside" in res.output and "Traceback" not in res.output
