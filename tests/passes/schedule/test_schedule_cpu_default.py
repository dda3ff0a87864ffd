"""``schedule_cpu_default``: the default CPU schedules every kernel gets without tuning.

Three kinds of test: the scheduled TIR has the expected shape (parallel outer loops, a
vectorized inner loop, the reduction split off), the pass leaves already scheduled functions
alone, and models built through the whole pipeline match ONNX Runtime.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import s_tir
from tvm.script import ir as I
from tvm.script import tirx as T

from onnx_builders import cpu_target
from tvmforge.passes.schedule.rules import (
    CpuScheduleParams,
    schedule_cpu_default,
    schedule_prim_func,
)

X86 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}  # structure: 16 lanes
HOST = cpu_target()  # what runs here
RTOL = 1e-4
LOGGER = "tvmforge.passes.schedule.rules"


@I.ir_module
class Matmul:
    @T.prim_func(private=True, s_tir=True)
    def main(
        A: T.Buffer((T.int64(64), T.int64(128)), "float32"),
        B: T.Buffer((T.int64(128), T.int64(256)), "float32"),
        C: T.Buffer((T.int64(64), T.int64(256)), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for i, j, k in T.grid(T.int64(64), T.int64(256), T.int64(128)):
            with T.sblock("matmul"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    C[vi, vj] = T.float32(0.0)
                C[vi, vj] = C[vi, vj] + A[vi, vk] * B[vk, vj]


def _schedule(mod: tvm.IRModule, target: dict = X86) -> tvm.IRModule:
    tgt = tvm.target.Target(target)
    with tgt:
        return schedule_cpu_default()(mod)


def _loop_kinds(func: tvm.tirx.PrimFunc, block: str) -> list[tvm.tirx.ForKind]:
    sch = s_tir.Schedule(func)
    return [sch.get(loop).kind for loop in sch.get_loops(sch.get_sblock(block))]



def test_matmul_gets_parallel_vectorized_register_tile():
    after = _schedule(Matmul)["main"]
    assert bool(after.attrs["tirx.is_scheduled"])
    kinds = _loop_kinds(after, "matmul_update")
    # [parallel fused outer tiles] [k] [unrolled rows] [vectorized columns]
    assert kinds[0] == tvm.tirx.ForKind.PARALLEL
    assert kinds[-1] == tvm.tirx.ForKind.VECTORIZED
    assert kinds[-2] == tvm.tirx.ForKind.UNROLLED
    init_kinds = _loop_kinds(after, "matmul_init")
    assert init_kinds[-1] == tvm.tirx.ForKind.VECTORIZED
    sch = s_tir.Schedule(after)
    loops = sch.get_loops(sch.get_sblock("matmul_update"))
    assert int(sch.get(loops[-1]).extent) in (16, 32)  # one or two AVX-512 registers of fp32


def test_vector_width_follows_the_target():
    neon = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    assert CpuScheduleParams.from_target(tvm.target.Target(neon)).lanes == 4
    assert CpuScheduleParams.from_target(tvm.target.Target(X86)).lanes == 16
    after = _schedule(Matmul, neon)["main"]
    sch = s_tir.Schedule(after)
    loops = sch.get_loops(sch.get_sblock("matmul_update"))
    assert int(sch.get(loops[-1]).extent) in (4, 8)


def test_already_scheduled_function_is_left_alone():
    marked = tvm.IRModule({"main": Matmul["main"].with_attr("tirx.is_scheduled", True)})
    after = _schedule(marked)
    tvm.ir.assert_structural_equal(after["main"], marked["main"])


# --- numbers: whole pipeline vs ONNX Runtime ---------------------------------------------------


def _model(nodes, inputs, outputs, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        outputs,
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return helper.make_model(
        graph, ir_version=9, opset_imports=[helper.make_operatorsetid("", 17)]
    )


def _conv_model(cin: int, cout: int, k: int, stride: int, group: int, hw: int):
    rng = np.random.default_rng(cin * 1000 + cout * 10 + k + stride + group)
    w = rng.standard_normal((cout, cin // group, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    res = rng.standard_normal(1).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], pads=[k // 2] * 4, strides=[stride] * 2, group=group
        ),
        helper.make_node("Add", ["c", "r"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    hw_out = (hw + 2 * (k // 2) - k) // stride + 1
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, hw_out, hw_out])],
        {"w": w, "b": b, "r": res},
    )


def _matmul_bias_relu():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((96, 80)).astype(np.float32)
    b = rng.standard_normal(80).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 24, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 24, 80])],
        {"w": w, "b": b},
    )


def _pool_softmax():
    """No contraction: pooling, a global reduction and elementwise ops (the generic schedule)."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Softmax", ["f"], ["y"], axis=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 40, 23, 23])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 40])],
        {},
    )


def _run_both(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort
    from tvm import relax

    from tvmforge import build_model

    onnx.checker.check_model(model)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    built = build_model(model, "x86", threads=2)
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    ours = vm["main"](tvm.runtime.tensor(x, tvm.cpu()))
    ours = ours.numpy() if hasattr(ours, "numpy") else ours[0].numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    return ours, ref


def _assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    err = float(np.max(np.abs(ours - ref)))
    assert err <= RTOL * float(np.max(np.abs(ref))) + 1e-6, f"max abs error {err}"


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "group", "hw"),
    [
        pytest.param(32, 48, 1, 1, 1, 14, id="1x1"),
        pytest.param(32, 48, 1, 1, 1, 12, id="1x1-whole-plane"),  # 12 * 12 = 9 * 16 lanes
        pytest.param(16, 24, 3, 1, 1, 13, id="3x3"),
        pytest.param(8, 32, 3, 2, 1, 17, id="3x3-stride2"),
        pytest.param(24, 24, 3, 1, 24, 12, id="depthwise"),
        pytest.param(32, 32, 3, 2, 32, 28, id="depthwise-stride2"),  # deinterleaved padding
        pytest.param(24, 24, 3, 2, 24, 15, id="depthwise-stride2-odd"),  # 17 columns: as is
        pytest.param(16, 32, 3, 1, 4, 10, id="grouped"),
        pytest.param(272, 272, 1, 1, 4, 14, id="grouped-1x1-shufflenet"),  # 68 per group
        pytest.param(136, 136, 1, 1, 4, 28, id="grouped-1x1-flat-plane"),  # 34 per group
        pytest.param(544, 544, 1, 1, 4, 7, id="grouped-1x1-7x7"),
        pytest.param(3, 16, 7, 2, 1, 31, id="7x7-stride2-odd"),
    ],
)
def test_conv2d_matches_onnxruntime(cin, cout, k, stride, group, hw, caplog):
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        ours, ref = _run_both(_conv_model(cin, cout, k, stride, group, hw))
    _assert_close(ours, ref)
    assert "failed" not in caplog.text  # the conv recipe applied, not the fallback


def test_matmul_bias_relu_matches_onnxruntime(caplog):
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        ours, ref = _run_both(_matmul_bias_relu())
    _assert_close(ours, ref)
    assert "failed" not in caplog.text


def test_generic_schedule_matches_onnxruntime():
    _assert_close(*_run_both(_pool_softmax()))


def _pool(op: str, kernel: int, stride: int, pad: int, hw: int, **attrs) -> onnx.ModelProto:
    hw_out = (hw + 2 * pad - kernel) // stride + 1
    node = helper.make_node(
        op, ["x"], ["p"], kernel_shape=[kernel] * 2, strides=[stride] * 2, pads=[pad] * 4, **attrs
    )
    return _model(
        [node, helper.make_node("Relu", ["p"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 24, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, hw_out, hw_out])],
        {},
    )


@pytest.mark.parametrize(
    ("op", "kernel", "stride", "pad", "hw", "attrs"),
    [
        pytest.param("MaxPool", 3, 2, 1, 30, {}, id="max-3x3-stride2-padded"),  # ResNet's
        pytest.param("MaxPool", 3, 1, 1, 17, {}, id="max-3x3-stride1"),  # Inception's
        pytest.param("AveragePool", 2, 2, 0, 28, {}, id="avg-2x2-stride2"),  # DenseNet's
        pytest.param(
            "AveragePool", 3, 2, 1, 25, {"count_include_pad": 0}, id="avg-3x3-exclude-pad"
        ),
    ],
)
def test_window_pool_recipe_matches_onnxruntime(op, kernel, stride, pad, hw, attrs, caplog):
    """Pools get their own recipe: channels in parallel, the padded rows made per output row
    (no border test per element), strided windows unrolled rather than gathered."""
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        ours, ref = _run_both(_pool(op, kernel, stride, pad, hw, **attrs))
    _assert_close(ours, ref)
    assert "rule pool failed" not in caplog.text


def test_a_global_mean_is_not_a_window_pool():
    """A mean over the whole plane (PP-OCRv4 det's squeeze-excitation) is an SSSSRR reduction
    like a pool, but its "window" is 160x160: unrolled as pool taps it took LLVM 140 s."""
    import re

    from tvmforge.driver.pipeline import to_kernels
    from tvmforge.frontend import importer as frontend
    from tvmforge.passes.schedule.rules import schedule_prim_func

    onnx_model = _model(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 160, 160])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])],
        {},
    )
    model = frontend.load(onnx_model)
    target = tvm.target.Target(X86)
    kernels = to_kernels(frontend.to_relax(model, frontend.resolve_inputs(model, {})), target)
    params = CpuScheduleParams.from_target(target)
    for _, func in kernels.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            text = schedule_prim_func(func, params).script()
            unrolled = [int(n) for n in re.findall(r"T\.unroll\(T\.int64\((\d+)\)\)", text)]
            assert all(n <= 64 for n in unrolled), unrolled
    _assert_close(*_run_both(onnx_model))


def test_strided_max_pool_is_unrolled_with_its_padding_per_row():
    from tvmforge.driver.pipeline import to_kernels
    from tvmforge.frontend import importer as frontend
    from tvmforge.passes.schedule.rules import schedule_prim_func

    model = frontend.load(_pool("MaxPool", 3, 2, 1, 30))
    target = tvm.target.Target(X86)
    kernels = to_kernels(frontend.to_relax(model, frontend.resolve_inputs(model, {})), target)
    (func,) = [
        f
        for g, f in kernels.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and "pool" in g.name_hint
    ]
    after = schedule_prim_func(func, CpuScheduleParams.from_target(target))
    sch = s_tir.Schedule(after)
    pool = next(
        b
        for b in sch.get_child_blocks(sch.get_sblock("root"))
        if "pool" in sch.get(b).name_hint
    )
    (pad,) = [b for b in sch.get_producers(pool) if "pad" in sch.get(b).name_hint]
    pool_loops = [sch.get(loop) for loop in sch.get_loops(pool)]
    pad_loops = [sch.get(loop) for loop in sch.get_loops(pad)]
    assert pool_loops[0].kind == tvm.tirx.ForKind.PARALLEL
    assert pad_loops[:2] == pool_loops[:2]  # the padded rows are made under the output row
    assert pool_loops[-1].kind == tvm.tirx.ForKind.UNROLLED  # stride 2: no gathers


@I.ir_module
class ConcatLast:
    """``concat`` of three 24-channel NHWC maps along channels, then scaled."""

    @T.prim_func(private=True, s_tir=True)
    def main(
        a: T.Buffer((T.int64(1), T.int64(4), T.int64(4), T.int64(24)), "float32"),
        b: T.Buffer((T.int64(1), T.int64(4), T.int64(4), T.int64(24)), "float32"),
        c: T.Buffer((T.int64(1), T.int64(4), T.int64(4), T.int64(24)), "float32"),
        out: T.Buffer((T.int64(1), T.int64(4), T.int64(4), T.int64(72)), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        cat = T.sblock_alloc_buffer((T.int64(1), T.int64(4), T.int64(4), T.int64(72)))
        for n, h, w, k in T.grid(T.int64(1), T.int64(4), T.int64(4), T.int64(72)):
            with T.sblock("concat"):
                vn, vh, vw, vk = T.axis.remap("SSSS", [n, h, w, k])
                cat[vn, vh, vw, vk] = T.if_then_else(
                    T.int64(48) <= vk,
                    c[vn, vh, vw, vk - T.int64(48)],
                    T.if_then_else(
                        T.int64(24) <= vk, b[vn, vh, vw, vk - T.int64(24)], a[vn, vh, vw, vk]
                    ),
                )
        for n, h, w, k in T.grid(T.int64(1), T.int64(4), T.int64(4), T.int64(72)):
            with T.sblock("scale"):
                vn, vh, vw, vk = T.axis.remap("SSSS", [n, h, w, k])
                out[vn, vh, vw, vk] = cat[vn, vh, vw, vk] * T.float32(2.0)


def test_concat_along_the_vector_axis_is_vectorized_per_input():
    """A 16-lane vector over 24-channel inputs would select lane by lane: the channel loop is
    split at the inputs' boundaries instead (unrolled), each piece a whole vector loop."""
    after = _schedule(ConcatLast)["main"]
    sch = s_tir.Schedule(after)
    loops = sch.get_loops(sch.get_sblock("scale"))
    kinds = [sch.get(loop).kind for loop in loops]
    extents = [int(sch.get(loop).extent) for loop in loops]
    # 1152 elements: under PARALLEL_MIN_WORK, so one thread runs it (no pool wake-up)
    assert kinds[0] == tvm.tirx.ForKind.SERIAL
    assert kinds[-3:] == [tvm.tirx.ForKind.UNROLLED] * 2 + [tvm.tirx.ForKind.VECTORIZED]
    assert extents[-3:] == [3, 2, 12]  # 3 inputs x 2 vectors of 12 channels
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((1, 4, 4, 24)).astype(np.float32) for _ in range(3)]
    func = after.with_attr("global_symbol", "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=tvm.target.Target(HOST))
    out = tvm.runtime.empty((1, 4, 4, 72), "float32")
    lib["main"](*[tvm.runtime.tensor(x) for x in arrays], out)
    np.testing.assert_array_equal(out.numpy(), 2 * np.concatenate(arrays, axis=-1))


def test_small_loop_nests_stay_on_one_thread():
    """Waking the pool costs more than a few thousand iterations: an LSTM step's gate split
    ([1, 2048] into four) runs serial, a [64, 4096] elementwise kernel in parallel."""
    from tvm import te

    from tvmforge.passes.schedule.analysis import PARALLEL_MIN_WORK

    def doubled(shape):
        x = te.placeholder(shape, "float32", name="x")
        return te.create_prim_func([x, te.compute(shape, lambda *i: x(*i) * 2.0, name="y")])

    target = tvm.target.Target(HOST)
    params = CpuScheduleParams.from_target(target)
    for shape, parallel in [((1, 2048), False), ((64, 4096), True)]:
        with target:
            done = schedule_prim_func(doubled(shape), params)
        assert ("T.parallel" in done.script()) == parallel, shape
    assert 2048 < PARALLEL_MIN_WORK < 64 * 4096


@pytest.mark.parametrize(
    ("v_ext", "row_ext", "group", "tile"),
    [
        pytest.param(14, 14, 68, (14, 1, 17), id="14x14-rows-ragged"),  # not 7 rows x 2
        pytest.param(7, 7, 136, (7, 1, 17), id="7x7"),
        pytest.param(784, 1, 34, (16, 1, 17), id="28x28-flat-plane"),
        pytest.param(784, 1, 28, (16, 1, 14), id="28x28-flat-plane-28-per-group"),
        pytest.param(3136, 1, 28, (16, 1, 14), id="56x56-flat-plane"),
        pytest.param(16, 4, 4, (16, 4, 4), id="small-group-takes-rows"),
    ],
)
def test_grouped_tile_prefers_channels_of_one_group_over_ragged_rows(v_ext, row_ext, group, tile):
    from tvmforge.passes.schedule.contraction import grouped_tile

    assert grouped_tile(v_ext, row_ext, group, 16) == tile


def _scheduled_conv(cin: int, cout: int, k: int, stride: int, group: int, hw: int):
    """The conv kernel of ``_conv_model(...)`` after the x86 default schedule."""
    from tvmforge.driver.pipeline import to_kernels
    from tvmforge.frontend import importer as frontend

    model = frontend.load(_conv_model(cin, cout, k, stride, group, hw))
    target = tvm.target.Target(X86)
    kernels = to_kernels(frontend.to_relax(model, frontend.resolve_inputs(model, {})), target)
    (func,) = [f for g, f in kernels.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and "conv" in g.name_hint]
    return s_tir.Schedule(_schedule(tvm.IRModule({"main": func}))["main"])


def test_depthwise_padding_is_computed_per_channel_and_deinterleaved_at_stride_2():
    """ShuffleNet's depthwise conv of 136 channels at 28x28, stride 2: the padded plane is
    written per channel inside the parallel loop, even columns then odd, by vectors of a half
    row; the conv then reads its taps as contiguous vectors (0.099 -> 0.042 ms, one
    thread)."""
    sch = _scheduled_conv(136, 136, 3, 2, 136, 28)
    pad, conv = sch.get_sblock("pad_temp"), sch.get_sblock("group_conv2d_nchw_update")
    pad_loops, conv_loops = sch.get_loops(pad), sch.get_loops(conv)
    assert sch.get(pad_loops[0]).same_as(sch.get(conv_loops[0]))  # inside the channel loop
    assert sch.get(pad_loops[0]).kind == tvm.tirx.ForKind.PARALLEL
    assert sch.get(pad_loops[-1]).kind == tvm.tirx.ForKind.VECTORIZED
    assert [int(d) for d in sch.get(pad).writes[0].source.shape[-2:]] == [2, 15]  # 30 columns


def test_grouped_conv_tiles_channels_of_one_group():
    """ShuffleNet's grouped 1x1 convs (4 groups of 68): 17 output channels of the same group
    share each 14-wide input row in the register tile (2 x 7 rows before: 67 -> 104 GFLOP/s,
    one thread; the first channel tile, 2 x 7, had taken 0.96 -> 0.46 ms)."""
    sch = _scheduled_conv(272, 272, 1, 1, 4, 14)
    loops = sch.get_loops(sch.get_sblock("group_conv2d_nchw_update"))
    kinds = [sch.get(lp).kind for lp in loops]
    extents = [int(sch.get(lp).extent) for lp in loops]
    # [.. reduction] [17 channels of one group, unrolled] [14 columns, vector]
    assert kinds[-2:] == [tvm.tirx.ForKind.UNROLLED, tvm.tirx.ForKind.VECTORIZED]
    assert extents[-3:] == [1, 17, 14]


def _softmax_layernorm() -> onnx.ModelProto:
    """Attention-style softmax over the last axis, then a decomposed layer norm (the ops a
    PyTorch export of a transformer leaves): row reductions along the contiguous axis."""
    nodes = [
        helper.make_node("Softmax", ["x"], ["s"], axis=-1),
        helper.make_node("ReduceMean", ["s"], ["m"], axes=[-1]),
        helper.make_node("Sub", ["s", "m"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["v"], axes=[-1]),
        helper.make_node("Add", ["v", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["y"]),
    ]
    return helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 24, 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 24, 64])],
            initializer=[numpy_helper.from_array(np.array(1e-5, np.float32), "eps")],
        ),
        ir_version=9,
        opset_imports=[helper.make_operatorsetid("", 13)],
    )


def test_row_reductions_are_vector_partials_and_match_onnxruntime(caplog):
    """Reductions along the last axis (softmax's max and sum, layer norm's means) get vector
    partial results (``rfactor`` by the vector width) instead of a scalar loop per row."""
    from tvmforge.driver.pipeline import to_kernels
    from tvmforge.frontend import importer as frontend
    from tvmforge.passes.schedule.rules import schedule_prim_func

    model = _softmax_layernorm()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        _assert_close(*_run_both(model))
    assert "rule row_reduction failed" not in caplog.text

    relaxed = frontend.load(model)
    target = tvm.target.Target(X86)
    kernels = to_kernels(frontend.to_relax(relaxed, frontend.resolve_inputs(relaxed, {})), target)
    softmax = next(
        f
        for g, f in kernels.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and "softmax" in g.name_hint
    )
    after = schedule_prim_func(softmax, CpuScheduleParams.from_target(target))
    sch = s_tir.Schedule(after)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    partials = [n for n in names if n.endswith("_rf")]
    assert len(partials) == 2  # the row max and the row sum
    for name in partials:
        loops = [sch.get(lp) for lp in sch.get_loops(sch.get_sblock(name))]
        assert loops[0].kind == tvm.tirx.ForKind.PARALLEL
        assert loops[-1].kind == tvm.tirx.ForKind.VECTORIZED and int(loops[-1].extent) == 16


@pytest.mark.parametrize(
    ("cin", "cout", "hw"),
    [
        pytest.param(64, 256, 56, id="1x1-56x56"),  # a 2x8 tile (1 KiB) before: capped to 2x7
        pytest.param(128, 512, 28, id="1x1-28x28"),
        pytest.param(256, 1024, 14, id="1x1-14x14"),
    ],
)
def test_register_tile_accumulators_live_on_the_stack(cin, cout, hw):
    """The accumulators of a conv's register tile are an alloca under 1 KiB, not a workspace
    allocation (``TVMBackendAllocWorkspace``, a memset and a free per tile: local scope, or a
    tile of 1 KiB or more, gets one). ResNet-50: 26.81 -> 26.55 ms (scope), 26.40 -> 26.09 ms
    (tiles under 1 KiB)."""
    sch = _scheduled_conv(cin, cout, 1, 1, 1, hw)
    func = sch.mod["main"]
    tgt = tvm.target.Target(X86)
    with tgt:
        lib = tvm.tirx.build(tvm.IRModule({"k": func.with_attr("global_symbol", "k")}), target=tgt)
    asm = lib.inspect_source("asm")
    assert "TVMBackendAllocWorkspace" not in asm
