"""``pack_dense_weights`` and the packed-matmul schedule of ``schedule_cpu_default``.

The matmul becomes a ``call_tir`` of the packed TE definition with the weight in column
panels, matmuls the pass must not touch are left alone, the schedule has the panel-outer
register tile, and matmuls of every shape it handles (rows off the tile, half-width panels,
batched inputs, ``Gemm`` with ``transB``, GELU and residual epilogues) match ONNX Runtime.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, s_tir
from tvm.script import ir as I
from tvm.script import relax as R

from onnx_builders import cpu_target, make_model
from tvmforge.passes.graph.pack_dense_weights import PACKED_DENSE_ATTR, pack_dense_weights, pack_kn
from tvmforge.passes.schedule.rules import CpuScheduleParams, schedule_prim_func

RNG = np.random.default_rng(9)
X86 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}  # structure: 16 lanes
HOST = cpu_target()  # what runs here


@I.ir_module
class Dense:
    @R.function
    def main(x: R.Tensor((1, 24, 96), "float32"), w: R.Tensor((96, 64), "float32")) -> R.Tensor(
        (1, 24, 64), "float32"
    ):
        with R.dataflow():
            y = R.matmul(x, w)
            R.output(y)
        return y


W = RNG.standard_normal((96, 64)).astype(np.float32)


def _bind(mod: tvm.IRModule, params: dict[str, np.ndarray]) -> tvm.IRModule:
    tensors = {k: tvm.runtime.tensor(v) for k, v in params.items()}
    return relax.transform.BindParams("main", tensors)(mod)



def test_pack_kn_layout():
    packed = pack_kn(W, 32)
    assert packed.shape == (2, 96, 32)
    assert packed[1, 17, 5] == W[17, 32 + 5]


def test_matmul_becomes_packed_and_scheduled_panel_outer():
    after = pack_dense_weights(block=32)(_bind(Dense, {"w": W}))
    funcs = {g.name_hint: f for g, f in after.functions_items()}
    assert "matmul_packed" in funcs
    assert "R.matmul" not in after["main"].script()
    func = funcs["matmul_packed"]
    sch = s_tir.Schedule(func)
    (blk,) = [
        b for b in sch.get_child_blocks(sch.get_sblock("root"))
        if PACKED_DENSE_ATTR in sch.get(b).annotations
    ]  # fmt: skip
    assert int(sch.get(blk).annotations[PACKED_DENSE_ATTR]) == 32

    params = CpuScheduleParams(lanes=16, vector_registers=32, num_cores=2)
    scheduled = schedule_prim_func(func, params)
    sch = s_tir.Schedule(scheduled)
    loops = sch.get_loops(sch.get_sblock("matmul_packed_update"))
    kinds = [sch.get(lp).kind for lp in loops]
    extents = [int(sch.get(lp).extent) for lp in loops]
    # [panels, batch, row tiles (fused, parallel)] [k] [8 rows, unrolled] [32 columns, vectorized]
    assert kinds[0] == tvm.tirx.ForKind.PARALLEL and extents[0] == 2 * 3  # fused: 16 > 2
    assert extents[-3:] == [96, 8, 32]
    assert kinds[-1] == tvm.tirx.ForKind.VECTORIZED
    assert kinds[-2] == tvm.tirx.ForKind.UNROLLED


def test_matmuls_it_cannot_pack_are_left_alone():
    odd = RNG.standard_normal((96, 20)).astype(np.float32)  # 20 columns: no 16-multiple

    @I.ir_module
    class Odd:
        @R.function
        def main(x: R.Tensor((1, 24, 96), "float32"), w: R.Tensor((96, 20), "float32")) -> R.Tensor(
            (1, 24, 20), "float32"
        ):
            with R.dataflow():
                y = R.matmul(x, w)
                R.output(y)
            return y

    for mod in (_bind(Odd, {"w": odd}), Dense):  # Dense: the weight is an input
        tvm.ir.assert_structural_equal(pack_dense_weights(block=32)(mod), mod)


def test_only_cpu_targets_get_packed_weights():
    mod = _bind(Dense, {"w": W})
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
    with cuda:
        tvm.ir.assert_structural_equal(pack_dense_weights()(mod), mod)
    tvm.ir.assert_structural_equal(pack_dense_weights()(mod), mod)  # no target at all
    with tvm.target.Target(X86):
        names = [g.name_hint for g in pack_dense_weights()(mod).get_global_vars()]
    assert "matmul_packed" in names


def test_columns_off_the_vector_are_padded_and_sliced_off():
    """A classifier's 1000 columns: the weight gets 8 zero columns (63 panels of 16) and the
    product's extra columns are sliced off; the packed schedule takes the slice as its
    epilogue. Unpacked, that matrix-vector product read 10 columns per row, 4000 bytes apart,
    into an accumulator in memory (ResNet-50's 2048 x 1000, two threads, cold weights:
    0.552 -> 0.245 ms). 20 columns would need 12 zero columns, too many: left alone."""
    w = RNG.standard_normal((96, 1000)).astype(np.float32)

    @I.ir_module
    class Classifier:
        @R.function
        def main(x: R.Tensor((1, 96), "float32"), w: R.Tensor((96, 1000), "float32")) -> R.Tensor(
            (1, 1000), "float32"
        ):
            with R.dataflow():
                y = R.matmul(x, w)
                R.output(y)
            return y

    after = pack_dense_weights(block=32)(_bind(Classifier, {"w": w}))
    funcs = {g.name_hint: f for g, f in after.functions_items()}
    assert [int(d) for d in funcs["matmul_packed"].params[1].shape] == [63, 96, 16]
    assert "R.strided_slice" in after["main"].script()
    ex = relax.build(after, tvm.target.Target(HOST))
    x = RNG.standard_normal((1, 96)).astype(np.float32)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert out.shape == (1, 1000)
    np.testing.assert_allclose(out, x @ w, rtol=1e-4, atol=1e-4)


# --- numbers -----------------------------------------------------------------------------------


def _linear_model(m: int, k: int, n: int, epilogue: str, batch: tuple[int, ...] = (1,)):
    rng = np.random.default_rng(m * 100 + k + n)
    weights = {
        "w": (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32),
        "b": rng.standard_normal(n).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
    ]
    if epilogue == "gelu":
        weights["s2"] = np.array(np.sqrt(2.0), np.float32)
        weights["one"] = np.array(1.0, np.float32)
        weights["half"] = np.array(0.5, np.float32)
        nodes += [
            helper.make_node("Div", ["a", "s2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["e1"]),
            helper.make_node("Mul", ["a", "e1"], ["g"]),
            helper.make_node("Mul", ["g", "half"], ["y"]),
        ]
    elif epilogue == "residual":
        assert k == n
        nodes.append(helper.make_node("Add", ["a", "x"], ["y"]))
    else:
        nodes.append(helper.make_node("Relu", ["a"], ["y"]))
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*batch, m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*batch, m, n])],
        [numpy_helper.from_array(v, name) for name, v in weights.items()],
    )


def _gemm_trans_b(m: int, k: int, n: int):
    rng = np.random.default_rng(5)
    weights = {
        "w": (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32),
        "b": rng.standard_normal(n).astype(np.float32),
    }
    return make_model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(v, name) for name, v in weights.items()],
    )


@pytest.mark.parametrize(
    ("model", "packed"),
    [
        pytest.param(lambda: _linear_model(24, 96, 64, "relu"), True, id="rows-24"),
        pytest.param(lambda: _linear_model(7, 40, 48, "relu"), True, id="rows-7-half-panel"),
        pytest.param(lambda: _linear_model(16, 64, 96, "gelu"), True, id="gelu-epilogue"),
        pytest.param(lambda: _linear_model(12, 64, 64, "residual"), True, id="residual"),
        pytest.param(lambda: _linear_model(8, 32, 32, "relu", (2, 3)), True, id="batched"),
        pytest.param(lambda: _gemm_trans_b(1, 200, 64), True, id="gemm-transB-gemv"),
        pytest.param(lambda: _gemm_trans_b(1, 256, 1000), True, id="classifier-1000-padded"),
        pytest.param(lambda: _linear_model(3, 64, 104, "gelu"), True, id="rows-3-104-padded"),
        pytest.param(lambda: _linear_model(5, 16, 20, "relu"), False, id="odd-columns"),
    ],
)
def test_matches_onnxruntime(model, packed, caplog):
    import onnxruntime as ort

    from tvmforge import build_model

    proto = model()
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    with caplog.at_level(logging.DEBUG, logger="tvmforge.passes"):
        built = build_model(proto, "x86", threads=2)
    assert "rule packed_dense failed" not in caplog.text
    assert ("matmul weights in panels" in caplog.text) == packed
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    ours = (out if hasattr(out, "numpy") else out[0]).numpy()
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))
