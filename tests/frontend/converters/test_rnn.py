"""RNN, GRU and LSTM (``tvmforge.frontend.converters.rnn``): built for x86 and compared with ONNX Runtime.

Each case is one recurrent node with seeded random weights (sequence 5, batch 2, input 3,
hidden 4). ONNX Runtime's CPU kernels reject ``layout = 1``, so a layout-1 case is checked
against the layout-0 twin of the same node run on transposed inputs, its outputs transposed back.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import tvmforge
from tvmforge.frontend import importer as frontend

SEQ, BATCH, INPUT, HIDDEN = 5, 2, 3, 4
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
OUTPUT_NAMES = ("Y", "Y_h", "Y_c")
ATOL = 1e-5


@dataclass(frozen=True)
class Case:
    """One recurrent node: the op and the attributes and optional inputs it uses."""

    op: str
    direction: str = "forward"
    layout: int = 0
    activations: tuple[str, ...] = ()
    alpha: tuple[float, ...] = ()
    beta: tuple[float, ...] = ()
    bias: bool = True
    initial: str = "hc"  # "", "h" or "hc": which initial states are given (c: LSTM only)
    peepholes: bool = False
    clip: float | None = None
    input_forget: int = 0
    linear_before_reset: int = 0
    used: tuple[bool, ...] = (True, True, True)  # which of Y, Y_h, Y_c the graph uses
    opset: int = 14
    weights_as_inputs: bool = False
    full_sequence_lens: bool = False  # a constant sequence_lens equal to SEQ

    @property
    def nd(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    @property
    def label(self) -> str:
        parts = [self.op, self.direction, f"layout{self.layout}", f"opset{self.opset}"]
        if self.activations:
            parts.append("+".join(self.activations))
        flags = {
            "nobias": not self.bias,
            f"init-{self.initial or 'none'}": self.initial != "hc",
            "peep": self.peepholes,
            f"clip{self.clip}": self.clip is not None,
            "input_forget": self.input_forget,
            "lbr": self.linear_before_reset,
            "weights-in": self.weights_as_inputs,
            "seqlens": self.full_sequence_lens,
        }
        parts += [name for name, on in flags.items() if on]
        n_out = 3 if self.op == "LSTM" else 2
        if not all(self.used[:n_out]):
            parts.append("out-" + "".join(str(int(u)) for u in self.used[:n_out]))
        return "-".join(parts)


def rnn_model(case: Case) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The single-node model of ``case`` and random run-time inputs for it."""
    # Seeded by the layout-free label, so a layout-1 case and its layout-0 twin share weights.
    rng = np.random.default_rng(zlib.crc32(replace(case, layout=0).label.encode()))
    nd, gh = case.nd, GATES[case.op] * HIDDEN

    def rand(*shape: int, scale: float = 0.5) -> np.ndarray:
        return rng.normal(0.0, scale, shape).astype(np.float32)

    x_shape = (BATCH, SEQ, INPUT) if case.layout else (SEQ, BATCH, INPUT)
    state_shape = (BATCH, nd, HIDDEN) if case.layout else (nd, BATCH, HIDDEN)
    feeds = {"X": rand(*x_shape, scale=1.0)}
    weights = {"W": rand(nd, gh, INPUT), "R": rand(nd, gh, HIDDEN)}
    if case.bias:
        weights["B"] = rand(nd, 2 * gh)
    consts = {}
    if case.full_sequence_lens:
        consts["seq_lens"] = np.full((BATCH,), SEQ, np.int32)
    if case.initial:
        feeds["initial_h"] = rand(*state_shape, scale=1.0)
    if "c" in case.initial and case.op == "LSTM":
        feeds["initial_c"] = rand(*state_shape, scale=1.0)
    if case.peepholes:
        weights["P"] = rand(nd, 3 * HIDDEN)
    if case.weights_as_inputs:
        feeds.update(weights)
    else:
        consts.update(weights)

    inputs = ["X", "W", "R", "B", "seq_lens", "initial_h"]
    if case.op == "LSTM":
        inputs += ["initial_c", "P"]
    given = set(feeds) | set(consts)
    inputs = [name if name in given else "" for name in inputs]
    while inputs[-1] == "":
        inputs.pop()
    n_out = 3 if case.op == "LSTM" else 2
    outputs = [n if u else "" for n, u in zip(OUTPUT_NAMES[:n_out], case.used, strict=False)]
    while outputs[-1] == "":
        outputs.pop()

    attrs: dict = {"hidden_size": HIDDEN, "direction": case.direction}
    if case.opset >= 14:
        attrs["layout"] = case.layout
    if case.activations:
        attrs["activations"] = list(case.activations)
    if case.alpha:
        attrs["activation_alpha"] = list(case.alpha)
    if case.beta:
        attrs["activation_beta"] = list(case.beta)
    if case.clip is not None:
        attrs["clip"] = case.clip
    if case.op == "LSTM" and case.input_forget:
        attrs["input_forget"] = case.input_forget
    if case.op == "GRU" and case.linear_before_reset:
        attrs["linear_before_reset"] = case.linear_before_reset

    node = helper.make_node(case.op, inputs, outputs, name="rnn0", **attrs)
    graph = helper.make_graph(
        [node],
        "rnn",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in feeds.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs if n],
        [numpy_helper.from_array(a, n) for n, a in consts.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", case.opset)], ir_version=9
    )
    return model, feeds


def reference(case: Case, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """ONNX Runtime's outputs; for layout 1, those of the layout-0 twin, transposed back."""
    if case.layout == 0:
        model, _ = rnn_model(case)
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return session.run(None, feeds)
    twin, _ = rnn_model(replace(case, layout=0))
    to_seq_major = {"X": (1, 0, 2), "initial_h": (1, 0, 2), "initial_c": (1, 0, 2)}
    twin_feeds = {
        n: np.ascontiguousarray(a.transpose(to_seq_major[n])) if n in to_seq_major else a
        for n, a in feeds.items()
    }
    session = ort.InferenceSession(twin.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = session.run(None, twin_feeds)
    names = [o.name for o in twin.graph.output]
    return [
        o.transpose((2, 0, 1, 3) if n == "Y" else (1, 0, 2))
        for n, o in zip(names, outs, strict=True)
    ]


def run_tvm(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    built = tvmforge.build_model(model, "x86")
    vm = tvm.relax.VirtualMachine(built.executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feeds[i.name]) for i in built.inputs])
    outs = [out] if hasattr(out, "numpy") else list(out)
    return [o.numpy() for o in outs]


def _grid() -> list[Case]:
    return [
        Case(op, direction, layout)
        for op in GATES
        for direction in ("forward", "reverse", "bidirectional")
        for layout in (0, 1)
    ]


VARIANTS = [
    # every activation of the spec, with explicit and default alpha / beta
    Case("RNN", activations=("Relu",), bias=False, initial=""),
    Case(
        "RNN",
        "bidirectional",
        activations=("LeakyRelu", "ThresholdedRelu"),
        alpha=(0.2, 0.1),
        clip=2.0,
    ),
    Case("RNN", "reverse", 1, activations=("ScaledTanh",), alpha=(0.8,), beta=(1.3,)),
    Case("RNN", "bidirectional", activations=("Affine", "Softsign"), alpha=(0.7,), beta=(0.1,)),
    Case("RNN", activations=("LeakyRelu",)),  # default alpha 0.01
    Case("GRU", "reverse", activations=("HardSigmoid", "Elu"), alpha=(0.3, 0.9), beta=(0.4,)),
    Case(
        "GRU",
        "bidirectional",
        activations=("Sigmoid", "Softplus", "HardSigmoid", "Softsign"),
        linear_before_reset=1,
    ),
    Case(
        "LSTM",
        activations=("HardSigmoid", "ScaledTanh", "Softsign"),
        alpha=(0.25, 0.9),
        beta=(0.45, 1.1),
    ),
    Case(
        "LSTM",
        "bidirectional",
        1,
        activations=("Sigmoid", "Elu", "Tanh", "HardSigmoid", "Tanh", "Softplus"),
        alpha=(0.7, 0.3),
        beta=(0.55,),
    ),
    # GRU: linear_before_reset, clip, no bias / initial state
    Case("GRU", linear_before_reset=1),
    Case("GRU", "bidirectional", 1, clip=0.8, linear_before_reset=1),
    Case("GRU", bias=False, initial="", clip=0.5),
    # LSTM: peepholes, input_forget, clip, partial initial states
    Case("LSTM", peepholes=True),
    Case("LSTM", "bidirectional", 1, peepholes=True, clip=1.0),
    Case("LSTM", "reverse", input_forget=1),
    Case("LSTM", "bidirectional", peepholes=True, input_forget=1),
    Case("LSTM", bias=False, initial=""),
    Case("LSTM", "reverse", initial="h"),
    # unused outputs (empty output names, trailing ones dropped)
    Case("LSTM", "bidirectional", used=(False, True, True)),
    Case("LSTM", used=(True, False, False)),
    Case("LSTM", "bidirectional", 1, used=(True, False, True)),
    Case("GRU", "reverse", used=(False, True)),
    Case("RNN", "bidirectional", used=(True, False)),
    # older opsets (no layout attribute)
    Case("LSTM", "bidirectional", peepholes=True, opset=7),
    Case("GRU", linear_before_reset=1, opset=13),
    Case("RNN", "reverse", opset=7),
    # a constant, full-length sequence_lens; weights fed at run time
    Case("LSTM", "bidirectional", full_sequence_lens=True),
    Case("GRU", "bidirectional", weights_as_inputs=True),
    Case("LSTM", peepholes=True, weights_as_inputs=True),
]


@pytest.mark.parametrize("case", _grid() + VARIANTS, ids=lambda c: c.label)
def test_matches_onnxruntime(case: Case):
    model, feeds = rnn_model(case)
    want = reference(case, feeds)
    got = run_tvm(model, feeds)
    assert len(got) == len(want) == len(model.graph.output)
    for info, g, w in zip(model.graph.output, got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=ATOL, err_msg=info.name)


def test_case_labels_are_unique():
    labels = [c.label for c in _grid() + VARIANTS]
    assert len(labels) == len(set(labels))


@pytest.mark.parametrize(
    ("case", "matmuls"),
    [
        (Case("LSTM", "bidirectional"), 1 + 2 * SEQ),
        (Case("RNN"), 1 + SEQ),
        (Case("GRU", "bidirectional"), 1 + 2 * 2 * SEQ),  # (r ⊙ H)·Rhᵀ is a second matmul
        (Case("GRU", linear_before_reset=1), 1 + SEQ),
    ],
    ids=lambda v: v.label if isinstance(v, Case) else str(v),
)
def test_input_projection_is_one_matmul(case: Case, matmuls: int):
    """X·Wᵀ of all steps and directions is one matmul; each step adds only the recurrent ones."""
    model, _ = rnn_model(case)
    loaded = frontend.load(model)
    mod = frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {}))
    text = mod["main"].script()
    assert text.count("R.matmul(") == matmuls


def _with_sequence_lens(model: onnx.ModelProto, as_input: bool, lens: list[int]) -> None:
    node = model.graph.node[0]
    while len(node.input) < 5:
        node.input.append("")
    node.input[4] = "seq_lens"
    if as_input:
        model.graph.input.append(
            helper.make_tensor_value_info("seq_lens", TensorProto.INT32, [BATCH])
        )
    else:
        model.graph.initializer.append(
            numpy_helper.from_array(np.array(lens, np.int32), "seq_lens")
        )


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_runtime_sequence_lens_is_a_clear_error(op: str):
    model, _ = rnn_model(Case(op))
    _with_sequence_lens(model, as_input=True, lens=[])
    with pytest.raises(
        tvmforge.InputError,
        match=rf"node rnn0 \({op}\) takes its sequence_lens from graph input 'seq_lens'.*"
        r"--freeze seq_lens=",
    ):
        tvmforge.build_model(model, "x86")


def test_short_constant_sequence_lens_is_a_clear_error():
    model, _ = rnn_model(Case("LSTM"))
    _with_sequence_lens(model, as_input=False, lens=[SEQ, 3])
    with pytest.raises(tvmforge.CompileError, match=r"per-sequence lengths are not supported"):
        tvmforge.build_model(model, "x86")
