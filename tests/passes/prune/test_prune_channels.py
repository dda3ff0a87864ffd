"""``prune_channels``: structured channel pruning with dependency tracking.

Three kinds of test: before/expected structure for each dependency pattern (residual add,
concat, depthwise conv, flatten -> dense), does-not-apply (a conv whose channels reach a model
output, a conv whose weight is not a constant), and numbers: lossless pruning of planted zero
channels matches the unpruned build, ratio pruning removes the FLOPs asked for on SqueezeNet,
and the calibration refit brings a pruned model closer to the unpruned one.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from onnx_builders import make_model
from tvmforge.driver.build import build_model
from tvmforge.driver.pipeline import graph_passes
from tvmforge.errors import InputError
from tvmforge.frontend import importer as frontend
from tvmforge.passes.prune.prune_channels import default_align, model_flops, prune_channels

LOGGER = "tvmforge.passes"
op = relax.op


def _tensor(*shape: int) -> relax.TensorType:
    return relax.TensorType(shape, "float32")


def _import(model: onnx.ModelProto) -> tvm.IRModule:
    """The Relax module as ``prune_channels`` sees it in the tvmforge pipeline: after the
    clean-ups that run before the caller's graph passes."""
    loaded = frontend.load(model)
    mod = frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {}))
    here = relax.transform.CanonicalizeBindings()
    passes = graph_passes([here])
    before = passes[: next(i for i, p in enumerate(passes) if p.same_as(here))]
    return tvm.transform.Sequential(before)(mod)


def _layers(mod: tvm.IRModule) -> list[tuple[relax.Call, np.ndarray]]:
    """(call, weight) of every conv2d / matmul of ``main`` in order."""
    found = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if isinstance(call, relax.Call) and call.op.name in ("relax.nn.conv2d", "relax.matmul"):
                found.append((call, call.args[1].value.numpy()))
    return found


def _rows_kept(original: np.ndarray, pruned: np.ndarray, axis: int = 0) -> list[int]:
    """Which slices of ``original`` along ``axis`` survive in ``pruned`` (weights are distinct)."""
    orig = np.moveaxis(original, axis, 0).reshape(original.shape[axis], -1)
    kept = np.moveaxis(pruned, axis, 0).reshape(pruned.shape[axis], -1)
    return [int(np.flatnonzero((orig == row).all(axis=1))[0]) for row in kept]


def _run(built, arrays: list[np.ndarray]) -> np.ndarray:
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    return np.concatenate([vm["main"](tvm.runtime.tensor(x)).numpy() for x in arrays])


def _inits(rng: np.random.Generator, **arrays) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(np.asarray(a, np.float32), k) for k, a in arrays.items()]


def _conv_w(rng, out: int, inp: int, k: int, zero=()) -> np.ndarray:
    w = rng.normal(0, np.sqrt(2 / (inp * k * k)), (out, inp, k, k))
    w[list(zero)] = 0.0
    return w


# The planted channels: half of every 32-channel layer, so a layer of 16 remains (a multiple
# of every default alignment).
DEAD = list(range(1, 32, 2))


def planted_model(seed: int = 0) -> onnx.ModelProto:
    """Every pattern at once, with channels whose weights are zero.

    conv1 -> BN -> relu ─┬─ conv2 -> BN ─ add (residual) -> relu ─┬─ depthwise -> relu ─┐
                         └────────────────┘                       └─ conv3 (1x1) -> relu ─┴─ concat
    concat -> conv4 (stride 2) -> relu -> flatten -> fc1 -> relu -> fc2 -> y

    conv1, conv2 and the depthwise conv (32 channels) have the ``DEAD`` channels zeroed (their
    biases and BatchNorms are not: the channels are nonzero constants), conv3 (8 channels)
    channel 1, conv4 (32) the ``DEAD`` channels, fc1 (64 neurons) neurons 0..31
    (half: 48 would not be a count the AVX-512 default alignment allows).
    """
    rng = np.random.default_rng(seed)

    def bn(c: int) -> dict[str, np.ndarray]:
        return {
            "s": rng.uniform(0.5, 1.5, c),
            "b": rng.normal(0, 0.3, c),
            "m": rng.normal(0, 0.3, c),
            "v": rng.uniform(0.5, 1.5, c),
        }

    bn1, bn2 = bn(32), bn(32)
    fc1 = rng.normal(0, 0.05, (64, 512))
    fc1[:32] = 0.0
    inits = _inits(
        rng,
        w1=_conv_w(rng, 32, 3, 3, DEAD),
        b1=rng.normal(0, 0.3, 32),
        **{f"bn1_{k}": v for k, v in bn1.items()},
        w2=_conv_w(rng, 32, 32, 3, DEAD),
        **{f"bn2_{k}": v for k, v in bn2.items()},
        wd=_conv_w(rng, 32, 1, 3, DEAD),
        bd=rng.normal(0, 0.3, 32),
        w3=_conv_w(rng, 8, 32, 1, [1]),
        b3=rng.normal(0, 0.3, 8),
        w4=_conv_w(rng, 32, 40, 3, DEAD),
        b4=rng.normal(0, 0.3, 32),
        fc1=fc1,
        fcb1=rng.normal(0, 0.3, 64),
        fc2=rng.normal(0, 0.3, (64, 10)),
        fcb2=rng.normal(0, 0.3, 10),
    )
    node = helper.make_node
    pads = [1, 1, 1, 1]
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=pads),
        node("BatchNormalization", ["c1", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["n1"]),
        node("Relu", ["n1"], ["a"]),
        node("Conv", ["a", "w2"], ["c2"], name="conv2", pads=pads),
        node("BatchNormalization", ["c2", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], ["n2"]),
        node("Add", ["n2", "a"], ["s"], name="residual"),
        node("Relu", ["s"], ["b"]),
        node("Conv", ["b", "wd", "bd"], ["cd"], name="dw", pads=pads, group=32),
        node("Relu", ["cd"], ["d"]),
        node("Conv", ["b", "w3", "b3"], ["c3"], name="conv3"),
        node("Relu", ["c3"], ["e"]),
        node("Concat", ["d", "e"], ["cat"], axis=1),
        node("Conv", ["cat", "w4", "b4"], ["c4"], name="conv4", pads=pads, strides=[2, 2]),
        node("Relu", ["c4"], ["f"]),
        node("Flatten", ["f"], ["flat"]),
        node("Gemm", ["flat", "fc1", "fcb1"], ["h"], name="fc1", transB=1),
        node("Relu", ["h"], ["hr"]),
        node("Gemm", ["hr", "fc2", "fcb2"], ["y"], name="fc2"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )



# ---- before / expected, one dependency pattern each ----------------------------------------


def _residual(wa: np.ndarray, wb: np.ndarray, wc: np.ndarray) -> tvm.IRModule:
    """x -> conv a -> relu ─┬─ conv b ─ add -> conv c -> y."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", _tensor(1, 3, 4, 4))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(op.nn.relu(op.nn.conv2d(x, relax.const(wa))))
            b = bb.emit(op.nn.conv2d(a, relax.const(wb)))
            s = bb.emit(op.add(a, b))
            y = bb.emit_output(op.nn.conv2d(s, relax.const(wc)))
        bb.emit_func_output(y)
    return bb.get()


def test_residual_add_prunes_the_same_channel_in_both_producers():
    rng = np.random.default_rng(0)
    wa = rng.normal(size=(4, 3, 1, 1)).astype(np.float32)
    wb = rng.normal(size=(4, 4, 1, 1)).astype(np.float32)
    wc = rng.normal(size=(2, 4, 1, 1)).astype(np.float32)
    wa[1] = 0.0
    wb[1] = 0.0
    keep = [0, 2, 3]
    after = prune_channels(0.0, align=1)(_residual(wa, wb, wc))
    expected = _residual(wa[keep], wb[keep][:, keep], wc[:, keep])
    tvm.ir.assert_structural_equal(after, expected)


def test_residual_add_keeps_a_channel_only_one_branch_zeroes():
    rng = np.random.default_rng(0)
    wa = rng.normal(size=(4, 3, 1, 1)).astype(np.float32)
    wb = rng.normal(size=(4, 4, 1, 1)).astype(np.float32)
    wb[1] = 0.0  # the other branch (a) still carries channel 1
    before = _residual(wa, wb, rng.normal(size=(2, 4, 1, 1)).astype(np.float32))
    tvm.ir.assert_structural_equal(prune_channels(0.0, align=1)(before), before)


def _branches_model(seed: int = 0) -> onnx.ModelProto:
    """x ─┬─ conv a (16) -> relu ─┐
    └─ conv b (16) -> relu ─┴─ concat -> depthwise (32) -> relu -> conv c (4) -> y."""
    rng = np.random.default_rng(seed)
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "wa"], ["ca"], pads=[1, 1, 1, 1]),
        node("Relu", ["ca"], ["ra"]),
        node("Conv", ["x", "wb"], ["cb"]),
        node("Relu", ["cb"], ["rb"]),
        node("Concat", ["ra", "rb"], ["cat"], axis=1),
        node("Conv", ["cat", "wd"], ["cd"], pads=[1, 1, 1, 1], group=32),
        node("Relu", ["cd"], ["rd"]),
        node("Conv", ["rd", "wc"], ["y"]),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        _inits(
            rng,
            wa=_conv_w(rng, 16, 3, 3),
            wb=_conv_w(rng, 16, 3, 1),
            wd=_conv_w(rng, 32, 1, 3),
            wc=_conv_w(rng, 4, 32, 1),
        ),
    )


def test_concat_and_depthwise_slice_at_the_right_offsets():
    before = _import(_branches_model())
    after = prune_channels(0.5, align=4)(before)
    relax.analysis.well_formed(after)
    (_, wa), (_, wb), (_, wd), (_, wc) = _layers(before)
    (_, pa), (_, pb), (dw, pd), (_, pc) = _layers(after)
    ka, kb = _rows_kept(wa, pa), _rows_kept(wb, pb)
    assert len(ka) % 4 == 0 and len(kb) % 4 == 0 and len(ka) + len(kb) < 32
    concat = ka + [16 + i for i in kb]
    # the depthwise conv keeps filter i for concat channel i, and its groups follow
    np.testing.assert_array_equal(pd, wd[concat])
    assert int(dw.attrs.groups) == len(concat)
    np.testing.assert_array_equal(pc, wc[:, concat])


def test_flatten_to_dense_keeps_each_channels_block_of_features():
    """conv (8 ch, 4x4) -> relu -> flatten -> fc1 (128 -> 16) -> relu -> fc2 (16 -> 3)."""
    rng = np.random.default_rng(1)
    node = helper.make_node
    model = make_model(
        [
            node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            node("Relu", ["c"], ["r"]),
            node("Flatten", ["r"], ["f"]),
            node("MatMul", ["f", "fc1"], ["h"]),
            node("Relu", ["h"], ["hr"]),
            node("MatMul", ["hr", "fc2"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        _inits(
            rng,
            w=_conv_w(rng, 8, 2, 3),
            fc1=rng.normal(0, 0.1, (128, 16)),
            fc2=rng.normal(0, 0.3, (16, 3)),
        ),
    )
    before = _import(model)
    after = prune_channels(0.5, align=4)(before)
    relax.analysis.well_formed(after)
    (_, w), (_, fc1), (_, fc2) = _layers(before)
    (_, pw), (_, p1), (_, p2) = _layers(after)
    kept = _rows_kept(w, pw)
    features = [c * 16 + i for c in kept for i in range(16)]  # channel c is features 16c..16c+15
    neurons = _rows_kept(fc1[features], p1, axis=1)
    assert len(kept) == 4 and len(neurons) % 4 == 0 and len(neurons) < 16
    np.testing.assert_array_equal(p1, fc1[features][:, neurons])
    np.testing.assert_array_equal(p2, fc2[neurons])


# ---- does not apply ------------------------------------------------------------------------


def test_conv_whose_output_is_a_model_output_is_left_alone(caplog):
    rng = np.random.default_rng(0)
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4, 4])],
        _inits(rng, w=_conv_w(rng, 16, 3, 1, zero=range(8))),
    )
    before = _import(model)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        pruner = prune_channels(0.5)
        after = pruner(before)
    tvm.ir.assert_structural_equal(after, before)
    assert "model output" in caplog.text
    assert pruner.report.flops_after == pruner.report.flops_before


def test_channels_read_by_a_conv_with_a_non_constant_weight_are_left_alone(caplog):
    rng = np.random.default_rng(0)
    node = helper.make_node
    model = make_model(
        [
            node("Conv", ["x", "w1"], ["c1"]),
            node("Relu", ["c1"], ["r1"]),
            node("Conv", ["r1", "w_in"], ["y"]),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
            helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [4, 16, 1, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        _inits(rng, w1=_conv_w(rng, 16, 3, 1, zero=range(8))),
    )
    before = _import(model)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        after = prune_channels(0.5)(before)
    tvm.ir.assert_structural_equal(after, before)
    assert "weight is not a constant" in caplog.text


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="ratio"):
        prune_channels(1.0)
    with pytest.raises(ValueError, match="method"):
        prune_channels(0.5, method="l3")
    with pytest.raises(InputError, match="fraction of FLOPs"):
        build_model(planted_model(), "x86", prune=1.5)


# ---- numbers ------------------------------------------------------------------------------


def test_planted_zero_channels_are_removed_without_changing_the_output():
    model = planted_model()
    pruner = prune_channels(0.0)
    after = pruner(_import(model))
    relax.analysis.well_formed(after)
    shapes = [w.shape for _, w in _layers(after)]
    assert shapes == [
        (16, 3, 3, 3),  # conv1 and conv2 lose the same 16 channels (residual)
        (16, 16, 3, 3),
        (16, 1, 3, 3),  # the depthwise conv follows
        (7, 16, 1, 1),  # conv3: 8 channels, 1 constant (narrow layers keep >= 1)
        (16, 23, 3, 3),  # conv4 reads concat(16 + 7)
        (256, 32),  # fc1 reads 16 channels x 4x4 features, loses 32 neurons
        (32, 10),
    ]
    report = pruner.report
    assert report.removed_channels == report.lossless_channels == 16 + 1 + 16 + 32
    assert report.flops_after < report.flops_before

    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    reference = _run(build_model(model, "x86"), inputs)
    pruned = build_model(model, "x86", prune=0)
    np.testing.assert_allclose(_run(pruned, inputs), reference, rtol=1e-5, atol=1e-5)
    assert pruned.pruning["lossless_channels"] == 65
    assert pruned.manifest()["pruning"]["flops_after"] == report.flops_after
    assert [c["name"] for c in pruned.pruning["layers"]] == [
        "conv1",
        "conv2",
        "dw",
        "conv3",
        "conv4",
        "fc1",
        "fc2",
    ]


@pytest.fixture(scope="module")
def squeezenet() -> tvm.IRModule:
    return _import(frontend.load("zoo:squeezenet").proto)


@pytest.mark.parametrize(("ratio", "method"), [(0.5, "l1"), (0.3, "l2")])
def test_ratio_removes_that_fraction_of_squeezenet_flops(squeezenet, ratio, method):
    pruner = prune_channels(ratio, method=method)
    after = pruner(squeezenet)
    relax.analysis.well_formed(after)
    before_flops, after_flops = model_flops(squeezenet["main"]), model_flops(after["main"])
    assert 1 - after_flops / before_flops == pytest.approx(ratio, abs=0.1 * ratio)
    assert pruner.report.flops_after == after_flops
    for layer in pruner.report.layers:
        before, kept = layer.channels
        assert kept == before or kept % 8 == 0  # pruned layers stay SIMD friendly
        assert kept >= 8
    assert pruner.report.layers[-1].channels == (1000, 1000)  # the classifier is an output


def test_cpu_default_alignment_keeps_whole_pairs_of_vectors(squeezenet):
    """On AVX-512 pruned layers keep 2 x 16 channels at a time (the packed conv's register
    tile gets two channel vectors), or exactly one vector."""
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    assert default_align(target) == (32, 16)
    assert default_align(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})) == (16, 8)
    with target:
        pruner = prune_channels(0.5)
        pruner(squeezenet)
    assert (pruner.report.align, pruner.report.min_channels) == (32, 16)
    counts = [c.channels for c in pruner.report.layers if c.channels[0] != c.channels[1]]
    assert counts and all(kept % 32 == 0 or kept == 16 for _, kept in counts)
    assert pruner.report.flops_removed == pytest.approx(0.5, abs=0.05)


def correlated_model(seed: int = 0) -> onnx.ModelProto:
    """conv1 (32 ch from 6 basis filters: correlated channels) -> relu -> conv2 -> relu -> GAP
    -> fc: the kind of redundancy a least-squares refit can use."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(0, 0.5, (6, 3, 3, 3))
    w1 = np.einsum("ob,bchw->ochw", rng.normal(size=(32, 6)), basis)
    w1 += rng.normal(0, 0.05, w1.shape)
    node = helper.make_node
    return make_model(
        [
            node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            node("Relu", ["c1"], ["r1"]),
            node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
            node("Relu", ["c2"], ["r2"]),
            node("GlobalAveragePool", ["r2"], ["p"]),
            node("Flatten", ["p"], ["f"]),
            node("MatMul", ["f", "fc"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        _inits(
            rng,
            w1=w1,
            b1=rng.normal(0, 0.1, 32),
            w2=_conv_w(rng, 32, 32, 3),
            b2=rng.normal(0, 0.1, 32),
            fc=rng.normal(0, 0.3, (32, 10)),
        ),
    )


def test_calibration_refit_brings_the_pruned_model_closer():
    model = correlated_model()
    rng = np.random.default_rng(5)
    calibration = {"x": rng.normal(size=(32, 1, 3, 12, 12)).astype(np.float32)}
    held_out = [rng.normal(size=(1, 3, 12, 12)).astype(np.float32) for _ in range(8)]
    reference = _run(build_model(model, "x86"), held_out)

    def error(built) -> float:
        return float(np.abs(_run(built, held_out) - reference).mean() / np.abs(reference).mean())

    plain = build_model(model, "x86", prune=0.3)
    refit = build_model(model, "x86", prune=0.3, calibration=calibration)
    assert refit.pruning["calibrated_layers"] >= 1
    assert refit.pruning["flops_after"] == plain.pruning["flops_after"]
    assert error(refit) < 0.5 * error(plain)
    step = next(p for p in refit.manifest()["passes"] if p["name"] == "prune_channels")
    assert step["calibrated"] and step["ratio"] == 0.3


# ---- the report: per layer, totals, sizes; in the manifest and the CLI ---------------------


def _check_report_adds_up(rep: dict) -> None:
    """Per-layer parameters/FLOPs plus the "other" row are the totals, before and after."""
    for i, side in enumerate(("before", "after")):
        params = sum(c["params"][i] for c in rep["layers"]) + rep["other_params"][i]
        flops = sum(c["flops"][i] for c in rep["layers"]) + rep["other_flops"][i]
        assert params == rep[f"params_{side}"]
        assert flops == rep[f"flops_{side}"]
    for c in rep["layers"]:
        out, inp = c["channels"], c["in_channels"]
        assert c["params"][1] * out[0] * inp[0] == c["params"][0] * out[1] * inp[1] or (
            c["op"] == "depthwise" and c["params"][1] * out[0] == c["params"][0] * out[1]
        )
    for key in ("params", "flops", "weight_bytes"):
        assert rep[f"{key}_after"] < rep[f"{key}_before"]
    assert rep["weight_bytes_before"] == 4 * rep["params_before"]  # float32 throughout


def test_report_layers_match_the_pruned_weights():
    before = _import(planted_model())
    pruner = prune_channels(0.3)
    after = pruner(before)
    rep = pruner.report.to_json()
    _check_report_adds_up(rep)
    assert [c["params"] for c in rep["layers"]] == [
        [w.size, v.size] for (_, w), (_, v) in zip(_layers(before), _layers(after), strict=True)
    ]
    assert rep["flops_after"] == model_flops(after["main"])


def test_compile_prints_the_report_and_the_manifest_holds_it(cli, tmp_model, tmp_path):
    import tarfile

    from tvmforge.runtime import artifact

    model = tmp_model(planted_model())
    res = cli("compile", model, "--prune", "0.3", "-o", "p.tar")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) <= 5  # a summary, not a table, by default
    assert lines[0].startswith("pruned (l1, ratio 0.3): ")
    assert "FLOPs" in lines[0] and "parameters" in lines[0] and "weights" in lines[0]
    assert "artifact" in lines[1] and "estimated" in lines[1]
    rep = artifact.read_manifest(tmp_path / "p.tar")["pruning"]
    _check_report_adds_up(rep)
    with tarfile.open(tmp_path / "p.tar") as tar:
        assert rep["library_bytes_after"] == tar.getmember(artifact.LIBRARY).size
    assert rep["library_bytes_before_estimate"] == rep["library_bytes_after"] + (
        rep["weight_bytes_before"] - rep["weight_bytes_after"]
    )
    assert [c["name"] for c in rep["layers"]] == [
        "conv1",
        "conv2",
        "dw",
        "conv3",
        "conv4",
        "fc1",
        "fc2",
    ]

    verbose = cli("--verbose", "compile", model, "--prune", "0.3", "-o", "v.tar")
    out = verbose.stdout.splitlines()
    table = [ln.strip() for ln in out[out.index(lines[1]) + 1 :] if ln.startswith("  ")]
    assert table[0].split()[:2] == ["layer", "op"]
    narrowed = [
        c
        for c in rep["layers"]
        if c["channels"][0] != c["channels"][1] or c["in_channels"][0] != c["in_channels"][1]
    ]
    assert [ln.split()[0] for ln in table[1 : 1 + len(narrowed)]] == [c["name"] for c in narrowed]
    assert table[-1].split()[0] == "total"


# ---- taylor: importance from calibration activations ---------------------------------------


def dead_channels_model(seed: int = 0) -> onnx.ModelProto:
    """conv1 (32 ch) -> relu -> conv2 (1x1, 8 ch) -> y. conv1's channels 0..15 have large
    filters and a bias of -1000: the relu keeps them at zero on any reasonable input. Channels
    16..31 have small filters and carry the signal."""
    rng = np.random.default_rng(seed)
    w1 = np.concatenate([rng.normal(0, 3.0, (16, 3, 3, 3)), rng.normal(0, 0.1, (16, 3, 3, 3))])
    b1 = np.concatenate([np.full(16, -1000.0), np.full(16, 0.5)])
    node = helper.make_node
    return make_model(
        [
            node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            node("Relu", ["c1"], ["r1"]),
            node("Conv", ["r1", "w2"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        _inits(rng, w1=w1, b1=b1, w2=rng.normal(0, 0.3, (8, 32, 1, 1))),
    )


def test_taylor_removes_the_channels_the_data_never_uses():
    model = dead_channels_model()
    rng = np.random.default_rng(3)
    calibration = {"x": rng.normal(size=(8, 1, 3, 8, 8)).astype(np.float32)}
    before = _import(model)
    (_, w1), _ = _layers(before)
    kept = {}
    for method in ("l1", "taylor"):
        pruner = prune_channels(
            0.3, method=method, align=16, calibration=calibration if method == "taylor" else None
        )
        (_, p1), _ = _layers(pruner(before))
        kept[method] = sorted(_rows_kept(w1, p1))
        _check_report_adds_up(pruner.report.to_json())
    assert kept["l1"] == list(range(16))  # the largest filters: the dead ones
    assert kept["taylor"] == list(range(16, 32))

    held_out = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(4)]
    reference = _run(build_model(model, "x86"), held_out)
    taylor = build_model(model, "x86", prune=0.3, prune_method="taylor", calibration=calibration)
    assert taylor.pruning["method"] == "taylor" and taylor.pruning["flops_removed"] >= 0.3
    np.testing.assert_allclose(_run(taylor, held_out), reference, rtol=1e-4, atol=1e-4)
    l1 = build_model(model, "x86", prune=0.3)
    assert np.abs(_run(l1, held_out) - reference).mean() > 0.1 * np.abs(reference).mean()


def test_taylor_needs_calibration_data():
    with pytest.raises(ValueError, match="calibration"):
        prune_channels(0.3, method="taylor")
    with pytest.raises(InputError, match="--calibration"):
        build_model(dead_channels_model(), "x86", prune=0.3, prune_method="taylor")
