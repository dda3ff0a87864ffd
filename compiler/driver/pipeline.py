"""The ``tvmforge`` Relax pipeline: the order in which a model is rewritten, scheduled and lowered.

Stages, in order (each a list of passes; nothing flows backwards):

1. ``graph``: clean-ups on the imported graph (inference decompositions, constant folding)
   and tvmforge's own graph passes (``passes/``) in the order the caller asks for.
2. ``library dispatch`` and ``legalize``: TVM's per-target dispatch, then every Relax op becomes
   a TIR function; fusion groups neighbouring ops into one kernel.
3. ``schedule``: tuning records that match a kernel are applied first; kernels that no record
   covers get the target's default schedules (dlight for GPUs, where an unscheduled kernel is not
   even valid). How many kernels the records covered is measured there
   (``collect_tuning_coverage``).
4. ``lower`` and ``finalize``: TVM's dataflow lowering and VM finalisation for the target.

The pipeline is registered with Relax as ``"tvmforge"``, so ``relax.get_pipeline("tvmforge",
target=...)`` gives it to any TVM user.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

__all__ = ["SCHEDULERS", "collect_tuning_coverage", "tvmforge_pipeline"]


def _gpu_default_schedules(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    from tvm.s_tir import dlight as dl

    return [
        dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(),
            dl.gpu.GEMV(),
            dl.gpu.Reduction(),
            dl.gpu.GeneralReduction(),
            dl.gpu.Fallback(),
        )
    ]


def _cpu_default_schedules(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    # The stock CPU backend schedules nothing; every kernel gets tvmforge's default schedule.
    from tvmforge.passes.schedule.rules import schedule_cpu_default

    return [schedule_cpu_default(target)]


# Default schedules by runtime device kind (``ResolvedTarget.device``).
SCHEDULERS: dict[str, Callable[[tvm.target.Target], list[tvm.transform.Pass]]] = {
    "cpu": _cpu_default_schedules,
    "cuda": _gpu_default_schedules,
}


def _device_of(target: tvm.target.Target) -> str:
    from tvmforge.targets import device_of

    return device_of(target)


def _backend(target: tvm.target.Target):
    """TVM's per-device backend module (its stage functions: dispatch, lower, finalize).

    Imported by module path: ``relax.pipeline.dataflow_lower_passes`` is broken in TVM 0.27
    (the backends' ``__init__`` do not export that stage).
    """
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.relax.backend.cuda import pipeline as cuda

    return {"cpu": cpu, "cuda": cuda}.get(_device_of(target), cuda)


def graph_passes(graph: Sequence[tvm.transform.Pass] = ()) -> list[tvm.transform.Pass]:
    """Clean-ups every model gets, then the caller's graph passes.

    Constants are folded with numpy (``fold_constants_numpy``; TVM's ``FoldConstant`` compiles a
    kernel per folded call and only runs on what numpy leaves), and BatchNorm is folded into the
    conv before it (``fold_conv_bn``) before ``DecomposeOpsForInference`` would spread it over
    four elementwise ops; ONNX ``Sum`` (``stack`` + ``sum``) becomes adds, which fuse into the
    conv before them (``stack_sum_to_add``); ``power`` by 0.75 (LRN) and other simple exponents
    becomes vectorizable ``sqrt``/products (``simplify_power``); transposed convs whose kernel
    equals their stride become a 1x1 conv and a depth-to-space instead of a conv over a zero-
    dilated input (``conv_transpose_direct``); 1-D convs (audio front ends, and Keras' ``k x 1``
    convs over a column) become row convs, which the blocked conv kernels take
    (``conv1d_as_conv2d``); ONNX Runtime's 4-bit ``MatMulNBits`` become tvmforge's int4 kernels
    (``lower_matmul_nbits``) and a ``quantize_dynamic`` model's integer matmuls its int8 kernels
    (``lower_qmatmul_integer``). After the caller's passes, a QDQ model's quantize-dequantize
    pairs left float become elementwise arithmetic that fuses and travels in
    any layout (``fake_quant``), float regions between NHWC producers and consumers (an int8
    model's FPN) run in NHWC (``sink_transposes``), and a channel shuffle feeding a depthwise
    conv is read in place by it (``fold_channel_shuffle``). Last, after the caller's passes
    (which may still rewrite conv weights), CPU targets carry activations between fp32 convs in
    the blocked ``NCHW{B}c`` layout (``nchwc_layout``: the convs, with their weights packed for
    the vector width, and the elementwise ops, pools and concats between them;
    ``pack_conv_weights``, which packs weights for NCHW activations, is no longer needed here:
    every conv it would take ``nchwc_layout`` takes first, but a caller can put it among its own
    passes), their constant matmul weights packed in column panels (``pack_dense_weights``) and
    polynomial ``exp``/``erf``/``tanh``/``softmax`` (``fast_math_cpu``); these four are no-ops
    on other targets.
    """
    from tvmforge.passes.graph.conv1d_as_conv2d import conv1d_as_conv2d
    from tvmforge.passes.graph.conv_transpose_direct import conv_transpose_direct
    from tvmforge.passes.graph.fake_quant import fake_quant
    from tvmforge.passes.graph.fast_math_cpu import fast_math_cpu
    from tvmforge.passes.graph.fold_channel_shuffle import fold_channel_shuffle
    from tvmforge.passes.graph.fold_constants_numpy import fold_constants_numpy
    from tvmforge.passes.graph.fold_conv_bn import fold_conv_bn
    from tvmforge.passes.graph.nchwc_layout import nchwc_layout
    from tvmforge.passes.graph.pack_dense_weights import pack_dense_weights
    from tvmforge.passes.graph.simplify_power import simplify_power
    from tvmforge.passes.graph.sink_transposes import sink_transposes
    from tvmforge.passes.graph.stack_sum_to_add import stack_sum_to_add
    from tvmforge.passes.quantize.dynamic_int8 import lower_qmatmul_integer
    from tvmforge.passes.quantize.int4 import lower_matmul_nbits

    return [
        fold_constants_numpy(),
        fold_conv_bn(),
        stack_sum_to_add(),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        fold_constants_numpy(),
        simplify_power(),
        conv_transpose_direct(),
        conv1d_as_conv2d(),
        lower_matmul_nbits(),
        lower_qmatmul_integer(),
        *graph,
        fake_quant(),
        sink_transposes(),
        fold_channel_shuffle(),
        nchwc_layout(),
        pack_dense_weights(),
        fast_math_cpu(),
    ]


def legalize_passes(fuse: bool = True) -> list[tvm.transform.Pass]:
    """Ops to TIR kernels, fused (``fuse=False``: one kernel per op, the fallback for the
    models TVM's fusion breaks, see ``build.py``)."""
    passes = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
    ]
    if fuse:
        passes += [relax.transform.FuseOps(), relax.transform.FuseTIR()]
    return passes


def schedule_passes(
    target: tvm.target.Target, databases: Sequence[Path] = ()
) -> list[tvm.transform.Pass]:
    """Apply matching tuning records, then the device's default schedules to the rest.

    The records stage reports what it covered to ``collect_tuning_coverage``."""
    scheduler = SCHEDULERS.get(_device_of(target), SCHEDULERS["cuda"])
    return [_apply_databases([Path(db) for db in databases]), *scheduler(target)]


# Active collectors of the records stage's coverage (``collect_tuning_coverage``); a stack.
_COVERAGE: list[dict[str, Any]] = []

# How many uncovered kernels the coverage names (the count is always whole).
UNCOVERED_NAMED = 10


@contextlib.contextmanager
def collect_tuning_coverage() -> Iterator[dict[str, Any]]:
    """While open, every records stage that runs (``schedule_passes``) writes into the dict
    yielded here how many kernels the tuning databases covered::

        {"kernels": N, "covered": M, "databases": [path, ...], "covered_by": [m, ...],
         "uncovered": [name, ...]}

    ``kernels`` counts the kernels that were not scheduled before the records stage (the ones
    tuning extracts as tasks; hand-written kernels carry ``tirx.is_scheduled`` from the start),
    ``covered`` those among them that a database scheduled (``MetaScheduleApplyDatabase`` marks
    what it schedules ``tirx.is_scheduled``), ``covered_by`` how many each database took (in
    the order applied: a kernel counts for the first that has a record of it), ``uncovered``
    the names of up to ``UNCOVERED_NAMED`` of the rest, sorted. A later records stage replaces
    what an earlier one wrote (a build that retries unfused; the calibration builds that run
    inside the graph stage), so the dict describes the last compile. Empty if none ran.
    """
    found: dict[str, Any] = {}
    _COVERAGE.append(found)
    try:
        yield found
    finally:
        _COVERAGE.remove(found)


def _unscheduled_kernels(mod: tvm.ir.IRModule) -> set[str]:
    """Names of the module's PrimFuncs not marked ``tirx.is_scheduled``."""
    from tvm import tirx

    names = set()
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        attrs = func.attrs
        if attrs is None or not bool(attrs.get("tirx.is_scheduled", False)):
            names.add(gv.name_hint)
    return names


def _apply_databases(databases: Sequence[Path]) -> tvm.transform.Pass:
    """The records stage: each database's ``MetaScheduleApplyDatabase`` in order, measuring
    which kernels they scheduled for ``collect_tuning_coverage`` (the module is not changed by
    the measuring)."""
    applied = [_apply_database(db) for db in databases]

    @tvm.transform.module_pass(opt_level=0, name="tvmforge.ApplyTuningRecords")
    def _pass(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        tunable = _unscheduled_kernels(mod)
        left = set(tunable)
        covered_by = []
        for apply in applied:
            mod = apply(mod)
            now = _unscheduled_kernels(mod) & left
            covered_by.append(len(left - now))
            left = now
        coverage = {
            "kernels": len(tunable),
            "covered": len(tunable) - len(left),
            "databases": [str(db) for db in databases],
            "covered_by": covered_by,
            "uncovered": sorted(left)[:UNCOVERED_NAMED],
        }
        for found in _COVERAGE:
            found.clear()
            found.update(coverage)
        return mod

    return _pass


def _apply_database(db: Path) -> tvm.transform.Pass:
    """``MetaScheduleApplyDatabase`` over the database in ``db``, opened here: given the folder,
    TVM's pass opens it itself and logs a warning line on every compile."""

    @tvm.transform.module_pass(opt_level=0, name="MetaScheduleApplyDatabase")
    def _pass(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        from tvm.s_tir import meta_schedule as ms

        with ms.database.JSONDatabase(work_dir=str(db)):
            return relax.transform.MetaScheduleApplyDatabase()(mod)

    return _pass


def buffer_passes() -> list[tvm.transform.Pass]:
    """tvmforge's passes on the lowered graph, after ``CallTIRRewrite`` made every kernel's
    output an explicit allocation and before memory planning: a dead residual's buffer
    reused as the output of the kernel that adds it (``inplace_epilogue``)."""
    from tvmforge.passes.lowering import inplace_epilogue

    return [inplace_epilogue.reuse_residual_buffers()]


def pre_schedule_passes(
    target: tvm.target.Target, graph: Sequence[tvm.transform.Pass] = (), fuse: bool = True
) -> list[tvm.transform.Pass]:
    """Stages 1-2: everything before scheduling (what tuning extracts its tasks from).

    Fusion is watched by ``provenance.recording`` (read-only stages that record, inside a
    ``provenance.tracking`` block, which ONNX nodes each kernel computes)."""
    from tvmforge.driver.provenance import recording

    return (
        graph_passes(graph)
        + _backend(target).library_dispatch_passes(target)
        + recording(legalize_passes(fuse))
    )


def to_kernels(
    mod: tvm.ir.IRModule, target: tvm.target.Target, graph: Sequence[tvm.transform.Pass] = ()
) -> tvm.ir.IRModule:
    """The module as the schedule stage sees it: fused TIR kernels, none scheduled yet.

    ``tvmforge tune`` extracts its tasks from this, so the kernels it tunes are exactly the
    ones ``compile`` later looks up in the database.
    """
    with target:
        return tvm.transform.Sequential(pre_schedule_passes(target, graph))(mod)


@relax.register_pipeline("tvmforge")
def tvmforge_pipeline(
    *,
    target: tvm.target.Target,
    graph: Sequence[tvm.transform.Pass] = (),
    databases: Sequence[Path] = (),
    fuse: bool = True,
) -> tvm.transform.Pass:
    """The whole tvmforge pipeline for one target.

    Parameters
    ----------
    target:
        The TVM target (its kind picks the dispatch, lowering and default schedules).
    graph:
        tvmforge graph passes (``passes/``), already instantiated and ordered.
    databases:
        MetaSchedule database folders whose records apply to this target, in priority order.
    fuse:
        Fuse ops into kernels (``False``: one kernel per op).
    """

    @tvm.transform.module_pass(opt_level=0, name="tvmforge")
    def _pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        backend = _backend(target)
        with target:
            seq = tvm.transform.Sequential(
                pre_schedule_passes(target, graph, fuse)
                + schedule_passes(target, databases)
                + backend.dataflow_lower_passes(target)
                + buffer_passes()
                + backend.finalize_passes(target)
                + [_restrict_host_funcs]
            )
            return seq(mod)

    return _pipeline


@tvm.transform.module_pass(opt_level=0, name="tvmforge.RestrictHostFuncs")
def _restrict_host_funcs(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
    """Mark the VM's host PrimFuncs (``shape_func`` of a dynamic-shape model: one buffer, the
    shape heap) ``tirx.noalias``.

    TVM 0.27's LLVM codegen, given a module that holds such a function without the attribute,
    emits every kernel of it without ``noalias`` params (no ``_compute_`` function) and with one
    TBAA tag for all buffers: accumulators are no longer kept in registers, and the kernels of
    a dynamic-batch model ran 2-4x slower than the same kernels built alone. A function with at
    most one pointer param cannot alias, so the attribute is true of it.
    """
    from tvm import tirx

    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
            continue
        if "tirx.is_host_func" not in func.attrs or "tirx.noalias" in func.attrs:
            continue
        pointers = [p for p in func.params if not isinstance(p.ty, tvm.ir.PrimType)]
        if len(pointers) <= 1:  # buffers and handles; scalars cannot alias
            updates[gv] = func.with_attr("tirx.noalias", True)
    for gv, func in updates.items():
        mod[gv] = func
    return mod
