"""Loading, input shapes and the unsupported-op report of ``tvmforge.frontend.importer``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import conv_relu_model, make_model
from tvmforge import CompileError, InputError
from tvmforge.frontend.importer import (
    check_supported,
    load,
    parse_input_shape,
    resolve_inputs,
    unsupported_nodes,
)


@pytest.mark.parametrize(
    ("text", "name", "dims"),
    [
        ("x=1x3x224x224", "x", (1, 3, 224, 224)),
        ("gpu_0/data_0=1,3,8,8", "gpu_0/data_0", (1, 3, 8, 8)),
        ("a=b=7", "a=b", (7,)),
    ],
)
def test_parse_input_shape(text, name, dims):
    assert parse_input_shape(text) == (name, dims)


@pytest.mark.parametrize("text", ["x", "x=", "=1x2", "x=1xx2", "x=a"])
def test_parse_input_shape_rejects(text):
    with pytest.raises(InputError):
        parse_input_shape(text)


def test_initializers_listed_as_inputs_are_not_inputs(tmp_model):
    model = conv_relu_model()
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 3, 3, 3]))
    loaded = load(tmp_model(model))
    assert [i.name for i in loaded.inputs] == ["x"]


def test_dynamic_dims_all_named(tmp_model):
    loaded = load(tmp_model(conv_relu_model(batch="N")))
    assert loaded.inputs[0].shape == ("N", 3, 16, 16)
    with pytest.raises(InputError, match=r"dynamic dimension 0 \('N'\)"):
        resolve_inputs(loaded, {})
    fixed = resolve_inputs(loaded, {"x": (2, 3, 16, 16)})
    assert fixed[0].shape == (2, 3, 16, 16)
    with pytest.raises(InputError, match="rank 4"):
        resolve_inputs(loaded, {"x": (2, 3)})


def test_unsupported_ops_inside_subgraphs_are_found():
    then_g = helper.make_graph(
        [helper.make_node("RandomNormalLike", ["m"], ["d"], name="inner_rand")],
        "then",
        [],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [])],
    )
    else_g = helper.make_graph(
        [helper.make_node("ReduceSum", ["m"], ["d2"], name="inner_sum", keepdims=0)],
        "else",
        [],
        [helper.make_tensor_value_info("d2", TensorProto.FLOAT, [])],
    )
    model = make_model(
        [
            helper.make_node(
                "If", ["c"], ["out"], name="branch", then_branch=then_g, else_branch=else_g
            )
        ],
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("m", TensorProto.FLOAT, [3, 3]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])],
    )
    loaded = load(model)
    assert unsupported_nodes(loaded) == [("branch/then_branch/inner_rand", "RandomNormalLike")]
    with pytest.raises(CompileError, match="inner_rand"):
        check_supported(loaded)


def test_foreign_domain_ops_are_unsupported():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="custom", domain="com.example")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    assert unsupported_nodes(load(model)) == [("custom", "com.example.Relu")]


def test_zipmap_is_refused_by_design_with_the_skl2onnx_fix():
    model = make_model(
        [
            helper.make_node(
                "ZipMap", ["x"], ["y"], name="zip", domain="ai.onnx.ml", classlabels_int64s=[0, 1]
            )
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    loaded = load(model)
    assert unsupported_nodes(loaded) == [("zip", "ai.onnx.ml.ZipMap")]
    with pytest.raises(CompileError, match=r"sequence of maps.*'zipmap': False"):
        check_supported(loaded)


def test_external_data_is_loaded(tmp_path):
    model = conv_relu_model()
    ref = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}["w"]
    onnx.save(
        model,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.data",
        size_threshold=0,
    )
    loaded = load(tmp_path / "ext.onnx")
    w = {t.name: numpy_helper.to_array(t) for t in loaded.proto.graph.initializer}["w"]
    np.testing.assert_array_equal(w, ref)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(InputError, match="external data"):
        load(tmp_path / "ext.onnx")


def test_zoo_names(tmp_path):
    assert load("zoo:squeezenet").path == "zoo:squeezenet"
    with pytest.raises(InputError, match=r"known: .*resnet50"):
        load("zoo:lenet")


def _if_on_a_computed_value() -> onnx.ModelProto:
    """x -> MatMul -> Add -> Relu -> (ReduceMax >= 1 ? r : -r): control flow on a value the
    model computes, as openWakeWord's classifiers end."""
    rng = np.random.default_rng(0)
    then_g = helper.make_graph([helper.make_node("Identity", ["r"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 16])])
    else_g = helper.make_graph([helper.make_node("Neg", ["r"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 16])])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "b"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("ReduceMax", ["r"], ["mx"], keepdims=0, name="max"),
        helper.make_node("GreaterOrEqual", ["mx", "one"], ["c"], name="ge"),
        helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="if"),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        inits,
    )


def test_control_flow_models_get_dataflow_blocks_and_fuse():
    """TVM's importer writes a model with an If on a computed value with no dataflow block,
    where nothing fuses; to_relax makes its pure bindings dataflow blocks."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from tvmforge import build_model
    from tvmforge.driver.pipeline import to_kernels
    from tvmforge.frontend.importer import load, resolve_inputs, to_relax

    model = load(_if_on_a_computed_value())
    inputs = resolve_inputs(model, {})
    plain = to_relax(model, inputs, dataflow=False)
    assert not any(isinstance(b, relax.DataflowBlock) for b in plain["main"].body.blocks)
    mod = to_relax(model, inputs)
    assert any(isinstance(b, relax.DataflowBlock) for b in mod["main"].body.blocks)
    kernels = to_kernels(mod, tvm.target.Target({"kind": "llvm", "num-cores": 2}))
    names = [g.name_hint for g, f in kernels.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("matmul" in n and "add" in n for n in names), names  # matmul + bias: one kernel
    built = build_model(model, "x86", threads=2)
    # provenance kept: the fused kernel names the three ONNX nodes it computes
    assert any(k.get("onnx_nodes") == ["mm", "add", "relu"] for k in built.kernels.values()), (
        built.kernels
    )
    sess = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for seed in (0, 1, 2):
        x = np.random.default_rng(seed).standard_normal((1, 32)).astype(np.float32)
        out = relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x))
        ours = (out if hasattr(out, "numpy") else out[0]).numpy()
        np.testing.assert_allclose(ours, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
