"""Weight prefetch in the blocked conv schedules (``passes/weight_prefetch.py``)."""

from __future__ import annotations

import itertools

import pytest
import tvm
from test_schedule_cpu_default import _assert_close, _conv_model, _run_both, _scheduled_conv
from tvm import tirx
from tvm.sym.analyzer import Analyzer

from tvmforge.passes.schedule import weight_prefetch as wp


def _offsets(info, g: int, rows: int, lines: int) -> set[int]:
    gv, iv = tirx.Var("g", "int64"), tirx.Var("i", "int64")
    out = set()
    for row, i in itertools.product(range(rows), range(lines)):
        ana = Analyzer()
        ana.bind(gv, tirx.const(g, "int64"))
        ana.bind(iv, tirx.const(i, "int64"))
        out.add(int(ana.simplify(wp.prefetch_offset(info, gv, iv, row))))
    return out


@pytest.mark.parametrize(
    ("rows", "row_lines", "chunks", "blocks", "steps", "distance"),
    [
        pytest.param(2, 12, 1, 4, 3, 1, id="a block per slice, shared by 3 iterations"),
        pytest.param(2, 16, 4, 3, 2, 2, id="K-chunked, two chunks ahead"),
        pytest.param(1, 10, 1, 5, 4, 1, id="one row, lines not a multiple of the steps"),
    ],
)
def test_the_steps_of_a_slice_prefetch_every_line_of_the_slice_ahead(
    rows, row_lines, chunks, blocks, steps, distance
):
    """Over the steps that use one slice, the prefetched lines are exactly the lines of the
    slice ``distance`` ahead (wrapping at the end), plus at most the last step's overshoot."""
    row_elems = row_lines * 16
    slices = blocks * chunks
    chunk_lines = row_lines // chunks
    lines = wp.lines_per_step(chunk_lines * 64, steps)
    info = [0, rows * row_elems, rows, chunks, slices, steps, lines, distance]
    for s in range(slices):
        got = set()
        for k in range(steps):
            got |= _offsets(info, s * steps + k, rows, lines)
        t = (s + distance) % slices
        base = t // chunks * rows * row_elems + t % chunks * chunk_lines * 16
        want = {base + r * row_elems + ln * 16 for r in range(rows) for ln in range(chunk_lines)}
        assert want <= got
        assert len(got - want) <= rows * (lines * steps - chunk_lines)


def _prefetch_lines(script: str) -> int:
    return script.count("T.prefetch(")


@pytest.mark.parametrize(
    ("cin", "cout", "hw", "k"),
    [
        pytest.param(512, 64, 7, 1, id="1x1-K-blocked"),  # 64 KiB per tile: reduction chunks
        pytest.param(256, 96, 14, 1, id="1x1-weight-block-outer"),
    ],
)
def test_streamed_weight_convs_prefetch_their_next_block_and_match_onnxruntime(cin, cout, hw, k):
    """ResNet-50's 1x1 convs that stream their weights (1x1 512->2048 at 7x7 0.50 -> 0.43 ms
    with cold weights, two threads) get prefetches, and still compute the conv."""
    script = _scheduled_conv(cin, cout, k, 1, 1, hw).mod["main"].script()
    assert _prefetch_lines(script) > 0
    assert wp.PREFETCH_ATTR not in script and wp.PREFETCH_OUTER_ATTR not in script
    ours, ref = _run_both(_conv_model(cin, cout, k, 1, 1, hw))
    _assert_close(ours, ref)


def test_a_3x3_conv_with_streamed_weights_runs_its_reduction_in_prefetched_chunks():
    """A 3x3 conv with 512 input channels at 7x7 (ResNet-50's last stage: 9.4 MB of weights
    read at every inference) runs per block of two channel vectors, its reduction in chunks of
    16 input channels (18 KiB of weights, held in L1 over the whole plane) with the chunk two
    ahead prefetched: 3x3 512 at 7x7, two threads, cold weights 1.01 -> 0.81 ms; ResNet-50
    in the model 26.28 -> 25.26 ms. It still computes the conv."""
    sch = _scheduled_conv(512, 64, 3, 1, 1, 7)
    update = sch.get_sblock("conv2d_nchwc_packed_update")
    loops = sch.get_loops(update)
    extents = [int(sch.get(lp).extent) for lp in loops]
    assert sch.get(loops[0]).kind == tvm.tirx.ForKind.PARALLEL
    assert extents[0] == 64 // 16 // 2  # blocks of two channel vectors
    assert extents[1] == 512 // 16  # chunks of 16 input channels
    assert extents[-6:-3] == [16, 3, 3]  # a chunk's [c, ky, kx], as the weights lie
    assert _prefetch_lines(sch.mod["main"].script()) > 0
    ours, ref = _run_both(_conv_model(512, 64, 3, 1, 1, 7))
    _assert_close(ours, ref)


def test_mark_declines_more_lines_a_step_than_the_limit():
    from tvm import s_tir
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def copy(w: T.Buffer((64, 256, 16), "float32"), y: T.Buffer((64, 16), "float32")):
        for f in T.parallel(64):
            for k, v in T.grid(256, 16):
                with T.sblock("s"):
                    vf, vk, vv = T.axis.remap("SRS", [f, k, v])
                    with T.init():
                        y[vf, vv] = T.float32(0)
                    y[vf, vv] = y[vf, vv] + w[vf, vk, vv]

    sch = s_tir.Schedule(copy)
    (f, _, _) = sch.get_loops(sch.get_sblock("s"))
    # one block of 256 lines a step is over the limit (96): declined, nothing marked
    assert not wp.mark_weight_prefetch(
        sch, f, f, weight=0, block_elems=256 * 16, rows=1, steps_per_slice=1
    )
    assert wp.PREFETCH_OUTER_ATTR not in sch.mod["main"].script()
    # the same block shared by 4 iterations: 64 lines a step, marked and inserted
    assert wp.mark_weight_prefetch(
        sch, f, f, weight=0, block_elems=256 * 16, rows=1, steps_per_slice=4
    )
    func = wp.insert_weight_prefetches(sch.mod["main"])
    assert _prefetch_lines(func.script()) == 1
    assert wp.PREFETCH_ATTR not in func.script()
