"""``tvmforge.bench.profile`` and the kernel provenance it reads: per-kernel times in a real
run, the ONNX nodes of each kernel, ONNX Runtime's profile of the same model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import conv_relu_model, make_model
from tvmforge.bench.profile import profile, table
from tvmforge.driver.build import build_model, compile_model

# The nodes of ``residual_model`` that compute something (Flatten is a view: no kernel).
COMPUTED = {"conv1", "relu1", "conv2", "add", "relu2", "pool", "fc"}


def residual_model(seed: int = 0) -> onnx.ModelProto:
    """x[1,32,56,56] -> Conv 3x3 (48) -> Relu -> Conv 1x1 (48) -> Add(relu1) -> Relu ->
    GlobalAveragePool -> Flatten -> Gemm (10): convs heavy enough (about 100 MFLOP, a few ms)
    that the kernels, not the VM's own work (tens of microseconds), make up the run."""
    rng = np.random.default_rng(seed)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.1, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = [weight("w1", 48, 32, 3, 3), weight("b1", 48), weight("w2", 48, 48, 1, 1),
             weight("b2", 48), weight("wf", 10, 48), weight("bf", 10)]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 56, 56])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )


def conv_bn_model() -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu: the conv is folded into the BatchNormalization's
    binding (``fold_conv_bn``) before anything is fused."""
    rng = np.random.default_rng(1)
    arr = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(v, n) for n, v in (
        ("w", arr(8, 3, 3, 3)), ("scale", 1 + arr(8) ** 2), ("bias", arr(8)),
        ("mean", arr(8)), ("var", 1 + arr(8) ** 2))]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"],
                         name="bn"),
        helper.make_node("Relu", ["n"], ["y"], name="relu"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        inits,
    )


@pytest.fixture(scope="module")
def residual_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "residual.onnx"
    onnx.save(residual_model(), str(path))
    return path


@pytest.fixture(scope="module")
def residual_profile(residual_path):
    return profile(residual_path, "x86", runs=20, use_shipped_logs=False)


def test_kernel_rows_sum_to_the_measured_run(residual_profile):
    res = residual_profile
    assert res.rows and res.run_ms > 0
    assert res.kernels_ms == pytest.approx(sum(r.ms for r in res.rows))
    # the kernels are the run: what is left is the VM's own work (and noise)
    assert abs(res.kernels_ms - res.run_ms) <= 0.15 * res.run_ms, (res.kernels_ms, res.run_ms)
    assert sum(r.percent for r in res.rows) == pytest.approx(100.0, abs=0.01)
    assert [r.ms for r in res.rows] == sorted((r.ms for r in res.rows), reverse=True)


def test_every_row_names_its_onnx_nodes(residual_profile):
    rows = residual_profile.rows
    assert all(r.onnx_nodes and r.nodes_text() for r in rows)
    assert set().union(*(r.onnx_nodes for r in rows)) == COMPUTED
    by_node = {n: r for r in rows for n in r.onnx_nodes}
    # the 3x3 conv is the heaviest kernel, with its ReLU fused into it
    assert rows[0] is by_node["conv1"] and "relu1" in rows[0].onnx_nodes
    assert rows[0].onnx_ops[0] == "Conv" and rows[0].gflops > 0
    assert rows[0].flops >= 2 * 48 * 32 * 9 * 56 * 56
    # the residual add and its ReLU are the 1x1 conv's epilogue
    assert {"conv2", "add", "relu2"} <= set(by_node["conv2"].onnx_nodes)
    assert by_node["fc"].onnx_ops == ["Gemm"]
    assert residual_profile.by_op["Conv"] >= 0.5 * residual_profile.kernels_ms


def test_onnxruntime_profile_of_the_same_model(residual_profile):
    ort = residual_profile.ort
    assert ort is not None and ort["run_ms"] > 0 and ort["nodes_ms"] > 0
    assert ort["by_op"]["Conv"]["nodes"] == 2  # Conv+Relu fused by ORT counts as Conv
    assert ort["nodes_ms"] == pytest.approx(sum(n["ms"] for n in ort["nodes"]))
    text = "\n".join(table(residual_profile, top=3))
    assert "onnxruntime: run" in text and "Conv" in text
    assert f"{len(residual_profile.rows) - 3} more kernel(s)" in text


def test_an_exported_artifact_is_profiled_with_its_recorded_kernels(tmp_path):
    model = tmp_path / "cr.onnx"
    onnx.save(conv_relu_model(), str(model))
    artifact = compile_model(model, "x86", tmp_path / "cr.tar", use_shipped_logs=False)
    res = profile(artifact, runs=3)
    assert res.model == str(artifact)
    conv = next(r for r in res.rows if "conv1" in r.onnx_nodes)
    assert conv.onnx_nodes == ["conv1", "relu1"] and conv.calls == 1
    assert res.ort is not None and not res.notes
    model.unlink()  # the source is gone: profiled all the same, without ONNX Runtime
    res = profile(artifact, runs=2)
    assert res.ort is None and res.rows
    assert any("is not there" in n for n in res.notes)


def test_provenance_survives_folding_and_is_in_the_manifest():
    built = build_model(conv_bn_model(), "x86", use_shipped_logs=False)
    kernels = built.kernels
    conv = next(k for k in kernels.values() if "bn" in k["onnx_nodes"])
    # the conv folded into the BatchNormalization is named with it, in graph order
    assert conv["onnx_nodes"] == ["conv", "bn", "relu"]
    assert conv["onnx_ops"] == ["Conv", "BatchNormalization", "Relu"]
    assert conv["flops"] > 2 * 8 * 27 * 256 and not conv["inferred"]
    assert built.manifest()["kernels"] == kernels
