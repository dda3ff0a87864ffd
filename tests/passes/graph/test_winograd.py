"""Winograd ``F(m x m, 3 x 3)`` convs in the blocked layout (``passes/winograd.py``).

The algebra (the transform matrices compute a 3x3 correlation), the three kernels after
their CPU schedules against a direct conv in float64 (ragged planes, no padding, a batch of
two), which convs the cost model sends to Winograd, and whole graphs against ONNX Runtime
after the x86 pipeline.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, te, tirx

from onnx_builders import cpu_target, make_model
from tvmforge import build_model
from tvmforge.driver.pipeline import to_kernels
from tvmforge.frontend import importer as frontend
from tvmforge.passes.graph.nchwc_layout import nchwc_layout, to_blocked
from tvmforge.passes.graph.winograd import (
    transform_matrices,
    winograd_input_nchwc,
    winograd_output_nchwc,
    winograd_product_nchwc,
    winograd_tile,
    winograd_weight,
)
from tvmforge.passes.schedule.rules import CpuScheduleParams, schedule_prim_func

X86 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}  # structure: 16 lanes
HOST = cpu_target()  # what runs here
LOGGER = "tvmforge.passes.schedule.rules"


def _correlate(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Valid 2-D correlation (what a conv computes) of one channel pair."""
    r = g.shape[0]
    out = d.shape[0] - r + 1
    return np.array(
        [[np.sum(d[i : i + r, j : j + r] * g) for j in range(out)] for i in range(out)]
    )


@pytest.mark.parametrize("m", [2, 4])
def test_transform_matrices_compute_a_3x3_correlation(m):
    a, b, g = transform_matrices(m)
    assert a.shape == (m + 2, m) and b.shape == (m + 2, m + 2) and g.shape == (m + 2, 3)
    rng = np.random.default_rng(m)
    d, w = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    y = a.T @ ((g @ w @ g.T) * (b.T @ d @ b)) @ a
    np.testing.assert_allclose(y, _correlate(d, w), rtol=1e-12, atol=1e-12)


def test_weight_is_transformed_per_point_and_blocked():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 8, 3, 3)).astype(np.float32)  # 20 filters: padded to 32
    u = winograd_weight(w, 4, 16)
    assert u.shape == (36, 2, 8, 1, 1, 16) and u.dtype == np.float32
    _a, _b, g = transform_matrices(4)
    point = g @ w[17, 5].astype(np.float64) @ g.T  # filter 17 = block 1, lane 1
    np.testing.assert_allclose(u[2 * 6 + 3, 1, 5, 0, 0, 1], point[2, 3], rtol=1e-6)
    assert not u[:, 1, :, :, :, 4:].any()  # filters 20..31: zeros


class _Attrs:
    def __init__(self, groups=1, strides=(1, 1), dilation=(1, 1), padding=(1, 1, 1, 1)):
        self.groups, self.strides, self.dilation, self.padding = groups, strides, dilation, padding


@pytest.mark.parametrize(
    ("c", "k", "hw", "attrs", "expect"),
    [
        pytest.param(256, 256, 14, _Attrs(), 2, id="resnet-14x14-weights-bound-F2"),
        pytest.param(128, 128, 28, _Attrs(), 4, id="resnet-28x28-F4"),
        pytest.param(64, 64, 56, _Attrs(), 4, id="resnet-56x56-F4"),
        pytest.param(512, 512, 7, _Attrs(), None, id="resnet-7x7-stays-direct"),
        pytest.param(64, 64, 56, _Attrs(strides=(2, 2)), None, id="stride-2"),
        pytest.param(64, 64, 56, _Attrs(dilation=(2, 2)), None, id="dilated"),
        pytest.param(64, 64, 56, _Attrs(groups=2), None, id="grouped"),
    ],
)
def test_cost_model_picks_the_tile(c, k, hw, attrs, expect):
    assert winograd_tile((1, c // 16, hw, hw, 16), (k, c, 3, 3), attrs) == expect


def test_cost_model_costs_a_dynamic_batch_per_sample_and_needs_a_static_plane():
    # the weights-bound 14x14 case picks F(2x2) for one sample, as for "$n"
    assert winograd_tile(("$n", 16, 14, 14, 16), (256, 256, 3, 3), _Attrs()) == 2
    assert winograd_tile(("$n", 4, 56, 56, 16), (64, 64, 3, 3), _Attrs()) == 4
    assert winograd_tile((1, 4, "$h", 56, 16), (64, 64, 3, 3), _Attrs()) is None
    assert winograd_tile(None, (64, 64, 3, 3), _Attrs()) is None
    assert winograd_tile((1, 4, 56, 56, 16), (64, 64, 1, 1), _Attrs(padding=(0, 0, 0, 0))) is None
    assert winograd_tile((1, 4, 56, 56, 16), (64, 64, 5, 5), _Attrs(padding=(2, 2, 2, 2))) is None


def _direct(x: np.ndarray, w: np.ndarray, padding) -> np.ndarray:
    """NCHW conv, stride 1, in float64."""
    top, left, bottom, right = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, _c, h, wd = xp.shape
    oh, ow = h - 2, wd - 2
    out = np.zeros((n, w.shape[0], oh, ow))
    for ky in range(3):
        for kx in range(3):
            out += np.einsum("nchw,kc->nkhw", xp[:, :, ky : ky + oh, kx : kx + ow], w[:, :, ky, kx])
    return out


def _scheduled(tensors, params, caplog) -> tvm.runtime.Module:
    func = te.create_prim_func(tensors)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        after = schedule_prim_func(func, params)
    assert after is not None and "failed" not in caplog.text, caplog.text
    target = tvm.target.Target(HOST)  # scheduled for 16 lanes, built for what runs here
    with target:
        return after, tvm.tirx.build(after.with_attr("global_symbol", "k"), target=target)


@pytest.mark.parametrize(
    ("n", "c", "k", "h", "w", "m", "padding"),
    [
        pytest.param(1, 32, 32, 14, 14, 4, (1, 1, 1, 1), id="14x14-ragged-F4"),
        pytest.param(1, 16, 48, 13, 11, 2, (1, 1, 1, 1), id="13x11-F2"),
        pytest.param(1, 32, 16, 10, 10, 4, (0, 0, 0, 0), id="no-padding"),
        pytest.param(2, 16, 32, 8, 8, 4, (1, 1, 1, 1), id="batch-2"),
        pytest.param(1, 256, 32, 14, 14, 2, (1, 1, 1, 1), id="14x14-F2-product-in-chunks"),
    ],
)
def test_scheduled_kernels_match_a_direct_conv(n, c, k, h, w, m, padding, caplog):
    params = CpuScheduleParams.from_target(tvm.target.Target(X86))
    rng = np.random.default_rng(h * w + c)
    x = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    data = te.placeholder((n, c // 16, h, w, 16), "float32", "data")
    points = winograd_input_nchwc(data, padding, m)
    v = te.placeholder(points.shape, "float32", "v")
    u = winograd_weight(wt, m, 16)
    weight = te.placeholder(u.shape, "float32", "u")
    product = winograd_product_nchwc(v, weight)
    mm = te.placeholder(product.shape, "float32", "m")
    oh, ow = h + padding[0] + padding[2] - 2, w + padding[1] + padding[3] - 2
    out = winograd_output_nchwc(mm, oh, ow, m)
    bias = te.placeholder((1, k // 16, 1, 1, 16), "float32", "bias")
    relu = te.compute(out.shape, lambda *i: te.max(out(*i) + bias[0, i[1], 0, 0, i[4]], 0.0))

    f_in, k_in = _scheduled([data, points], params, caplog)
    _f_prod, k_prod = _scheduled([v, weight, product], params, caplog)
    f_out, k_out = _scheduled([mm, bias, relu], params, caplog)
    for func in (f_in, f_out):  # the transforms' own schedule: a parallel loop of tiles
        assert "T.parallel" in func.script() and "T.vectorized(16)" in func.script()
    assert "winograd_output" in f_out.script() and "compute" not in re.findall(
        r'T\.sblock\("(\w+)"', f_out.script()
    ), "the epilogue is inlined into the output transform"

    b = rng.standard_normal(k).astype(np.float32)
    arrays = [
        tvm.runtime.tensor(to_blocked(x, 16)),
        tvm.runtime.tensor(np.zeros([int(s) for s in points.shape], np.float32)),
        tvm.runtime.tensor(u),
        tvm.runtime.tensor(np.zeros([int(s) for s in product.shape], np.float32)),
        tvm.runtime.tensor(to_blocked(b.reshape(1, k, 1, 1), 16)),
        tvm.runtime.tensor(np.zeros([int(s) for s in relu.shape], np.float32)),
    ]
    k_in(arrays[0], arrays[1])
    k_prod(arrays[1], arrays[2], arrays[3])
    k_out(arrays[3], arrays[4], arrays[5])
    ref = np.maximum(_direct(x, wt, padding) + b.reshape(1, k, 1, 1), 0)
    ours = arrays[5].numpy().transpose(0, 1, 4, 2, 3).reshape(n, k, oh, ow)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5 * float(np.abs(ref).max()))


def _conv(name, x, out, cin, cout, rng, k=3):
    w = rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)
    b = rng.standard_normal(cout) * 0.1
    node = helper.make_node(
        "Conv", [x, f"{name}_w", f"{name}_b"], [out], kernel_shape=[k, k], pads=[k // 2] * 4
    )
    return node, [
        numpy_helper.from_array(w.astype(np.float32), f"{name}_w"),
        numpy_helper.from_array(b.astype(np.float32), f"{name}_b"),
    ]


def _basic_blocks(hw: int, channels: int) -> onnx.ModelProto:
    """ResNet's basic block twice: conv 3x3, relu, conv 3x3, + the block's input, relu; a
    1x1 conv from the 3-channel image first, a 3x3 conv to a concat (SqueezeNet's expand)."""
    rng = np.random.default_rng(hw)
    nodes, inits = [], []
    stem, more = _conv("stem", "x", "s", 3, channels, rng, k=1)
    nodes += [stem, helper.make_node("Relu", ["s"], ["r0"])]
    inits += more
    prev = "r0"
    for i in range(2):
        a, ia = _conv(f"a{i}", prev, f"a{i}", channels, channels, rng)
        b, ib = _conv(f"b{i}", f"ra{i}", f"b{i}", channels, channels, rng)
        nodes += [
            a, helper.make_node("Relu", [f"a{i}"], [f"ra{i}"]), b,
            helper.make_node("Add", [f"b{i}", prev], [f"s{i}"]),
            helper.make_node("Relu", [f"s{i}"], [f"r{i + 1}"]),
        ]
        inits += ia + ib
        prev = f"r{i + 1}"
    e1, i1 = _conv("e1", prev, "e1", channels, 16, rng, k=1)
    e3, i3 = _conv("e3", prev, "e3", channels, 32, rng)
    nodes += [
        e1, e3, helper.make_node("Relu", ["e3"], ["re3"]),
        helper.make_node("Concat", ["e1", "re3"], ["y"], axis=1),
    ]
    inits += i1 + i3
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48, hw, hw])],
        inits,
    )


@pytest.mark.parametrize(("hw", "channels"), [(28, 32), (13, 48)])
def test_model_runs_winograd_and_matches_onnxruntime(hw, channels, caplog):
    import onnxruntime as ort

    model = _basic_blocks(hw, channels)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        built = build_model(model, "x86", threads=2)
    assert "rule winograd_transform failed" not in caplog.text
    assert "rule nchwc_conv failed" not in caplog.text
    loaded = frontend.load(model)
    mod = to_kernels(
        frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {})), tvm.target.Target(X86)
    )
    kernels = [g.name_hint for g, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    calls = re.findall(r"R\.call_tir\((\w+),", mod["main"].script())
    # the four 3x3 convs of the blocks and the expand one, each transform its own kernel
    assert sum(re.fullmatch(r"winograd_input\d*", k) is not None for k in calls) == 5, calls
    outputs = [k for k in calls if "winograd_output" in k]
    assert len(outputs) == 5 and all("_relu" in k for k in outputs), outputs
    assert not any("concatenate" in k and "winograd" in k for k in kernels), kernels
    x = np.random.default_rng(7).standard_normal((1, 3, hw, hw)).astype(np.float32)
    ours = relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))


@pytest.mark.parametrize("act", ["SiLU", "HardSwish"])
def test_diamond_epilogues_fuse_into_the_output_transform(act, caplog):
    """A 3x3 conv whose output is read twice after it (SiLU ``x * sigmoid(x)`` of YOLO-style
    detectors, hard-swish written as ``x * HardSigmoid(x)``) keeps the output-transform
    schedule: the side branch is inlined first (before, the rule failed and the kernel fell to
    a generic schedule that recomputed the transform per element, 12 GFLOP/s on ddddocr)."""
    import onnxruntime as ort

    rng = np.random.default_rng(5)
    stem, stem_inits = _conv("s", "x", "s", 16, 64, rng, k=1)  # blocked activations first
    conv, inits = _conv("c", "s", "c", 64, 64, rng)
    if act == "SiLU":
        side = helper.make_node("Sigmoid", ["c"], ["g"])
    else:
        side = helper.make_node("HardSigmoid", ["c"], ["g"], alpha=1 / 6, beta=0.5)
    model = make_model(
        [stem, conv, side, helper.make_node("Mul", ["c", "g"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 56, 56])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 56, 56])],
        stem_inits + inits,
    )
    loaded = frontend.load(model)
    mod = to_kernels(
        frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {})), tvm.target.Target(X86)
    )
    params = CpuScheduleParams.from_target(tvm.target.Target(X86))
    from tvmforge.passes.schedule.rules import first_rule

    (out,) = [f for g, f in mod.functions_items() if "winograd_output" in g.name_hint]
    with tvm.target.Target(X86):
        rule, _ = first_rule(out, params)
    assert rule.name == "winograd_transform"
    built = build_model(model, "x86", threads=2)
    x = rng.standard_normal((1, 16, 56, 56)).astype(np.float32)
    ours = relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))


def test_dynamic_batch_runs_winograd_per_sample_and_matches_onnxruntime(tmp_path):
    """With a dynamic batch the three kernels keep the batch as their leading dim, so
    ``batch_outer`` runs each as a loop over its batch-1 schedule; one artifact serves
    batches 1 and 3."""
    import onnxruntime as ort

    from onnx_builders import dynamic_batch
    from tvmforge.passes.schedule.batch_outer import collect_declined
    from tvmforge.passes.schedule.rules import schedule_cpu_default
    from tvmforge.runtime.executor import LocalVM

    model = dynamic_batch(_basic_blocks(13, 48))
    loaded = frontend.load(model)
    target = tvm.target.Target(X86)
    with target, collect_declined() as declined:
        inputs = frontend.resolve_inputs(loaded, {}, dynamic_batch=True)
        mod = schedule_cpu_default()(to_kernels(frontend.to_relax(loaded, inputs), target))
    assert declined == []
    kernels = {g.name_hint: f for g, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    calls = re.findall(r"R\.call_tir\((\w+),", mod["main"].script())
    for stage in ("winograd_input", "winograd_product", "winograd_output"):
        found = [k for k in calls if stage in k]
        assert len(found) == 5, (stage, calls)  # the five 3x3 convs
        assert all("for b in range(N):" in kernels[k].script() for k in found), stage
    built = build_model(model, "x86", threads=2)
    built.executable.export_library(str(tmp_path / "lib.so"))
    vm = LocalVM(tmp_path / "lib.so", "cpu")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 13, 13)).astype(np.float32)
        (ours,) = vm.run([x])
        (ref,) = sess.run(None, {"x": x})
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))


def test_direct_convs_on_request():
    """``nchwc_layout(winograd=False)`` among the caller's graph passes takes the convs first:
    every conv stays a direct ``conv2d_nchwc_packed``, and the outputs agree with the
    Winograd build's to float32 rounding."""
    model = _basic_blocks(28, 32)
    loaded = frontend.load(model)
    target = tvm.target.Target(X86)
    relaxed = frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {}))
    mod = to_kernels(relaxed, target, [nchwc_layout(winograd=False)])
    calls = re.findall(r"R\.call_tir\((\w+),", mod["main"].script())
    assert not any("winograd" in k for k in calls), calls
    assert sum("conv2d_nchwc_packed" in k for k in calls) == 7, calls
    x = np.random.default_rng(8).standard_normal((1, 3, 28, 28)).astype(np.float32)
    outs = []
    for graph in ([nchwc_layout(winograd=False)], []):
        built = build_model(model, "x86", threads=2, graph_passes=graph)
        vm = relax.VirtualMachine(built.executable, tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=0, atol=1e-5 * float(np.abs(outs[0]).max()))


def test_tuning_replays_the_default_schedules_as_traces():
    """``tune`` commits each kernel's default schedule as a record (so tuning never makes a
    kernel slower than the default): the three Winograd kernels' defaults must replay as
    traced schedules that reproduce what ``schedule_cpu_default`` builds."""
    from tvmforge.tuning import tune as tuning

    loaded = frontend.load(_basic_blocks(28, 32))
    target = tvm.target.Target(X86)
    mod = to_kernels(frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {})), target)
    names = [g.name_hint for g, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    winograd = [n for n in names if "winograd" in n]
    assert {"winograd_input", "winograd_product"} <= set(winograd) and len(winograd) >= 3
    for name in winograd:
        kernel = tvm.IRModule({"main": mod[name].with_attr("global_symbol", "main")})
        assert tuning._traced_default_schedule(kernel, target) is not None, name


def test_transforms_compute_their_first_pass_a_row_at_a_time_on_the_stack():
    """Each transform's first pass is computed per row (input) or column (output) of the tile
    it feeds, into a global buffer under 1 KiB: an alloca that LLVM keeps in registers. Whole
    per tile (6x6x16 floats, 2.3 KiB) or in local scope, it was a TVMBackendAllocWorkspace, a
    memset and a free per tile: ResNet-50 26.47 -> 26.12 ms in the model, F(2x2) input
    transform at 14x14 0.028 -> 0.018 ms."""
    from tvm import s_tir

    from tvmforge.passes.schedule.rules import CpuScheduleParams, schedule_prim_func

    loaded = frontend.load(_basic_blocks(28, 32))
    target = tvm.target.Target(X86)
    mod = to_kernels(frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {})), target)
    params = CpuScheduleParams.from_target(target)
    seen = set()
    for gvar, func in mod.functions_items():
        name = gvar.name_hint
        kind = next((k for k in ("input", "output") if f"winograd_{k}" in name), None)
        if kind is None:
            continue
        sch = s_tir.Schedule(schedule_prim_func(func, params))
        first = sch.get_sblock(f"winograd_{kind}_{'rows' if kind == 'input' else 'cols'}")
        assert sch.get(first).writes[0].source.scope() == "global"
        # what one iteration of the loop it is computed at writes: the buffer after compaction
        main_loops = [sch.get(lp) for lp in sch.get_loops(sch.get_sblock(f"winograd_{kind}"))]
        own = [sch.get(lp) for lp in sch.get_loops(first)]
        shared = max(i for i, lp in enumerate(own) if any(lp.same_as(m) for m in main_loops))
        elements = 1
        for lp in own[shared + 1 :]:
            elements *= int(lp.extent)
        assert elements * 4 < 1024, (name, elements)
        seen.add(kind)
    assert seen == {"input", "output"}


@pytest.mark.parametrize(
    ("c", "hw", "m", "expect"),
    [
        # ResNet-50's stage 3: a block (2 vectors x 256 channels, 32 KiB) re-read over only 7
        # tiles of 7 of the 49 tiles: the reduction runs in 4 chunks of 64 channels
        # (each chunk by the input's channel blocks: 4 of 16)
        pytest.param(256, 14, 2, [16 * 8, 4, 1, 7, 1, 1, 4, 16, 2, 7, 16],
                     id="256ch-14x14-chunked"),
        # stage 2: 16 KiB blocks, swept whole over the tiles (16 points x 8 blocks x 7 tiles),
        # the reduction by input channel block (8 of 16)
        pytest.param(128, 28, 4, [36 * 4 * 7, 8, 16, 1, 1, 2, 7, 16], id="128ch-28x28-swept"),
    ],
)
def test_product_with_a_short_sweep_runs_its_reduction_in_chunks(c, hw, m, expect, caplog):
    """A product whose weight block is re-read over at most ``_SHORT_SWEEP_TILES`` tiles
    fetches each (cold) block faster than its few tiles of compute hide: it runs K-blocked,
    in chunks of 8 KiB of the block's weights, with the chunk ahead prefetched. Measured at
    256 channels, 14x14, two threads, cold weights: 0.499 -> 0.432 ms."""
    from tvm import s_tir

    tiles = (-(-hw // m)) ** 2
    v = te.placeholder((1, (m + 2) ** 2, c // 16, 1, tiles, 16), "float32", "v")
    u = te.placeholder(((m + 2) ** 2, c // 16, c, 1, 1, 16), "float32", "u")
    func = te.create_prim_func([v, u, winograd_product_nchwc(v, u)])
    params = CpuScheduleParams.from_target(tvm.target.Target(X86))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        after = schedule_prim_func(func, params)
    assert after is not None and "failed" not in caplog.text, caplog.text
    sch = s_tir.Schedule(after)
    loops = sch.get_loops(sch.get_sblock("winograd_product_update"))
    assert [int(sch.get(lp).extent) for lp in loops] == expect
    assert sch.get(loops[0]).kind == tirx.ForKind.PARALLEL
