"""The matrix-vector branch of the packed-matmul schedule (``packed_dense._gemv_panels``).

A matmul of 1-3 rows with packed weights (batch-1 LLM decoding, a classifier's fully connected
layer) sweeps several weight panels side by side in its register tile; a matmul of more rows
keeps the plain ``rows x B`` tile. Checked: which matmuls take the branch, the loop nest it
gives, that a 64-row matmul's schedule is unchanged, and that the products (bias, GELU,
residual and sliced-off padded columns as epilogues) match numpy with two threads.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, s_tir

from onnx_builders import make_model
from tvmforge.passes.graph.pack_dense_weights import pack_dense_weights
from tvmforge.passes.schedule import packed_dense
from tvmforge.passes.schedule.packed_dense import _gemv_panels
from tvmforge.passes.schedule.rules import CpuScheduleParams, first_rule, schedule_prim_func

AVX2_2 = CpuScheduleParams(lanes=8, vector_registers=16, num_cores=2)


def _packed_func(m: int, k: int, n: int, lead: tuple[int, ...] = ()) -> tvm.tirx.PrimFunc:
    """The packed matmul kernel ``x[*lead, m, k] @ W[k, n]`` (panels of 16, AVX2)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((*lead, m, k), "float32"))
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.matmul(x, relax.const(w)))
        bb.emit_func_output(y)
    mod = pack_dense_weights(block=16)(bb.get())
    return next(f for g, f in mod.functions_items() if g.name_hint == "matmul_packed")


def _update_loops(func: tvm.tirx.PrimFunc) -> list[tuple[int, tvm.tirx.ForKind]]:
    sch = s_tir.Schedule(func)
    loops = sch.get_loops(sch.get_sblock("matmul_packed_update"))
    return [(int(sch.get(lp).extent), sch.get(lp).kind) for lp in loops]


def test_panels_side_by_side_only_for_a_few_rows():
    # 48 panels, 2 cores: 6 side by side (12 accumulators / 2 vectors), 8 tiles left
    assert _gemv_panels([1], 1, 1, 48, 2, AVX2_2) == 6
    assert _gemv_panels([1], 3, 3, 48, 2, AVX2_2) == 2  # 3 rows x 2 panels x 2 vectors = 12
    # every core keeps a tile: 16 cores and 48 panels -> 3 side by side
    assert _gemv_panels([1], 1, 1, 48, 2, CpuScheduleParams(8, 16, 16)) == 3
    assert _gemv_panels([1], 1, 1, 7, 2, AVX2_2) == 1  # 7 panels: no divisor fits
    assert _gemv_panels([1], 4, 4, 48, 2, AVX2_2) == 1  # 4 rows: more than half the registers
    assert _gemv_panels([1], 64, 4, 48, 2, AVX2_2) == 1  # several row tiles
    assert _gemv_panels([2], 1, 1, 48, 2, AVX2_2) == 1  # a batch of 2


def test_a_matrix_vector_product_sweeps_six_panels_under_k():
    func = _packed_func(1, 256, 768)
    rule, _ = first_rule(func, AVX2_2)
    assert rule.name == "packed_dense"
    loops = _update_loops(schedule_prim_func(func, AVX2_2))
    assert loops[0] == (8, tvm.tirx.ForKind.PARALLEL)  # 48 panels / 6
    assert loops[-4:] == [
        (256, tvm.tirx.ForKind.SERIAL),  # k
        (1, tvm.tirx.ForKind.SERIAL),  # the one row
        (6, tvm.tirx.ForKind.UNROLLED),  # panels side by side
        (16, tvm.tirx.ForKind.VECTORIZED),
    ]


def test_sixty_four_rows_keep_the_plain_tile(monkeypatch):
    func = _packed_func(64, 256, 768, lead=(1,))
    default = schedule_prim_func(func, AVX2_2)
    loops = _update_loops(default)
    assert loops[-3:] == [(256, tvm.tirx.ForKind.SERIAL), (4, tvm.tirx.ForKind.UNROLLED),
                          (16, tvm.tirx.ForKind.VECTORIZED)]
    # the same schedule as with the branch switched off
    monkeypatch.setattr(packed_dense, "_GEMV_MAX_PANELS", 1)
    tvm.ir.assert_structural_equal(schedule_prim_func(func, AVX2_2), default)
    # ... which does change a one-row matmul
    one = _packed_func(1, 256, 768, lead=(1,))
    plain = _update_loops(schedule_prim_func(one, AVX2_2))
    assert plain[-2:] == [(1, tvm.tirx.ForKind.SERIAL), (16, tvm.tirx.ForKind.VECTORIZED)]


def _linear(m: int, k: int, n: int, epilogue: str, lead: tuple[int, ...] = (1,)):
    rng = np.random.default_rng(m * 1000 + k + n)
    weights = {"w": (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32),
               "b": rng.standard_normal(n).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["a"])]
    if epilogue == "gelu":
        weights.update(s2=np.array(np.sqrt(2.0), np.float32), one=np.array(1.0, np.float32),
                       half=np.array(0.5, np.float32))
        nodes += [helper.make_node("Div", ["a", "s2"], ["d"]),
                  helper.make_node("Erf", ["d"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["e1"]),
                  helper.make_node("Mul", ["a", "e1"], ["g"]),
                  helper.make_node("Mul", ["g", "half"], ["y"])]
    elif epilogue == "residual":
        nodes.append(helper.make_node("Add", ["a", "x"], ["y"]))
    else:
        nodes.append(helper.make_node("Relu", ["a"], ["y"]))
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*lead, m, n])],
        [numpy_helper.from_array(v, name) for name, v in weights.items()],
    )
    return model, weights


def _numpy(x, weights, epilogue):
    from math import erf

    a = x.astype(np.float64) @ weights["w"].astype(np.float64) + weights["b"]
    if epilogue == "gelu":
        return 0.5 * a * (1 + np.vectorize(erf)(a / np.sqrt(2.0)))
    if epilogue == "residual":
        return a + x
    return np.maximum(a, 0)


@pytest.fixture
def two_threads():
    from tvmforge.runtime.executor import pool_threads, resize_pool, set_threads

    before = pool_threads()
    set_threads(2)
    yield
    resize_pool(before)


@pytest.mark.parametrize(
    ("m", "k", "n", "epilogue", "lead"),
    [
        pytest.param(1, 512, 768, "gelu", (1,), id="gemv-gelu-6-panels"),
        pytest.param(1, 384, 384, "residual", (1,), id="gemv-residual-6-panels"),
        pytest.param(1, 128, 1000, "relu", (), id="gemv-classifier-1000-padded-3-panels"),
        pytest.param(2, 96, 1000, "gelu", (1,), id="rows-2-1000-padded-3-panels"),
        pytest.param(3, 64, 256, "relu", (1,), id="rows-3-2-panels"),
        pytest.param(2, 64, 96, "relu", (2,), id="batched-no-branch"),
    ],
)
def test_products_match_numpy_on_two_threads(m, k, n, epilogue, lead, two_threads, caplog):
    import logging

    from tvmforge import build_model

    model, weights = _linear(m, k, n, epilogue, lead)
    x = np.random.default_rng(7).standard_normal((*lead, m, k)).astype(np.float32)
    with caplog.at_level(logging.DEBUG, logger="tvmforge.passes"):
        built = build_model(model, "x86", threads=2)
    assert "matmul weights in panels" in caplog.text
    assert "rule packed_dense failed" not in caplog.text
    out = relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x))
    ours = (out if hasattr(out, "numpy") else out[0]).numpy()
    ref = _numpy(x, weights, epilogue)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


@pytest.mark.parametrize(("m", "parallel"), [(1, False), (128, True)])
def test_int4_group_sums_run_in_parallel_only_when_large(m, parallel):
    """The 4-bit kernel's ``x`` group sums: one row's 768 adds stay in the calling thread (a
    parallel loop of their own cost a fork-join: 13x slower on two threads with one core
    busy), 128 rows' are split across the cores."""
    from tvm import te

    from tvmforge.passes.schedule import int4_kernels as K4

    k, n, group = 768, 256, 32
    x = te.placeholder((m, k), name="x")
    wp = te.placeholder((n // K4.PANEL, k // 2, K4.PANEL), "uint8", name="wp")
    scales = te.placeholder((k // group, n), name="scales")
    y = K4.int4_matmul(x, wp, scales, None, group=group)
    sch = s_tir.Schedule(te.create_prim_func([x, wp, scales, y]))
    K4.apply_default_schedule(sch, 8, 2, 12)
    kinds = [sch.get(lp).kind for lp in sch.get_loops(sch.get_sblock("xsum"))]
    assert (tvm.tirx.ForKind.PARALLEL in kinds) == parallel
    panels = sch.get_loops(sch.get_sblock("y_update"))[0]
    assert sch.get(panels).kind == tvm.tirx.ForKind.PARALLEL  # the panels: always
