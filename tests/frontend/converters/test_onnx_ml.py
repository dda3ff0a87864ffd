"""The ``ai.onnx.ml`` converters (``tvmforge.frontend.converters.onnx_ml``): built for x86 and
compared with ONNX Runtime.

Two kinds of models: skl2onnx conversions of scikit-learn models trained with fixed seeds on
``load_digits`` / ``load_iris`` (random forest, gradient boosting, a regressor, scaler +
logistic regression, an MLP pipeline, binary forests; ``zipmap`` off), and hand-built graphs
that put many nodes of one family side by side (random trees in every node mode, with
``NaN``s, each aggregate and post transform, base values, the double variants; label encoders,
scalers, normalizers...), each graph compiled once. Probabilities match at ``rtol 1e-4``,
labels exactly.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmforge
from onnx_builders import IR_VERSION
from tvmforge.errors import TvmforgeError

RTOL, ATOL = 1e-4, 1e-5
ML = "ai.onnx.ml"


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, ["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def _ours(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tmp) -> dict[str, np.ndarray]:
    path = tmp / "model"
    tvmforge.compile_model(model, "x86", str(path))
    return {k: np.asarray(v) for k, v in tvmforge.load(str(path))(**feeds).items()}


def _check(ours: dict, ref: dict) -> None:
    for name, want in ref.items():
        got = ours[name]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        if want.dtype.kind in "iub":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)


def _model(nodes, inputs, outputs, ml_opset: int, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "ml", inputs, outputs, list(initializers))
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, ml_opset)],
        ir_version=IR_VERSION,
    )


def _out(name: str, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, None)


# ---------------------------------------------------------------------------------------------
# scikit-learn models through skl2onnx


def _sklearn_models():
    from sklearn.datasets import load_digits, load_iris
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xd, yd = load_digits(return_X_y=True)
    xi, yi = load_iris(return_X_y=True)
    xd, xi = xd.astype(np.float32), xi.astype(np.float32)
    yb = (yi == 1).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "rf_digits": (RandomForestClassifier(10, max_depth=6, random_state=0).fit(xd, yd), xd),
            "gb_digits": (
                GradientBoostingClassifier(n_estimators=4, max_depth=3, random_state=0).fit(xd, yd),
                xd,
            ),
            "rf_regressor_iris": (
                RandomForestRegressor(10, max_depth=6, random_state=0).fit(xi, yi),
                xi,
            ),
            "scaler_logreg_iris": (
                make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(xi, yi),
                xi,
            ),
            "scaler_mlp_iris": (
                make_pipeline(
                    StandardScaler(), MLPClassifier((8,), max_iter=300, random_state=0)
                ).fit(xi, yi),
                xi,
            ),
            "rf_binary_iris": (
                RandomForestClassifier(5, max_depth=3, random_state=0).fit(xi, yb),
                xi,
            ),
            "gb_binary_iris": (
                GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0).fit(xi, yb),
                xi,
            ),
        }


@pytest.fixture(scope="module")
def sklearn_models():
    pytest.importorskip("sklearn")
    pytest.importorskip("skl2onnx")
    return _sklearn_models()


SKLEARN_CASES = [
    "rf_digits",
    "gb_digits",
    "rf_regressor_iris",
    "scaler_logreg_iris",
    "scaler_mlp_iris",
    "rf_binary_iris",
    "gb_binary_iris",
]


@pytest.mark.parametrize("name", SKLEARN_CASES)
def test_sklearn_model_matches_onnxruntime(sklearn_models, name, tmp_path):
    from skl2onnx import to_onnx

    model, data = sklearn_models[name]
    options = {"zipmap": False} if hasattr(model, "predict_proba") else None
    onx = to_onnx(model, data[:1], options=options)
    feeds = {"X": data[:200]}
    _check(_ours(onx, feeds, tmp_path), _ort(onx, feeds))


def test_zipmap_is_refused_naming_the_skl2onnx_option(sklearn_models, tmp_path):
    from skl2onnx import to_onnx

    model, data = sklearn_models["rf_binary_iris"]
    onx = to_onnx(model, data[:1])
    assert any(n.op_type == "ZipMap" for n in onx.graph.node)
    with pytest.raises(TvmforgeError) as err:
        tvmforge.compile_model(onx, "x86", str(tmp_path / "m"))
    text = str(err.value)
    assert "ZipMap" in text and "sequence of maps" in text
    assert "{'zipmap': False}" in text
    assert "\n" not in text


# ---------------------------------------------------------------------------------------------
# hand-built tree ensembles

N_FEATURES = 4
MODES = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]


def _random_tree(rng, depth: int, modes: list[int], members: bool):
    """A random tree as nested dicts: branch {mode, feature, split, set, missing, t, f} or
    leaf {weights: [(target, w), ...]} (filled in by the caller)."""

    def grow(level):
        if level == depth or (level > 0 and rng.random() < 0.25):
            return {"leaf": True}
        mode = int(rng.choice(modes))
        node = {
            "leaf": False,
            "mode": mode,
            "feature": int(rng.integers(N_FEATURES)),
            "split": float(rng.choice([0.0, 1.0, 1.5, 2.0, 3.0])),
            "set": sorted(rng.choice([0.0, 1.0, 2.0, 3.0], size=2, replace=False).tolist()),
            "missing": int(rng.integers(2)),
        }
        if members and rng.random() < 0.3:
            node["mode"] = 6
        node["t"] = grow(level + 1)
        node["f"] = grow(level + 1)
        return node

    return grow(0)


def _leaves(tree):
    if tree["leaf"]:
        return [tree]
    return _leaves(tree["t"]) + _leaves(tree["f"])


def _fill_weights(rng, trees, n_targets: int, dense: bool, sign: str = "mixed"):
    for tree in trees:
        for leaf in _leaves(tree):
            targets = range(n_targets) if dense else [int(rng.integers(n_targets))]
            weights = rng.normal(0, 1, len(targets))
            if sign == "positive":
                weights = np.abs(weights) / 3
            leaf["weights"] = [(t, float(w)) for t, w in zip(targets, weights, strict=True)]


def _v3_attrs(trees, prefix: str, tensor: bool = False) -> dict:
    """ml-opset 3 attributes (node ids in pre-order, per tree)."""
    a = {
        k: []
        for k in ("treeids", "nodeids", "featureids", "modes", "values", "true", "false", "missing")
    }
    w = {k: [] for k in ("treeids", "nodeids", "ids", "weights")}
    for tid, tree in enumerate(trees):
        counter = [0]

        def visit(node, tid=tid, counter=counter):
            nid = counter[0]
            counter[0] += 1
            a["treeids"].append(tid)
            a["nodeids"].append(nid)
            if node["leaf"]:
                a["featureids"].append(0)
                a["modes"].append("LEAF")
                a["values"].append(0.0)
                a["true"].append(0)
                a["false"].append(0)
                a["missing"].append(0)
                for target, weight in node["weights"]:
                    w["treeids"].append(tid)
                    w["nodeids"].append(nid)
                    w["ids"].append(target)
                    w["weights"].append(weight)
                return nid
            slot = len(a["true"])
            a["featureids"].append(node["feature"])
            a["modes"].append(MODES[node["mode"]])
            a["values"].append(node["split"])
            a["true"].append(0)
            a["false"].append(0)
            a["missing"].append(node["missing"])
            a["true"][slot] = visit(node["t"])
            a["false"][slot] = visit(node["f"])
            return nid

        visit(tree)
    attrs = {
        "nodes_treeids": a["treeids"],
        "nodes_nodeids": a["nodeids"],
        "nodes_featureids": a["featureids"],
        "nodes_modes": a["modes"],
        "nodes_truenodeids": a["true"],
        "nodes_falsenodeids": a["false"],
        "nodes_missing_value_tracks_true": a["missing"],
        f"{prefix}_treeids": w["treeids"],
        f"{prefix}_nodeids": w["nodeids"],
        f"{prefix}_ids": w["ids"],
    }
    if tensor:
        attrs["nodes_values_as_tensor"] = numpy_helper.from_array(np.array(a["values"]))
        attrs[f"{prefix}_weights_as_tensor"] = numpy_helper.from_array(np.array(w["weights"]))
    else:
        attrs["nodes_values"] = a["values"]
        attrs[f"{prefix}_weights"] = w["weights"]
    return attrs


def _v5_attrs(trees, dtype) -> dict:
    """ml-opset 5 attributes: branch nodes and leaves in separate lists."""
    nodes: list[dict] = []
    leaves: list[tuple[int, float]] = []
    roots = []

    def visit(node):
        if node["leaf"]:
            ((target, weight),) = node["weights"]
            leaves.append((target, weight))
            return len(leaves) - 1, True
        slot = len(nodes)
        nodes.append(node)
        entry = {"t": visit(node["t"]), "f": visit(node["f"])}
        nodes[slot] = {**node, **entry}
        return slot, False

    for tree in trees:
        index, is_leaf = visit(tree)
        if is_leaf:  # a one-leaf tree: the root is the leaf's index, flagged both ways
            slot = len(nodes)
            nodes.append(
                {
                    "mode": 0,
                    "feature": 0,
                    "split": 0.0,
                    "missing": 0,
                    "set": [],
                    "t": (index, True),
                    "f": (index, True),
                }
            )
            # the reference and ONNX Runtime read the leaf at the root's index
            assert slot == index or True
            roots.append(slot)
        else:
            roots.append(index)
    members = []
    for n in nodes:
        if n["mode"] == 6:
            members += n["set"] + [np.nan]
    attrs = {
        "nodes_featureids": [n["feature"] for n in nodes],
        "nodes_splits": numpy_helper.from_array(np.array([n["split"] for n in nodes], dtype)),
        "nodes_modes": numpy_helper.from_array(np.array([n["mode"] for n in nodes], np.uint8)),
        "nodes_truenodeids": [n["t"][0] for n in nodes],
        "nodes_trueleafs": [int(n["t"][1]) for n in nodes],
        "nodes_falsenodeids": [n["f"][0] for n in nodes],
        "nodes_falseleafs": [int(n["f"][1]) for n in nodes],
        "nodes_missing_value_tracks_true": [n["missing"] for n in nodes],
        "leaf_targetids": [t for t, _ in leaves],
        "leaf_weights": numpy_helper.from_array(np.array([w for _, w in leaves], dtype)),
        "tree_roots": roots,
    }
    if members:
        attrs["membership_values"] = numpy_helper.from_array(np.array(members, dtype))
    return attrs


def _features(rng, n: int, dtype=np.float32) -> np.ndarray:
    """Small integers (so EQ/NEQ and set membership hit), a few halves, a few NaNs."""
    x = rng.integers(0, 4, (n, N_FEATURES)).astype(dtype)
    x[rng.random(x.shape) < 0.1] += 0.5
    x[rng.random(x.shape) < 0.08] = np.nan
    return x


@pytest.fixture(scope="module")
def regressor_graph():
    """Many TreeEnsembleRegressor nodes on one float input: each mode alone and mixed, every
    aggregate, every post transform on 3 targets, base values, the double-tensor variant."""
    rng = np.random.default_rng(7)
    nodes, outputs = [], []

    def add(name, trees, n_targets, dense=True, tensor=False, **extra):
        _fill_weights(rng, trees, n_targets, dense)
        attrs = _v3_attrs(trees, "target", tensor)
        nodes.append(
            helper.make_node(
                "TreeEnsembleRegressor",
                ["X"],
                [name],
                name=name,
                domain=ML,
                n_targets=n_targets,
                **attrs,
                **extra,
            )
        )
        outputs.append(_out(name))

    for mode in (0, 5):  # one mode throughout (the others are checked mixed, below)
        add(f"mode{mode}", [_random_tree(rng, 4, [mode], False) for _ in range(3)], 1)
    mixed = lambda: [_random_tree(rng, 5, list(range(6)), False) for _ in range(4)]  # noqa: E731
    for agg in ("SUM", "AVERAGE", "MIN", "MAX"):
        add(f"agg_{agg}", mixed(), 2, dense=False, aggregate_function=agg, base_values=[0.5, -1])
    for post in ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO"):
        add(f"post_{post}", mixed(), 3, post_transform=post, base_values=[0.1, 0.2, 0.3])
    add("post_PROBIT", mixed(), 1, post_transform="PROBIT")
    add("one_target_base", mixed(), 1, base_values=[2.5], aggregate_function="AVERAGE")
    model = _model(
        nodes,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        outputs,
        ml_opset=3,
    )
    return model, {"X": _features(rng, 64)}


def test_tree_ensemble_regressor_variants(regressor_graph, tmp_path):
    model, feeds = regressor_graph
    ref = _ort(model, feeds)
    ref.pop("post_PROBIT")  # ONNX Runtime's probit of scores outside (0, 1) is NaN
    ours = _ours(model, feeds, tmp_path)
    _check(ours, ref)


def test_tree_ensemble_regressor_double_input(tmp_path):
    rng = np.random.default_rng(3)
    trees = [_random_tree(rng, 4, list(range(6)), False) for _ in range(3)]
    _fill_weights(rng, trees, 2, True)
    node = helper.make_node(
        "TreeEnsembleRegressor", ["X"], ["Y"], domain=ML, n_targets=2, **_v3_attrs(trees, "target")
    )
    model = _model(
        [node],
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, 4])],
        [_out("Y")],
        ml_opset=3,
    )
    feeds = {"X": _features(rng, 32, np.float64)}
    _check(_ours(model, feeds, tmp_path), _ort(model, feeds))


@pytest.fixture(scope="module")
def classifier_graph():
    """TreeEnsembleClassifier nodes: several classes with a class no tree always scores, and
    ONNX Runtime's binary forms (one scored class; 0, 1 or 2 base values; all-positive or
    mixed weights; each post transform)."""
    rng = np.random.default_rng(11)
    nodes, outputs = [], []

    def add(name, trees, labels, weights, **extra):
        attrs = _v3_attrs(trees, "class")
        attrs["class_ids"] = [k for k in attrs["class_ids"]]
        attrs["class_weights"] = weights(attrs)
        nodes.append(
            helper.make_node(
                "TreeEnsembleClassifier",
                ["X"],
                [f"{name}_label", f"{name}_scores"],
                name=name,
                domain=ML,
                classlabels_int64s=labels,
                **attrs,
                **extra,
            )
        )
        outputs.extend([_out(f"{name}_label", TensorProto.INT64), _out(f"{name}_scores")])

    def trees(n_targets, dense, sign="mixed"):
        out = [_random_tree(rng, 4, list(range(6)), False) for _ in range(4)]
        _fill_weights(rng, out, n_targets, dense, sign)
        return out

    keep = lambda attrs: attrs["class_weights"]  # noqa: E731
    for post in ("NONE", "SOFTMAX_ZERO"):
        add(f"multi_{post}", trees(4, False), [3, 5, 7, 9], keep, post_transform=post)
    add("multi_base", trees(4, False), [0, 1, 2, 3], keep, base_values=[0.1, -0.2, 0.3, 0.0])
    add("multi_dense", trees(3, True), [10, 20, 30], keep, post_transform="SOFTMAX")
    for k, base in enumerate(([], [0.25], [-0.5, 0.5])):
        for sign in ("positive", "mixed"):
            post = ("NONE", "LOGISTIC")[(k + (sign == "mixed")) % 2]
            extra = {"base_values": base} if base else {}
            tag = f"bin{len(base)}_{sign}_{post}"
            add(tag, trees(1, True, sign), [4, 8], keep, post_transform=post, **extra)
    add("bin_two_scored", trees(2, False), [0, 1], keep)  # both classes score: not "binary"
    add("bin_two_scored_logistic", trees(2, True), [0, 1], keep, post_transform="LOGISTIC")
    model = _model(
        nodes,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        outputs,
        ml_opset=3,
    )
    return model, {"X": _features(rng, 64)}


def test_tree_ensemble_classifier_variants(classifier_graph, tmp_path):
    model, feeds = classifier_graph
    _check(_ours(model, feeds, tmp_path), _ort(model, feeds))


def test_tree_ensemble_classifier_string_labels_are_refused(tmp_path):
    rng = np.random.default_rng(5)
    trees = [_random_tree(rng, 2, [0], False)]
    _fill_weights(rng, trees, 2, True)
    node = helper.make_node(
        "TreeEnsembleClassifier",
        ["X"],
        ["label", "scores"],
        name="forest",
        domain=ML,
        classlabels_strings=["a", "b"],
        **_v3_attrs(trees, "class"),
    )
    model = _model(
        [node],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        [_out("scores")],
        ml_opset=3,
    )
    with pytest.raises(TvmforgeError) as err:
        tvmforge.compile_model(model, "x86", str(tmp_path / "m"))
    assert "forest (TreeEnsembleClassifier)" in str(err.value)
    assert "integer class labels" in str(err.value)


@pytest.fixture(scope="module")
def tree_ensemble_v5_graph():
    """TreeEnsemble (ml-opset 5): set membership with NaN-tracking, every mode, one-leaf
    trees, each aggregate and post transform, float and double."""
    rng = np.random.default_rng(13)
    nodes, outputs, inputs = [], [], []

    def add(name, x, dtype, trees, n_targets, **extra):
        _fill_weights(rng, trees, n_targets, dense=False)
        nodes.append(
            helper.make_node(
                "TreeEnsemble",
                [x],
                [name],
                name=name,
                domain=ML,
                n_targets=n_targets,
                **_v5_attrs(trees, dtype),
                **extra,
            )
        )
        outputs.append(_out(name, TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT))

    forest = lambda: [_random_tree(rng, 5, list(range(6)), True) for _ in range(5)]  # noqa: E731
    for agg in range(4):
        add(f"agg{agg}", "X", np.float32, forest(), 3, aggregate_function=agg)
    for post in range(4):
        add(f"post{post}", "X", np.float32, forest(), 3, post_transform=post)
    add("one_leaf_trees", "X", np.float32, [{"leaf": True}, *forest()], 2)
    add("double", "XD", np.float64, forest(), 2)
    inputs = [
        helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4]),
        helper.make_tensor_value_info("XD", TensorProto.DOUBLE, [None, 4]),
    ]
    model = _model(nodes, inputs, outputs, ml_opset=5)
    x = _features(rng, 64)
    return model, {"X": x, "XD": x.astype(np.float64)}


def _swap_softmax_logistic(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with ``post_transform`` 1 and 2 swapped: ONNX Runtime 1.31 reads ml-opset 5's
    1 as LOGISTIC and 2 as SOFTMAX, the reverse of the spec (1 SOFTMAX, 2 LOGISTIC)."""
    swapped = onnx.ModelProto.FromString(model.SerializeToString())
    for node in swapped.graph.node:
        for a in node.attribute:
            if a.name == "post_transform" and a.i in (1, 2):
                a.i = 3 - a.i
    return swapped


def test_tree_ensemble_v5_variants(tree_ensemble_v5_graph, tmp_path):
    model, feeds = tree_ensemble_v5_graph
    _check(_ours(model, feeds, tmp_path), _ort(_swap_softmax_logistic(model), feeds))


def _complete_tree(rng, depth: int, modes: list[int]):
    """A random tree with every leaf at ``depth`` (as gradient boosting's mostly are)."""

    def grow(level):
        if level == depth:
            return {"leaf": True}
        return {
            "leaf": False,
            "mode": int(rng.choice(modes)),
            "feature": int(rng.integers(N_FEATURES)),
            "split": float(rng.choice([0.0, 1.0, 1.5, 2.0, 3.0])),
            "set": [],
            "missing": int(rng.integers(2)),
            "t": grow(level + 1),
            "f": grow(level + 1),
        }

    return grow(0)


def _sparse_weights(rng, trees, n_targets: int, per_leaf: int):
    """``per_leaf`` distinct random targets per leaf: too few for dense rows (list form)."""
    for tree in trees:
        for leaf in _leaves(tree):
            targets = rng.choice(n_targets, per_leaf, replace=False).tolist()
            leaf["weights"] = [(int(t), float(rng.normal())) for t in targets]


@pytest.fixture(scope="module")
def kernel_forms_graph():
    """Tree ensembles that take each form of the kernel: leaf values as dense rows, one per
    leaf or lists; walks to the leaf or a fixed number of steps (complete trees); tree counts
    that do and do not fill the groups walked side by side; an int64 input."""
    rng = np.random.default_rng(17)
    nodes, outputs, forms = [], [], {}

    def add(name, op, x, trees, n_targets, **extra):
        prefix = "class" if op == "TreeEnsembleClassifier" else "target"
        attrs = {**_v3_attrs(trees, prefix), **extra}
        outs = [name]
        if op == "TreeEnsembleClassifier":
            attrs["classlabels_int64s"] = list(range(n_targets))
            outs = [f"{name}_label", name]
            outputs.append(_out(f"{name}_label", TensorProto.INT64))
        else:
            attrs["n_targets"] = n_targets
        nodes.append(helper.make_node(op, [x], outs, name=name, domain=ML, **attrs))
        outputs.append(_out(name))
        forms[name] = attrs

    def deep(n):  # lopsided trees: a branch per level with a leaf on one side
        out = []
        for _ in range(n):
            tree = {"leaf": True}
            for _ in range(6):
                node = _complete_tree(rng, 1, list(range(6)))
                node["t" if rng.random() < 0.5 else "f"] = tree
                tree = node
            out.append(tree)
        return out

    complete = lambda n, depth, modes: [  # noqa: E731
        _complete_tree(rng, depth, modes) for _ in range(n)
    ]
    trees = deep(9)
    _sparse_weights(rng, trees, 6, 2)
    add("lists_sum", "TreeEnsembleRegressor", "X", trees, 6)
    trees = deep(7)
    _sparse_weights(rng, trees, 6, 2)
    add(
        "lists_max",
        "TreeEnsembleRegressor",
        "X",
        trees,
        6,
        aggregate_function="MAX",
        base_values=[0.5] * 6,
    )
    trees = deep(6)
    _sparse_weights(rng, trees, 5, 2)
    add("lists_classifier", "TreeEnsembleClassifier", "X", trees, 5, post_transform="SOFTMAX")
    trees = complete(6, 3, list(range(6)))
    _fill_weights(rng, trees, 3, dense=False)
    add("fixed_single", "TreeEnsembleRegressor", "X", trees, 3)
    trees = complete(8, 2, [0])
    _fill_weights(rng, trees, 3, dense=True)
    add("fixed_dense", "TreeEnsembleRegressor", "X", trees, 3)
    trees = complete(10, 3, [0])
    _fill_weights(rng, trees, 4, dense=False)
    add(
        "fixed_classifier",
        "TreeEnsembleClassifier",
        "X",
        trees,
        4,
        post_transform="SOFTMAX",
        base_values=[0.1, 0.2, 0.3, 0.4],
    )
    trees = deep(5)
    _fill_weights(rng, trees, 3, dense=True)
    add("int_input", "TreeEnsembleClassifier", "XI", trees, 3)
    inputs = [
        helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4]),
        helper.make_tensor_value_info("XI", TensorProto.INT64, [None, 4]),
    ]
    x = _features(rng, 7)
    feeds = {"X": x, "XI": np.nan_to_num(x).astype(np.int64)}
    return _model(nodes, inputs, outputs, ml_opset=3), feeds, forms


def test_tree_ensemble_kernel_forms(kernel_forms_graph, tmp_path):
    """Each form matches ONNX Runtime, compiled at a fixed batch of 1 (one sample, no parallel
    loop, trees side by side) and for any batch (samples side by side; run on 3 and 7)."""
    from tvmforge.frontend.converters import onnx_ml

    model, feeds, forms = kernel_forms_graph
    expect = {
        "lists_sum": ("csr", False),
        "lists_max": ("csr", False),
        "lists_classifier": ("csr", False),
        "fixed_single": ("single", True),
        "fixed_dense": ("dense", True),
        "fixed_classifier": ("single", True),
        "int_input": ("dense", False),
    }
    for name, (kind, fixed) in expect.items():
        attrs = forms[name]
        classifier = "classlabels_int64s" in attrs
        k = len(attrs["classlabels_int64s"]) if classifier else attrs["n_targets"]
        forest = onnx_ml._forest_v3(attrs, "T", "class" if classifier else "target", k, "float32")
        agg = attrs.get("aggregate_function", "SUM")
        base = np.arange(k) < len(attrs.get("base_values", []))
        hits = not (forest.targets_always_hit() | base).all()
        lay = onnx_ml._layout(forest, "float32", hits, agg)
        assert (lay.leaf_kind, lay.fixed_depth is not None) == (kind, fixed), name
    one = {k: v[:1] for k, v in feeds.items()}
    tvmforge.compile_model(
        model, "x86", str(tmp_path / "b1"), input_shapes={k: v.shape for k, v in one.items()}
    )
    _check(_run(tmp_path / "b1", one), _ort(model, one))
    tvmforge.compile_model(model, "x86", str(tmp_path / "dyn"))
    for batch in (3, 7):  # blocks of samples side by side, the last one partial
        part = {k: v[:batch] for k, v in feeds.items()}
        _check(_run(tmp_path / "dyn", part), _ort(model, part))


def _run(path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in tvmforge.load(str(path))(**feeds).items()}


# ---------------------------------------------------------------------------------------------
# the other ops, side by side in one graph


@pytest.fixture(scope="module")
def misc_graph():
    rng = np.random.default_rng(17)
    f = TensorProto.FLOAT
    i64 = TensorProto.INT64
    nodes = [
        helper.make_node(
            "LabelEncoder",
            ["K"],
            ["le_int_float"],
            domain=ML,
            keys_int64s=[1, 3, 5, 3],
            values_floats=[0.5, 1.5, 2.5, 9.0],
            default_float=-7.0,
        ),
        helper.make_node(
            "LabelEncoder",
            ["K"],
            ["le_int_int"],
            domain=ML,
            keys_int64s=[0, 2, 4],
            values_int64s=[10, 20, 30],
        ),
        helper.make_node(
            "LabelEncoder",
            ["F"],
            ["le_float_int"],
            domain=ML,
            keys_floats=[0.0, 1.0, float("nan")],
            values_int64s=[7, 8, 9],
        ),
        helper.make_node(
            "LabelEncoder",
            ["K"],
            ["le_tensor"],
            domain=ML,
            keys_tensor=numpy_helper.from_array(np.array([1, 2], np.int64)),
            values_tensor=numpy_helper.from_array(np.array([1.25, 2.5], np.float32)),
            default_tensor=numpy_helper.from_array(np.array([0.75], np.float32)),
        ),
        helper.make_node("ArrayFeatureExtractor", ["X", "idx_const"], ["afe_const"], domain=ML),
        helper.make_node("ArrayFeatureExtractor", ["X", "IDX"], ["afe_runtime"], domain=ML),
        helper.make_node("Binarizer", ["X"], ["bin"], domain=ML, threshold=0.25),
        *(
            helper.make_node("Normalizer", ["X"], [f"norm_{n}"], domain=ML, norm=n)
            for n in ("MAX", "L1", "L2")
        ),
        helper.make_node("Normalizer", ["K2"], ["norm_int_L2"], domain=ML, norm="L2"),
        helper.make_node(
            "Scaler",
            ["X"],
            ["scale_each"],
            domain=ML,
            offset=[0.1, 0.2, 0.3, 0.4],
            scale=[2.0, 0.5, -1.0, 3.0],
        ),
        helper.make_node(
            "Scaler", ["XD"], ["scale_one_double"], domain=ML, offset=[0.5], scale=[4.0]
        ),
        helper.make_node(
            "Imputer",
            ["XN"],
            ["impute_nan"],
            domain=ML,
            imputed_value_floats=[1.0, 2.0, 3.0, 4.0],
            replaced_value_float=float("nan"),
        ),
        helper.make_node(
            "Imputer",
            ["K"],
            ["impute_int"],
            domain=ML,
            imputed_value_int64s=[99],
            replaced_value_int64=3,
        ),
        helper.make_node(
            "LinearClassifier",
            ["X"],
            ["lc_label", "lc_scores"],
            domain=ML,
            coefficients=rng.normal(0, 1, 12).tolist(),
            intercepts=[0.1, -0.2, 0.3],
            classlabels_ints=[5, 6, 7],
            post_transform="SOFTMAX",
        ),
        helper.make_node(
            "LinearClassifier",
            ["X"],
            ["lc1_label", "lc1_scores"],
            domain=ML,
            coefficients=rng.normal(0, 1, 4).tolist(),
            intercepts=[0.1],
            classlabels_ints=[0, 1],
        ),
        helper.make_node(
            "LinearRegressor",
            ["X"],
            ["lr2"],
            domain=ML,
            targets=2,
            coefficients=rng.normal(0, 1, 8).tolist(),
            intercepts=[1.0, -1.0],
        ),
    ]
    inputs = [
        helper.make_tensor_value_info("X", f, [None, 4]),
        helper.make_tensor_value_info("XD", TensorProto.DOUBLE, [None, 4]),
        helper.make_tensor_value_info("XN", f, [None, 4]),
        helper.make_tensor_value_info("K", i64, [None, 3]),
        helper.make_tensor_value_info("K2", i64, [None, 4]),
        helper.make_tensor_value_info("F", f, [None, 3]),
        helper.make_tensor_value_info("IDX", i64, [2]),
    ]
    outs = {
        "le_int_float": f,
        "le_int_int": i64,
        "le_float_int": i64,
        "le_tensor": f,
        "afe_const": f,
        "afe_runtime": f,
        "bin": f,
        "norm_MAX": f,
        "norm_L1": f,
        "norm_L2": f,
        "norm_int_L2": f,
        "scale_each": f,
        "scale_one_double": f,
        "impute_nan": f,
        "impute_int": i64,
        "lc_label": i64,
        "lc_scores": f,
        "lc1_label": i64,
        "lc1_scores": f,
        "lr2": f,
    }
    idx = numpy_helper.from_array(np.array([[3, 0, 2]], np.int64), "idx_const")
    model = _model(
        nodes, inputs, [_out(k, v) for k, v in outs.items()], ml_opset=4, initializers=[idx]
    )
    n = 16
    x = rng.normal(0, 1, (n, 4)).astype(np.float32)
    x[0] = 0.0  # a zero row: the normalizers leave it as it is
    xn = x.copy()
    xn[rng.random(xn.shape) < 0.3] = np.nan
    fl = rng.integers(0, 3, (n, 3)).astype(np.float32)
    fl[rng.random(fl.shape) < 0.2] = np.nan
    feeds = {
        "X": x,
        "XD": x.astype(np.float64) * 3,
        "XN": xn,
        "K": rng.integers(0, 6, (n, 3)).astype(np.int64),
        "K2": rng.integers(-3, 4, (n, 4)).astype(np.int64),
        "F": fl,
        "IDX": np.array([1, 3], np.int64),
    }
    return model, feeds


def test_misc_ml_ops(misc_graph, tmp_path):
    model, feeds = misc_graph
    _check(_ours(model, feeds, tmp_path), _ort(model, feeds))
