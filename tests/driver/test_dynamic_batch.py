"""A dynamic batch dimension stays dynamic: one artifact runs any batch size.

Every check runs the compiled artifact at batch 1 and batch 3 and compares with ONNX Runtime on
the same inputs (``max|ours - ort| <= 1e-4 + 1e-3 * max|ort|``).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmforge
from onnx_builders import conv_relu_model, dynamic_batch, make_model
from tvmforge import build_model
from tvmforge.bench.reference import compare, run_onnxruntime
from tvmforge.errors import InputError
from tvmforge.frontend import importer as frontend
from tvmforge.frontend import zoo
from tvmforge.frontend.importer import TensorInfo, parse_input_shape, resolve_inputs
from tvmforge.frontend.simplify import simplify
from tvmforge.runtime.executor import LocalVM, check_inputs, random_inputs

BATCHES = (1, 3)


def _ort(model: onnx.ModelProto, feed):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))


def _check_batches(model: onnx.ModelProto, tmp_path, batches=BATCHES, **options):
    """Build once, run the one library at every batch size, compare with ONNX Runtime."""
    built = build_model(model, "x86", **options)
    lib = tmp_path / "lib.so"
    built.executable.export_library(str(lib))
    vm = LocalVM(lib, "cpu")
    rng = np.random.default_rng(0)
    for b in batches:
        feed = {
            i.name: rng.normal(size=[b if isinstance(d, str) else d for d in i.shape]).astype(
                i.dtype
            )
            for i in built.inputs
        }
        outs = vm.run([feed[i.name] for i in built.inputs])
        ours = dict(zip([o.name for o in built.outputs], outs, strict=True))
        results = compare(ours, _ort(model, feed))
        assert all(r.ok for r in results), (b, [r.line() for r in results])
        for out in outs:
            assert out.shape[0] == b
    return built


def test_parse_n_as_dynamic():
    assert parse_input_shape("x=Nx3x224x224") == ("x", ("N", 3, 224, 224))
    assert parse_input_shape("x=N,8") == ("x", ("N", 8))


def test_batch_kept_dynamic_named_after_dim_param(tmp_model):
    named = frontend.load(tmp_model(conv_relu_model(batch="batch_size")))
    (info,) = resolve_inputs(named, {}, dynamic_batch=True)
    assert info.shape == ("batch_size", 3, 16, 16) and not info.static
    anonymous = conv_relu_model(batch=1)
    anonymous.graph.input[0].type.tensor_type.shape.dim[0].Clear()  # no value, no name
    (info,) = resolve_inputs(frontend.load(anonymous), {}, dynamic_batch=True)
    assert info.shape == ("batch", 3, 16, 16)
    # --input-shape N asks for it; a number fixes it
    (info,) = resolve_inputs(named, {"x": ("N", 3, 16, 16)}, dynamic_batch=True)
    assert info.shape == ("batch_size", 3, 16, 16)
    (info,) = resolve_inputs(named, {"x": (2, 3, 16, 16)}, dynamic_batch=True)
    assert info.shape == (2, 3, 16, 16)


def test_where_n_is_refused(tmp_model):
    dynamic = frontend.load(tmp_model(conv_relu_model(batch="N")))
    with pytest.raises(InputError, match="tune and calibration need fixed sizes"):
        resolve_inputs(dynamic, {"x": ("N", 3, 16, 16)})  # tune: no dynamic_batch
    with pytest.raises(InputError, match=r"only the leading \(batch\) dimension can stay dynamic"):
        resolve_inputs(dynamic, {"x": (1, "N", 16, 16)}, dynamic_batch=True)
    static = frontend.load(tmp_model(conv_relu_model(), "static.onnx"))
    with pytest.raises(InputError, match="dimension 0 is fixed to 1 in the model"):
        resolve_inputs(static, {"x": ("N", 3, 16, 16)}, dynamic_batch=True)


def test_other_dynamic_dims_still_need_fixing(tmp_model):
    model = conv_relu_model(batch="N")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    loaded = frontend.load(tmp_model(model))
    with pytest.raises(InputError) as err:
        resolve_inputs(loaded, {}, dynamic_batch=True)
    line = err.value.line()
    assert "input 'x' has dynamic dimension 2 ('height')" in line
    assert "--input-shape x=Nx3x<height>x<width>" in line and "N keeps the batch" in line
    (info,) = resolve_inputs(loaded, {"x": ("N", 3, 16, 16)}, dynamic_batch=True)
    assert info.shape == ("N", 3, 16, 16)


# --- the runtime side ------------------------------------------------------------------------


def test_check_inputs_accepts_any_batch_the_same_in_every_input():
    infos = [TensorInfo("a", ("N", 3), "float32"), TensorInfo("b", ("N", 3), "float32")]
    for n in (1, 4):
        arrays = {"a": np.zeros((n, 3), np.float32), "b": np.ones((n, 3), np.float32)}
        assert [a.shape for a in check_inputs(infos, arrays)] == [(n, 3)] * 2
    with pytest.raises(InputError, match="input 'b' has N = 3, but input 'a' has N = 2"):
        check_inputs(infos, {"a": np.zeros((2, 3)), "b": np.zeros((3, 3))})
    with pytest.raises(InputError, match=r"expects \[N, 3\] \(any size >= 1"):
        check_inputs(infos, {"a": np.zeros((2, 4)), "b": np.zeros((2, 3))})
    with pytest.raises(InputError, match="expects"):
        check_inputs(infos, {"a": np.zeros((0, 3)), "b": np.zeros((0, 3))})
    assert random_inputs(infos)["a"].shape == (1, 3)
    assert random_inputs(infos, batch=5)["b"].shape == (5, 3)


def test_artifact_runs_any_batch_and_records_the_name(tmp_path):
    model = conv_relu_model(batch="N")
    path = tvmforge.compile_model(model, "x86", tmp_path / "dyn.tar")
    compiled = tvmforge.load(path)
    assert compiled.manifest["inputs"] == [
        {"name": "x", "shape": ["N", 3, 16, 16], "dtype": "float32"}
    ]
    assert compiled.manifest["outputs"][0]["shape"] == ["N", 5]
    reference = frontend.load(model)
    for n in (1, 3, 8):
        x = np.random.default_rng(n).normal(size=(n, 3, 16, 16)).astype(np.float32)
        out = compiled(x=x)
        assert out["y"].shape == (n, 5)
        assert all(c.ok for c in compare(out, run_onnxruntime(reference, {"x": x})))


def test_cli_compile_check_run_bench_and_n(cli, tmp_model, tmp_path):
    model = tmp_model(conv_relu_model(batch="N"))
    res = cli("compile", model, "-o", "dyn.tar", "--check")
    assert res.exit_code == 0, res.output
    assert " ok" in res.stdout
    assert json.loads(cli("inspect", "dyn.tar", "--json").stdout)["inputs"][0]["shape"][0] == "N"
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    res = cli("run", "dyn.tar", "--inputs", "in.npz", "--output", "out.npz")
    assert res.exit_code == 0, res.output
    assert "y: float32[3, 5]" in res.stdout
    with np.load(tmp_path / "out.npz") as out:
        ref = run_onnxruntime(frontend.load(str(model)), {"x": x})
        assert all(c.ok for c in compare({"y": out["y"]}, ref))
    assert "y: float32[1, 5]" in cli("run", "dyn.tar").stdout  # random inputs: batch 1
    res = cli("bench", model, "--repeat", "2", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["outputs_match"]
    # asked for by name; and refused where the model fixes the batch
    res = cli("compile", model, "--input-shape", "x=Nx3x16x16", "-o", "n.tar")
    assert res.exit_code == 0, res.output
    res = cli("compile", tmp_model(conv_relu_model(), "s.onnx"), "--input-shape", "x=Nx3x16x16")
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "dimension 0 is fixed to 1" in lines[0], res.stderr


def test_prune_and_quantize_ask_for_a_fixed_batch(cli, tmp_model):
    res = cli("compile", tmp_model(conv_relu_model(batch="N")), "--prune", "0.3")
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--input-shape x=1x3x16x16" in lines[0], res.stderr
    assert "Traceback" not in res.output


def test_two_inputs_share_the_batch_and_a_stale_output_shape_is_ignored(tmp_path):
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in "ab")
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 2)).astype("f"), "w")
    model = make_model(
        [
            helper.make_node("Mul", ["a", "b"], ["ab"]),
            helper.make_node("MatMul", ["ab", "w"], ["y"]),
        ],
        [a, b],
        # declared at the batch it was traced with, as exporters do: stale, and ignored
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [w],
    )
    built = _check_batches(model, tmp_path)
    assert [i.shape for i in built.inputs] == [("batch", 4)] * 2
    assert built.outputs[0].shape == ("batch", 2)


# --- the pre-pass: batch-dependent shape values ------------------------------------------------

_I = lambda value, name: numpy_helper.from_array(np.array(value, np.int64), name)  # noqa: E731


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _shape_models() -> dict[str, onnx.ModelProto]:
    """Shape patterns of exported models with a dynamic batch, each on x[B, ...]."""
    gather = [
        helper.make_node("Shape", ["x"], ["s"]),
        *(helper.make_node("Gather", ["s", f"i{k}"], [f"d{k}"], axis=0) for k in range(4)),
    ]
    idx = [_I(k, f"i{k}") for k in range(4)]
    unsq = [_I([0], "ax")]
    slice0 = [_I([0], "st"), _I([1], "en")]
    return {
        # x.view(x.size(0), x.size(1), -1): [B, C, H*W] computed from Shape
        "view_b_c_hw": make_model(
            [
                *gather,
                helper.make_node("Mul", ["d2", "d3"], ["hw"]),
                *(helper.make_node("Unsqueeze", [d, "ax"], [f"{d}u"]) for d in ("d0", "d1", "hw")),
                helper.make_node("Concat", ["d0u", "d1u", "hwu"], ["t"], axis=0),
                helper.make_node("Reshape", ["x", "t"], ["r"]),
                helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1]),
            ],
            [_f("x", ["B", 3, 4, 5])],
            [_f("y", None)],
            idx + unsq,
        ),
        # Reshape(x, [Size(x) / 12, 12])
        "size_div": make_model(
            [
                helper.make_node("Size", ["x"], ["n"]),
                helper.make_node("Div", ["n", "k"], ["b"]),
                helper.make_node("Unsqueeze", ["b", "ax"], ["bu"]),
                helper.make_node("Concat", ["bu", "k1"], ["t"], axis=0),
                helper.make_node("Reshape", ["x", "t"], ["y"]),
            ],
            [_f("x", ["B", 2, 6])],
            [_f("y", None)],
            [_I(12, "k"), _I([12], "k1"), *unsq],
        ),
        # x[B,1,4].expand(x.size(0), 3, 4)
        "expand_self": make_model(
            [
                helper.make_node("Shape", ["x"], ["s"]),
                helper.make_node("Slice", ["s", "st", "en"], ["b1"]),
                helper.make_node("Concat", ["b1", "three4"], ["t"], axis=0),
                helper.make_node("Expand", ["x", "t"], ["y"]),
            ],
            [_f("x", ["B", 1, 4])],
            [_f("y", None)],
            [*slice0, _I([3, 4], "three4")],
        ),
        # a class token expanded to the batch and prepended (ViT): stays computed at run time
        "cls_token": make_model(
            [
                helper.make_node("Shape", ["x"], ["s"]),
                helper.make_node("Slice", ["s", "st", "en"], ["b1"]),
                helper.make_node("Concat", ["b1", "one_d"], ["t"], axis=0),
                helper.make_node("Expand", ["tok", "t"], ["tokb"]),
                helper.make_node("Concat", ["tokb", "x"], ["y"], axis=1),
            ],
            [_f("x", ["B", 4, 6])],
            [_f("y", None)],
            [
                *slice0,
                _I([1, 6], "one_d"),
                numpy_helper.from_array(np.linspace(-1, 1, 6, dtype=np.float32)[None, None], "tok"),
            ],
        ),
        # upsampling to Concat(Shape(x)[:2], [7, 9]) (detection necks)
        "resize_sizes": make_model(
            [
                helper.make_node("Shape", ["x"], ["s"]),
                helper.make_node("Slice", ["s", "st", "en"], ["nc"]),
                helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
                helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear"),
            ],
            [_f("x", ["B", 2, 4, 4])],
            [_f("y", None)],
            [_I([0], "st"), _I([2], "en"), _I([7, 9], "hw")],
        ),
        # ConstantOfShape(Shape(x)) + x: a batch-sized constant stays computed
        "constant_of_shape": make_model(
            [
                helper.make_node("Shape", ["x"], ["s"]),
                helper.make_node(
                    "ConstantOfShape",
                    ["s"],
                    ["z"],
                    value=numpy_helper.from_array(np.array([1.5], np.float32)),
                ),
                helper.make_node("Add", ["x", "z"], ["y"]),
            ],
            [_f("x", ["B", 4])],
            [_f("y", None)],
        ),
    }


@pytest.mark.parametrize("name", sorted(_shape_models()))
def test_shape_patterns_match_onnxruntime_at_every_batch(name, tmp_path):
    _check_batches(_shape_models()[name], tmp_path)


def test_batch_free_targets_replace_the_shape_subgraph():
    model = _shape_models()["view_b_c_hw"]
    out, report = simplify(model, [TensorInfo("x", ("B", 3, 4, 5), "float32")])
    assert [n.op_type for n in out.graph.node] == ["Reshape", "Transpose"]
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert inits[out.graph.node[0].input[1]].tolist() == [0, 3, 20]
    assert report.batch_free_targets == 1
    # the batch-free part of a shape value still folds: Shape(x)[1:] is a constant
    model = make_model(
        [
            helper.make_node("Shape", ["x"], ["s"], start=1),
            helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT),
        ],
        [_f("x", ["B", 3, 4])],
        [_f("y", [2])],
    )
    out, _ = simplify(model, [TensorInfo("x", ("B", 3, 4), "float32")])
    assert len(out.graph.node) == 0
    assert numpy_helper.to_array(out.graph.initializer[0]).tolist() == [3.0, 4.0]


def test_a_condition_on_the_batch_is_not_folded():
    """``If(Shape(x)[0] == 1)``: the probe at batch 1 differs from the others, so it stays."""
    then_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["t"])], "then", [], [_f("t", ["B", 2])]
    )
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])], "else", [], [_f("e", ["B", 2])]
    )
    model = make_model(
        [
            helper.make_node("Shape", ["x"], ["s"], end=1),
            helper.make_node("Equal", ["s", "one"], ["c1"]),
            helper.make_node("Squeeze", ["c1"], ["c"]),
            helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
        ],
        [_f("x", ["B", 2])],
        [_f("y", ["B", 2])],
        [_I([1], "one")],
    )
    out, report = simplify(model, [TensorInfo("x", ("B", 2), "float32")])
    assert report.inlined_ifs == 0 and "If" in [n.op_type for n in out.graph.node]


# --- real architectures ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet"])
def test_light_model_with_dynamic_batch_matches_onnxruntime(name, tmp_path):
    """The zoo's real architectures with seeded weights, re-exported with a dynamic batch
    (ShuffleNet's 33 channel-shuffle Reshapes then read the batch from Shape)."""
    model = dynamic_batch(zoo.light_model(name))
    built = _check_batches(model, tmp_path)
    assert built.inputs[0].shape[0] == "N" and built.outputs[0].shape[0] == "N"


def test_resnet50_with_dynamic_batch_imports_with_a_symbolic_batch():
    """Import only (its naive dynamic kernels take seconds per image): the Flatten before the
    classifier folds to a batch-free target, and Relax sees ``(N, 3, 224, 224) -> (N, 1000)``."""
    model = frontend.load(dynamic_batch(zoo.light_model("resnet50")))
    inputs = resolve_inputs(model, {}, dynamic_batch=True)
    out, report = simplify(model.proto, inputs)
    assert report.batch_free_targets == 1
    assert not {"Shape", "Gather", "Concat"} & {n.op_type for n in out.graph.node}
    mod = frontend.to_relax(model, inputs)
    (param,) = mod["main"].params

    def dims(ty):
        return [int(d) if hasattr(d, "value") else str(d) for d in ty.shape.values]

    assert dims(param.ty) == ["N", 3, 224, 224]
    assert dims(mod["main"].ret_ty) == ["N", 1000]


def test_computed_reshapes_fold_in_few_rounds_with_a_fixed_batch_too():
    """Fixed shapes: ShuffleNet's 33 computed Reshape targets all fold (shapes are carried
    past each one within a round; one round per Reshape would stop at the round limit)."""
    model = frontend.load(dynamic_batch(zoo.light_model("shufflenet")))
    for shape in ((2, 3, 224, 224), ("N", 3, 224, 224)):
        inputs = resolve_inputs(model, {"gpu_0/data_0": shape}, dynamic_batch=True)
        out, report = simplify(model.proto, inputs)
        ops = [n.op_type for n in out.graph.node]
        assert ops.count("Reshape") == 33 and "Shape" not in ops, report
        assert report.rounds <= 4
