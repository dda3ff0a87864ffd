"""ARM builds run on this x86 machine under qemu (``tvmforge.targets.qemu``).

The first run prepares the aarch64 runtime root (about 20 s, cached in
``~/.cache/tvmforge/aarch64`` or ``$TVMFORGE_AARCH64_ROOT`` afterwards). Emulation is ~45x slower
than native, so the models are tiny; each emulated run costs ~5 s, most of it importing TVM.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tvmforge.targets import qemu

CROSS_CC = "aarch64-linux-gnu-gcc"


def _arm_target(mcpu: str, mattr: list[str]):
    import tvm

    return tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": mattr}
    )


@pytest.fixture(scope="session")
def aarch64_root() -> Path:
    for tool in (qemu.QEMU, CROSS_CC):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found")
    return qemu.prepare(quiet=True)


def _conv_relu_matmul():
    """A small ONNX graph with two outputs: Conv -> Relu (``feat``) -> MatMul (``out``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    m = rng.standard_normal((16, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["feat"]),
            helper.make_node("MatMul", ["feat", "m"], ["out"]),
        ],
        "conv_relu_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [
            helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 8, 16, 16]),
            helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 16, 4]),
        ],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(m, "m"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9
    )
    onnx.checker.check_model(model)
    return model


def test_runtime_root_is_ready(aarch64_root: Path):
    assert qemu.available(), qemu.available().reason
    assert (aarch64_root / qemu.MARKER).is_file()
    assert not list((aarch64_root / "pyarm").rglob("libtvm_compiler.so"))
    assert qemu.prepare(aarch64_root) == aarch64_root  # idempotent, and at once


def test_available_names_the_prepare_command(tmp_path: Path):
    cap = qemu.available(root=tmp_path / "missing")
    assert not cap
    assert "python -m tvmforge.targets.qemu" in cap.reason or "not found" in cap.reason


def test_onnx_model_matches_onnxruntime_under_qemu(aarch64_root: Path, tmp_path: Path):
    import onnxruntime as ort
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = _conv_relu_matmul()
    mod = from_onnx(model, shape_dict={"x": [1, 3, 16, 16]}, keep_params_in_input=False)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    ex = tvm.compile(mod, target=_arm_target("cortex-a72", ["+neon"]))
    lib = tmp_path / "model_a72.so"
    ex.export_library(str(lib), cc=CROSS_CC)

    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    outputs, times = qemu.run_library(lib, [x], qemu_cpu="cortex-a72", repeat=2)

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(["feat", "out"], {"x": x})
    assert len(outputs) == 2
    for got, want in zip(outputs, expected, strict=True):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert len(times) == 2 and all(t > 0 for t in times)


def _sdot_module():
    """An int8 matmul (4x16 . 8x16^T -> int32) whose reduction is tensorized with TVM's own
    ``dot_4x4_i8i8s32_sdot`` intrinsic, so the build holds ``sdot`` whatever LLVM decides."""
    import tvm
    from tvm import relax, te
    from tvm.s_tir.tensor_intrin.arm_cpu import ARM_DOT_4x4_i8_SDOT_INTRIN

    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorStructInfo((4, 16), "int8"))
    b = relax.Var("b", relax.TensorStructInfo((8, 16), "int8"))

    def matmul(ta, tb):
        k = te.reduce_axis((0, 16), "k")
        return te.compute(
            (4, 8),
            lambda i, j: te.sum(ta[i, k].astype("int32") * tb[j, k].astype("int32"), axis=k),
            name="C",
        )

    with bb.function("main", [a, b]):
        out = bb.emit_te(matmul, a, b, primfunc_name_hint="int8_matmul")
        bb.emit_func_output(out)
    mod = bb.get()

    sch = tvm.s_tir.Schedule(mod)
    sch.work_on("int8_matmul")
    block = sch.get_sblock("C")
    i, j, k = sch.get_loops(block)
    jo, ji = sch.split(j, [None, 4])
    ko, ki = sch.split(k, [None, 4])
    sch.reorder(i, jo, ko, ji, ki)
    sch.decompose_reduction(block, ko)
    sch.tensorize(ji, ARM_DOT_4x4_i8_SDOT_INTRIN)
    return sch.mod


def test_dotprod_build_is_refused_by_a_core_without_it(aarch64_root: Path, tmp_path: Path):
    import tvm

    ex = tvm.compile(_sdot_module(), target=_arm_target("cortex-a76", ["+neon", "+dotprod"]))
    assert "sdot" in ex.mod.imports[0].inspect_source("asm")
    lib = tmp_path / "sdot_a76.so"
    ex.export_library(str(lib), cc=CROSS_CC)

    rng = np.random.default_rng(2)
    a = rng.integers(-128, 128, (4, 16), dtype=np.int8)
    b = rng.integers(-128, 128, (8, 16), dtype=np.int8)
    want = a.astype(np.int32) @ b.astype(np.int32).T

    (got,), _ = qemu.run_library(lib, [a, b], qemu_cpu="cortex-a76")
    np.testing.assert_array_equal(got, want)

    with pytest.raises(RuntimeError, match="Illegal instruction") as info:
        qemu.run_library(lib, [a, b], qemu_cpu="cortex-a72")
    assert isinstance(info.value, qemu.EmulationError)
    assert info.value.returncode == -4  # SIGILL
