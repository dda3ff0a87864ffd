"""FLOPs and op counts reported by ``tvmforge inspect``."""

from __future__ import annotations

from onnx_builders import conv_relu_model
from tvmforge.frontend import importer as frontend
from tvmforge.frontend.analysis import report


def test_resnet50_flops_match_the_published_figure():
    # ResNet-50 at 224x224 is 4.1 GMACs (He et al. 2016 report 3.8 GFLOPs counting MACs for
    # the conv layers; torchvision lists 4.09 GMACs); tvmforge counts a MAC as 2 FLOPs.
    rep = report(frontend.load("zoo:resnet50"))
    assert rep.unknown_flops_nodes == 0
    assert 8.0e9 < rep.flops < 8.4e9
    assert rep.op_counts["Conv"] == 53
    assert 25.5e6 < rep.parameters < 25.7e6  # 25.6 M parameters


def test_flops_of_a_small_graph_by_formula():
    rep = report(frontend.load(conv_relu_model()))
    assert rep.flops_by_op["Conv"] == 2 * (8 * 16 * 16) * (3 * 3 * 3)
    assert rep.flops_by_op["MatMul"] == 2 * 5 * 8
    assert rep.flops_by_op["Relu"] == 8 * 16 * 16


def test_dynamic_model_counts_what_it_can():
    model = frontend.load(conv_relu_model(batch="N"))
    unfixed = report(model)
    fixed = report(model, frontend.resolve_inputs(model, {"x": (4, 3, 16, 16)}))
    assert fixed.unknown_flops_nodes == 0
    assert fixed.flops_by_op["Conv"] == 4 * 2 * (8 * 16 * 16) * 27
    assert unfixed.flops <= fixed.flops
