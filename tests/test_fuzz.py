"""Fuzzing the command line with damaged real models and damaged input files (hypothesis, a
bounded number of examples): every run ends with exit 0 and outputs that match ONNX Runtime,
or exit 1 or 2 with one ``error:`` line; never a traceback, a crash or a hang."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnx_builders import conv_relu_model

pytestmark = pytest.mark.filterwarnings("ignore")

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def _mutate(model: onnx.ModelProto, kind: str, pick: int) -> onnx.ModelProto:
    m = copy.deepcopy(model)
    g = m.graph
    nodes = list(g.node)
    node = nodes[pick % len(nodes)]
    if kind == "delete-node":
        g.node.remove(node)
    elif kind == "attribute":
        if node.attribute:
            a = node.attribute[pick % len(node.attribute)]
            if a.ints:
                a.ints[0] = -a.ints[0] - 7
            else:
                a.i = -a.i - 7
        else:
            node.attribute.append(onnx.helper.make_attribute("axis", pick % 9 - 4))
    elif kind == "initializer":
        t = g.initializer[pick % len(g.initializer)]
        if t.raw_data:
            t.raw_data = t.raw_data[: len(t.raw_data) // 2]
        else:
            del t.float_data[len(t.float_data) // 2:]
    elif kind == "swap-inputs":
        if len(node.input) >= 2:
            node.input[0], node.input[1] = node.input[1], node.input[0]
    elif kind == "elem-type":
        g.input[0].type.tensor_type.elem_type = 99 if pick % 2 else onnx.TensorProto.STRING
    elif kind == "rename-output":
        node.output[0] = f"{node.output[0]}_gone"
    return m


def _ort_accepts(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray | None:
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": x})[0]
    except Exception:
        return None


def _check_outcome(res) -> None:
    assert "Traceback" not in res.output, res.output
    assert res.exit_code in (0, 1, 2), res.output
    if res.exit_code:
        errors = [ln for ln in res.output.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1, res.output


@SETTINGS
@given(kind=st.sampled_from(["delete-node", "attribute", "initializer", "swap-inputs",
                             "elem-type", "rename-output"]),
       pick=st.integers(0, 50))
def test_a_damaged_model_compiles_right_or_fails_in_one_line(cli, tmp_path_factory, kind, pick):
    folder = tmp_path_factory.mktemp("fuzz")
    model = _mutate(conv_relu_model(), kind, pick)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    res = cli("compile", path, "-o", folder / "m.tar")
    _check_outcome(res)
    if res.exit_code == 0:
        import tvmforge

        x = np.random.default_rng(pick).standard_normal((1, 3, 16, 16)).astype(np.float32)
        ours = tvmforge.load(folder / "m.tar")(x=x)
        ref = _ort_accepts(model, x)
        if ref is not None:  # ONNX Runtime runs it too: the same numbers
            got = next(iter(ours.values()))
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    import tvmforge

    return tvmforge.compile_model(conv_relu_model(), "x86",
                                  tmp_path_factory.mktemp("a") / "m.tar")


@SETTINGS
@given(shape=st.one_of(st.just([1, 3, 16, 16]), st.lists(st.integers(0, 17), max_size=5)),
       dtype=st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "complex64"]),
       name=st.sampled_from(["x", "X", "y", ""]))
def test_a_damaged_input_file_runs_or_fails_in_one_line(cli, artifact, tmp_path_factory, shape,
                                                         dtype, name):
    folder = tmp_path_factory.mktemp("npz")
    arr = np.zeros(shape, dtype=dtype)
    np.savez(folder / "in.npz", **({name: arr} if name else {"arr_0": arr}))
    res = cli("run", artifact, "--inputs", folder / "in.npz")
    _check_outcome(res)
    # the contract: the input's name and shape, and a dtype that casts to float32 within its
    # kind (numpy's "same_kind"); anything else is bad input, exit 2
    fits = (name == "x" and shape == [1, 3, 16, 16]
            and np.can_cast(np.dtype(dtype), np.float32, casting="same_kind"))
    assert res.exit_code == (0 if fits else 2), (shape, dtype, name, res.output)
