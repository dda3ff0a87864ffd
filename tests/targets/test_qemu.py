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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def test_runtime_root_is_ready(aarch64_root: Path):
    assert qemu.available(), qemu.available().reason
    assert (aarch64_root / qemu.MARKER).is_file()
    assert not list((aarch64_root / "pyarm").rglob("libtvm_compiler.so"))
    assert qemu.prepare(aarch64_root) == aarch64_root  # idempotent, and at once


def test_available_names_the_prepare_command(tmp_path: Path):
    half_made = tmp_path / "root"
    (half_made / "pyarm").mkdir(parents=True)  # no READY marker
    cap = qemu.available(root=half_made)
    assert not cap
    if shutil.which(qemu.QEMU) is None:
        assert cap.reason == f"{qemu.QEMU} not found: apt-get install qemu-user-static mmdebstrap"
    else:
        assert f"python -m tvmforge.targets.qemu --root {half_made}" in cap.reason


def test_debian_mirrors_come_from_the_apt_sources(tmp_path: Path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://other.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\n# a comment\nURIs: http://sec.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    (tmp_path / "sources.list.d" / "x.list.disabled").write_text("deb http://no/ bookworm main\n")
    assert qemu.debian_mirrors(tmp_path) == (
        "http://mirror.example/debian",
        "http://sec.example/debian-security",
    )
    assert qemu.debian_mirrors(tmp_path / "nothing") == (
        "http://deb.debian.org/debian",
        "http://deb.debian.org/debian-security",
    )


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

    # An error in the emulated Python comes back as its last line of stderr.
    with pytest.raises(RuntimeError, match=r"^AttributeError: Module has no function 'nope'$"):
        qemu.run_library(lib, [x], qemu_cpu="cortex-a72", entry="nope")


def _sdot_module():
    """An int8 matmul C[4, 8] = A[4, 16] . B[8, 16]^T written with the ``sdot`` intrinsic itself
    (as TVM's ``dot_4x4_i8i8s32_sdot`` tensor intrinsic emits it), so the build holds ``sdot``
    whatever LLVM's vectorizer decides. B comes packed as [N/4, K/4, 4, 4], flattened."""
    from tvm.script import ir as I
    from tvm.script import relax as R
    from tvm.script import tirx as T

    @I.ir_module
    class Module:
        @T.prim_func
        def int8_matmul(
            a: T.Buffer((4, 16), "int8"), bp: T.Buffer((128,), "int8"), c: T.Buffer((4, 8), "int32")
        ):
            T.func_attr({"tir.noalias": True})
            for i, jo in T.grid(4, 2):
                c[i, T.ramp(jo * 4, 1, 4)] = T.broadcast(T.int32(0), 4)
                for ko in range(4):
                    a4 = T.reinterpret("int32", a[i, T.ramp(ko * 4, 1, 4)])
                    c[i, T.ramp(jo * 4, 1, 4)] = T.call_llvm_pure_intrin(
                        "int32x4",
                        "llvm.aarch64.neon.sdot.v4i32.v16i8",
                        c[i, T.ramp(jo * 4, 1, 4)],
                        T.reinterpret("int8x16", T.broadcast(a4, 4)),
                        bp[T.ramp(jo * 64 + ko * 16, 1, 16)],
                    )

        @R.function
        def main(a: R.Tensor((4, 16), "int8"), bp: R.Tensor((128,), "int8")) -> R.Tensor(
            (4, 8), "int32"
        ):
            cls = Module
            return R.call_tir(cls.int8_matmul, (a, bp), out_ty=R.Tensor((4, 8), "int32"))

    return Module


def test_dotprod_build_is_refused_by_a_core_without_it(aarch64_root: Path, tmp_path: Path):
    """A cortex-a76 build with ``sdot`` runs under QEMU_CPU=cortex-a76 and dies with SIGILL
    under cortex-a72, as it would on a Raspberry Pi 4."""
    import tvm

    ex = tvm.compile(_sdot_module(), target=_arm_target("cortex-a76", ["+neon", "+dotprod"]))
    assert "sdot\t" in ex.mod.imports[0].inspect_source("asm")
    lib = tmp_path / "sdot_a76.so"
    ex.export_library(str(lib), cc=CROSS_CC)

    rng = np.random.default_rng(2)
    a = rng.integers(-128, 128, (4, 16), dtype=np.int8)
    b = rng.integers(-128, 128, (8, 16), dtype=np.int8)
    bp = np.ascontiguousarray(b.reshape(2, 4, 4, 4).transpose(0, 2, 1, 3)).reshape(-1)
    want = a.astype(np.int32) @ b.astype(np.int32).T

    (got,), _ = qemu.run_library(lib, [a, bp], qemu_cpu="cortex-a76")
    np.testing.assert_array_equal(got, want)

    with pytest.raises(RuntimeError, match="Illegal instruction") as info:
        qemu.run_library(lib, [a, bp], qemu_cpu="cortex-a72")
    assert isinstance(info.value, qemu.EmulationError)
    assert info.value.returncode == -4  # SIGILL
