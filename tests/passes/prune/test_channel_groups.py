"""``channel_groups``: which channels must be removed together (spaces joined by residual adds,
kept by depthwise convs) and which may not be removed at all (model outputs)."""

from __future__ import annotations

import numpy as np
import tvm
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import make_model
from tvmforge.frontend import importer as frontend
from tvmforge.passes.graph.fold_constants_numpy import fold_constants_numpy
from tvmforge.passes.prune.channel_groups import ChannelGraph

RNG = np.random.default_rng(3)


def _conv(name: str, x: str, cin: int, cout: int, group: int = 1, k: int = 1):
    w = RNG.standard_normal((cout, cin // group, k, k)).astype(np.float32)
    node = helper.make_node("Conv", [x, f"{name}_w"], [name], group=group,
                            pads=[k // 2] * 4)
    return node, numpy_helper.from_array(w, f"{name}_w")


def _graph(nodes_inits, out: str, cout: int) -> ChannelGraph:
    nodes = [n for n, _ in nodes_inits if n is not None]
    inits = [i for _, i in nodes_inits if i is not None]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, cout, 6, 6])],
        inits,
    )
    loaded = frontend.load(model)
    mod = frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {}))
    with tvm.target.Target({"kind": "llvm"}):
        mod = fold_constants_numpy()(mod)
    return ChannelGraph(mod["main"])


def _relu(x: str, y: str):
    return helper.make_node("Relu", [x], [y]), None


def test_a_residual_add_joins_the_spaces_of_its_two_branches():
    g = _graph(
        [_conv("a", "x", 8, 16), _conv("b", "x", 8, 16),
         (helper.make_node("Add", ["a", "b"], ["s"]), None), _relu("s", "r"),
         _conv("c", "r", 16, 4)],
        "c", 4,
    )
    a, b, c = g.layers[0], g.layers[1], g.layers[2]
    assert g.find(a.space) == g.find(b.space)  # channel i of a goes with channel i of b
    assert g.find(c.space) != g.find(a.space)
    assert not g.pinned(a.space).any()  # nothing stops the joined space from shrinking


def test_the_output_layer_is_pinned_and_an_inner_one_is_not():
    g = _graph([_conv("a", "x", 8, 16), _relu("a", "r"), _conv("c", "r", 16, 4)], "c", 4)
    inner, last = g.layers[0], g.layers[1]
    assert g.pinned(last.space).all()  # a model output keeps every channel
    assert not g.pinned(inner.space).any()


def test_a_depthwise_conv_keeps_its_inputs_channels():
    g = _graph(
        [_conv("a", "x", 8, 16), _conv("dw", "a", 16, 16, group=16, k=3), _relu("dw", "r"),
         _conv("c", "r", 16, 4)],
        "c", 4,
    )
    first = next(layer for layer in g.layers if layer.kind == "conv2d")
    dw = next(layer for layer in g.layers if layer.kind == "depthwise")
    last = g.layers[-1]
    assert dw.space is None  # no space of its own: channel i in is channel i out
    assert set(g.roots_of(dw.inp).tolist()) == {g.find(first.space)}
    assert set(g.roots_of(last.inp).tolist()) == {g.find(first.space)}
