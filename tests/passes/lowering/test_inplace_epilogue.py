"""Kernel outputs written over a dead residual's buffer (``passes/inplace_epilogue.py``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvmforge.driver.pipeline import _backend, schedule_passes, to_kernels
from tvmforge.frontend import importer as frontend
from tvmforge.passes.lowering.inplace_epilogue import inplace_param, reuse_residual_buffers

X86 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}  # structure: 16 lanes
C, HW = 32, 14


def _residual_model(shortcut_read_after: bool = False, shortcut_into_conv: bool = False):
    """``a = relu(conv0(x))``; ``y = relu(conv2(relu(conv1(a))) + a)`` (a bottleneck's tail).

    ``shortcut_read_after``: a conv after the add reads ``a`` too (a second output), so ``a``
    is live after the residual kernel.
    ``shortcut_into_conv``: the last conv reads ``a`` itself (``relu(conv2(a) + a)``).
    """
    rng = np.random.default_rng(3)

    def w(name, cin, cout, k):
        return numpy_helper.from_array(
            (rng.standard_normal((cout, cin, k, k)) * 0.2).astype(np.float32), name
        )

    inits = [w("w0", C, C, 1), w("w1", C, C, 3), w("w2", C, C, 1), w("w3", C, C, 1)]
    inits += [numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), f"b{i}")
              for i in range(3)]
    last_in = "a" if shortcut_into_conv else "h"
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"]),
        helper.make_node("Relu", ["c0"], ["a"]),
        helper.make_node("Conv", ["a", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["h"]),
        helper.make_node("Conv", [last_in, "w2", "b2"], ["c2"]),
        helper.make_node("Add", ["c2", "a"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    if shortcut_read_after:
        nodes.append(helper.make_node("Conv", ["a", "w3"], ["z"]))
    shape = [1, C, HW, HW]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    if shortcut_read_after:
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outputs, inits
    )
    return helper.make_model(graph, ir_version=9, opset_imports=[helper.make_operatorsetid("", 17)])


def _lowered(model: onnx.ModelProto) -> tvm.IRModule:
    """The module as ``reuse_residual_buffers`` sees it in the pipeline."""
    loaded = frontend.load(model)
    target = tvm.target.Target(X86)
    mod = to_kernels(frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {})), target)
    with target:
        passes = schedule_passes(target, []) + _backend(target).dataflow_lower_passes(target)
        return tvm.transform.Sequential(passes)(mod)


def _residual_kernel(mod: tvm.IRModule) -> tuple[str, tvm.tirx.PrimFunc]:
    (found,) = [(g.name_hint, f) for g, f in mod.functions_items()
                if isinstance(f, tvm.tirx.PrimFunc) and g.name_hint.count("add") >= 2]
    return found


def _calls(mod: tvm.IRModule, name: str) -> list[relax.Call]:
    calls = []
    relax.analysis.post_order_visit(
        mod["main"],
        lambda e: calls.append(e)
        if isinstance(e, relax.Call) and isinstance(e.op, relax.GlobalVar)
        and e.op.name_hint == name else None,
    )
    return calls


def test_the_residual_kernel_may_write_over_its_shortcut():
    _, func = _residual_kernel(_lowered(_residual_model()))
    index = inplace_param(func)
    assert index is not None
    assert [int(d) for d in func.params[index].shape] == [int(d) for d in func.params[-1].shape]


def test_a_shortcut_the_conv_itself_reads_is_not_overwritten():
    """``relu(conv(a) + a)``: the conv reads all of ``a`` for every output element."""
    _, func = _residual_kernel(_lowered(_residual_model(shortcut_into_conv=True)))
    assert inplace_param(func) is None


def test_a_dead_shortcut_becomes_the_output_buffer():
    mod = _lowered(_residual_model())
    name, func = _residual_kernel(mod)
    index = inplace_param(func)
    before = mod["main"].script().count("alloc_tensor")
    new = reuse_residual_buffers()(mod)
    (call,) = _calls(new, name)
    assert call.args[-1].same_as(call.args[index])  # the shortcut is the output
    assert new["main"].script().count("alloc_tensor") == before - 1


def test_a_shortcut_read_later_keeps_its_buffer():
    mod = _lowered(_residual_model(shortcut_read_after=True))
    name, _ = _residual_kernel(mod)
    new = reuse_residual_buffers()(mod)
    (call,) = _calls(new, name)
    assert not any(call.args[-1].same_as(a) for a in call.args[:-1])


@pytest.mark.parametrize("shortcut_read_after", [False, True])
def test_models_with_a_reused_shortcut_match_onnxruntime(shortcut_read_after):
    import onnxruntime as ort

    from tvmforge import build_model

    model = _residual_model(shortcut_read_after=shortcut_read_after)
    x = np.random.default_rng(0).standard_normal((1, C, HW, HW)).astype(np.float32)
    built = build_model(model, "x86", threads=2)
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x, tvm.cpu()))
    got = [got] if hasattr(got, "numpy") else list(got)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})
    assert len(got) == len(want)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-4, atol=1e-4 * float(np.abs(r).max()))
