"""int8 on ARM: the dot-product (``sdot``) kernels on ``+dotprod`` cores, checked under qemu.

On ``arm:neoverse-n1`` / ``arm:cortex-a76`` ``quantize_int8`` tensorizes convs and dense layers
with ``sdot`` (s8 x s8: the kernel reads ``x_q - 128``, the bias gives the 128 back); on
``arm:cortex-a72`` (no dot product) they stay plain int32 arithmetic. Either way the integers
are the same as the x86 int8 build's: the outputs agree to the requant rounding.
"""

from __future__ import annotations

import functools
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

import tvmforge
from tvmforge.passes.schedule import int8_kernels as K
from tvmforge.targets import arm, qemu, resolve

OBJDUMP = "aarch64-linux-gnu-objdump"


def _conv_relu_dense():
    """x [1, 6, 10, 12] -> Conv 3x3 (20 ch, pad 1) + bias -> Relu -> MatMul [12, 20] (dense)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 6, 3, 3)).astype(np.float32) * 0.3
    b = rng.standard_normal(20).astype(np.float32) * 0.1
    m = rng.standard_normal((12, 20)).astype(np.float32) * 0.3
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("MatMul", ["r", "m"], ["out"]),
        ],
        "conv_relu_dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 10, 12])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 20, 10, 20])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
                     numpy_helper.from_array(m, "m")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def _disassembly(artifact: Path, tmp_path: Path) -> str:
    with tarfile.open(artifact) as tar:
        so = tmp_path / f"{artifact.stem}.so"
        so.write_bytes(tar.extractfile("model.so").read())
    return subprocess.run([OBJDUMP, "-d", str(so)], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture(scope="module")
def x86_int8(tmp_path_factory):
    """The model's int8 build for x86 with 8-bit weights (VNNI, or the int32 kernels: an AVX2
    host's vpmaddubsw kernels take 7-bit weights, other integers than ARM's), its output on
    fixed inputs (uniform ``[0, 1)``, as the seeded random calibration draws them)."""
    from tvmforge.passes.schedule.intrinsics import int8_family
    from tvmforge.targets import resolve

    tmp = tmp_path_factory.mktemp("x86")
    model = _conv_relu_dense()
    target = "x86"
    if int8_family(resolve(target).tvm_target()) == "avx2":
        target = '{"kind": "llvm", "mcpu": "x86-64-v2"}'  # no int8 family: the int32 kernels
    path = tvmforge.compile_model(model, target, tmp / "x86.tar", quantize="int8",
                                  calibration="random")
    x = np.random.default_rng(3).random((1, 6, 10, 12)).astype(np.float32)
    (out,) = tvmforge.load(path)(x=x).values()
    out = np.asarray(out)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    assert np.abs(out - ref).max() < 0.03 * np.abs(ref).max()  # int8 is close to float
    return model, x, out


@pytest.mark.parametrize(("preset", "kind"), [("neoverse-n1", "sdot"), ("cortex-a72", "int32")])
def test_arm_int8_model_matches_x86_int8(aarch64_root, tmp_path, x86_int8, preset, kind):
    import shutil

    if shutil.which(OBJDUMP) is None:
        pytest.skip(f"{OBJDUMP} not found")
    model, x, want = x86_int8
    path = tvmforge.compile_model(model, f"arm:{preset}", tmp_path / f"{preset}.tar",
                                  quantize="int8", calibration="random")
    report = tvmforge.runtime.artifact.read_manifest(path)["quantization"]
    assert [layer["kernel"] for layer in report["layers"]] == [kind, kind]
    assert report.get("sdot", False) == (kind == "sdot")
    asm = _disassembly(path, tmp_path)
    n_sdot = asm.count("\tsdot\t")
    assert (n_sdot > 0) == (kind == "sdot"), n_sdot

    (got,) = tvmforge.load(path)(x=x).values()  # under qemu, QEMU_CPU = the preset's core
    got = np.asarray(got)
    assert got.shape == want.shape
    # The same integers (calibration is seeded): equal up to the float epilogue's rounding.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_sdot_kernel_is_bit_exact_under_qemu(aarch64_root, tmp_path):
    """The scheduled ``sdot`` conv kernel alone (IC 6, OC 20: both padded; stride 2; u8 output)
    against the integer numpy reference of the u8 x s8 conv, bit for bit."""
    import tvm
    from tvm import relax

    rng = np.random.default_rng(1)
    n, h, w_, c, oc, k, s, p, zx = 1, 9, 12, 6, 20, 3, 2, 1, 5
    x = rng.integers(0, 256, (n, h, w_, c)).astype(np.uint8)
    w = rng.integers(-127, 128, (oc, c, k, k)).astype(np.int8)
    ocp = 32
    bias = rng.integers(-2000, 2000, ocp).astype(np.int32)
    mult = (rng.random(ocp) * 2e-4).astype(np.float32)
    spec = K.ConvSpec(kernel=(k, k), strides=(s, s), padding=(p, p, p, p))
    epi = K.Epilogue(out_dtype="uint8", zero_point=3, lower=0.0)
    wsum = w.reshape(oc, -1).astype(np.int64).sum(axis=1)
    bias_s = bias.copy()
    bias_s[:oc] += (128 * wsum).astype(np.int32)  # what quantize_int8 folds in for sdot
    args = [x, K.pack_weight_vnni(w), bias_s, mult]

    bb = relax.BlockBuilder()
    params = [relax.Var(f"a{i}", relax.TensorType(a.shape, str(a.dtype)))
              for i, a in enumerate(args)]
    fn = functools.partial(K.qconv2d_nhwc, spec=spec, epi=epi, x_zero_point=zx,
                           out_channels=oc, signed=True)
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(bb.call_te(fn, *params, primfunc_name_hint="qconv"))
        bb.emit_func_output(out)
    mod = bb.get()
    gv = mod.get_global_var("qconv")
    mod[gv] = K.schedule_sdot(mod[gv], 1).with_attr("tirx.is_scheduled", True)
    ex = tvm.compile(mod, target=resolve("arm:neoverse-n1", threads=None).tvm_target())
    assert ex.mod.imports[0].inspect_source("asm").count("sdot\t") > 0
    lib = tmp_path / "qconv_sdot.so"
    ex.export_library(str(lib), cc=arm.CROSS_CC)
    (got,), _ = qemu.run_library(lib, args, qemu_cpu="neoverse-n1")

    # integer reference: u8 x s8, padding inserts zx
    xp = np.pad(x.astype(np.int64), ((0, 0), (p, p), (p, p), (0, 0)), constant_values=zx)
    oh, ow = spec.out_hw(h, w_)
    acc = np.zeros((n, oh, ow, oc), np.int64)
    for i in range(k):
        for j in range(k):
            patch = xp[:, i:i + s * oh:s, j:j + s * ow:s, :]
            acc += np.einsum("nhwc,oc->nhwo", patch, w[:, :, i, j].astype(np.int64))
    t = np.maximum((acc + bias[:oc]).astype(np.float32) * mult[:oc], np.float32(0))
    np.testing.assert_array_equal(got, np.clip(np.round(t) + 3, 0, 255).astype(np.uint8))
