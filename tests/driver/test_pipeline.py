"""The ``tvmforge`` Relax pipeline is registered and works on any Relax module."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvmforge.driver import pipeline


@I.ir_module
class AddRelu:
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), y: R.Tensor((4, 8), "float32")):
        with R.dataflow():
            z = R.nn.relu(R.add(x, y))
            R.output(z)
        return z


def test_registered_and_usable_outside_tvmforge():
    target = tvm.target.Target({"kind": "llvm"})
    pipe = relax.get_pipeline("tvmforge", target=target)
    ex = tvm.compile(AddRelu, target=target, relax_pipeline=pipe)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)
    out = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(y)).numpy()
    np.testing.assert_allclose(out, np.maximum(x + y, 0), rtol=1e-6)


def test_fuses_elementwise_chain_into_one_kernel():
    target = tvm.target.Target({"kind": "llvm"})
    mod = pipeline.tvmforge_pipeline(target=target)(AddRelu)
    kernels = [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(kernels) == 1, kernels  # add + relu fused


def test_cuda_pipeline_schedules_every_kernel():
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    mod = pipeline.tvmforge_pipeline(target=target)(AddRelu)
    funcs = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs and all("threadIdx" in f.script() for f in funcs)


def test_cpu_graph_passes_end_with_layouts_packing_and_fast_math():
    """After the caller's passes (the quantizer makes NHWC regions): the Q/DQ pairs left float
    made elementwise, transposes sunk, channel shuffles folded into depthwise convs, then
    blocked conv layouts, dense weight packing and fast math; the 4-bit and dynamic-int8
    placeholders are lowered before the caller's passes."""
    marker = relax.transform.CanonicalizeBindings()
    names = [p.info.name for p in pipeline.graph_passes([marker])]
    caller = len(names) - 1 - names[::-1].index(marker.info.name)
    assert names[caller + 1 :] == [
        "FakeQuant", "SinkTransposes", "FoldChannelShuffle", "NchwcLayout", "PackDenseWeights",
        "FastMathCpu"
    ]
    assert names.index("ConvTransposeDirect") < caller
    assert names.index("LowerMatMulNBits") < caller and names.index("LowerQMatMulInteger") < caller


@I.ir_module
class DynamicBatchAddRelu:
    @R.function
    def main(x: R.Tensor(("n", 8), "float32"), y: R.Tensor(("n", 8), "float32")):
        with R.dataflow():
            z = R.nn.relu(R.add(x, y))
            R.output(z)
        return z


def test_dynamic_shape_host_function_is_noalias():
    """A dynamic-shape model gets a host ``shape_func``; without ``tirx.noalias`` on it, TVM's
    LLVM codegen drops ``noalias`` from every kernel of the module (ResNet-50 with a dynamic
    batch ran 2.5x slower). The pipeline marks it."""
    target = tvm.target.Target({"kind": "llvm"})
    mod = pipeline.tvmforge_pipeline(target=target)(DynamicBatchAddRelu)
    host = [
        f
        for _, f in mod.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc)
        and f.attrs is not None
        and "tirx.is_host_func" in f.attrs
    ]
    assert host, "expected a shape_func for the symbolic batch"
    assert all(bool(f.attrs["tirx.noalias"]) for f in host)
    ex = tvm.compile(
        DynamicBatchAddRelu,
        target=target,
        relax_pipeline=relax.get_pipeline("tvmforge", target=target),
    )
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for n in (1, 3):
        x = np.random.default_rng(n).normal(size=(n, 8)).astype(np.float32)
        out = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(x)).numpy()
        np.testing.assert_allclose(out, np.maximum(2 * x, 0), rtol=1e-6)
