"""Operator inputs whose *values* fix the shape of a result (a Reshape's ``shape``, a reduce's
``axes``, TopK's ``k``, Resize's ``sizes`` ...): tvmforge compiles static kernels, so these
must be known at compile time.

After the pre-pass (``simplify``) has folded every constant and every shape computation, such
an input that still comes from the graph's inputs at run time is refused here, before the
importer, with one line naming the node, the input of the graph it comes from, and the
``--freeze NAME=V1,V2,...`` that fixes it. Without this check the importer failed deep inside
with "Only constant axes currently supported" and no name.
"""

from __future__ import annotations

import onnx

from tvmforge.errors import InputError

_REDUCE = (
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)

# op -> {input index: what it gives the op}. Ops whose run-time values Relax compiles into a
# result of run-time shape (Slice, Squeeze, Unsqueeze, Tile, Range, NonZero) are not listed,
# nor those whose result shape does not depend on the value (CumSum's axis, Pad's fill);
# Expand is, because its converter returned a wrong shape for a run-time target.
SHAPE_VALUES: dict[str, dict[int, str]] = {
    **{op: {1: "axes"} for op in _REDUCE},
    "TopK": {1: "k"},
    "Pad": {1: "pads", 3: "axes"},
    "Resize": {1: "roi", 2: "scales", 3: "sizes"},
    "Upsample": {1: "scales"},
    "Reshape": {1: "shape"},
    "Split": {1: "split"},
    "CumProd": {1: "axis"},
    "AffineGrid": {1: "size"},
    "CenterCropPad": {1: "shape", 2: "axes"},
    "Col2Im": {1: "image_shape", 2: "block_shape"},
    "BlackmanWindow": {0: "size"},
    "HannWindow": {0: "size"},
    "HammingWindow": {0: "size"},
    "MelWeightMatrix": {0: "num_mel_bins", 1: "dft_length", 2: "sample_rate",
                        3: "lower_edge_hertz", 4: "upper_edge_hertz"},
    "DFT": {1: "dft_length", 2: "axis"},
    "STFT": {1: "frame_step", 3: "frame_length"},
    "ConstantOfShape": {0: "shape"},
    "Expand": {1: "shape"},
    "OneHot": {1: "depth"},
    # a Loop is unrolled at compile time (simplify.py): its trip count and condition must fold
    "Loop": {0: "trip count", 1: "condition"},
    # only an absent sequence_lens, or a constant one of the full length, compiles (rnn.py)
    **{op: {4: "sequence_lens"} for op in ("LSTM", "GRU", "RNN")},
    # TVM's converter used 0 boxes / 0.5 / 0.0 for thresholds it could not read: wrong results
    "NonMaxSuppression": {2: "max_output_boxes_per_class", 3: "iou_threshold",
                          4: "score_threshold"},
}


def check_shape_values(model: onnx.ModelProto, path: str) -> None:
    """Refuse a node whose shape-fixing input is only known at run time (see module doc).

    Raises
    ------
    InputError
        Naming the node, the value, the graph inputs it comes from, and the ``--freeze`` fix.
    """
    g = model.graph
    known = {t.name for t in g.initializer}
    graph_inputs = [v.name for v in g.input if v.name not in known]
    producer: dict[str, onnx.NodeProto] = {}
    for node in g.node:
        for out in node.output:
            producer[out] = node
    for index, node in enumerate(g.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        for slot, what in SHAPE_VALUES.get(node.op_type, {}).items():
            if slot >= len(node.input) or not node.input[slot]:
                continue
            name = node.input[slot]
            sources = _graph_sources(name, producer, set(graph_inputs))
            if not sources:
                continue
            label = node.name or f"#{index}"
            if sources == [name]:
                where = f"graph input {name!r}"
                fix = f"fix it with --freeze {name}=V1,V2,..."
            else:
                where = "a value computed at run time from graph input(s) " + ", ".join(
                    repr(s) for s in sources
                )
                fix = "if they are constant, fix them with " + " ".join(
                    f"--freeze {s}=V1,V2,..." for s in sources
                )
            raise InputError(
                f"{path}: node {label} ({node.op_type}) takes its {what} from {where}; "
                f"tvmforge compiles fixed-shape kernels and needs the {what} at compile time",
                hint=fix,
            )


def _graph_sources(name: str, producer: dict[str, onnx.NodeProto], inputs: set[str]) -> list[str]:
    """The graph inputs whose values ``name`` depends on, in first-found order."""
    found: list[str] = []
    seen: set[str] = set()
    stack = [name]
    while stack:
        n = stack.pop()
        if n in seen or not n:
            continue
        seen.add(n)
        if n in inputs:
            found.append(n)
            continue
        node = producer.get(n)
        if node is None:
            continue
        if node.op_type in ("Shape", "Size"):  # depends on the shape only, which is fixed
            continue
        stack.extend(node.input)
    return found
