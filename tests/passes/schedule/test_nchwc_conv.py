"""Convs on blocked activations (``passes/schedule/nchwc_conv.py``): the reduction over input
channels follows the input's channel blocks."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper
from test_schedule_cpu_default import _assert_close, _model, _run_both, _schedule
from tvm import s_tir

AVX2 = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}  # 8 lanes, 16 registers
AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}  # 16 lanes, 32 registers


def _two_convs(cin: int, mid: int, cout: int, k: int, hw: int, stride: int = 1):
    """``x -> conv 1x1 cin->mid -> relu -> conv kxk mid->cout (+bias) -> relu``: the second
    conv reads the first one's blocked output (a stride keeps a 3x3 off Winograd)."""
    rng = np.random.default_rng(cin + mid + cout + k + hw)
    w1 = (rng.standard_normal((mid, cin, 1, 1)) / np.sqrt(cin)).astype(np.float32)
    w2 = (rng.standard_normal((cout, mid, k, k)) / np.sqrt(mid * k * k)).astype(np.float32)
    b2 = rng.standard_normal(cout).astype(np.float32)
    out = (hw + 2 * (k // 2) - k) // stride + 1
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node(
            "Conv", ["r1", "w2", "b2"], ["c2"], pads=[k // 2] * 4, strides=[stride] * 2
        ),
        helper.make_node("Relu", ["c2"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, out, out])],
        {"w1": w1, "w2": w2, "b2": b2},
    )


def _conv_kernels(model, target: dict) -> list[s_tir.Schedule]:
    """The model's conv kernels after the default schedule for ``target``."""
    from tvmforge.driver.pipeline import to_kernels
    from tvmforge.frontend import importer as frontend

    loaded = frontend.load(model)
    kernels = to_kernels(
        frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {})), tvm.target.Target(target)
    )
    return [
        s_tir.Schedule(_schedule(tvm.IRModule({"main": func}), target)["main"])
        for gv, func in kernels.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc) and "conv" in gv.name_hint
    ]


def _blocked_input_conv(model, target: dict) -> s_tir.Schedule:
    """The scheduled kernel of the second conv (whose input, the first conv's output, is
    blocked ``[n, c/B, h, w, B]``)."""
    (sch,) = [
        sch for sch in _conv_kernels(model, target)
        if all(r.source.name != "x"  # not the model's input
               for r in sch.get(sch.get_sblock("conv2d_nchwc_packed_update")).reads)
    ]
    return sch


@pytest.mark.parametrize(
    ("target", "block"), [pytest.param(AVX2, 8, id="avx2"), pytest.param(AVX512, 16, id="avx512")]
)
@pytest.mark.parametrize(
    ("cin", "mid", "cout", "k", "hw"),
    [
        pytest.param(16, 64, 64, 1, 14, id="1x1"),
        pytest.param(16, 512, 64, 1, 7, id="1x1-K-blocked"),  # 512 channels: reduction chunks
        pytest.param(16, 64, 64, 3, 14, id="3x3-stride2"),
    ],
)
def test_the_reduction_runs_by_the_input_channel_block(target, block, cin, mid, cout, k, hw):
    """A conv reading a blocked input runs its reduction over channels as two loops, blocks of
    the input then the channels inside one, so that the input's address is two induction
    variables (over one loop it was ``(c / B) * plane * B + c % B`` per step: 76 -> 142 GFLOP/s
    for 1x1 256->256 at 14x14 once split, AVX2, two threads; ResNet-50 1.43x -> 0.96x ONNX
    Runtime's time on an AMD EPYC)."""
    sch = _blocked_input_conv(_two_convs(cin, mid, cout, k, hw, stride=k // 2 + 1), target)
    update = sch.get_sblock("conv2d_nchwc_packed_update")
    stmt = sch.get(update)
    rc = next(iv for iv in stmt.iter_vars if iv.iter_type == tvm.tirx.IterVar.CommReduce)
    binding = dict(zip([iv.var for iv in stmt.iter_vars], _bindings(sch, update), strict=True))
    # the channel iterator is bound to loops whose innermost has the block's extent
    loops = {sch.get(lp).loop_var.name: int(sch.get(lp).extent) for lp in sch.get_loops(update)}
    used = [name for name in loops if name in str(binding[rc.var])]
    assert loops[used[-1]] == block, (str(binding[rc.var]), loops)
    assert np.prod([loops[n] for n in used]) == mid


def _bindings(sch: s_tir.Schedule, block) -> list:
    """The block's iterator bindings (its ``SBlockRealize`` values)."""
    from tvm.s_tir.stmt import SBlockRealize

    body = sch.get(sch.get_loops(block)[-1]).body
    while not isinstance(body, SBlockRealize):
        body = body.seq[0] if hasattr(body, "seq") else body.body
    return list(body.iter_values)


@pytest.mark.parametrize(
    ("cin", "mid", "cout", "k", "hw"),
    [
        pytest.param(16, 64, 48, 1, 14, id="1x1"),
        pytest.param(16, 512, 32, 1, 7, id="1x1-K-blocked"),
        pytest.param(8, 48, 40, 3, 10, id="3x3-winograd"),
        pytest.param(8, 48, 40, 3, 11, id="3x3-stride2"),
    ],
)
def test_convs_on_blocked_inputs_match_onnxruntime(cin, mid, cout, k, hw):
    stride = 2 if hw % 2 else 1
    ours, ref = _run_both(_two_convs(cin, mid, cout, k, hw, stride))
    _assert_close(ours, ref)


def _stft_like(cout: int, taps: int, stride: int, width: int):
    """A 1 -> ``cout`` conv over one row (``1 x taps`` kernel, a stride of ``stride``) with
    ``width`` outputs: openWakeWord's STFT conv in small."""
    rng = np.random.default_rng(cout + taps + width)
    w = rng.standard_normal((cout, 1, 1, taps)).astype(np.float32)
    length = (width - 1) * stride + taps
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[1, stride]),
             helper.make_node("Relu", ["c"], ["y"])]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, 1, width])],
        {"w": w},
    )


@pytest.mark.parametrize(
    ("target", "cout", "tile"),
    [pytest.param(AVX2, 24, (1, 8), id="avx2"), pytest.param(AVX512, 32, (1, 8), id="avx512")],
)
def test_a_prime_output_width_gets_a_tile_with_a_tail(target, cout, tile):
    """97 output columns (prime) left divisor tiles of one column (24 channels: 3 x 1 with
    AVX2's blocks of 8; 32: 2 x 1 with AVX-512's 16): a few accumulators, the FMAs waiting on each
    other. The row is swept in whole tiles and one tail tile instead, with blocks of channels
    enough for both cores (openWakeWord's STFT conv, 1 -> 264 channels: 61 -> 105 GFLOP/s)."""
    (sch,) = _conv_kernels(_stft_like(cout, 64, 16, 97), target)
    nf, xi = tile
    script = sch.mod["main"].script()
    updates = re.findall(r'T.sblock\("(conv2d_nchwc_packed_\w+?[01])_update"\)', script)
    assert len(updates) == 2, script  # whole tiles, then the tail
    whole, tail = (sch.get_loops(sch.get_sblock(f"{b}_update")) for b in updates)
    lanes = 16 if "avx512" in target["mcpu"] else 8
    assert [int(sch.get(lp).extent) for lp in whole[-3:]] == [nf, xi, lanes]
    assert [int(sch.get(lp).extent) for lp in tail[-3:]] == [nf, 97 % xi, lanes]
    # blocks of channels by rows, in parallel: one block a core here
    assert re.search(r"in T.parallel\(T.int64\((\d+)\)", script).group(1) == str(cout // 8 // (
        2 if target is AVX512 else 1))


@pytest.mark.parametrize(("cout", "width"), [(24, 97), (40, 13), (8, 5)])
def test_convs_with_a_tail_tile_match_onnxruntime(cout, width):
    ours, ref = _run_both(_stft_like(cout, 32, 8, width))
    _assert_close(ours, ref)


def test_the_tile_with_a_tail_weighs_loads_against_accumulators():
    from tvmforge.passes.schedule.nchwc_conv import _ragged_tile

    # 33 blocks (264 channels), AVX2: 3 x 2 (5 loads for 6 FMAs) over 1 x 8 (9 for 8)
    assert _ragged_tile(33, 97, 16, 31, tasks=2) == (3, 2)
    # 3 blocks on 2 cores: one block a task
    assert _ragged_tile(3, 97, 16, 31, tasks=2) == (1, 8)
    # AVX-512's 32 registers: 15 accumulators at most
    assert _ragged_tile(33, 97, 32, 15, tasks=2) == (3, 5)
    # no tile of 4 accumulators fits a width of 3
    assert _ragged_tile(1, 3, 16, None) is None
