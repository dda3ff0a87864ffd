"""``nchwc_layout``: blocked activations between convs, and the blocked conv's schedule.

What the graph looks like after the pass (convs are blocked calls, the ops between them run
on 5-D values, layout transforms only at the edges), what it leaves alone, the schedule the
blocked conv gets, and numbers: small graphs with every op the pass carries the layout through
match ONNX Runtime after the whole x86 pipeline.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, s_tir, tirx

from onnx_builders import make_model
from tvmforge import build_model
from tvmforge.driver.pipeline import graph_passes, to_kernels
from tvmforge.frontend import importer as frontend
from tvmforge.passes.graph.nchwc_layout import nchwc_layout, to_blocked
from tvmforge.passes.schedule.rules import CpuScheduleParams, schedule_prim_func

X86 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}  # structure: 16 lanes
LOGGER = "tvmforge.passes.schedule.rules"


def _conv(name, x, out, cin, cout, k=3, stride=1, rng=None, group=1):
    w = (rng.standard_normal((cout, cin // group, k, k)) * (1.0 / np.sqrt(cin * k * k / group)))
    b = rng.standard_normal(cout) * 0.1
    node = helper.make_node(
        "Conv", [x, f"{name}_w", f"{name}_b"], [out], name=name, kernel_shape=[k, k],
        pads=[k // 2] * 4, strides=[stride] * 2, group=group,
    )
    inits = [
        numpy_helper.from_array(w.astype(np.float32), f"{name}_w"),
        numpy_helper.from_array(b.astype(np.float32), f"{name}_b"),
    ]
    return node, inits


def _block_model(hw: int = 14, seed: int = 0) -> onnx.ModelProto:
    """A little of everything the pass carries through: a 3-channel first conv, a residual
    block, a max pool, two branches concatenated (Inception), a per-channel scale/shift not
    after a conv (DenseNet's BatchNorm), a depthwise conv, HardSwish and Clip (PP-OCR), a 2x
    nearest resize (an FPN), a squeeze-excitation gate (a broadcast multiply by a computed
    [1, C, 1, 1]), a 1x1 conv to 24 channels (stays NCHW), a depthwise conv on it (stays
    NCHW), a global average pool and a classifier."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def add(node_inits):
        node, more = node_inits
        nodes.append(node)
        inits.extend(more)

    add(_conv("c0", "x", "c0", 3, 32, rng=rng))
    nodes.append(helper.make_node("Relu", ["c0"], ["r0"]))
    add(_conv("c1", "r0", "c1", 32, 32, rng=rng))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    add(_conv("c2", "r1", "c2", 32, 32, k=1, rng=rng))
    nodes.append(helper.make_node("Add", ["c2", "r0"], ["res"]))
    nodes.append(helper.make_node("Relu", ["res"], ["r2"]))
    nodes.append(
        helper.make_node(
            "MaxPool", ["r2"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        )
    )
    add(_conv("b1", "mp", "b1", 32, 16, k=1, rng=rng))
    add(_conv("b2", "mp", "b2", 32, 32, k=3, rng=rng))
    nodes.append(helper.make_node("Concat", ["b1", "b2"], ["cat"], axis=1))
    scale = rng.uniform(0.5, 1.5, (1, 48, 1, 1)).astype(np.float32)
    shift = rng.standard_normal((48, 1, 1)).astype(np.float32)
    inits += [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(shift, "shift")]
    nodes.append(helper.make_node("Mul", ["cat", "scale"], ["sc"]))
    nodes.append(helper.make_node("Add", ["sc", "shift"], ["bn"]))
    add(_conv("dw48", "bn", "dw48", 48, 48, k=3, rng=rng, group=48))
    nodes.append(helper.make_node("HardSwish", ["dw48"], ["hs"]))
    inits += [
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up"),
    ]
    nodes.append(helper.make_node("Clip", ["hs", "lo", "hi"], ["clip"]))
    nodes.append(helper.make_node("Resize", ["clip", "", "up"], ["big"], mode="nearest"))
    nodes.append(
        helper.make_node("MaxPool", ["big"], ["small"], kernel_shape=[2, 2], strides=[2, 2])
    )
    nodes.append(helper.make_node("GlobalAveragePool", ["small"], ["gp"]))
    nodes.append(helper.make_node("Sigmoid", ["gp"], ["gate"]))
    nodes.append(helper.make_node("Mul", ["small", "gate"], ["se"]))
    nodes.append(
        helper.make_node("AveragePool", ["se"], ["ap"], kernel_shape=[2, 2], strides=[1, 1])
    )
    add(_conv("odd", "ap", "odd", 48, 24, k=1, rng=rng))
    add(_conv("dw", "odd", "dw", 24, 24, k=3, rng=rng, group=24))
    nodes.append(helper.make_node("GlobalAveragePool", ["dw"], ["pool"]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"]))
    fc = rng.standard_normal((24, 10)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc"))
    nodes.append(helper.make_node("MatMul", ["flat", "fc"], ["y"]))
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )


def _graph(model: onnx.ModelProto, target) -> tvm.IRModule:
    loaded = frontend.load(model)
    mod = frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {}))
    with target:
        return tvm.transform.Sequential(graph_passes())(mod)



def test_to_blocked_lays_channels_innermost_and_pads_with_zeros():
    x = np.random.default_rng(0).standard_normal((2, 40, 5, 7)).astype(np.float32)
    blocked = to_blocked(x, 16)
    assert blocked.shape == (2, 3, 5, 7, 16)
    assert blocked[1, 2, 4, 6, 3] == x[1, 2 * 16 + 3, 4, 6]
    assert blocked[1, 0, 2, 1, 15] == x[1, 15, 2, 1]
    assert not blocked[:, 2, :, :, 8:].any()  # channels 40..47: zeros


def test_layout_flows_between_convs_and_transforms_only_at_the_edges():
    mod = _graph(_block_model(), tvm.target.Target(X86))
    text = mod["main"].script()
    convs = re.findall(r"conv2d_nchwc_packed\d*", text)
    assert len(convs) == 4  # c0 c2 b1 b2; "odd" (24 channels) stays NCHW
    # c1 (3x3, 32 channels at 14x14, on a blocked input) runs as Winograd F(4x4, 3x3)
    assert len(re.findall(r"winograd_output\d*", text)) == 1
    assert len(re.findall(r"depthwise_conv2d_nchwc\d*", text)) == 1  # dw48, not dw (NCHW)
    assert "R.nn.conv2d" in text  # the depthwise conv on the NCHW value, left to LegalizeOps
    five_d = r"R\.Tensor\(\(1, \d+, \d+, \d+, 16\)"
    for op in ("R.nn.relu", "R.add", "R.nn.max_pool2d", "R.concat", "R.multiply", "R.mean",
               "R.nn.avg_pool2d", "R.image.resize2d", "R.maximum", "R.minimum"):
        lines = [ln for ln in text.splitlines() if f"= {op}(" in ln]
        assert lines and any(re.search(five_d, ln) for ln in lines), op
    # Blocked -> NCHW once, for the 24-channel conv; NCHW -> blocked never (the first conv
    # reads the NCHW image directly; the per-channel constants were re-laid out with numpy).
    transforms = [ln for ln in text.splitlines() if "R.layout_transform(" in ln]
    assert len(transforms) == 1, transforms
    assert "co * 16 + ci" in transforms[0]


def test_not_applied_off_cpu_or_without_a_target():
    model = _block_model()
    loaded = frontend.load(model)
    mod = frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {}))
    tvm.ir.assert_structural_equal(nchwc_layout()(mod), mod)
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
    with cuda:
        tvm.ir.assert_structural_equal(nchwc_layout()(mod), mod)


def _blocked_kernel(model: onnx.ModelProto, name: str) -> tirx.PrimFunc:
    target = tvm.target.Target(X86)
    loaded = frontend.load(model)
    kernels = to_kernels(frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {})), target)
    return next(
        f for g, f in kernels.functions_items()
        if isinstance(f, tirx.PrimFunc) and name in g.name_hint
    )


def _residual_1x1(hw: int, cin: int, cout: int) -> onnx.ModelProto:
    """conv 3x3 cin -> cout, relu, 1x1 cout -> cout, + the relu output, relu."""
    rng = np.random.default_rng(hw + cin)
    n0, i0 = _conv("a", "x", "a", cin, cout, rng=rng)
    n1, i1 = _conv("b", "ra", "b", cout, cout, k=1, rng=rng)
    nodes = [
        n0, helper.make_node("Relu", ["a"], ["ra"]), n1,
        helper.make_node("Add", ["b", "ra"], ["s"]), helper.make_node("Relu", ["s"], ["y"]),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, hw, hw])],
        [*i0, *i1],
    )


def test_blocked_conv_schedule_has_contiguous_tiles(caplog):
    """The 1x1 residual conv at 14x14: tiles over the flattened plane (196 = 28 x 7 pixels),
    two vectors of 16 channels each, accumulators in registers, the epilogue (bias, residual,
    relu) on the tile and stored as whole vectors of the blocked output."""
    func = _blocked_kernel(_residual_1x1(14, 16, 64), "add")
    params = CpuScheduleParams.from_target(tvm.target.Target(X86))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        after = schedule_prim_func(func, params)
    assert after is not None and "failed" not in caplog.text
    sch = s_tir.Schedule(after)
    update = sch.get_sblock("conv2d_nchwc_packed_update")
    loops = sch.get_loops(update)
    kinds = [sch.get(lp).kind for lp in loops]
    extents = [int(sch.get(lp).extent) for lp in loops]
    assert kinds[0] == tirx.ForKind.PARALLEL
    assert kinds[-3:] == [tirx.ForKind.UNROLLED, tirx.ForKind.UNROLLED, tirx.ForKind.VECTORIZED]
    assert extents[-3:] == [2, 7, 16]
    accumulator = sch.get(update).writes[0].source
    assert accumulator.scope() == "global"  # an alloca under 1 KiB: registers
    output = after.params[-1]
    blocks = [sch.get_sblock(name) for name in re.findall(r'T\.sblock\("(\w+)"', after.script())]
    store = [b for b in blocks if any(w.source.same_as(output) for w in sch.get(b).writes)]
    assert len(store) == 1, "one epilogue writes the function's output"
    epi_loops = sch.get_loops(store[0])
    assert sch.get(epi_loops[-1]).kind == tirx.ForKind.VECTORIZED
    assert int(sch.get(epi_loops[-1]).extent) == 16


def _assert_matches_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> None:
    import onnxruntime as ort

    built = build_model(model, "x86", threads=2)
    ours = relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))


def test_block_model_matches_onnxruntime(caplog):
    x = np.random.default_rng(3).standard_normal((1, 3, 14, 14)).astype(np.float32)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        _assert_matches_onnxruntime(_block_model(), x)
    assert "rule nchwc_conv failed" not in caplog.text


@pytest.mark.parametrize(
    ("hw", "cin", "cout"),
    [
        pytest.param(14, 16, 64, id="14x14-flat-plane"),
        pytest.param(7, 32, 32, id="7x7"),
        pytest.param(12, 16, 32, id="12x12-even-rows"),
        pytest.param(9, 64, 512, id="9x9-weights-over-L1"),
        pytest.param(14, 16, 512, id="14x14-reduction-in-chunks"),
    ],
)
def test_residual_block_matches_onnxruntime(hw, cin, cout, caplog):
    x = np.random.default_rng(hw).standard_normal((1, cin, hw, hw)).astype(np.float32)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        _assert_matches_onnxruntime(_residual_1x1(hw, cin, cout), x)
    assert "rule nchwc_conv failed" not in caplog.text


def _classifier_head(classes: int) -> onnx.ModelProto:
    """SqueezeNet's tail: dropout (the identity at inference), a 1x1 conv to the classes,
    relu, global average pool, softmax."""
    rng = np.random.default_rng(classes)
    n0, i0 = _conv("a", "x", "a", 3, 32, rng=rng)
    n1, i1 = _conv("cls", "drop", "cls", 32, classes, k=1, rng=rng)
    nodes = [
        n0, helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Dropout", ["ra"], ["drop"]),
        n1,
        helper.make_node("Relu", ["cls"], ["rc"]),
        helper.make_node("GlobalAveragePool", ["rc"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["f"]),
        helper.make_node("Softmax", ["f"], ["y"]),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 13, 13])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])],
        [*i0, *i1],
    )


def test_conv_to_a_partial_block_runs_blocked_with_zero_filters():
    """60 classes (SqueezeNet: 1000): the conv computes 64 channels, 4 of them zero filters,
    the relu and the pool run on the padded blocks, and only the pooled [1, 64, 1, 1] is
    transformed back and cropped to 60."""
    text = _graph(_classifier_head(60), tvm.target.Target(X86))["main"].script()
    assert len(re.findall(r"conv2d_nchwc_packed\d*", text)) == 2
    assert re.search(r"R\.mean\(.*\n?.*", text) and re.search(
        r"R\.Tensor\(\(1, 4, 1, 1, 16\)", text
    )
    (crop,) = [ln for ln in text.splitlines() if "R.strided_slice(" in ln]
    assert "R.Tensor((1, 60, 1, 1)" in crop
    # the dropout passed the blocked value through: the one transform is the pooled one's
    (back,) = [ln for ln in text.splitlines() if "R.layout_transform(" in ln]
    assert "R.Tensor((1, 64, 1, 1)" in back
    x = np.random.default_rng(4).standard_normal((1, 3, 13, 13)).astype(np.float32)
    _assert_matches_onnxruntime(_classifier_head(60), x)


def test_conv_to_too_few_channels_stays_nchw():
    """24 channels would be a third more work as 32: that conv stays NCHW."""
    text = _graph(_classifier_head(24), tvm.target.Target(X86))["main"].script()
    assert len(re.findall(r"conv2d_nchwc_packed\d*", text)) == 1
    x = np.random.default_rng(5).standard_normal((1, 3, 13, 13)).astype(np.float32)
    _assert_matches_onnxruntime(_classifier_head(24), x)


def test_wide_1x1_conv_splits_its_reduction_into_chunks(caplog):
    """1x1 512 -> 512 at 14x14 (a 2-vector block's weights, 64 KiB, overflow L1): per block
    of two channel vectors, the reduction runs in 4 chunks of 128 input channels, each
    sweeping the whole plane in 2 x 7 register tiles; the epilogue follows the last chunk."""
    func = _blocked_kernel(_residual_1x1(14, 16, 512), "add")
    params = CpuScheduleParams.from_target(tvm.target.Target(X86))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        after = schedule_prim_func(func, params)
    assert after is not None and "failed" not in caplog.text
    sch = s_tir.Schedule(after)
    loops = sch.get_loops(sch.get_sblock("conv2d_nchwc_packed_update"))
    kinds = [sch.get(lp).kind for lp in loops]
    extents = [int(sch.get(lp).extent) for lp in loops]
    assert kinds[0] == tirx.ForKind.PARALLEL and extents[0] == 16  # 32 channel blocks / 2
    # [block, chunk of 128 input channels, 28 tiles of 7 pixels, ky, kx, the chunk's 8 input
    # channel blocks, the 16 channels of one, 2 vectors of output channels, 7 pixels, 16 lanes]
    assert extents == [16, 4, 28, 1, 1, 8, 16, 2, 7, 16]
    assert kinds[-3:] == [tirx.ForKind.UNROLLED, tirx.ForKind.UNROLLED, tirx.ForKind.VECTORIZED]


def _downsampling_block(hw: int) -> onnx.ModelProto:
    """ResNet's downsampling block: conv 3x3 3 -> 32, relu; a 1x1 stride-2 shortcut 32 -> 64
    beside a 3x3 stride-2 conv 32 -> 64; their sum, relu."""
    rng = np.random.default_rng(hw)
    n0, i0 = _conv("a", "x", "a", 3, 32, rng=rng)
    n1, i1 = _conv("short", "ra", "s", 32, 64, k=1, stride=2, rng=rng)
    n2, i2 = _conv("main", "ra", "m", 32, 64, k=3, stride=2, rng=rng)
    nodes = [
        n0, helper.make_node("Relu", ["a"], ["ra"]), n1, n2,
        helper.make_node("Add", ["m", "s"], ["sum"]), helper.make_node("Relu", ["sum"], ["y"]),
    ]
    out = (hw - 1) // 2 + 1
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, out, out])],
        [*i0, *i1, *i2],
    )


@pytest.mark.parametrize("hw", [14, 13])
def test_strided_1x1_conv_runs_on_the_subsampled_plane(hw, caplog):
    """The 1x1 stride-2 shortcut becomes a subsample kernel and a stride-1 1x1 conv (whose
    flat plane gets the flat conv schedules); the 3x3 stride-2 conv keeps its stride. ResNet-50
    (three such shortcuts), in the model, interleaved: 25.35 -> 24.81 ms and 25.30 -> 24.90."""
    text = _graph(_downsampling_block(hw), tvm.target.Target(X86))["main"].script()
    out = (hw - 1) // 2 + 1
    (sub,) = [ln for ln in text.splitlines() if "subsample_nchwc" in ln]
    assert f"R.Tensor((1, 2, {out}, {out}, 16)" in sub
    model = frontend.load(_downsampling_block(hw))
    mod = to_kernels(
        frontend.to_relax(model, frontend.resolve_inputs(model, {})), tvm.target.Target(X86)
    )
    shapes = [
        [tuple(int(d) for d in p.shape) for p in f.params[:2]]
        for g, f in mod.functions_items()
        if isinstance(f, tirx.PrimFunc) and "conv2d_nchwc_packed" in g.name_hint
    ]
    # the shortcut's 1x1 conv reads the subsampled plane
    assert [(1, 2, out, out, 16), (4, 32, 1, 1, 16)] in shapes, shapes
    x = np.random.default_rng(6).standard_normal((1, 3, hw, hw)).astype(np.float32)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        _assert_matches_onnxruntime(_downsampling_block(hw), x)
    assert "rule nchwc_conv failed" not in caplog.text
