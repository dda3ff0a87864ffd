"""Resize / Upsample and the image-geometry ops (CenterCropPad, Col2Im, AffineGrid,
GroupNormalization) against ONNX Runtime, every attribute variant in a few compiled models."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import tvmforge
from onnx_builders import make_model
from tvmforge import frontend
from tvmforge.errors import CompileError

F = TensorProto.FLOAT


def _f(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _c(name, values, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def _ort(model, feed):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))


def _compile(model, tmp_path_factory, name):
    path = tmp_path_factory.mktemp(name) / f"{name}.tar"
    return tvmforge.load(tvmforge.compile_model(model, "x86", path))


def _check(model, runner, feed, rtol=1e-4, atol=1e-5, ref=None):
    ref = _ort(model, feed) if ref is None else ref
    ours = runner(**feed)
    for name, want in ref.items():
        got = ours[name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        # integers: ONNX rounds the float64 value half to even, ONNX Runtime its float32 value
        tol = 1 if np.issubdtype(want.dtype, np.integer) else atol
        np.testing.assert_allclose(
            got.astype(np.float64), want, rtol=rtol, atol=tol, err_msg=name
        )


# --------------------------------------------------------------------------------------------
# Resize 19: one model, one output per attribute variant

# name -> (input, roi, scales, sizes, attributes)
RESIZES = {
    "nearest_down_ceil": ("x", None, [1, 1, 0.6, 0.6], None,
                          {"mode": "nearest", "nearest_mode": "round_prefer_ceil"}),
    "nearest_sizes_floor_ac": ("x", None, None, [1, 2, 9, 4],
                               {"mode": "nearest", "nearest_mode": "floor",
                                "coordinate_transformation_mode": "align_corners"}),
    "nearest_ceil_tfnn_up": ("x", None, [1, 1, 1.5, 2.5], None,
                             {"mode": "nearest", "nearest_mode": "ceil",
                              "coordinate_transformation_mode": "asymmetric"}),
    "nearest_2x_fast": ("x", None, [1, 1, 2, 2], None,
                        {"mode": "nearest", "nearest_mode": "floor",
                         "coordinate_transformation_mode": "asymmetric"}),
    "linear_down_scales": ("x", None, [1, 1, 0.6, 0.8], None, {"mode": "linear"}),
    "linear_up_2x_fast": ("x", None, [1, 1, 2, 2], None, {"mode": "linear"}),
    "linear_sym": ("x", None, [1, 1, 0.6, 1.7], None,
                   {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"}),
    "linear_ac_to_1": ("x", None, None, [1, 2, 1, 3],
                       {"mode": "linear", "coordinate_transformation_mode": "align_corners"}),
    "linear_ac_scales": ("x", None, [1, 1, 0.7, 1.3], None,
                         {"mode": "linear", "coordinate_transformation_mode": "align_corners"}),
    "linear_pytorch": ("x", None, None, [1, 2, 3, 1],
                       {"mode": "linear",
                        "coordinate_transformation_mode": "pytorch_half_pixel"}),
    "linear_antialias": ("x", None, None, [1, 2, 3, 3], {"mode": "linear", "antialias": 1}),
    "linear_antialias_wide": ("w", None, [1, 1, 0.13], None, {"mode": "linear", "antialias": 1}),
    "cubic_up": ("x", None, [1, 1, 1.7, 1.3], None, {"mode": "cubic"}),
    "cubic_a05_exclude": ("x", None, [1, 1, 0.6, 0.8], None,
                          {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}),
    "cubic_antialias": ("x", None, [1, 1, 0.6, 0.5], None, {"mode": "cubic", "antialias": 1}),
    "cubic_asym": ("x", None, [1, 1, 2, 1.5], None,
                   {"mode": "cubic", "coordinate_transformation_mode": "asymmetric"}),
    "not_larger_axes": ("x", None, None, [7, 7],
                        {"mode": "nearest", "axes": [2, 3], "keep_aspect_ratio_policy":
                         "not_larger"}),
    "not_smaller_axes": ("x", None, None, [3, 2],
                         {"mode": "linear", "axes": [3, 2],
                          "keep_aspect_ratio_policy": "not_smaller"}),
    "not_smaller_neg_axes": ("x", None, None, [3, 2],
                             {"mode": "linear", "axes": [-1, -2],
                              "keep_aspect_ratio_policy": "not_smaller"}),
    "axes_scales_3_2": ("x", None, [0.8, 1.5], None, {"mode": "linear", "axes": [3, 2]}),
    "tf_crop": ("x", [0, 0, 0.4, 0.6, 1, 1, 1.2, 1.7], None, [1, 2, 3, 3],
                {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                 "extrapolation_value": 10.0}),
    "tf_crop_axes_nearest": ("x", [0.6, 0.4, 1.7, 1.2], None, [3, 3],
                             {"mode": "nearest", "axes": [3, 2],
                              "coordinate_transformation_mode": "tf_crop_and_resize",
                              "extrapolation_value": -2.0}),
    "resize_1d": ("w", None, [1, 1, 1.6], None, {"mode": "linear"}),
    "resize_3d": ("v", None, [1, 1, 1.5, 0.7, 2], None, {"mode": "linear"}),
    "resize_channels": ("x", None, [1, 2, 1, 1], None, {"mode": "nearest"}),
    "uint8_linear": ("u", None, [1, 1, 1.6, 0.7], None, {"mode": "linear"}),
}
SHAPES = {"x": [1, 2, 5, 7], "w": [1, 2, 25], "v": [1, 1, 3, 4, 5], "u": [1, 1, 4, 6]}
# ONNX Runtime divides by the integer output length for align_corners; ONNX's reference (and
# the conformance data) by in * scale: checked against the reference
REFERENCE_ONLY = ("linear_ac_scales",)
# negative axes count from the end (ONNX Runtime and the reference both mishandle them)
SAME_AS = {"not_smaller_neg_axes": "not_smaller_axes"}


def _resize_model(names=tuple(RESIZES)):
    nodes, inits, outputs = [], [], []
    for name in names:
        src, roi, scales, sizes, attrs = RESIZES[name]
        ins = [src, "", "", ""]
        if roi is not None:
            inits.append(_c(f"{name}_roi", roi))
            ins[1] = f"{name}_roi"
        if scales is not None:
            inits.append(_c(f"{name}_scales", scales))
            ins[2] = f"{name}_scales"
        if sizes is not None:
            inits.append(_c(f"{name}_sizes", sizes, np.int64))
            ins[3] = f"{name}_sizes"
        while ins[-1] == "":
            ins.pop()
        nodes.append(helper.make_node("Resize", ins, [name], name=name, **attrs))
        elem = TensorProto.UINT8 if src == "u" else F
        outputs.append(_f(name, None, elem))
    inputs = [_f(n, s, TensorProto.UINT8 if n == "u" else F) for n, s in SHAPES.items()]
    return make_model(nodes, inputs, outputs, inits, opset=19)


def _feed():
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    feed["u"] = rng.integers(0, 256, SHAPES["u"]).astype(np.uint8)
    return feed


@pytest.fixture(scope="module")
def resize_runner(tmp_path_factory):
    return _compile(_resize_model(), tmp_path_factory, "resize")


def test_resize_variants_match_onnxruntime(resize_runner):
    names = [n for n in RESIZES if n not in REFERENCE_ONLY and n not in SAME_AS]
    _check(_resize_model(names), resize_runner, _feed())
    ours = resize_runner(**_feed())
    for name, twin in SAME_AS.items():
        np.testing.assert_array_equal(ours[name], ours[twin])


def test_resize_align_corners_with_scales_matches_the_onnx_reference(resize_runner):
    from onnx.reference import ReferenceEvaluator

    model = _resize_model(REFERENCE_ONLY)
    feed = {k: v for k, v in _feed().items() if k in ("x",)}
    ref = dict(zip(REFERENCE_ONLY, ReferenceEvaluator(model).run(None, feed), strict=True))
    _check(model, lambda **kw: resize_runner(**_feed()), feed, ref=ref)


def test_exact_2x_upsamples_stay_on_tvms_resize2d():
    """Where TVM's kernel is exactly right the graph keeps ``image.resize2d`` (the layout
    passes know it); a scale that is not ``out / in`` gets tvmforge's own kernel."""
    nodes = [
        helper.make_node("Resize", ["x", "", "s2"], ["a"], mode="nearest"),
        helper.make_node("Resize", ["x", "", "s2"], ["b"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Resize", ["x", "", "s2"], ["c"], mode="linear"),
        helper.make_node("Resize", ["x", "", "s06"], ["d"], mode="linear"),
    ]
    model = make_model(
        nodes, [_f("x", [1, 2, 5, 7])], [_f(n, None) for n in "abcd"],
        [_c("s2", [1, 1, 2, 2]), _c("s06", [1, 1, 0.6, 0.6])], opset=13,
    )
    loaded = frontend.load(model)
    mod = frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {}))
    text = mod["main"].script()
    assert text.count("R.image.resize2d(") == 3
    prims = [gv.name_hint for gv in mod.get_global_vars() if isinstance(mod[gv], tvm.tirx.PrimFunc)]
    assert any(name.startswith("resize") for name in prims), prims


# --------------------------------------------------------------------------------------------
# Upsample 7 / 9 and Resize 10


def _legacy_models():
    x = _f("x", [1, 2, 3, 4])
    up7 = make_model(
        [helper.make_node("Upsample", ["x"], ["n"], mode="nearest", scales=[1.0, 1.0, 2.0, 3.0]),
         helper.make_node("Upsample", ["x"], ["l"], mode="linear", scales=[1.0, 1.0, 2.0, 1.5])],
        [x], [_f("n", None), _f("l", None)], opset=7,
    )
    up9 = make_model(
        [helper.make_node("Upsample", ["x", "s"], ["n"], mode="nearest"),
         helper.make_node("Upsample", ["x", "s2"], ["l"], mode="linear")],
        [x], [_f("n", None), _f("l", None)],
        [_c("s", [1, 1, 1.5, 2.5]), _c("s2", [1, 1, 2, 2])], opset=9,
    )
    rs10 = make_model(
        [helper.make_node("Resize", ["x", "s"], ["n"], mode="nearest"),
         helper.make_node("Resize", ["x", "s2"], ["l"], mode="linear"),
         helper.make_node("Resize", ["x", "s3"], ["u"], mode="nearest")],
        [x], [_f("n", None), _f("l", None), _f("u", None)],
        [_c("s", [1, 1, 0.6, 0.5]), _c("s2", [1, 1, 0.7, 1.5]), _c("s3", [1, 1, 2, 2])],
        opset=10,
    )
    # GroupNormalization-18: scale and bias per group (21: per channel)
    gn18 = make_model(
        [helper.make_node("GroupNormalization", ["x", "gs", "gb"], ["y"], num_groups=2)],
        [x], [_f("y", None)], [_c("gs", [1.5, -0.5]), _c("gb", [0.25, 1.0])], opset=18,
    )
    return {"up7": up7, "up9": up9, "rs10": rs10, "gn18": gn18}


@pytest.mark.parametrize("name", ["up7", "up9", "rs10", "gn18"])
def test_older_opsets_match_onnxruntime(name, tmp_path_factory):
    """Upsample 7 (attribute) and 9, Resize 10, GroupNormalization 18."""
    model = _legacy_models()[name]
    x = np.random.default_rng(1).standard_normal((1, 2, 3, 4)).astype(np.float32)
    _check(model, _compile(model, tmp_path_factory, name), {"x": x})


def test_unsupported_attribute_is_one_clear_error(tmp_path):
    model = make_model(
        [helper.make_node("Resize", ["x", "", "s"], ["y"], name="rz", mode="nearest",
                          antialias=1)],
        [_f("x", [1, 1, 4, 4])], [_f("y", None)], [_c("s", [1, 1, 0.5, 0.5])], opset=19,
    )
    with pytest.raises(CompileError, match=r"node rz \(Resize\): antialias with mode nearest"):
        tvmforge.compile_model(model, "x86", tmp_path / "m.tar")


# --------------------------------------------------------------------------------------------
# CenterCropPad, Col2Im, AffineGrid, GroupNormalization (one opset-21 model)


def _geometry_model():
    i64 = np.int64
    nodes = [
        helper.make_node("CenterCropPad", ["x", "crop"], ["crop_all"]),
        helper.make_node("CenterCropPad", ["x", "cp"], ["crop_pad_axes"], axes=[-1, 1]),
        helper.make_node("CenterCropPad", ["x", "pad"], ["pad_odd"], axes=[0, 2]),
        helper.make_node("Col2Im", ["cols", "img", "blk"], ["col2im"]),
        helper.make_node("Col2Im", ["cols2", "img2", "blk2"], ["col2im_dsp"],
                         dilations=[2, 1], strides=[1, 2], pads=[1, 0, 0, 1]),
        helper.make_node("Col2Im", ["cols3", "img3", "blk3"], ["col2im_3d"]),
        helper.make_node("AffineGrid", ["theta", "gsize"], ["grid"]),
        helper.make_node("AffineGrid", ["theta", "gsize"], ["grid_ac"], align_corners=1),
        helper.make_node("AffineGrid", ["theta3", "gsize3"], ["grid3"]),
        helper.make_node("GroupNormalization", ["g", "gs", "gb"], ["gn"], num_groups=2,
                         epsilon=1e-3),
    ]
    inits = [
        _c("crop", [3, 4, 5], i64), _c("cp", [9, 2], i64), _c("pad", [4, 8], i64),
        _c("img", [5, 5], i64), _c("blk", [2, 3], i64),
        _c("img2", [5, 6], i64), _c("blk2", [2, 2], i64),
        _c("img3", [3, 4, 3], i64), _c("blk3", [2, 2, 1], i64),
        _c("gsize", [2, 1, 3, 4], i64), _c("gsize3", [1, 1, 2, 3, 4], i64),
        _c("gs", [1.0, 2.0, 0.5, -1.0]), _c("gb", [0.1, 0.0, -0.3, 1.0]),
    ]
    inputs = [
        _f("x", [3, 5, 6]), _f("cols", [2, 12, 12]), _f("cols2", [1, 4, 12]),
        _f("cols3", [1, 8, 18]), _f("theta", [2, 2, 3]), _f("theta3", [1, 3, 4]),
        _f("g", [2, 4, 3, 2]),
    ]
    outputs = [_f(n.output[0], None) for n in nodes]
    return make_model(nodes, inputs, outputs, inits, opset=21)


def test_geometry_ops_match_onnxruntime(tmp_path_factory):
    model = _geometry_model()
    rng = np.random.default_rng(2)
    feed = {
        i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(
            np.float32
        )
        for i in model.graph.input
    }
    _check(model, _compile(model, tmp_path_factory, "geom"), feed)


def test_a_dynamic_batch_passes_through(tmp_path):
    """tvmforge's own kernels keep a symbolic batch dim: one build runs at every batch."""
    nodes = [
        helper.make_node("Resize", ["x", "", "s"], ["cubic"], mode="cubic"),
        helper.make_node("Resize", ["x", "", "", "hw"], ["near"], mode="nearest",
                         axes=[2, 3], nearest_mode="ceil"),
        helper.make_node("CenterCropPad", ["x", "cp"], ["ccp"], axes=[2, 3]),
        helper.make_node("Col2Im", ["cols", "img", "blk"], ["c2i"], strides=[2, 1]),
    ]
    model = make_model(
        nodes,
        [_f("x", ["B", 2, 5, 7]), _f("cols", ["B", 4, 4])],
        [_f(n.output[0], None) for n in nodes],
        [_c("s", [1, 1, 0.6, 1.4]), _c("hw", [3, 9], np.int64), _c("cp", [6, 4], np.int64),
         _c("img", [5, 3], np.int64), _c("blk", [2, 2], np.int64)],
        opset=19,
    )
    run = tvmforge.load(tvmforge.compile_model(model, "x86", tmp_path / "dyn.tar"))
    rng = np.random.default_rng(3)
    for b in (1, 3):
        feed = {"x": rng.standard_normal((b, 2, 5, 7)).astype(np.float32),
                "cols": rng.standard_normal((b, 4, 4)).astype(np.float32)}
        _check(model, run, feed)
