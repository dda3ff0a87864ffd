"""``pack_conv_weights`` and the packed-conv schedule of ``schedule_cpu_default``.

Three kinds of test: the conv becomes a ``call_tir`` of the packed TE definition with the
weight packed as the module docstring says (and its schedule has the register tile), convs the
pass must not touch are left alone (grouped, channel count off the vector width, weight not a
constant, a GPU target), and convs of every kind of stride, padding and dilation match ONNX
Runtime after the whole pipeline, both with this pass among the caller's graph passes (NCHW
activations) and with the default pipeline (``nchwc_layout``'s blocked convs, which share the
weight packing).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, s_tir, tirx
from tvm.script import ir as I
from tvm.script import relax as R

from onnx_builders import make_model
from tvmforge.passes.graph.pack_conv_weights import (
    PACKED_CONV_ATTR,
    conv2d_nchw_packed,
    pack_conv_weights,
    pack_oihw,
)
from tvmforge.passes.schedule.packed_conv import packed_conv_tile, packed_pixel_tile
from tvmforge.passes.schedule.rules import CpuScheduleParams, schedule_prim_func

RNG = np.random.default_rng(8)
X86 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}  # structure: 16 lanes
LOGGER = "tvmforge.passes.schedule.rules"


def _nchw_kernels(model: onnx.ModelProto, target: tvm.target.Target) -> tvm.IRModule:
    """The model's fused kernels with this pass among the caller's graph passes: the convs
    keep NCHW activations (``nchwc_layout``, later in the pipeline, finds none left)."""
    from tvmforge.driver.pipeline import to_kernels
    from tvmforge.frontend import importer as frontend

    loaded = frontend.load(model)
    mod = frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {}))
    return to_kernels(mod, target, [pack_conv_weights()])


def _run(model: onnx.ModelProto, x: np.ndarray, layout: str) -> np.ndarray:
    """The model built for x86 (2 threads): ``layout="nchw"`` with this pass among the
    caller's graph passes, ``"nchwc"`` as ``tvmforge compile`` builds it."""
    from tvmforge import build_model

    extra = [pack_conv_weights()] if layout == "nchw" else []
    built = build_model(model, "x86", threads=2, graph_passes=extra)
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _bind(mod: tvm.IRModule, params: dict[str, np.ndarray]) -> tvm.IRModule:
    tensors = {k: tvm.runtime.tensor(v) for k, v in params.items()}
    return relax.transform.BindParams("main", tensors)(mod)


@I.ir_module
class Conv:
    @R.function
    def main(
        x: R.Tensor((1, 8, 14, 14), "float32"), w: R.Tensor((32, 8, 3, 3), "float32")
    ) -> R.Tensor((1, 32, 7, 7), "float32"):
        with R.dataflow():
            y = R.nn.conv2d(x, w, strides=[2, 2], padding=[1, 1, 1, 1])
            R.output(y)
        return y


W = RNG.standard_normal((32, 8, 3, 3)).astype(np.float32)



def test_pack_oihw_layout():
    packed = pack_oihw(W, 16)
    assert packed.shape == (2, 8, 3, 3, 16)
    fo, c, ky, kx, fi = 1, 5, 2, 0, 9
    assert packed[fo, c, ky, kx, fi] == W[fo * 16 + fi, c, ky, kx]


def test_pack_oihw_pads_output_channels_with_zero_filters():
    w = RNG.standard_normal((60, 8, 3, 3)).astype(np.float32)
    packed = pack_oihw(w, 16)
    assert packed.shape == (4, 8, 3, 3, 16)
    assert packed[3, 2, 1, 1, 11] == w[59, 2, 1, 1]
    assert not packed[3, :, :, :, 12:].any()  # filters 60..63: zeros


def test_conv_becomes_packed_call_tir():
    after = pack_conv_weights(block=16)(_bind(Conv, {"w": W}))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 14, 14), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(
                bb.call_te(
                    conv2d_nchw_packed,
                    x,
                    relax.const(pack_oihw(W, 16)),
                    (2, 2),
                    (1, 1, 1, 1),
                    (1, 1),
                    primfunc_name_hint="conv2d_nchw_packed",
                )
            )
        bb.emit_func_output(out)
    tvm.ir.assert_structural_equal(after, bb.get(), map_free_vars=True)


def _packed_kernel() -> tirx.PrimFunc:
    mod = pack_conv_weights(block=16)(_bind(Conv, {"w": W}))
    return next(f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc))


def test_packed_conv_schedule_keeps_a_vector_of_channels_in_registers(caplog):
    func = _packed_kernel()
    params = CpuScheduleParams.from_target(tvm.target.Target(X86))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        after = schedule_prim_func(func, params)
    assert after is not None and "failed" not in caplog.text
    sch = s_tir.Schedule(after)
    update = sch.get_sblock("conv2d_nchw_packed_update")
    assert sch.get(update).annotations[PACKED_CONV_ATTR] == 16
    kinds = [sch.get(loop).kind for loop in sch.get_loops(update)]
    extents = [int(sch.get(loop).extent) for loop in sch.get_loops(update)]
    # [parallel tiles] [rc ry rx] [channel vectors, columns: unrolled] [16 channels: vector]
    assert kinds[0] == tirx.ForKind.PARALLEL
    assert kinds[-3:] == [tirx.ForKind.UNROLLED, tirx.ForKind.UNROLLED, tirx.ForKind.VECTORIZED]
    assert extents[-1] == 16
    assert extents[-3:-1] == list(packed_conv_tile(2, 7, 32, kernel_w=3, stride=2))
    accumulator = sch.get(update).writes[0].source
    # global scope under 1 KiB: an alloca LLVM keeps in registers (local goes through
    # TVMBackendAllocWorkspace once per tile)
    assert accumulator.scope() == "global" and int(accumulator.shape[-1]) == 16


@I.ir_module
class Pointwise:
    @R.function
    def main(
        x: R.Tensor((1, 16, 8, 8), "float32"), w: R.Tensor((32, 16, 1, 1), "float32")
    ) -> R.Tensor((1, 32, 8, 8), "float32"):
        with R.dataflow():
            y = R.nn.conv2d(x, w)
            R.output(y)
        return y


def test_pointwise_conv_gets_the_pixel_tile(caplog):
    weight = RNG.standard_normal((32, 16, 1, 1)).astype(np.float32)
    mod = pack_conv_weights(block=16)(_bind(Pointwise, {"w": weight}))
    func = next(f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc))
    params = CpuScheduleParams.from_target(tvm.target.Target(X86))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        after = schedule_prim_func(func, params)
    assert after is not None and "failed" not in caplog.text
    sch = s_tir.Schedule(after)
    loops = sch.get_loops(sch.get_sblock("conv2d_nchw_packed_update"))
    kinds = [sch.get(loop).kind for loop in loops]
    extents = [int(sch.get(loop).extent) for loop in loops]
    # 8x8 = 4 vectors of pixels: 4 channels x 4 pixel vectors, the 16 pixels contiguous
    assert kinds[-3:] == [tirx.ForKind.UNROLLED, tirx.ForKind.UNROLLED, tirx.ForKind.VECTORIZED]
    assert extents[-3:] == [4, 4, 16]


def _residual_pointwise(hw: int, channels: int = 32) -> onnx.ModelProto:
    """1x1 conv (C -> C) whose epilogue adds the block input back (ResNet's residual)."""
    rng = np.random.default_rng(hw)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        helper.make_node("Add", ["c", "x"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    weights = {
        "w": rng.standard_normal((channels, channels, 1, 1)).astype(np.float32) * 0.2,
        "b": rng.standard_normal(channels).astype(np.float32),
    }
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, hw, hw])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )


def test_pointwise_conv_with_big_weights_packs_its_input_by_tile_columns():
    """1x1 256 -> 256 at 14x14 (256 KiB of weights) with a residual: 196 pixels are no whole
    number of vectors, so the channel tile, swept weight block by weight block over a copy of
    the input laid out ``[n, y, x // xi, c, x % xi]``; the result matches ONNX Runtime."""
    onnx_model = _residual_pointwise(14, channels=256)
    target = tvm.target.Target(X86)
    kernels = _nchw_kernels(onnx_model, target)
    (func,) = [
        f
        for g, f in kernels.functions_items()
        if isinstance(f, tirx.PrimFunc) and "packed" in g.name_hint
    ]
    after = schedule_prim_func(func, CpuScheduleParams.from_target(target))
    _, xi = packed_conv_tile(256 // 16, 14, 32)
    allocated = [
        tuple(int(d) for d in buf.shape)
        for buf in after.body.block.alloc_buffers
        if buf.scope() == "global"
    ]
    # the input copy (the other global buffer is the register tile's accumulators)
    assert (1, 14, 14 // xi, 256, xi) in allocated
    sch = s_tir.Schedule(after)
    loops = sch.get_loops(sch.get_sblock("conv2d_nchw_packed_update"))
    assert sch.get(loops[0]).kind == tirx.ForKind.PARALLEL
    assert int(sch.get(loops[-1]).extent) == 16  # a vector of output channels

    x = np.random.default_rng(1).standard_normal((1, 256, 14, 14)).astype(np.float32)
    _assert_matches_onnxruntime(onnx_model, x)


def test_big_output_is_written_a_block_of_channels_at_a_time():
    """SqueezeNet's first conv (3 -> 64, 3x3 stride 2, 64x111x111 = 3 MB out): every channel
    is its own write stream in NCHW, so the tiles sweep the image per block of at most two
    channel vectors (32 streams), not per pixel tile across all 64 channels."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    onnx_model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 111, 111])],
        [
            numpy_helper.from_array(rng.standard_normal((64, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b"),
        ],
    )
    target = tvm.target.Target(X86)
    kernels = _nchw_kernels(onnx_model, target)
    (func,) = [
        f
        for g, f in kernels.functions_items()
        if isinstance(f, tirx.PrimFunc) and "packed" in g.name_hint
    ]
    after = schedule_prim_func(func, CpuScheduleParams.from_target(target))
    sch = s_tir.Schedule(after)
    update = sch.get_sblock("conv2d_nchw_packed_update")
    loops = sch.get_loops(update)
    extents = [int(sch.get(loop).extent) for loop in loops]
    assert extents[-3] <= 2  # channel vectors per tile
    outer = sch.get(loops[0])
    assert outer.kind == tirx.ForKind.PARALLEL
    # [batch, channel blocks, rows, column tiles] fused: channel blocks outermost
    assert outer.loop_var.name.startswith("b_f_"), outer.loop_var.name

    _assert_matches_onnxruntime(onnx_model, rng.standard_normal((1, 3, 224, 224)).astype(np.float32))


@pytest.mark.parametrize(
    ("blocks", "width", "registers", "kernel", "tile"),
    [
        (4, 56, 32, (1, 1, 1), (4, 4)),  # 1x1: 16 accumulators, 8 loads per 16 FMAs
        (4, 56, 32, (3, 1, 1), (2, 8)),  # 3x3: 10 broadcasts serve 3 taps of 8 columns
        (4, 112, 32, (7, 2, 1), (2, 8)),  # ResNet's 7x7 stride-2 first conv
        (32, 14, 32, (1, 1, 1), (2, 7)),
        (1, 13, 32, (1, 1, 1), (1, 13)),  # prime width: one row of 13, not single columns
        (4, 56, 16, (1, 1, 1), (2, 4)),  # AVX2 / 16 registers: at most 8 accumulators
        # SqueezeNet's 1000-class 1x1 conv at 13x13 on AVX2 (125 blocks of 8, plane 169 = 13^2,
        # at most 8 accumulators): 5 channel vectors rather than one lone accumulator (8.8 ->
        # 3.0 ms on the EPYC); with 32 registers a row of 13 still wins
        (125, 169, 16, (1, 1, 1), (5, 1)),
        (125, 169, 32, (1, 1, 1), (1, 13)),
    ],
)
def test_register_tile(blocks, width, registers, kernel, tile):
    assert packed_conv_tile(blocks, width, registers, *kernel) == tile


@pytest.mark.parametrize(
    ("plane_vectors", "tile"),
    [(196, (4, 4)), (49, None), (784, (4, 4))],  # 56x56, 28x28 (2x7: channel tile), 112x112
)
def test_pixel_tile(plane_vectors, tile):
    assert packed_pixel_tile(16, plane_vectors, 32) == tile


# --- does not apply ----------------------------------------------------------------------------


@I.ir_module
class Grouped:
    @R.function
    def main(
        x: R.Tensor((1, 32, 8, 8), "float32"), w: R.Tensor((32, 1, 3, 3), "float32")
    ) -> R.Tensor((1, 32, 8, 8), "float32"):
        with R.dataflow():
            y = R.nn.conv2d(x, w, padding=[1, 1, 1, 1], groups=32)
            R.output(y)
        return y


@I.ir_module
class OddChannels:
    @R.function
    def main(
        x: R.Tensor((1, 8, 8, 8), "float32"), w: R.Tensor((20, 8, 1, 1), "float32")
    ) -> R.Tensor((1, 20, 8, 8), "float32"):
        with R.dataflow():
            y = R.nn.conv2d(x, w)
            R.output(y)
        return y


def test_convs_it_cannot_pack_are_left_alone():
    for mod in (
        _bind(Grouped, {"w": RNG.standard_normal((32, 1, 3, 3)).astype(np.float32)}),
        _bind(OddChannels, {"w": RNG.standard_normal((20, 8, 1, 1)).astype(np.float32)}),
        Conv,  # the weight is an input, not a constant
    ):
        tvm.ir.assert_structural_equal(pack_conv_weights(block=16)(mod), mod)


def test_only_cpu_targets_get_packed_weights():
    mod = _bind(Conv, {"w": W})
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
    with cuda:
        tvm.ir.assert_structural_equal(pack_conv_weights()(mod), mod)
    tvm.ir.assert_structural_equal(pack_conv_weights()(mod), mod)  # no target at all
    with tvm.target.Target(X86):
        assert "conv2d_nchw_packed" in [
            g.name_hint for g in pack_conv_weights()(mod).get_global_vars()
        ]


# --- numbers -----------------------------------------------------------------------------------


def _assert_matches_onnxruntime(
    model: onnx.ModelProto, x: np.ndarray, layout: str = "nchw"
) -> None:
    """The model built for x86 (2 threads, ``_run``) gives ONNX Runtime's output on ``x``."""
    import onnxruntime as ort

    ours = _run(model, x, layout)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))


def test_residual_pointwise_matches_onnxruntime():
    x = np.random.default_rng(6).standard_normal((1, 32, 14, 14)).astype(np.float32)
    _assert_matches_onnxruntime(_residual_pointwise(14), x)


def test_squeeze_excitation_gate_falls_back_and_matches_onnxruntime(caplog):
    """A 1x1 conv on a pooled 1x1 map whose fused epilogue multiplies the gate into the whole
    feature map (PP-OCRv4's SE blocks): the channel tile would compute that whole map per
    tile, unrolled (minutes of LLVM). The packed recipe declines it; the contraction recipe
    schedules it."""
    import onnxruntime as ort

    from tvmforge import build_model

    rng = np.random.default_rng(12)
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Conv", ["p", "w", "b"], ["c"]),
        helper.make_node("HardSigmoid", ["c"], ["g"]),
        helper.make_node("Mul", ["x", "g"], ["y"]),
    ]
    weights = {
        "w": rng.standard_normal((32, 32, 1, 1)).astype(np.float32) * 0.2,
        "b": rng.standard_normal(32).astype(np.float32),
    }
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 40, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 40, 40])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    x = rng.standard_normal((1, 32, 40, 40)).astype(np.float32)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        built = build_model(model, "x86", threads=2)
    assert "the epilogue is not elementwise on the conv output" in caplog.text
    ours = relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "pads", "dilation", "hw"),
    [
        pytest.param(3, 64, 7, 2, [3, 3, 3, 3], 1, 40, id="7x7-stride2-first-conv"),
        pytest.param(32, 32, 1, 1, [0, 0, 0, 0], 1, 7, id="1x1-width7"),
        pytest.param(32, 64, 1, 1, [0, 0, 0, 0], 1, 12, id="1x1-pixel-tile"),  # 144 = 9 x 16
        pytest.param(16, 48, 3, 1, [1, 1, 1, 1], 1, 13, id="3x3-prime-width"),
        pytest.param(16, 32, 3, 2, [0, 1, 1, 0], 1, 15, id="3x3-stride2-asymmetric-pad"),
        pytest.param(8, 16, 3, 1, [2, 2, 2, 2], 2, 11, id="3x3-dilation2"),
        pytest.param(64, 32, 1, 2, [0, 0, 0, 0], 1, 14, id="1x1-stride2-downsample"),
        # output channels padded with zero filters to the vector width, cropped in the tile
        pytest.param(64, 250, 1, 1, [0, 0, 0, 0], 1, 13, id="1x1-250-classes-padded-to-256"),
        pytest.param(16, 60, 3, 1, [1, 1, 1, 1], 1, 9, id="3x3-60-padded-to-64"),
    ],
)
@pytest.mark.parametrize("layout", ["nchw", "nchwc"])
def test_matches_onnxruntime(cin, cout, k, stride, pads, dilation, hw, layout, caplog):
    import onnxruntime as ort

    rng = np.random.default_rng(cin + cout + k + hw)
    weights = {
        "w": rng.standard_normal((cout, cin, k, k)).astype(np.float32) * 0.2,
        "b": rng.standard_normal(cout).astype(np.float32),
    }
    kernel = (k - 1) * dilation + 1
    out = (hw + pads[0] + pads[2] - kernel) // stride + 1
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "w", "b"],
            ["c"],
            strides=[stride] * 2,
            pads=pads,
            dilations=[dilation] * 2,
        ),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, out, out])],
        [numpy_helper.from_array(v, name) for name, v in weights.items()],
    )
    x = rng.standard_normal((1, cin, hw, hw)).astype(np.float32)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        ours = _run(model, x, layout)
    assert "rule packed_conv failed" not in caplog.text
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))


def test_a_1x1_conv_with_no_good_divisors_matches_onnxruntime_on_avx2(tmp_path):
    """64 -> 200 channels (25 blocks of 8) at 13x13 (a plane of 169 = 13^2) built for AVX2: the
    5 x 1 tile of ``packed_conv_tile``'s fallback computes what ONNX Runtime does (an AVX2
    build runs on any x86-64 CPU these tests run on)."""
    import onnxruntime as ort

    import tvmforge

    rng = np.random.default_rng(21)
    w = numpy_helper.from_array(rng.normal(0, 0.2, (200, 64, 1, 1)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.1, (200,)).astype(np.float32), "b")
    model = make_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 13, 13])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 200, 13, 13])],
        [w, b],
    )
    x = rng.standard_normal((1, 64, 13, 13)).astype(np.float32)
    compiled = tvmforge.load(tvmforge.compile_model(model, "x86:avx2", tmp_path / "c.tar"))
    (ref,) = ort.InferenceSession(model.SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(compiled(x=x)["y"], ref, rtol=1e-4, atol=1e-4)
