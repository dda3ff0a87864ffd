"""The classic-ML domain ``ai.onnx.ml``: what skl2onnx writes for trees, linear models and
pre-processing, with ONNX Runtime's semantics where the spec leaves room.

Tree ensembles (``TreeEnsembleClassifier``, ``TreeEnsembleRegressor``: ml-opset 1/3 with their
``*_as_tensor`` double variants; ``TreeEnsemble``: ml-opset 5, its ``leaf_*`` and tensor
attributes) are flattened at import into constant arrays and one TIR kernel walks them. The
reachable branch nodes come first, tree by tree in depth-first order, then the leaves; each node
is 4 words of one int array (feature, threshold bits, true and false successor; a leaf is its
own successor), so a step is ``node = nodes[4 node + 3 - (x[feature] <= threshold)]`` with no
mode switch when every node has one mode (mode, missing-value and set-membership arrays join in
only when the model needs them). Per sample (the parallel loop when the batch is not 1) the
trees go 4 at a time, their walks advancing side by side (independent load chains the CPU
overlaps) until all four are at a leaf, or for a fixed number of unrolled steps when the trees
are nearly complete (gradient boosting's); then the leaves' values are added to the sample's
accumulators in tree order: a dense row over the targets per leaf when most leaves score most
targets (random forest classifiers: a vectorized add), one ``(target, weight)`` per leaf
(gradient boosting, ``TreeEnsemble``), or a list per leaf otherwise. Every node mode is handled:
``BRANCH_LEQ/LT/GTE/GT/EQ/NEQ`` and ``BRANCH_MEMBER`` (``x`` in the node's set); ``NaN`` goes
the true way where ``missing_value_tracks_true`` says so, and otherwise follows the comparison
(``NaN != v`` is true, the others false), as in ONNX Runtime. Aggregation is ``SUM``,
``AVERAGE`` (``/ n_trees``), ``MIN`` or ``MAX`` (a target no leaf wrote stays 0), then
``base_values`` (when there is one per target, or one for a single target) and the
``post_transform``: ``NONE``, ``SOFTMAX``, ``LOGISTIC``, ``SOFTMAX_ZERO`` (exact zeros stay
out of the softmax) or ``PROBIT`` (with ONNX Runtime's approximate ``erfinv``). As in ONNX
Runtime, a single-target regressor applies only ``PROBIT``. The comparison type is the
thresholds' (``float``, ``double`` for ``*_as_tensor`` or a ``double`` input); the classifier
and regressor write ``float`` scores, ``TreeEnsemble`` the input's type.

``TreeEnsembleClassifier`` outputs ``(label, scores)``: with more than two classes the label is
the first class of highest score among the classes that got a score (a tree leaf or a base
value); with two classes ONNX Runtime's binary rules apply (one scored class: the second score
is ``1 - s``, ``-s`` or ``logistic(±s)`` and the label follows ``s > 0.5`` or ``s > 0``).
Integer class labels only: ``classlabels_strings`` would make the label a string tensor, which
a compiled model cannot output, so the node is refused.

Also here: ``LabelEncoder`` (numeric keys and values, any mix of int64/float/tensor forms; a
``NaN`` key matches ``NaN``; the first of duplicate keys wins; string keys or values are
refused), ``ArrayFeatureExtractor`` (last-axis gather; run-time indices are checked),
``Binarizer``, ``Normalizer`` (``MAX``/``L1``/``L2`` over axis 1, as ONNX Runtime: ``MAX``
divides by the largest value, a zero norm leaves the row as it is), ``Scaler``, ``Imputer``,
``LinearClassifier`` and ``LinearRegressor`` (what skl2onnx writes for logistic regression and
linear models). ``ZipMap`` outputs a sequence of maps, not a tensor: it is refused, naming the
skl2onnx option that leaves it out.

TVM's importer picks ``_impl_vN`` by the default-domain opset, so each converter has a single
``_impl_v1`` and reads the ml-opset differences from the attributes present.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx
import tvm
from onnx import numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.errors import CompileError
from tvmforge.frontend.converters import CONVERTERS, register

# Node modes, numbered as ml-opset 5's ``nodes_modes``.
LEQ, LT, GTE, GT, EQ, NEQ, MEMBER = range(7)
_MODE_NAMES = {
    "BRANCH_LEQ": LEQ,
    "BRANCH_LT": LT,
    "BRANCH_GTE": GTE,
    "BRANCH_GT": GT,
    "BRANCH_EQ": EQ,
    "BRANCH_NEQ": NEQ,
    "BRANCH_MEMBER": MEMBER,
}
_CMP = {LEQ: "<=", LT: "<", GTE: ">=", GT: ">", EQ: "==", NEQ: "!="}
_AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")  # ml-opset 5 numbering
_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")  # ml-opset 5 numbering
_FLOAT_TYPES = ("float32", "float64")
_NUMERIC_INPUTS = ("float32", "float64", "int64", "int32")

_ZIPMAP_HINT = (
    "convert the scikit-learn model with skl2onnx's options={id(model): {'zipmap': False}} "
    "(or options={'zipmap': False}) so the probabilities come out as a tensor"
)


# ---------------------------------------------------------------------------------------------
# attribute helpers


def _node(attr: dict) -> str:
    return str(attr.get("tvm_custom", {}).get("name") or "?")


def _refuse(attr: dict, op: str, what: str, hint: str) -> CompileError:
    return CompileError(f"node {_node(attr)} ({op}): {what} is not supported", hint=hint)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _array(attr: dict, name: str, dtype=None) -> np.ndarray | None:
    """An attribute as a 1-D numpy array (a list attribute or a TensorProto), or ``None``."""
    if name not in attr:
        return None
    value = attr[name]
    if isinstance(value, onnx.TensorProto):
        arr = numpy_helper.to_array(value).reshape(-1)
    elif isinstance(value, (list, tuple)):
        if value and isinstance(value[0], (bytes, str)):
            return np.array([_text(v) for v in value], dtype=object)
        arr = np.asarray(value)
    else:
        arr = np.asarray([value])
    return arr.astype(dtype) if dtype is not None else arr


def _tensor_ty(expr: relax.Expr) -> relax.TensorType:
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType):
        raise TypeError(f"expected a tensor, got {ty}")
    return ty


def _dims(expr: relax.Expr) -> list:
    """The tensor's dims: ints, or TIR variables for symbolic ones."""
    ty = _tensor_ty(expr)
    if not isinstance(ty.shape, relax.ShapeExpr):
        raise TypeError("the tensor's shape is not known")
    return [int(d.value) if isinstance(d, tvm.tirx.IntImm) else d for d in ty.shape.values]


def _dtype(expr: relax.Expr) -> str:
    return str(_tensor_ty(expr).dtype)


def _const(values, dtype: str) -> relax.Expr:
    return relax.const(np.ascontiguousarray(np.asarray(values, dtype=dtype)), dtype)


def _input_2d(bb, x: relax.Expr, attr: dict, op: str) -> tuple[relax.Expr, list]:
    """``x`` as ``[N, C]``: a 1-D input is one row, as in ONNX Runtime."""
    dims = _dims(x)
    if _dtype(x) not in _NUMERIC_INPUTS:
        raise _refuse(attr, op, f"input type {_dtype(x)}", "feed float, double, int64 or int32")
    if len(dims) == 1:
        x = bb.normalize(relax.op.reshape(x, [1, dims[0]]))
        dims = [1, dims[0]]
    if len(dims) != 2:
        raise _refuse(attr, op, f"a rank-{len(dims)} input", "feed a [N, features] tensor")
    if not isinstance(dims[1], int):
        raise _refuse(attr, op, "a dynamic feature count", "fix the feature dimension")
    return x, dims


# ---------------------------------------------------------------------------------------------
# post transforms (ONNX Runtime's formulas, in float32)


def _logistic(v: relax.Expr) -> relax.Expr:
    """``1 / (1 + exp(-|v|))``, mirrored for negative ``v``."""
    one = relax.const(1.0, "float32")
    s = relax.op.divide(one, relax.op.add(one, relax.op.exp(relax.op.negative(relax.op.abs(v)))))
    return relax.op.where(
        relax.op.less(v, relax.const(0.0, "float32")), relax.op.subtract(one, s), s
    )


def _probit(v: relax.Expr) -> relax.Expr:
    """``sqrt(2) * erfinv(2v - 1)`` with the approximate ``erfinv`` ONNX Runtime uses."""
    f = lambda c: relax.const(c, "float32")  # noqa: E731
    x = relax.op.subtract(relax.op.multiply(v, f(2.0)), f(1.0))
    sgn = relax.op.where(relax.op.less(x, f(0.0)), f(-1.0), f(1.0))
    x = relax.op.multiply(relax.op.subtract(f(1.0), x), relax.op.add(f(1.0), x))
    log = relax.op.log(x)
    a = relax.op.add(f(2.0 / (math.pi * 0.147)), relax.op.multiply(f(0.5), log))
    b = relax.op.multiply(f(1.0 / 0.147), log)
    c = relax.op.add(
        relax.op.negative(a), relax.op.sqrt(relax.op.subtract(relax.op.multiply(a, a), b))
    )
    return relax.op.multiply(f(math.sqrt(2.0)), relax.op.multiply(sgn, relax.op.sqrt(c)))


def _softmax_zero(v: relax.Expr) -> relax.Expr:
    """Softmax over the last axis in which values within 1e-7 of zero stay (about) zero."""
    vmax = relax.op.max(v, axis=-1, keepdims=True)
    small = relax.op.less_equal(relax.op.abs(v), relax.const(1e-7, "float32"))
    e = relax.op.where(
        small,
        relax.op.multiply(v, relax.op.exp(relax.op.negative(vmax))),
        relax.op.exp(relax.op.subtract(v, vmax)),
    )
    kept = relax.op.where(small, relax.const(0.0, "float32"), e)
    return relax.op.divide(e, relax.op.sum(kept, axis=-1, keepdims=True))


def _post_transform(v: relax.Expr, transform: str) -> relax.Expr:
    """``transform`` applied to float32 scores ``[N, K]`` (per row for the softmaxes)."""
    if transform == "NONE":
        return v
    if transform == "LOGISTIC":
        return _logistic(v)
    if transform == "SOFTMAX":
        return relax.op.nn.softmax(v, axis=-1)
    if transform == "SOFTMAX_ZERO":
        return _softmax_zero(v)
    return _probit(v)


def _transform_of(attr: dict, op: str) -> str:
    raw = attr.get("post_transform", "NONE")
    name = _TRANSFORMS[raw] if isinstance(raw, int) and 0 <= raw < 5 else _text(raw)
    if name not in _TRANSFORMS:
        raise _refuse(attr, op, f"post_transform {name!r}", f"use one of {', '.join(_TRANSFORMS)}")
    return name


# ---------------------------------------------------------------------------------------------
# tree ensembles: the flattened form and its kernel


@dataclass
class _Forest:
    """A tree ensemble as flat arrays over ``M`` nodes (leaves point to themselves)."""

    feature: np.ndarray  # int32 [M]
    threshold: np.ndarray  # [M], the comparison dtype
    true_next: np.ndarray  # int32 [M]
    false_next: np.ndarray  # int32 [M]
    mode: np.ndarray  # int32 [M] (leaves: LEQ, unused)
    missing_true: np.ndarray  # int32 [M]
    member_start: np.ndarray  # int32 [M + 1], into member_values
    member_values: np.ndarray  # [V], the comparison dtype
    roots: np.ndarray  # int32 [T]
    depth: np.ndarray  # int32 [T]
    weight_start: np.ndarray  # int32 [M + 1], into weight_target / weight_value
    weight_target: np.ndarray  # int32 [W]
    weight_value: np.ndarray  # [W], the accumulation dtype
    n_targets: int
    reachable_leaves: list[list[int]]  # per tree

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    def targets_always_hit(self) -> np.ndarray:
        """bool [K]: targets every sample gets a weight for (some tree has one in every leaf)."""
        always = np.zeros(self.n_targets, bool)
        for leaves in self.reachable_leaves:
            common = None
            for leaf in leaves:
                lo, hi = self.weight_start[leaf], self.weight_start[leaf + 1]
                got = set(self.weight_target[lo:hi].tolist())
                common = got if common is None else common & got
            for k in common or ():
                if 0 <= k < self.n_targets:
                    always[k] = True
        return always

    def targets_ever_hit(self) -> np.ndarray:
        ever = np.zeros(self.n_targets, bool)
        for leaves in self.reachable_leaves:
            for leaf in leaves:
                lo, hi = self.weight_start[leaf], self.weight_start[leaf + 1]
                ever[self.weight_target[lo:hi]] = True
        return ever


def _walk_depths(
    roots: list[int],
    true_next: np.ndarray,
    false_next: np.ndarray,
    is_leaf: np.ndarray,
    attr: dict,
    op: str,
) -> tuple[list[int], list[list[int]]]:
    """Per tree: the longest root-to-leaf path (in steps) and the leaves reachable."""
    m = len(is_leaf)
    memo: dict[int, int] = {}
    depths, leaves_per_tree = [], []
    for root in roots:
        leaves: set[int] = set()
        state: dict[int, int] = {}  # 1: on the path, 2: done
        stack = [(root, False)]
        while stack:
            node, done = stack.pop()
            if not 0 <= node < m:
                raise _refuse(
                    attr,
                    op,
                    f"a branch to node index {node} (there are {m})",
                    "re-export the model",
                )
            if done:
                state[node] = 2
                memo[node] = 1 + max(memo[int(true_next[node])], memo[int(false_next[node])])
                continue
            if is_leaf[node]:
                leaves.add(node)
                memo[node] = 0
                state[node] = 2
                continue
            if state.get(node) == 1:
                raise _refuse(attr, op, "a tree with a cycle", "re-export the model")
            if state.get(node) == 2:
                continue
            state[node] = 1
            stack.append((node, True))
            for nxt in (int(true_next[node]), int(false_next[node])):
                if state.get(nxt) == 1:
                    raise _refuse(attr, op, "a tree with a cycle", "re-export the model")
                if state.get(nxt) != 2:
                    stack.append((nxt, False))
        depths.append(memo[root])
        leaves_per_tree.append(sorted(leaves))
    return depths, leaves_per_tree


def _csr(m: int, entries: list[list[tuple[int, float]]], dtype: str):
    start = np.zeros(m + 1, np.int32)
    targets, values = [], []
    for i in range(m):
        for t, w in entries[i]:
            targets.append(t)
            values.append(w)
        start[i + 1] = len(targets)
    return start, np.asarray(targets, np.int32), np.asarray(values, dtype)


def _forest_v3(attr: dict, op: str, prefix: str, n_targets: int, cmp_dtype: str) -> _Forest:
    """The ml-opset 1/3 form: ``nodes_*`` keyed by ``(treeid, nodeid)``, weights in
    ``{prefix}_ids/_nodeids/_treeids/_weights[_as_tensor]`` (``class`` or ``target``)."""
    treeids = _array(attr, "nodes_treeids", np.int64)
    nodeids = _array(attr, "nodes_nodeids", np.int64)
    if treeids is None or nodeids is None or len(treeids) != len(nodeids):
        raise _refuse(
            attr, op, "a node list without nodes_treeids/nodes_nodeids", "re-export the model"
        )
    m = len(treeids)

    def per_node(name, dtype, default=None):
        arr = _array(attr, name, dtype)
        if arr is None:
            if default is None:
                raise _refuse(attr, op, f"a node list without {name}", "re-export the model")
            return np.full(m, default, dtype)
        if len(arr) < m:
            if default is None:
                raise _refuse(attr, op, f"{name} shorter than the node list", "re-export the model")
            arr = np.concatenate([arr, np.full(m - len(arr), default, dtype)])
        return arr[:m]

    modes_raw = _array(attr, "nodes_modes")
    if modes_raw is None or len(modes_raw) != m:
        raise _refuse(attr, op, "nodes_modes missing or of the wrong length", "re-export the model")
    is_leaf = np.array([_text(s) == "LEAF" for s in modes_raw])
    modes = np.zeros(m, np.int32)
    for i, s in enumerate(modes_raw):
        name = _text(s)
        if name == "LEAF":
            continue
        if name not in _MODE_NAMES or _MODE_NAMES[name] == MEMBER:
            raise _refuse(attr, op, f"node mode {name!r}", "use the BRANCH_* modes or LEAF")
        modes[i] = _MODE_NAMES[name]
    values = _array(attr, "nodes_values_as_tensor")
    if values is None:
        values = _array(attr, "nodes_values")
    if values is None:
        values = np.zeros(m)
    if len(values) < m:
        raise _refuse(attr, op, "nodes_values shorter than the node list", "re-export the model")
    feature = per_node("nodes_featureids", np.int64, 0)
    true_ids = per_node("nodes_truenodeids", np.int64, 0)
    false_ids = per_node("nodes_falsenodeids", np.int64, 0)
    missing = per_node("nodes_missing_value_tracks_true", np.int64, 0)

    index: dict[tuple[int, int], int] = {}
    roots: list[int] = []  # the first node listed of each tree, in order
    seen_trees: set[int] = set()
    for i, key in enumerate(zip(treeids.tolist(), nodeids.tolist(), strict=True)):
        if key in index:
            raise _refuse(
                attr, op, f"node {key[1]} of tree {key[0]} listed twice", "re-export the model"
            )
        index[key] = i
        if key[0] not in seen_trees:
            seen_trees.add(key[0])
            roots.append(i)
    true_next = np.arange(m, dtype=np.int32)
    false_next = np.arange(m, dtype=np.int32)
    for i in range(m):
        if is_leaf[i]:
            continue
        for ids, out, side in ((true_ids, true_next, "true"), (false_ids, false_next, "false")):
            key = (int(treeids[i]), int(ids[i]))
            if key not in index:
                raise _refuse(
                    attr,
                    op,
                    f"a {side} branch to missing node {key[1]} of tree {key[0]}",
                    "re-export the model",
                )
            out[i] = index[key]

    w_ids = _array(attr, f"{prefix}_ids", np.int64)
    w_nodes = _array(attr, f"{prefix}_nodeids", np.int64)
    w_trees = _array(attr, f"{prefix}_treeids", np.int64)
    w_vals = _array(attr, f"{prefix}_weights_as_tensor")
    if w_vals is None:
        w_vals = _array(attr, f"{prefix}_weights")
    if w_ids is None:
        w_ids = w_nodes = w_trees = np.zeros(0, np.int64)
        w_vals = np.zeros(0)
    if not (len(w_ids) == len(w_nodes) == len(w_trees) == len(w_vals)):
        raise _refuse(attr, op, f"{prefix}_* lists of different lengths", "re-export the model")
    entries: list[list[tuple[int, float]]] = [[] for _ in range(m)]
    for t, n, k, w in zip(
        w_trees.tolist(), w_nodes.tolist(), w_ids.tolist(), w_vals.tolist(), strict=True
    ):
        key = (int(t), int(n))
        if key not in index:
            raise _refuse(
                attr, op, f"a weight for missing node {n} of tree {t}", "re-export the model"
            )
        if not 0 <= k < n_targets:
            raise _refuse(
                attr, op, f"a weight for target {k} of {n_targets}", "re-export the model"
            )
        if is_leaf[index[key]]:  # weights on branch nodes are ignored, as in ONNX Runtime
            entries[index[key]].append((int(k), w))
    acc_dtype = cmp_dtype
    start, targets, weights = _csr(m, entries, acc_dtype)
    depths, leaves = _walk_depths(roots, true_next, false_next, is_leaf, attr, op)
    return _Forest(
        feature=np.where(is_leaf, 0, feature).astype(np.int32),
        threshold=np.where(is_leaf, 0, values[:m]).astype(cmp_dtype),
        true_next=true_next,
        false_next=false_next,
        mode=modes,
        missing_true=np.where(is_leaf, 0, missing != 0).astype(np.int32),
        member_start=np.zeros(m + 1, np.int32),
        member_values=np.zeros(0, cmp_dtype),
        roots=np.asarray(roots, np.int32),
        depth=np.asarray(depths, np.int32),
        weight_start=start,
        weight_target=targets,
        weight_value=weights,
        n_targets=n_targets,
        reachable_leaves=leaves,
    )


def _forest_v5(attr: dict, op: str, dtype: str) -> _Forest:
    """The ml-opset 5 form: branch nodes ``nodes_*``, leaves ``leaf_*`` (one weight each),
    ``nodes_trueleafs``/``nodes_falseleafs`` saying which successor index is a leaf."""
    splits = _array(attr, "nodes_splits")
    feature = _array(attr, "nodes_featureids", np.int64)
    modes = _array(attr, "nodes_modes", np.int64)
    true_ids = _array(attr, "nodes_truenodeids", np.int64)
    false_ids = _array(attr, "nodes_falsenodeids", np.int64)
    true_leaf = _array(attr, "nodes_trueleafs", np.int64)
    false_leaf = _array(attr, "nodes_falseleafs", np.int64)
    leaf_targets = _array(attr, "leaf_targetids", np.int64)
    leaf_weights = _array(attr, "leaf_weights")
    tree_roots = _array(attr, "tree_roots", np.int64)
    n_targets = int(attr.get("n_targets", 0))
    required = {
        "nodes_splits": splits,
        "nodes_featureids": feature,
        "nodes_modes": modes,
        "nodes_truenodeids": true_ids,
        "nodes_falsenodeids": false_ids,
        "nodes_trueleafs": true_leaf,
        "nodes_falseleafs": false_leaf,
        "leaf_targetids": leaf_targets,
        "leaf_weights": leaf_weights,
        "tree_roots": tree_roots,
    }
    for name, arr in required.items():
        if arr is None:
            raise _refuse(attr, op, f"a model without {name}", "re-export the model")
    m_int = len(modes)
    if any(len(a) != m_int for a in (splits, feature, true_ids, false_ids, true_leaf, false_leaf)):
        raise _refuse(attr, op, "nodes_* attributes of different lengths", "re-export the model")
    n_leaf = len(leaf_targets)
    if len(leaf_weights) != n_leaf:
        raise _refuse(attr, op, "leaf_* attributes of different lengths", "re-export the model")
    if n_targets <= 0:
        raise _refuse(attr, op, f"n_targets = {n_targets}", "set n_targets")
    missing = _array(attr, "nodes_missing_value_tracks_true", np.int64)
    if missing is None:
        missing = np.zeros(m_int, np.int64)
    members = _array(attr, "membership_values")
    m = m_int + n_leaf

    def successor(ids, leafs, i):
        k = int(ids[i])
        if leafs[i]:
            if not 0 <= k < n_leaf:
                raise _refuse(
                    attr, op, f"a branch to leaf {k} (there are {n_leaf})", "re-export the model"
                )
            return m_int + k
        return k

    true_next = np.arange(m, dtype=np.int32)
    false_next = np.arange(m, dtype=np.int32)
    member_start = np.zeros(m + 1, np.int32)
    member_list: list[float] = []
    cursor = 0
    for i in range(m_int):
        true_next[i] = successor(true_ids, true_leaf, i)
        false_next[i] = successor(false_ids, false_leaf, i)
        if not 0 <= modes[i] <= MEMBER:
            raise _refuse(attr, op, f"node mode {int(modes[i])}", "use modes 0 to 6")
        if modes[i] == MEMBER:
            if members is None:
                raise _refuse(
                    attr,
                    op,
                    "a BRANCH_MEMBER node without membership_values",
                    "re-export the model",
                )
            while cursor < len(members) and not np.isnan(members[cursor]):
                member_list.append(float(members[cursor]))
                cursor += 1
            cursor += 1  # the NaN that ends this node's set
        member_start[i + 1] = len(member_list)
    member_start[m_int + 1 :] = len(member_list)
    is_leaf = np.arange(m) >= m_int
    roots = []
    for r in tree_roots.tolist():
        degenerate = (
            0 <= r < m_int and true_leaf[r] and false_leaf[r] and true_ids[r] == false_ids[r]
        )
        if degenerate:  # a tree that is one leaf: the root index is the leaf's
            roots.append(m_int + r)
        elif 0 <= r < m_int:
            roots.append(r)
        else:
            raise _refuse(
                attr, op, f"tree root {r} (there are {m_int} nodes)", "re-export the model"
            )
    entries: list[list[tuple[int, float]]] = [[] for _ in range(m)]
    for j in range(n_leaf):
        k = int(leaf_targets[j])
        if not 0 <= k < n_targets:
            raise _refuse(attr, op, f"a leaf for target {k} of {n_targets}", "re-export the model")
        entries[m_int + j].append((k, float(leaf_weights[j])))
    start, targets, weights = _csr(m, entries, dtype)
    depths, leaves = _walk_depths(roots, true_next, false_next, is_leaf, attr, op)
    pad = np.zeros(n_leaf)
    return _Forest(
        feature=np.concatenate([feature, pad]).astype(np.int32),
        threshold=np.concatenate([splits.astype(np.float64), pad]).astype(dtype),
        true_next=true_next,
        false_next=false_next,
        mode=np.concatenate([np.where(modes == MEMBER, MEMBER, modes), pad]).astype(np.int32),
        missing_true=np.concatenate([missing[:m_int] != 0, pad]).astype(np.int32),
        member_start=member_start,
        member_values=np.asarray(member_list, dtype),
        roots=np.asarray(roots, np.int32),
        depth=np.asarray(depths, np.int32),
        weight_start=start,
        weight_target=targets,
        weight_value=weights,
        n_targets=n_targets,
        reachable_leaves=leaves,
    )


def _tir_dtype(dtype: str) -> str:
    return f"T.{dtype}"


# Trees walked side by side for one sample: independent chains of loads the CPU overlaps.
LANES = 4
# The kernel walks a fixed number of steps, not to each leaf, when the trees are at most this
# deep and that many steps per tree are at most FIXED_SLACK times the mean leaf depth.
MAX_FIXED_DEPTH = 16
FIXED_SLACK = 1.25
# Leaf values go dense (a row of every target per leaf) from this fill ratio of the rows up.
DENSE_FILL = 0.5


@dataclass
class _Layout:
    """``_Forest`` laid out for the kernel: reachable branch nodes first (tree by tree, in
    depth-first order), then the leaves; ``nodes`` holds 4 words per node (feature, threshold
    bits, true successor, false successor; a leaf is its own successor) in an int array as
    wide as the comparison type. Leaf values: ``dense`` (``[L, K]`` rows), ``single`` (one
    ``(target, weight)`` per leaf) or ``csr`` (any number per leaf)."""

    nodes: np.ndarray
    n_branches: int
    n_leaves: int
    roots: np.ndarray  # int32 [T], new indices
    mode: np.ndarray  # int32 [B + L]
    missing_true: np.ndarray  # int32 [B + L]
    member_start: np.ndarray  # int32 [B + L + 1]
    member_values: np.ndarray
    leaf_kind: str  # "dense", "single" or "csr"
    leaf_arrays: list[tuple[str, np.ndarray, str]]  # (kernel name, values, dtype)
    fixed_depth: int | None  # walk exactly this many steps (no leaf is deeper)


def _layout(forest: _Forest, cmp_dtype: str, needs_hits: bool, aggregate: str) -> _Layout:
    """Reorder ``forest`` for the kernel (see ``_Layout``) and pick the leaf value form."""
    m = len(forest.feature)
    is_leaf = forest.true_next == np.arange(m)
    branch_new: dict[int, int] = {}
    leaf_new: dict[int, int] = {}
    branch_order: list[int] = []
    leaf_order: list[int] = []
    tree_leaf_depths: list[tuple[int, int]] = []  # per tree: (sum of leaf depths, leaves)
    for root in forest.roots.tolist():
        stack = [(root, 0)]
        depth_sum = leaf_count = 0
        while stack:
            node, depth = stack.pop()
            if is_leaf[node]:
                depth_sum += depth
                leaf_count += 1
                if node not in leaf_new:
                    leaf_new[node] = len(leaf_order)
                    leaf_order.append(node)
                continue
            if node in branch_new:
                continue
            branch_new[node] = len(branch_order)
            branch_order.append(node)
            stack.append((int(forest.false_next[node]), depth + 1))
            stack.append((int(forest.true_next[node]), depth + 1))
        tree_leaf_depths.append((depth_sum, leaf_count))
    b, n_leaf = len(branch_order), len(leaf_order)

    def new(old: int) -> int:
        return branch_new[old] if not is_leaf[old] else b + leaf_new[old]

    old = np.asarray(branch_order + leaf_order, np.int64)
    wide = np.int64 if cmp_dtype == "float64" else np.int32
    nodes = np.zeros((max(b + n_leaf, 1), 4), wide)
    nodes[:b, 0] = forest.feature[old[:b]]
    nodes[:b, 1] = forest.threshold[old[:b]].astype(cmp_dtype).view(wide)
    nodes[:b, 2] = [new(int(forest.true_next[o])) for o in branch_order]
    nodes[:b, 3] = [new(int(forest.false_next[o])) for o in branch_order]
    nodes[b:, 2] = nodes[b:, 3] = np.arange(b, b + n_leaf)
    starts = forest.member_start
    member_start = np.zeros(b + n_leaf + 1, np.int32)
    member_values = []
    for i, o in enumerate(branch_order):
        member_values.extend(forest.member_values[starts[o] : starts[o + 1]].tolist())
        member_start[i + 1] = len(member_values)
    member_start[b + 1 :] = len(member_values)
    mode = np.zeros(b + n_leaf, np.int32)
    mode[:b] = forest.mode[old[:b]]
    missing = np.zeros(b + n_leaf, np.int32)
    missing[:b] = forest.missing_true[old[:b]]

    k = forest.n_targets
    ws, wt, wv = forest.weight_start, forest.weight_target, forest.weight_value
    counts = np.asarray([ws[o + 1] - ws[o] for o in leaf_order], np.int64)
    unique = all(len(set(wt[ws[o] : ws[o + 1]].tolist())) == ws[o + 1] - ws[o] for o in leaf_order)
    summing = aggregate in ("SUM", "AVERAGE")
    acc_dtype = str(wv.dtype)
    if summing and not needs_hits and unique and counts.sum() >= DENSE_FILL * n_leaf * k:
        dense = np.zeros((max(n_leaf, 1), k), acc_dtype)
        for i, o in enumerate(leaf_order):
            dense[i, wt[ws[o] : ws[o + 1]]] = wv[ws[o] : ws[o + 1]]
        kind, arrays = "dense", [("lval", dense.reshape(-1), acc_dtype)]
    elif (counts <= 1).all() and ((counts == 1).all() or (summing and not needs_hits)):
        target = np.zeros(max(n_leaf, 1), np.int32)
        value = np.zeros(max(n_leaf, 1), acc_dtype)
        for i, o in enumerate(leaf_order):
            if counts[i]:
                target[i], value[i] = wt[ws[o]], wv[ws[o]]
        kind = "single"
        arrays = [("ltarget", target, "int32"), ("lval", value, acc_dtype)]
    else:
        start = np.zeros(n_leaf + 1, np.int32)
        start[1:] = np.cumsum(counts)
        sel = [np.arange(ws[o], ws[o + 1]) for o in leaf_order]
        idx = np.concatenate(sel) if sel else np.zeros(0, np.int64)
        target = wt[idx] if len(idx) else np.zeros(1, np.int32)
        value = wv[idx] if len(idx) else np.zeros(1, acc_dtype)
        kind = "csr"
        arrays = [
            ("wstart", start, "int32"),
            ("wtarget", target.astype(np.int32), "int32"),
            ("lval", value.astype(acc_dtype), acc_dtype),
        ]
    # Walk every tree to the deepest leaf (no exit test per step) when that wastes little:
    # nearly complete trees, as gradient boosting's are.
    deepest = int(forest.depth.max(initial=0))
    fixed = None
    if deepest <= MAX_FIXED_DEPTH and deepest * len(forest.roots) <= FIXED_SLACK * sum(
        leaf_depth_sum / max(leaf_count, 1) for leaf_depth_sum, leaf_count in tree_leaf_depths
    ):
        fixed = deepest
    return _Layout(
        nodes=nodes.reshape(-1),
        n_branches=b,
        n_leaves=n_leaf,
        roots=np.asarray([new(int(r)) for r in forest.roots], np.int32),
        mode=mode,
        missing_true=missing,
        member_start=member_start,
        member_values=np.asarray(member_values, cmp_dtype),
        leaf_kind=kind,
        leaf_arrays=arrays,
        fixed_depth=fixed,
    )


def _forest_kernel(
    forest: _Forest,
    lay: _Layout,
    n,
    n_features: int,
    x_dtype: str,
    cmp_dtype: str,
    aggregate: str,
    with_hits: bool,
    lanes: int = LANES,
):
    """The PrimFunc evaluating ``forest`` (laid out as ``lay``) on ``X[n, n_features]``: raw
    aggregated scores ``[n, K]`` (a target no leaf wrote is 0) and, with ``with_hits``,
    ``[n, K]`` int32 flags saying which targets some leaf wrote.

    ``lanes`` walks advance side by side (independent chains of loads the CPU overlaps) until
    every one is at a leaf, or for ``lay.fixed_depth`` unrolled steps; then their leaves' values
    are added, each sample's in the trees' order. With a dynamic batch or a fixed one of at
    least ``lanes`` samples, the lanes are that many samples on one tree at a time (the tree's
    nodes stay in cache for all of them; a last, partial block repeats its last sample),
    blocks of samples being the parallel loop; with a fixed smaller batch (1) they are
    ``lanes`` trees of one sample. (One form per kernel: TVMScript parsing and LLVM time grow
    with the code, and a dynamic batch of 1 still runs, as fast as one walk at a time.)"""
    b = lay.n_branches
    modes = sorted(set(lay.mode[:b].tolist())) or [LEQ]
    uniform = modes[0] if len(modes) == 1 else None
    has_member = MEMBER in modes
    track_missing = x_dtype in _FLOAT_TYPES and bool(lay.missing_true.any())
    minmax = aggregate in ("MIN", "MAX")
    hits = with_hits or minmax
    acc = cmp_dtype
    k = forest.n_targets
    nt = forest.n_trees
    wide = "int64" if cmp_dtype == "float64" else "int32"
    floats = cmp_dtype in _FLOAT_TYPES

    def dim(v):
        return f"T.int64({v})"

    n_text = dim(n) if isinstance(n, int) else "n"
    params = [
        ("X", f"({n_text}, {dim(n_features)})", x_dtype),
        ("nodes", f"({dim(len(lay.nodes))},)", wide),
    ]
    if uniform is None:
        params.append(("mode", f"({dim(len(lay.mode))},)", "int32"))
    if track_missing:
        params.append(("miss", f"({dim(len(lay.missing_true))},)", "int32"))
    if has_member:
        params.append(("mstart", f"({dim(len(lay.member_start))},)", "int32"))
        params.append(("mval", f"({dim(max(len(lay.member_values), 1))},)", cmp_dtype))
    params.append(("roots", f"({dim(max(nt, 1))},)", "int32"))
    params += [(name, f"({dim(len(arr))},)", dt) for name, arr, dt in lay.leaf_arrays]
    params.append(("out", f"({n_text}, {dim(k)})", acc))
    if with_hits:
        params.append(("hits", f"({n_text}, {dim(k)})", "int32"))
    zero = f"{_tir_dtype(acc)}(0)"

    def body(by_samples: bool, ind0: str, z: str) -> list[str]:
        """The loop nest, its names suffixed ``z`` (both forms can share one function)."""
        acc_b, nd, hit, found = (f"{name}_l{z}" for name in ("acc", "nd", "hit", "found"))
        ka = k * lanes if by_samples else k
        if by_samples:
            extent = f"({n_text} + {lanes - 1}) // {lanes}"
            many = not isinstance(n, int) or n > lanes
        else:
            extent = n_text
            many = not isinstance(n, int) or n > 1
        outer = f"ib{z}" if by_samples else f"i{z}"
        ind = ind0 + "    "
        out = [f"{ind0}for {outer} in {'T.parallel' if many else 'T.serial'}({extent}):"]
        out += [
            f'{ind}{acc_b} = T.decl_buffer(({ka},), "{acc}", scope="local")',
            f'{ind}{nd} = T.decl_buffer(({lanes},), "int32", scope="local")',
        ]
        if hits:
            out.append(f'{ind}{hit} = T.decl_buffer(({ka},), "int32", scope="local")')
        if has_member:
            out.append(f'{ind}{found} = T.decl_buffer(({lanes},), "bool", scope="local")')
        out += [f"{ind}for k0{z} in range({ka}):", f"{ind}    {acc_b}[k0{z}] = {zero}"]
        if hits:
            out.append(f"{ind}    {hit}[k0{z}] = 0")

        def sample(j: int) -> str:
            return f"T.min({outer} * {lanes} + {j}, {n_text} - 1)" if by_samples else outer

        def slot(j: int, c: str) -> str:
            return f"{j * k} + {c}" if by_samples else c

        def compare(mode: int, j: int, s: str) -> str:
            if mode == NEQ:  # unordered, as in C++: NaN != th holds
                return f"(v{s} != th{s} or T.isnan(v{s}))" if floats else f"(v{s} != th{s})"
            return f"{found}[{j}]" if mode == MEMBER else f"(v{s} {_CMP[mode]} th{s})"

        def step(j: int, s: str, ind: str) -> list[str]:
            """Advance lane ``j`` one node (names suffixed ``s``)."""
            p, cur = f"p{s}", f"{nd}[{j}]"
            lines = [
                f"{ind}{p} = {cur} * 4",
                f'{ind}v{s} = T.Cast("{cmp_dtype}", X[{sample(j)}, nodes[{p}]])',
                f'{ind}th{s} = T.reinterpret("{cmp_dtype}", nodes[{p} + 1])',
            ]
            if has_member:
                lines.append(f"{ind}{found}[{j}] = False")
                inner = ind
                if uniform != MEMBER:
                    lines.append(f"{ind}if mode[{cur}] == 6:")
                    inner = ind + "    "
                lines += [
                    f"{inner}for m{s} in range(mstart[{cur}], mstart[{cur} + 1]):",
                    f"{inner}    {found}[{j}] = {found}[{j}] or v{s} == mval[m{s}]",
                ]
            if uniform is not None:
                cond = compare(uniform, j, s)
            else:
                cond = compare(modes[-1], j, s)
                for mode in reversed(modes[:-1]):
                    cond = f"T.Select(mode[{cur}] == {mode}, {compare(mode, j, s)}, {cond})"
            if track_missing:
                cond = f"({cond} or (miss[{cur}] != 0 and T.isnan(v{s})))"
            nxt = f'nodes[{p} + 3 - T.Cast("{wide}", {cond})]'
            lines.append(f"{ind}{cur} = " + (nxt if wide == "int32" else f'T.Cast("int32", {nxt})'))
            return lines

        def add_leaf(j: int, s: str, ind: str) -> list[str]:
            leaf = f"({nd}[{j}] - {b})"
            if lay.leaf_kind == "dense":
                q = slot(j, f"q{s}")
                return [
                    f"{ind}for q{s} in range({k}):",
                    f"{ind}    {acc_b}[{q}] = {acc_b}[{q}] + lval[{leaf} * {k} + q{s}]",
                ]
            if lay.leaf_kind == "single":
                lines = [f"{ind}c{s} = ltarget[{leaf}]"]
                w, wind = f"lval[{leaf}]", ind
            else:
                lines = [f"{ind}for w{s} in range(wstart[{leaf}], wstart[{leaf} + 1]):"]
                wind = ind + "    "
                lines.append(f"{wind}c{s} = wtarget[w{s}]")
                w = f"lval[w{s}]"
            c = slot(j, f"c{s}")
            if aggregate in ("SUM", "AVERAGE"):
                lines.append(f"{wind}{acc_b}[{c}] = {acc_b}[{c}] + {w}")
            else:
                better = "<" if aggregate == "MIN" else ">"
                lines.append(
                    f"{wind}{acc_b}[{c}] = T.Select({hit}[{c}] == 0 or {w} {better} "
                    f"{acc_b}[{c}], {w}, {acc_b}[{c}])"
                )
            if hits:
                lines.append(f"{wind}{hit}[{c}] = 1")
            return lines

        def group(count: int, root: str, tag: str, ind: str) -> list[str]:
            """Walk ``count`` lanes from the roots ``root(j)`` side by side, add the leaves."""
            lines = [f"{ind}{nd}[{j}] = roots[{root(j)}]" for j in range(count)]
            if lay.fixed_depth is None:
                alive = " or ".join(f"{nd}[{j}] < {b}" for j in range(count))
                lines.append(f"{ind}while {alive}:")
            elif lay.fixed_depth:
                lines.append(f"{ind}for d{tag} in range({lay.fixed_depth}):")
            if lay.fixed_depth != 0:
                for j in range(count):
                    lines += step(j, f"{tag}{j}", ind + "    ")
            for j in range(count):
                lines += add_leaf(j, f"{tag}{j}", ind)
            return lines

        if by_samples:
            out.append(f"{ind}for t{z} in range({nt}):")
            out += group(lanes, lambda j: f"t{z}", f"g{z}", ind + "    ")
            first = f"{outer} * {lanes} + j{z}"
            out += [
                f"{ind}for j{z} in range({lanes}):",
                f"{ind}    if {first} < {n_text}:",
                f"{ind}        for k{z} in range({k}):",
            ]
            at, row = f"j{z} * {k} + k{z}", f"{first}, k{z}"
        else:
            full, rest = divmod(nt, lanes)
            if full:
                out.append(f"{ind}for g{z} in range({full}):")
                out += group(lanes, lambda j: f"g{z} * {lanes} + {j}", f"g{z}", ind + "    ")
            if rest:
                out += group(rest, lambda j: f"{full * lanes + j}", f"r{z}", ind)
            out.append(f"{ind}for k{z} in range({k}):")
            at, row = f"k{z}", f"{outer}, k{z}"
        wind = ind + ("            " if by_samples else "    ")
        if minmax:
            out.append(f"{wind}out[{row}] = T.Select({hit}[{at}] != 0, {acc_b}[{at}], {zero})")
        else:
            out.append(f"{wind}out[{row}] = {acc_b}[{at}]")
        if with_hits:
            out.append(f"{wind}hits[{row}] = {hit}[{at}]")
        return out

    lines = [
        "@T.prim_func(private=True, s_tir=True)",
        "def main(" + ", ".join(f"{p}_h: T.handle" for p, _, _ in params) + "):",
        '    T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})',
    ]
    if not isinstance(n, int):
        lines.append("    n = T.int64()")
    lines += [f'    {p} = T.match_buffer({p}_h, {shape}, "{dt}")' for p, shape, dt in params]
    lines += body(not isinstance(n, int) or n >= lanes, "    ", "")
    return _parse_tir("\n".join(lines))


def _parse_tir(text: str):
    """``tvm.script.from_source(text)`` on a fresh thread. The parser evaluates the
    ``@T.prim_func(...)`` decorator, whose ``inspect.stack()`` reads the source of every frame
    on the calling thread's stack: 0.5 s per kernel or more under a deep stack (pytest, the
    driver); a new thread's stack is a few frames."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(tvm.script.from_source, text).result()


def _run_forest(
    bb,
    forest: _Forest,
    x: relax.Expr,
    dims: list,
    cmp_dtype: str,
    aggregate: str,
    with_hits: bool,
    attr: dict,
    op: str,
) -> tuple[relax.Expr, relax.Expr | None]:
    """Emit the forest kernel on ``x`` ``[N, C]``: ``(scores [N, K], hits [N, K] or None)``."""
    n, c = dims
    if forest.n_trees and int(forest.feature.max(initial=0)) >= c:
        raise _refuse(
            attr,
            op,
            f"a split on feature {int(forest.feature.max())} of a {c}-feature input",
            "feed all the features the model was trained on",
        )
    x_dtype = _dtype(x)
    lay = _layout(forest, cmp_dtype, with_hits, aggregate)
    kernel = _forest_kernel(forest, lay, n, c, x_dtype, cmp_dtype, aggregate, with_hits)
    gv = bb.add_func(kernel, "tree_ensemble")
    b = lay.n_branches
    modes_used = set(lay.mode[:b].tolist())
    wide = "int64" if cmp_dtype == "float64" else "int32"
    args = [x, _const(lay.nodes, wide)]
    if len(modes_used) > 1:
        args.append(_const(lay.mode, "int32"))
    if x_dtype in _FLOAT_TYPES and lay.missing_true.any():
        args.append(_const(lay.missing_true, "int32"))
    if MEMBER in modes_used:
        args.append(_const(lay.member_start, "int32"))
        mval = lay.member_values if len(lay.member_values) else np.zeros(1)
        args.append(_const(mval, cmp_dtype))
    args.append(_const(lay.roots if len(lay.roots) else np.zeros(1), "int32"))
    args += [_const(arr, dt) for _, arr, dt in lay.leaf_arrays]
    k = forest.n_targets
    out_ty = [relax.TensorType([n, k], cmp_dtype)]
    if with_hits:
        out_ty.append(relax.TensorType([n, k], "int32"))
    call = bb.emit(relax.call_tir(gv, args, out_ty if with_hits else out_ty[0]))
    if with_hits:
        return bb.emit(relax.TupleGetItem(call, 0)), bb.emit(relax.TupleGetItem(call, 1))
    return call, None


def _cmp_dtype(attr: dict, x_dtype: str) -> str:
    doubles = any(name.endswith("_as_tensor") for name in attr)
    return "float64" if doubles or x_dtype == "float64" else "float32"


def _finish_regression(
    scores: relax.Expr,
    hits: relax.Expr | None,
    forest: _Forest,
    aggregate: str,
    base: np.ndarray | None,
    transform: str,
    out_dtype: str,
) -> relax.Expr:
    """Average, add the base values and transform, with ONNX Runtime's rules: with several
    targets, a target no leaf scored is written as 0 (``hits`` says which were scored; base
    values included); a single target always gets its base value and only ``PROBIT``."""
    dtype = _dtype(scores)
    k = forest.n_targets
    if aggregate == "AVERAGE" and forest.n_trees:
        scores = relax.op.divide(scores, relax.const(float(forest.n_trees), dtype))
    if _base_applies(base, k):
        scores = relax.op.add(scores, _const(base.reshape(1, k), dtype))
        if hits is not None:
            scored = relax.op.not_equal(hits, relax.const(0, "int32"))
            scores = relax.op.where(scored, scores, relax.const(0.0, dtype))
    if k == 1 and transform != "PROBIT":
        transform = "NONE"
    if transform != "NONE":
        if dtype != "float32":
            scores = relax.op.astype(scores, "float32")
            dtype = "float32"
        scores = _post_transform(scores, transform)
    return relax.op.astype(scores, out_dtype) if dtype != out_dtype else scores


def _base_applies(base: np.ndarray | None, k: int) -> bool:
    return base is not None and len(base) == k


def _aggregate_of(attr: dict, op: str) -> str:
    raw = attr.get("aggregate_function", "SUM")
    name = _AGGREGATES[raw] if isinstance(raw, int) and 0 <= raw < 4 else _text(raw)
    if name not in _AGGREGATES:
        raise _refuse(attr, op, f"aggregate_function {name!r}", "use SUM, AVERAGE, MIN or MAX")
    return name


def _base_values(attr: dict) -> np.ndarray | None:
    base = _array(attr, "base_values_as_tensor")
    if base is None:
        base = _array(attr, "base_values")
    return None if base is None else base.astype(np.float64)


@register("TreeEnsembleRegressor")
class TreeEnsembleRegressor(onnx_frontend.OnnxOpConverter):
    """``ai.onnx.ml.TreeEnsembleRegressor`` (ml-opset 1 and 3): float scores ``[N, n_targets]``."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        op = "TreeEnsembleRegressor"
        x, dims = _input_2d(bb, inputs[0], attr, op)
        cmp_dtype = _cmp_dtype(attr, _dtype(x))
        n_targets = int(attr.get("n_targets", 1))
        if n_targets <= 0:
            raise _refuse(attr, op, f"n_targets = {n_targets}", "set n_targets")
        aggregate = _aggregate_of(attr, op)
        transform = _transform_of(attr, op)
        forest = _forest_v3(attr, op, "target", n_targets, cmp_dtype)
        base = _base_values(attr)
        with_hits = (
            n_targets > 1
            and _base_applies(base, n_targets)
            and not forest.targets_always_hit().all()
        )
        scores, hits = _run_forest(bb, forest, x, dims, cmp_dtype, aggregate, with_hits, attr, op)
        return _finish_regression(scores, hits, forest, aggregate, base, transform, "float32")


@register("TreeEnsemble")
class TreeEnsemble(onnx_frontend.OnnxOpConverter):
    """``ai.onnx.ml.TreeEnsemble`` (ml-opset 5): scores ``[N, n_targets]`` of the input's type."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        op = "TreeEnsemble"
        x, dims = _input_2d(bb, inputs[0], attr, op)
        x_dtype = _dtype(x)
        if x_dtype not in _FLOAT_TYPES:
            raise _refuse(attr, op, f"input type {x_dtype}", "feed float or double")
        aggregate = _aggregate_of(attr, op)
        transform = _transform_of(attr, op)
        forest = _forest_v5(attr, op, x_dtype)
        scores, _ = _run_forest(bb, forest, x, dims, x_dtype, aggregate, False, attr, op)
        return _finish_regression(scores, None, forest, aggregate, None, transform, x_dtype)


@register("TreeEnsembleClassifier")
class TreeEnsembleClassifier(onnx_frontend.OnnxOpConverter):
    """``ai.onnx.ml.TreeEnsembleClassifier`` (ml-opset 1 and 3): ``(label int64 [N],
    scores float [N, n_classes])`` with ONNX Runtime's rules for labels and binary models."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        op = "TreeEnsembleClassifier"
        if "classlabels_strings" in attr:
            raise _refuse(
                attr,
                op,
                "string class labels (the label output would be a string tensor)",
                "convert the model with integer class labels (e.g. encode y with "
                "LabelEncoder before fitting)",
            )
        labels = _array(attr, "classlabels_int64s", np.int64)
        if labels is None or len(labels) < 2:
            raise _refuse(attr, op, "fewer than two class labels", "train on two classes or more")
        x, dims = _input_2d(bb, inputs[0], attr, op)
        cmp_dtype = _cmp_dtype(attr, _dtype(x))
        transform = _transform_of(attr, op)
        k = len(labels)
        forest = _forest_v3(attr, op, "class", k, cmp_dtype)
        base = _base_values(attr)
        base = np.zeros(0) if base is None else base
        always = forest.targets_always_hit()
        ever = forest.targets_ever_hit()
        if k > 2:
            has_static = always | (np.arange(k) < len(base))
            with_hits = not has_static.all()
        else:
            with_hits = bool((ever & ~always).any())
        scores, hits = _run_forest(bb, forest, x, dims, cmp_dtype, "SUM", with_hits, attr, op)
        if k > 2:
            return cls._multiclass(bb, scores, hits, base, labels, transform, has_static)
        w_ids = _array(attr, "class_ids", np.int64)
        w_vals = _array(attr, "class_weights_as_tensor")
        if w_vals is None:
            w_vals = _array(attr, "class_weights")
        binary_case = w_ids is not None and len(set(w_ids.tolist())) == 1
        all_positive = w_vals is None or bool((np.asarray(w_vals) >= 0).all())
        return cls._binary(
            bb, scores, hits, always, ever, base, labels, transform, binary_case, all_positive
        )

    @staticmethod
    def _multiclass(bb, scores, hits, base, labels, transform, has_static):
        acc = _dtype(scores)
        k = len(labels)
        nb = min(len(base), k)
        if nb:
            full = np.zeros(k)
            full[:nb] = base[:nb]
            scores = bb.emit(relax.op.add(scores, _const(full.reshape(1, k), acc)))
        ranked = scores
        if hits is not None:
            has = relax.op.logical_or(
                relax.op.not_equal(hits, relax.const(0, "int32")),
                _const(has_static.reshape(1, k), "bool"),
            )
            ranked = relax.op.where(has, scores, relax.const(-np.inf, acc))
        index = relax.op.argmax(ranked, axis=1)
        label = relax.op.take(_const(labels, "int64"), index, axis=0)
        probs = _post_transform(relax.op.astype(scores, "float32"), transform)
        return relax.Tuple([label, probs])

    @staticmethod
    def _binary(bb, scores, hits, always, ever, base, labels, transform, binary_case, all_positive):
        """ONNX Runtime's two-class rules, per sample. ``h0``/``h1``: class 0/1 got a score
        from a leaf (static where the trees decide it). After the base values there are two
        score slots, or one when class 1 got none (and fewer than two base values); a slot
        without a score is written as 0. Two slots get the post transform; one slot ``s``
        becomes ``[1 - s, s]`` (binary, non-negative weights), ``[-s, s]`` (otherwise), with
        ``LOGISTIC`` applied to ``s`` first."""
        acc = _dtype(scores)
        f = lambda v: relax.const(v, acc)  # noqa: E731
        p0 = bb.emit(relax.op.strided_slice(scores, axes=[1], begin=[0], end=[1]))
        p1 = bb.emit(relax.op.strided_slice(scores, axes=[1], begin=[1], end=[2]))

        def flag(j):
            if hits is not None and ever[j] and not always[j]:
                h = relax.op.strided_slice(hits, axes=[1], begin=[j], end=[j + 1])
                return bb.emit(relax.op.not_equal(h, relax.const(0, "int32")))
            return bool(always[j])

        def sel(cond, a, b):
            if isinstance(cond, bool):
                return a if cond else b
            return relax.op.where(cond, a, b)

        h0, h1 = flag(0), flag(1)
        nb = len(base)
        none = bb.emit(relax.op.zeros_like(p0))  # a slot without a score
        if nb == 2:
            shifted = bb.emit(relax.op.add(p0, f(base[1])))
            q1 = sel(h1, shifted, relax.op.add(p1, f(base[1])))
            q0 = sel(h1, relax.op.negative(shifted), relax.op.add(p0, f(base[0])))
            two_slots = True
        elif nb == 1:
            q0, q1, two_slots = relax.op.add(p0, f(base[0])), p1, h1
        else:
            q0, q1, two_slots = p0, p1, (h1 if nb == 0 else True)
        q0, q1 = bb.emit(q0), bb.emit(q1)
        pos = bb.emit(sel(h1, q1, sel(h0, q0, none)))
        if binary_case:
            threshold = 0.5 if all_positive else 0.0
            pos_label, neg_label = int(labels[1]), int(labels[0])
        else:
            threshold, pos_label, neg_label = 0.0, 1, 0
        label = relax.op.where(
            relax.op.greater(pos, f(threshold)),
            relax.const(pos_label, "int64"),
            relax.const(neg_label, "int64"),
        )
        label = bb.emit(relax.op.reshape(bb.emit(label), [-1]))
        v0 = bb.emit(relax.op.astype(sel(h0, q0, none), "float32"))
        v1 = bb.emit(relax.op.astype(sel(h1, q1, none), "float32"))
        z_two = _post_transform(relax.op.concat([v0, v1], axis=1), transform)
        if two_slots is True:
            return relax.Tuple([label, z_two])
        s = bb.emit(relax.op.astype(q0, "float32"))
        zeros = relax.op.zeros_like(s)
        one = relax.const(1.0, "float32")
        if transform == "PROBIT":
            z_one = relax.op.concat([_probit(s), zeros], axis=1)
        elif binary_case and all_positive:
            v = bb.emit(_logistic(s)) if transform == "LOGISTIC" else s
            z_one = relax.op.concat([relax.op.subtract(one, v), v], axis=1)
        elif binary_case or nb == 0:
            if transform == "LOGISTIC":
                z_one = relax.op.concat([_logistic(relax.op.negative(s)), _logistic(s)], axis=1)
            else:
                z_one = relax.op.concat([relax.op.negative(s), s], axis=1)
        else:  # ONNX Runtime leaves the second score unwritten here
            z_one = relax.op.concat([s, zeros], axis=1)
        if two_slots is False:
            return relax.Tuple([label, z_one])
        return relax.Tuple([label, relax.op.where(two_slots, z_two, z_one)])


# ---------------------------------------------------------------------------------------------
# the other ops


@register("ZipMap")
class ZipMap(onnx_frontend.OnnxOpConverter):
    """``ai.onnx.ml.ZipMap`` outputs a sequence of maps, which a compiled model cannot: refused."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        raise CompileError(
            f"node {_node(attr)} (ZipMap): its output is a sequence of maps, not a tensor, "
            "so it is not supported",
            hint=_ZIPMAP_HINT,
        )


def _numeric_attr(attr: dict, op: str, kind: str) -> tuple[np.ndarray | None, str | None]:
    """LabelEncoder keys or values: ``(array, dtype)`` from ``{kind}_floats``,
    ``{kind}_int64s`` or ``{kind}_tensor``; string forms are refused."""
    if f"{kind}_strings" in attr:
        raise _refuse(attr, op, f"string {kind}", "encode the labels as numbers before exporting")
    if f"{kind}_tensor" in attr:
        t = attr[f"{kind}_tensor"]
        if t.data_type == onnx.TensorProto.STRING:
            raise _refuse(
                attr, op, f"string {kind}", "encode the labels as numbers before exporting"
            )
        arr = numpy_helper.to_array(t).reshape(-1)
        return arr, str(arr.dtype)
    if f"{kind}_floats" in attr:
        return _array(attr, f"{kind}_floats", np.float32), "float32"
    if f"{kind}_int64s" in attr:
        return _array(attr, f"{kind}_int64s", np.int64), "int64"
    return None, None


@register("LabelEncoder")
class LabelEncoder(onnx_frontend.OnnxOpConverter):
    """``ai.onnx.ml.LabelEncoder`` (ml-opset 2 to 4) for numeric keys and values: each input
    value becomes the value of the first equal key (``NaN`` matches a ``NaN`` key), or the
    default (``default_tensor``/``default_float``/``default_int64``; -0.0, -1 unless set)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        op = "LabelEncoder"
        if "classes_strings" in attr:
            raise _refuse(
                attr,
                op,
                "string classes (ml-opset 1)",
                "encode the labels as numbers before exporting",
            )
        keys, key_dtype = _numeric_attr(attr, op, "keys")
        values, value_dtype = _numeric_attr(attr, op, "values")
        if keys is None or values is None:
            raise _refuse(attr, op, "a model without keys or values", "re-export the model")
        if len(keys) != len(values):
            raise _refuse(
                attr, op, f"{len(keys)} keys for {len(values)} values", "re-export the model"
            )
        if "default_tensor" in attr:
            t = attr["default_tensor"]
            if t.data_type == onnx.TensorProto.STRING:
                raise _refuse(attr, op, "a string default", "encode the labels as numbers")
            default = numpy_helper.to_array(t).reshape(-1)[0]
        elif value_dtype.startswith("float"):
            default = attr.get("default_float", -0.0)
        else:
            default = attr.get("default_int64", -1)
        x = inputs[0]
        x_dtype = _dtype(x)
        if x_dtype != key_dtype:
            raise _refuse(
                attr, op, f"a {x_dtype} input for {key_dtype} keys", "feed the keys' type"
            )
        out_default = relax.const(np.asarray(default, value_dtype), value_dtype)
        if len(keys) == 0:
            return relax.op.full_like(x, out_default, dtype=value_dtype)
        rank = len(_dims(x))
        key_c = _const(keys.reshape([1] * rank + [len(keys)]), key_dtype)
        xe = relax.op.expand_dims(x, axis=rank)
        eq = relax.op.equal(xe, key_c)
        if key_dtype.startswith("float") and np.isnan(keys.astype(np.float64)).any():
            key_nan = _const(np.isnan(keys).reshape([1] * rank + [len(keys)]), "bool")
            eq = relax.op.logical_or(eq, relax.op.logical_and(relax.op.isnan(xe), key_nan))
        eq = bb.emit(relax.op.astype(eq, "int32"))
        index = relax.op.argmax(eq, axis=rank)
        found = relax.op.greater(relax.op.max(eq, axis=rank), relax.const(0, "int32"))
        mapped = relax.op.take(_const(values, value_dtype), index, axis=0)
        return relax.op.where(found, mapped, out_default)


@register("ArrayFeatureExtractor")
class ArrayFeatureExtractor(onnx_frontend.OnnxOpConverter):
    """``ai.onnx.ml.ArrayFeatureExtractor``: ``X[..., indices.flatten()]``; a 1-D ``X`` gives
    ``[1, n_indices]`` (ONNX Runtime). Run-time indices are checked like ``Gather``'s."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, indices = inputs
        dims = _dims(x)
        if not dims:
            raise _refuse(attr, "ArrayFeatureExtractor", "a scalar input", "feed a tensor")
        if isinstance(indices, tvm.ir.GenericConst):
            flat = relax.const(indices.value.numpy().reshape(-1))
        else:
            flat = bb.normalize(relax.op.reshape(indices, [-1]))
        gather = CONVERTERS.get("Gather", onnx_frontend.Gather)
        out = gather.get_converter(13)(bb, [x, flat], {"axis": len(dims) - 1}, params)
        if len(dims) == 1:
            out = relax.op.expand_dims(out, axis=0)
        return out


@register("Binarizer")
class Binarizer(onnx_frontend.OnnxOpConverter):
    """``ai.onnx.ml.Binarizer``: 1 where ``x > threshold``, else 0, in the input's type."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x = inputs[0]
        dtype = _dtype(x)
        threshold = relax.const(np.asarray(attr.get("threshold", 0.0), dtype), dtype)
        return relax.op.astype(relax.op.greater(x, threshold), dtype)


def _float_of(x: relax.Expr) -> relax.Expr:
    return x if _dtype(x) == "float32" else relax.op.astype(x, "float32")


@register("Normalizer")
class Normalizer(onnx_frontend.OnnxOpConverter):
    """``ai.onnx.ml.Normalizer`` over axis 1 (axis 0 of a 1-D input), float output: ``MAX``
    divides by the row's largest value, ``L1`` by the sum of absolute values, ``L2`` by the
    Euclidean norm; a zero divisor leaves the row unchanged (ONNX Runtime)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        norm = _text(attr.get("norm", "MAX"))
        x = inputs[0]
        axis = 0 if len(_dims(x)) == 1 else 1
        if norm == "L2" and _dtype(x) != "float32":
            sq = relax.op.astype(relax.op.multiply(x, x), "float32")
            xf = _float_of(x)
        else:
            xf = bb.normalize(_float_of(x))
            sq = relax.op.multiply(xf, xf)
        if norm == "MAX":
            div = relax.op.max(xf, axis=axis, keepdims=True)
        elif norm == "L1":
            div = relax.op.sum(relax.op.abs(xf), axis=axis, keepdims=True)
        elif norm == "L2":
            div = relax.op.sum(sq, axis=axis, keepdims=True)
        else:
            raise _refuse(attr, "Normalizer", f"norm {norm!r}", "use MAX, L1 or L2")
        div = bb.emit(div)
        zero = relax.const(0.0, "float32")
        nonzero = relax.op.not_equal(div, zero)
        if norm == "L2":
            mag = relax.op.sqrt(relax.op.divide(sq, div))
            scaled = relax.op.where(relax.op.less(xf, zero), relax.op.negative(mag), mag)
        else:
            scaled = relax.op.divide(xf, div)
        return relax.op.where(nonzero, scaled, xf)


@register("Scaler")
class Scaler(onnx_frontend.OnnxOpConverter):
    """``ai.onnx.ml.Scaler``: ``(x - offset) * scale`` as float, ``offset``/``scale`` one value
    or one per feature (cycling over the flattened input with the size of axis 1, as ONNX
    Runtime)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x = inputs[0]
        dims = _dims(x)
        scale = _array(attr, "scale", np.float64)
        offset = _array(attr, "offset", np.float64)
        if scale is None:
            raise _refuse(attr, "Scaler", "a Scaler without scale", "set scale")
        if offset is None:
            offset = np.zeros_like(scale)
        if len(offset) != len(scale):
            raise _refuse(
                attr,
                "Scaler",
                "offset and scale of different lengths",
                "give one value or one per feature",
            )
        work = "float64" if _dtype(x) == "float64" else "float32"
        stride = dims[0] if len(dims) == 1 else dims[1]
        xf = relax.op.astype(x, work) if _dtype(x) != work else x
        if len(scale) == 1:
            y = relax.op.multiply(
                relax.op.subtract(xf, relax.const(offset[0], work)), relax.const(scale[0], work)
            )
        else:
            if not isinstance(stride, int) or len(scale) != stride:
                raise _refuse(
                    attr,
                    "Scaler",
                    f"{len(scale)} scale values for {stride} features",
                    "give one value or one per feature",
                )
            off = offset.astype(np.float32).astype(work)
            sc = scale.astype(np.float32).astype(work)
            flat = relax.op.reshape(bb.normalize(xf), [-1, stride]) if len(dims) > 2 else xf
            y = relax.op.multiply(relax.op.subtract(flat, _const(off, work)), _const(sc, work))
            if len(dims) > 2:
                y = relax.op.reshape(bb.normalize(y), dims)
        return relax.op.astype(y, "float32") if work != "float32" else y


@register("Imputer")
class Imputer(onnx_frontend.OnnxOpConverter):
    """``ai.onnx.ml.Imputer``: values equal to ``replaced_value_*`` (``NaN`` matches ``NaN``)
    become ``imputed_value_*`` (one value, or one per feature along the last axis)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x = inputs[0]
        dtype = _dtype(x)
        if dtype.startswith("float"):
            imputed = _array(attr, "imputed_value_floats", np.float64)
            replaced = float(attr.get("replaced_value_float", 0.0))
        else:
            imputed = _array(attr, "imputed_value_int64s", np.int64)
            replaced = int(attr.get("replaced_value_int64", 0))
        if imputed is None or not len(imputed):
            raise _refuse(
                attr,
                "Imputer",
                "an Imputer without imputed values for its input type",
                "re-export the model",
            )
        dims = _dims(x)
        if len(imputed) > 1 and dims and dims[-1] != len(imputed):
            raise _refuse(
                attr,
                "Imputer",
                f"{len(imputed)} imputed values for {dims[-1]} features",
                "give one value or one per feature",
            )
        fill = _const(imputed if len(imputed) > 1 else imputed[:1], dtype)
        if isinstance(replaced, float) and math.isnan(replaced):
            match = relax.op.isnan(x)
        else:
            match = relax.op.equal(x, relax.const(np.asarray(replaced, dtype), dtype))
        return relax.op.where(match, fill, x)


def _linear_scores(bb, x, attr, op, n_out):
    """``X · coefficientsᵀ + intercepts`` in float32: ``[N, n_out]``."""
    coef = _array(attr, "coefficients", np.float32)
    if coef is None:
        raise _refuse(attr, op, "a model without coefficients", "re-export the model")
    x, dims = _input_2d(bb, x, attr, op)
    c = dims[1]
    if len(coef) != n_out * c:
        raise _refuse(
            attr,
            op,
            f"{len(coef)} coefficients for {n_out} outputs x {c} features",
            "feed all the features the model was trained on",
        )
    intercepts = _array(attr, "intercepts", np.float32)
    if intercepts is None:
        intercepts = np.zeros(n_out, np.float32)
    if len(intercepts) != n_out:
        raise _refuse(
            attr, op, f"{len(intercepts)} intercepts for {n_out} outputs", "re-export the model"
        )
    xf = _float_of(x)
    w = _const(coef.reshape(n_out, c).T, "float32")
    return bb.emit(
        relax.op.add(relax.op.matmul(xf, w), _const(intercepts.reshape(1, -1), "float32"))
    )


@register("LinearClassifier")
class LinearClassifier(onnx_frontend.OnnxOpConverter):
    """``ai.onnx.ml.LinearClassifier``: scores ``X·Wᵀ + b`` (one row of ``W`` per entry of
    ``intercepts``), label = first highest score's class; one score row with two labels is a
    binary model (``s > 0``; scores ``[1 - s, s]``), as ONNX Runtime. Integer labels only."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        op = "LinearClassifier"
        if "classlabels_strings" in attr:
            raise _refuse(
                attr,
                op,
                "string class labels (the label output would be a string tensor)",
                "convert the model with integer class labels",
            )
        labels = _array(attr, "classlabels_ints", np.int64)
        intercepts = _array(attr, "intercepts")
        n_out = len(intercepts) if intercepts is not None else 0
        if n_out == 0:
            raise _refuse(attr, op, "a model without intercepts", "re-export the model")
        transform = _transform_of(attr, op)
        scores = _linear_scores(bb, inputs[0], attr, op, n_out)
        labels = labels if labels is not None else np.arange(max(n_out, 2), dtype=np.int64)
        if n_out == 1:
            two = len(labels) == 2
            pos = int(labels[1]) if two else 1
            neg = int(labels[0]) if two else 0
            flat = relax.op.reshape(scores, [-1])
            label = relax.op.where(
                relax.op.greater(flat, relax.const(0.0, "float32")),
                relax.const(pos, "int64"),
                relax.const(neg, "int64"),
            )
            if transform == "PROBIT":
                z = _probit(scores)
            else:
                z = scores
            if two:
                z = relax.op.concat(
                    [relax.op.subtract(relax.const(1.0, "float32"), z), z]
                    if transform != "PROBIT"
                    else [z, z],
                    axis=1,
                )
            return relax.Tuple([label, z])
        if len(labels) < n_out:
            raise _refuse(
                attr, op, f"{len(labels)} labels for {n_out} score rows", "re-export the model"
            )
        index = relax.op.argmax(scores, axis=1)
        label = relax.op.take(_const(labels, "int64"), index, axis=0)
        return relax.Tuple([label, _post_transform(scores, transform)])


@register("LinearRegressor")
class LinearRegressor(onnx_frontend.OnnxOpConverter):
    """``ai.onnx.ml.LinearRegressor``: ``X·Wᵀ + b`` ``[N, targets]``; a single target takes
    only ``PROBIT`` of the post transforms, as ONNX Runtime."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        op = "LinearRegressor"
        n_out = int(attr.get("targets", 1))
        transform = _transform_of(attr, op)
        scores = _linear_scores(bb, inputs[0], attr, op, n_out)
        if n_out == 1 and transform != "PROBIT":
            return scores
        return _post_transform(scores, transform)
