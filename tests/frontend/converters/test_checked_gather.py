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


def _embedding(elem: int = TensorProto.INT64, ids_shape=(2, 3)):
    table = np.random.default_rng(0).standard_normal((ROWS, 8)).astype(np.float32)
    return make_model(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
        [helper.make_tensor_value_info("ids", elem, list(ids_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*ids_shape, 8])],
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


@pytest.mark.parametrize("shape", [(), ("batch", 3)], ids=["scalar", "dynamic-batch"])
def test_scalar_and_dynamic_batch_indices_are_checked_too(tmp_path, shape):
    """A 0-d index (one row) and indices with a dynamic batch dimension: in range they match
    ONNX Runtime, out of range they are refused."""
    model = _embedding(ids_shape=shape)
    compiled = tvmforge.load(tvmforge.compile_model(model, "x86", tmp_path / "g.tar"))
    ids = np.array(-2, np.int64) if shape == () else np.array([[0, -1, 5]] * 4, np.int64)
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    np.testing.assert_array_equal(compiled(ids=ids)["y"], ref)
    bad = np.array(ROWS, np.int64) if shape == () else np.array([[0, ROWS, 1]] * 2, np.int64)
    with pytest.raises(InputError, match=rf"input 'ids' .*outside \[-{ROWS}, {ROWS}\)"):
        compiled(ids=bad)


def test_one_dimensional_indices_are_checked_too(tmp_path):
    model = _embedding(ids_shape=(3,))
    compiled = tvmforge.load(tvmforge.compile_model(model, "x86", tmp_path / "g1.tar"))
    ids = np.array([0, -1, 7], np.int64)
    table = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(compiled(ids=ids)["y"], table[ids])
    with pytest.raises(InputError, match="outside"):
        compiled(ids=np.array([0, ROWS, 1], np.int64))
