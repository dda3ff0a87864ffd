"""Small ONNX graphs built in the tests (real ops, seeded weights, no files)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# onnxruntime 1.31 reads ONNX IR <= 13; onnx 1.23 writes IR 14 by default.
IR_VERSION = 9
OPSET = 17


def make_model(nodes, inputs, outputs, initializers=(), opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )


def conv_relu_model(batch: int | str = 1, seed: int = 0) -> onnx.ModelProto:
    """x[B,3,16,16] -> Conv(8, 3x3, pad 1) + bias -> Relu -> GlobalAveragePool -> MatMul."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b")
    fc = numpy_helper.from_array(rng.normal(0, 0.3, (8, 5)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])],
        [w, b, fc],
    )


def two_io_model() -> onnx.ModelProto:
    """Two inputs (float, int64) and two outputs: s = a + b, c = cast(k) * 2."""
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),
        helper.make_node("Cast", ["k"], ["kf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["kf", "two"], ["c"], name="mul"),
    ]
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    return make_model(
        nodes,
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [4]),
        ],
        [
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [4]),
        ],
        [two],
    )


def dynamic_batch(model: onnx.ModelProto, name: str = "N") -> onnx.ModelProto:
    """``model`` as an exporter with a dynamic batch axis writes it: the leading dim of every
    input and output becomes ``name``, and each ``Reshape`` to a constant ``[1, ...]`` reshapes
    to ``Concat(Gather(Shape(x), [0]), [...])`` instead (what ``torch.onnx.export`` emits for
    ``x.view(x.size(0), ...)``; ops of opset 1, as the light models are old)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    for vi in [*g.input, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in inits and dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = name
    nodes = []
    for n in g.node:
        target = inits.get(n.input[1]) if n.op_type == "Reshape" else None
        if target is not None and numpy_helper.to_array(target)[0] == 1:
            p = f"{n.output[0]}_dyn"
            rest = numpy_helper.to_array(target)[1:].astype(np.int64)
            g.initializer.extend(
                [
                    numpy_helper.from_array(rest, f"{p}_rest"),
                    numpy_helper.from_array(np.array([0], np.int64), f"{p}_index"),
                ]
            )
            nodes += [
                helper.make_node("Shape", [n.input[0]], [f"{p}_shape"]),
                helper.make_node("Gather", [f"{p}_shape", f"{p}_index"], [f"{p}_n"], axis=0),
                helper.make_node("Concat", [f"{p}_n", f"{p}_rest"], [f"{p}_target"], axis=0),
            ]
            n.input[1] = f"{p}_target"
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return model


# --- parsing and resolving -------------------------------------------------------------------


def cpu_target(cores: int = 2) -> dict:
    """An x86 target these tests can build *and run* here: Skylake-SP (AVX-512, 16 lanes)
    where the host has AVX-512, else the host's own CPU (its lanes may be 8). Tests read the
    lanes off ``CpuScheduleParams.from_target`` rather than assuming 16."""
    from tvmforge.targets.features import detect_host, host_llvm_cpu

    mcpu = "skylake-avx512" if detect_host().lanes >= 16 else host_llvm_cpu()
    return {"kind": "llvm", "mcpu": mcpu, "num-cores": cores}


def run_both(model: onnx.ModelProto, feeds: dict, shapes: dict | None = None, frozen=None):
    """(tvmforge's outputs, ONNX Runtime's) for ``model`` on ``feeds``: built for x86 in
    memory, as ``compile`` does, and run on the Relax VM; ORT on one thread."""
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    from tvmforge.driver.build import build_model
    from tvmforge.runtime.executor import LocalVM

    shapes = shapes or {k: v.shape for k, v in feeds.items() if k not in (frozen or {})}
    built = build_model(model, "x86", input_shapes=shapes, frozen_inputs=frozen,
                        use_shipped_logs=False)
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "lib.so"
        built.executable.export_library(str(lib))
        ours = LocalVM(lib, "cpu").run([feeds[i.name] for i in built.inputs])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, ["CPUExecutionProvider"])
    return ours, sess.run(None, feeds)


def assert_close(ours, ref, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Every output: same shape and dtype, values within tolerance (NaN where NaN)."""
    assert len(ours) == len(ref)
    for k, (o, r) in enumerate(zip(ours, ref, strict=True)):
        assert o.shape == r.shape, f"output {k}: shape {o.shape} vs {r.shape}"
        assert o.dtype == r.dtype, f"output {k}: dtype {o.dtype} vs {r.dtype}"
        np.testing.assert_allclose(o, r, rtol=rtol, atol=atol, equal_nan=True,
                                   err_msg=f"output {k}")
