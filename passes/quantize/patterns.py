"""Graph analysis for ``quantize_int8``: the dataflow graph of a Relax function, the quantizable
sites (convs, matmuls, activation x activation matmuls), the float chains fused after them
(bias, ReLU/Clip, hardswish, depth-to-space, residual adds), and existing Q/DQ pairs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from tvmforge.passes.quantize.qparams import QParams
from tvmforge.passes.quantize.report import LayerInfo, QuantReport

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Graph analysis


def _op(value: relax.Expr, name: str) -> bool:
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and \
        value.op.name == name


def _const(expr: relax.Expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def _shape(expr: relax.Expr) -> tuple[int, ...] | None:
    sinfo = expr.ty
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        return None
    try:
        return tuple(int(d) for d in sinfo.shape.values)
    except (TypeError, AttributeError):
        return None


def _dtype(expr: relax.Expr) -> str | None:
    sinfo = expr.ty
    return str(sinfo.dtype.dtype) if isinstance(sinfo, relax.TensorType) else None


def _canonicalize(func: relax.Function) -> relax.Function:
    """``broadcast_to`` to the same shape → its input; ``sum(stack([a, b, ...]), axis=0)`` of
    same-shaped tensors → ``add(add(a, b), ...)`` (ONNX ``Sum``)."""
    alias: dict[relax.Var, relax.Expr] = {}
    stacks: dict[relax.Var, list[relax.Expr]] = {}

    def sub(expr):
        if isinstance(expr, relax.Var):
            return alias.get(expr, expr)
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([sub(f) for f in expr.fields])
        return expr

    bb = relax.BlockBuilder()
    with bb.function("main", list(func.params), attrs=dict(func.attrs or {})):
        for block in func.body.blocks:
            dataflow = isinstance(block, relax.DataflowBlock)
            ctx = bb.dataflow() if dataflow else _null()
            with ctx:
                for binding in block.bindings:
                    var, value = binding.var, binding.value
                    out = dataflow and not isinstance(var, relax.DataflowVar)
                    emit = bb.emit_output if out else bb.emit
                    if isinstance(binding, relax.MatchCast):
                        alias[var] = bb.match_cast(sub(value), binding.ty)
                        continue
                    if (_op(value, "relax.broadcast_to") and not out
                            and _shape(value.args[0]) == _shape(var)):
                        alias[var] = sub(value.args[0])
                        continue
                    if _op(value, "relax.stack") and isinstance(value.args[0], relax.Tuple):
                        stacks[var] = [sub(f) for f in value.args[0].fields]
                    if (_op(value, "relax.sum") and isinstance(value.args[0], relax.Var)
                            and value.args[0] in stacks and not value.attrs.keepdims
                            and [int(a) for a in value.attrs.axis] == [0]
                            and int(value.args[0].ty.ndim) > 1):
                        parts = stacks[value.args[0]]
                        if all(_shape(p) == _shape(var) for p in parts) and len(parts) >= 2:
                            acc = parts[0]
                            for i, p in enumerate(parts[1:]):
                                expr = relax.op.add(acc, p)
                                last = i == len(parts) - 2
                                acc = (emit(expr, name_hint=var.name) if last
                                       else bb.emit(expr))
                            alias[var] = acc
                            continue
                    if isinstance(value, relax.Call):
                        value = relax.Call(value.op, [sub(a) for a in value.args], value.attrs,
                                           value.ty_args)
                    else:
                        value = sub(value)
                    alias[var] = emit(value, name_hint=var.name)
        bb.emit_func_output(sub(func.body.body))
    return relax.analysis.remove_all_unused(bb.get()["main"])


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *_):
        return False


@dataclass
class _Site:
    var: relax.Var  # the conv2d / matmul binding
    kind: str  # "conv2d", "dense" (constant weight) or "matmul" (two activations)
    name: str
    x: relax.Expr
    weight: np.ndarray | None  # OIHW for conv2d; [K, N] for dense; None for matmul
    call: relax.Call
    bias: np.ndarray | None = None  # [OC]
    residual: relax.Expr | None = None
    act: tuple[float | None, float | None] | None = None
    members: list[relax.Var] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)
    y: relax.Expr | None = None  # matmul: the second activation
    # fused float stages after bias / residual / act (real values): ("affine", A[OC], B[OC]),
    # ("hswish",), ("relu",), ("sigmoid",), ("fq", QParams) (a QDQ model's quantize-dequantize
    # inside the chain), ("residual",) (the residual added there); see ``_post_chain``
    post: list[tuple] = field(default_factory=list)
    # ``k`` when a depth-to-space (reshape / permute / reshape, as ``conv_transpose_direct``
    # writes a k x k stride-k conv-transpose) follows the conv; ``post`` is then per output
    # channel of the depth-to-space result (conv channel ``c * k * k + i`` is channel ``c``)
    d2s: int = 0

    @property
    def tail(self) -> relax.Var:
        return self.members[-1]


class _Graph:
    """Bindings, users, and the sites with their fused chains."""

    def __init__(self, func: relax.Function):
        self.func = func
        self.defn: dict[relax.Var, relax.Expr] = {}
        self.order: list[relax.Var] = []
        self.users: dict[relax.Var, list[relax.Var | None]] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                self.defn[binding.var] = binding.value
                self.order.append(binding.var)
                for v in _vars_in(binding.value):
                    self.users.setdefault(v, []).append(binding.var)
        for v in _vars_in(func.body.body):
            self.users.setdefault(v, []).append(None)  # None: the function's result

    def single_user(self, var: relax.Var) -> relax.Var | None:
        users = self.users.get(var, [])
        if len(users) != 1 or users[0] is None or not isinstance(var, relax.DataflowVar):
            return None
        return users[0]


def _vars_in(expr) -> list[relax.Var]:
    found: list[relax.Var] = []

    def visit(e):
        if isinstance(e, relax.Var):
            found.append(e)
        elif isinstance(e, relax.Tuple):
            for f in e.fields:
                visit(f)
        elif isinstance(e, relax.TupleGetItem):
            visit(e.tuple_value)
        elif isinstance(e, relax.Call):
            for a in e.args:
                visit(a)

    visit(expr)
    return found


def _site_of(var: relax.Var, value: relax.Expr) -> tuple[str, str] | tuple[None, str]:
    """``(kind, "")`` when the binding is a quantizable layer, else ``(None, reason)``."""
    if _op(value, "relax.nn.conv2d"):
        a = value.attrs
        if _const(value.args[1]) is None:
            return None, "the weight is not a constant"
        if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW"):
            return None, f"layout {a.data_layout}/{a.kernel_layout} (want NCHW/OIHW)"
        if _dtype(value.args[0]) != "float32" or _shape(var) is None:
            return None, "not a static-shape float32 conv"
        return "conv2d", ""
    if _op(value, "relax.matmul"):
        w = _const(value.args[1])
        if w is None:
            a, b = (_shape(e) for e in value.args[:2])
            if (_dtype(value.args[0]) != "float32" or _dtype(value.args[1]) != "float32"
                    or a is None or b is None or _shape(var) is None):
                return None, "not a float32 matmul of two tensors with static shapes"
            if len(a) < 2 or len(b) < 2 or a[-1] != b[-2] or (len(b) > 2 and a[:-2] != b[:-2]):
                return None, f"matmul {list(a)} x {list(b)}: batch dimensions differ"
            if a[-1] >= 33025:
                return None, f"reduction of {a[-1]} may overflow the int32 accumulator"
            return "matmul", ""
        if w.ndim != 2 or _dtype(value.args[0]) != "float32" or _shape(value.args[0]) is None:
            return None, "not a float32 [.., K] x [K, N] matmul with static shapes"
        return "dense", ""
    return None, ""


def _channel_vector(c: np.ndarray, out_shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """A constant that varies only along ``axis`` of ``out_shape`` as a vector, else None."""
    if c.ndim > len(out_shape):
        return None
    full = (1,) * (len(out_shape) - c.ndim) + c.shape
    for i, d in enumerate(full):
        if d != 1 and i != axis % len(out_shape):
            return None
    try:
        vec = np.broadcast_to(c.reshape(full), [
            out_shape[i] if i == axis % len(out_shape) else 1 for i in range(len(out_shape))])
    except ValueError:
        return None
    return vec.reshape(-1).astype(np.float32)


def _activation_bounds(value: relax.Expr) -> tuple[float | None, float | None] | None:
    if _op(value, "relax.nn.relu"):
        return (0.0, None)
    if _op(value, "relax.clip"):
        def num(e):
            v = getattr(e, "value", None)
            return float(v.value if hasattr(v, "value") else v)
        try:
            return (num(value.args[1]), num(value.args[2]))
        except (TypeError, ValueError):
            return None
    return None


@dataclass(frozen=True)
class _Pair:
    """``d = dequantize(q)``, ``q = quantize(x)`` with the same per-tensor scale and zero point
    (a QDQ model's fake quantization of ``x``)."""

    x: relax.Expr | None  # None: the integer tensor comes from elsewhere (no quantize)
    q: relax.Var
    d: relax.Var
    params: QParams
    dtype: str


def _qdq_pairs(graph: _Graph) -> dict[relax.Var, _Pair]:
    """QDQ pairs by their ``quantize`` and ``dequantize`` variables.

    A ``dequantize`` of an 8-bit tensor that no ``quantize`` made (a graph input, the
    integer output of a QOperator op lowered exactly) is a pair too, with ``x = None``: its
    parameters are what the integer tensor means."""
    pairs: dict[relax.Var, _Pair] = {}
    for var in graph.order:
        value = graph.defn[var]
        if not _op(value, "relax.dequantize") or not isinstance(value.args[0], relax.Var):
            continue
        qvar = value.args[0]
        qval = graph.defn.get(qvar)
        if qval is None or not _op(qval, "relax.quantize"):
            consts = [_const(e) for e in value.args[1:3]]
            dtype = _dtype(qvar)
            if (any(c is None or c.size != 1 for c in consts) or dtype not in ("uint8", "int8")
                    or consts[0].item() <= 0):
                continue
            ds, dz = (c.reshape(()).item() for c in consts)
            zp = int(dz) + (128 if dtype == "int8" else 0)
            pair = _Pair(None, qvar, var, QParams(float(ds), zp), dtype)
            pairs.setdefault(qvar, pair)
            pairs[var] = pair
            continue
        consts = [_const(e) for e in (*value.args[1:3], *qval.args[1:3])]
        if any(c is None or c.size != 1 for c in consts):
            continue
        ds, dz, qs, qz = (c.reshape(()).item() for c in consts)
        dtype = _dtype(qvar)
        if (ds, dz) != (qs, qz) or dtype not in ("uint8", "int8") or ds <= 0:
            continue
        zp = int(dz) + (128 if dtype == "int8" else 0)
        pair = _Pair(qval.args[0], qvar, var, QParams(float(ds), zp), dtype)
        pairs[qvar] = pairs[var] = pair
    return pairs


def _find_sites(graph: _Graph, names: Callable[[str, np.ndarray, int], str],
                skip: set[str], report: QuantReport,
                pairs: dict[relax.Var, _Pair] | None = None) -> list[_Site]:
    sites: list[_Site] = []
    claimed: set[relax.Var] = set()
    index = 0  # layers seen, skipped ones included: names do not shift when one is skipped
    for var in graph.order:
        value = graph.defn[var]
        kind, reason = _site_of(var, value)
        if kind is None:
            if reason:
                report.refused.append(f"{var.name}: {reason}")
                log.info("quantize_int8: %s left float: %s", var.name, reason)
            continue
        raw = _const(value.args[1])
        weight = raw.astype(np.float32) if raw is not None else None
        name = names(kind, raw, index)
        index += 1
        site = _Site(var, kind, name, value.args[0], weight, value, members=[var])
        if name in skip:
            report.layers.append(LayerInfo(name, kind, "float", "float32",
                                           reason="in skip_layers"))
            continue
        if kind == "matmul":  # both operands quantized per tensor; nothing fused
            site.y = value.args[1]
            sites.append(site)
            continue
        channel_axis = 1 if kind == "conv2d" else -1
        cur = var
        while True:
            user = graph.single_user(cur)
            if user is None:
                break
            nxt = graph.defn[user]
            out_shape = _shape(user)
            if _op(nxt, "relax.add") and site.residual is None and site.act is None:
                a, b = nxt.args
                other = b if a.same_as(cur) else a
                c = _const(other)
                if c is not None:
                    vec = _channel_vector(c, out_shape, channel_axis) if out_shape else None
                    if vec is None or site.bias is not None:
                        break
                    site.bias = vec
                    site.fused.append("bias")
                elif (not a.same_as(b) and _shape(other) == out_shape == _shape(cur)
                      and _dtype(other) == "float32" and user not in claimed):
                    site.residual = other
                    site.fused.append("add")
                    claimed.add(user)
                else:
                    break
            elif site.act is None and _activation_bounds(nxt) is not None:
                site.act = _activation_bounds(nxt)
                site.fused.append("relu" if _op(nxt, "relax.nn.relu") else "clip")
            else:
                break
            site.members.append(user)
            cur = user
        if kind == "conv2d":
            _post_chain(graph, site, cur, claimed, pairs or {})
        sites.append(site)
    return sites


def _scalar(expr: relax.Expr) -> float | None:
    c = _const(expr)
    if c is None or c.size != 1:
        return None
    return float(c.reshape(()))


def _callee_name(value: relax.Expr) -> str | None:
    """The PrimFunc name of a ``call_tir`` (e.g. legalized ``maximum``), else None."""
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) \
            and value.op.name == "relax.call_tir" and isinstance(value.args[0], tvm.ir.GlobalVar):
        return value.args[0].name_hint
    return None


def _bound_op(value: relax.Expr, which: str) -> tuple[relax.Expr, float] | None:
    """``maximum``/``minimum`` (``which``) of a tensor and a scalar constant, as a Relax op or
    a legalized ``call_tir``: ``(tensor, constant)``."""
    if _op(value, f"relax.{which}"):
        args = list(value.args)
    else:
        name = _callee_name(value)
        if name is None or not name.rstrip("0123456789_").endswith(which) \
                or not isinstance(value.args[1], relax.Tuple):
            return None
        args = list(value.args[1].fields)
    if len(args) != 2:
        return None
    for t, k in ((args[0], args[1]), (args[1], args[0])):
        v = _scalar(k)
        if v is not None and _const(t) is None:
            return t, v
    return None


def _hswish(graph: _Graph, v: relax.Var) -> list[relax.Var] | None:
    """The bindings of ``hardswish(v) = v * clip(v + 3, 0, 6) / 6`` (as the ONNX importer
    writes it: add, maximum, minimum, multiply, divide), when ``v`` has no other user."""
    users = graph.users.get(v, [])
    if len(users) != 2 or None in users or not isinstance(v, relax.DataflowVar):
        return None
    a = next((u for u in users if _op(graph.defn[u], "relax.add")), None)
    if a is None or _scalar(next((x for x in graph.defn[a].args if not x.same_as(v)), v)) != 3.0:
        return None
    chain = [a]
    b = graph.single_user(a)
    if b is None:
        return None
    bv = graph.defn[b]
    if _op(bv, "relax.clip"):
        if _activation_bounds(bv) != (0.0, 6.0) or not bv.args[0].same_as(a):
            return None
        chain.append(b)
        c = b
    else:
        got = _bound_op(bv, "maximum")
        if got is None or not got[0].same_as(a) or got[1] != 0.0:
            return None
        c = graph.single_user(b)
        got = _bound_op(graph.defn[c], "minimum") if c is not None else None
        if got is None or not got[0].same_as(b) or got[1] != 6.0:
            return None
        chain += [b, c]
    def sixth(var, value):  # x / 6 or x * (1/6)
        if _op(value, "relax.divide") and value.args[0].same_as(var):
            return _scalar(value.args[1]) == 6.0
        return _op(value, "relax.multiply") and any(
            abs((_scalar(x) or 0.0) - 1 / 6) < 1e-7 for x in value.args if not x.same_as(var))

    scaled = False
    d = graph.single_user(c)
    if d is not None and d not in users and sixth(c, graph.defn[d]):
        chain.append(d)
        c, scaled = d, True
        d = graph.single_user(c)
    if d is None or d not in users or not _op(graph.defn[d], "relax.multiply"):
        return None
    da = graph.defn[d].args
    if not ((da[0].same_as(v) and da[1].same_as(c)) or (da[1].same_as(v) and da[0].same_as(c))):
        return None
    chain.append(d)
    if scaled:
        return chain
    e = graph.single_user(d)
    if e is None or not sixth(d, graph.defn[e]):
        return None
    chain.append(e)
    return chain


def _depth_to_space(graph: _Graph, site: _Site, cur: relax.Var
                    ) -> tuple[int, list[relax.Var]] | None:
    """``(k, [reshape, permute, reshape])`` when ``cur`` (the output of a 1x1, stride-1,
    ungrouped conv, NCHW ``[n, o*k*k, h, w]``) goes through ``conv_transpose_direct``'s
    depth-to-space: ``reshape [n, o, k, k, h, w]`` / ``permute_dims [0, 1, 4, 2, 5, 3]`` /
    ``reshape [n, o, h*k, w*k]``, each the single user of the one before."""
    a = site.call.attrs
    shape = _shape(cur)
    if (site.weight.shape[2:] != (1, 1) or int(a.groups) != 1 or shape is None
            or any(int(v) != 1 for v in a.strides) or any(int(v) != 0 for v in a.padding)
            or str(a.data_layout) != "NCHW" or str(a.out_layout) != "NCHW"):
        return None
    n, c, h, w = shape
    chain = []
    for expect in ("relax.reshape", "relax.permute_dims", "relax.reshape"):
        user = graph.single_user(chain[-1] if chain else cur)
        if user is None or not _op(graph.defn[user], expect) or _dtype(user) != "float32":
            return None
        chain.append(user)
    s1, s3 = _shape(chain[0]), _shape(chain[2])
    axes = graph.defn[chain[1]].attrs.axes
    if s1 is None or s3 is None or axes is None or len(s1) != 6:
        return None
    k = s1[2]
    if (s1 != (n, c // (k * k), k, k, h, w) or c % (k * k) or s1[3] != k
            or [int(v) for v in axes] != [0, 1, 4, 2, 5, 3]
            or s3 != (n, c // (k * k), h * k, w * k)):
        return None
    return k, chain


def _post_chain(graph: _Graph, site: _Site, cur: relax.Var, claimed: set,
                pairs: dict[relax.Var, _Pair] | None = None) -> None:
    """Extend ``site``'s chain with float elementwise stages that run per element in the
    kernel's epilogue: per-channel (or scalar) constant multiply / add / subtract / divide
    (composed into one affine stage), hardswish, ReLU, Clip(0, inf), sigmoid.

    In a QDQ model the chain also crosses the model's own quantization points: a per-tensor
    ``dequantize(quantize(t))`` pair (``pairs``) whose only user continues the chain becomes an
    ``fq`` stage (the kernel rounds and saturates there exactly as the pair would), and the
    add of another tensor after one (a residual block written ``Q/DQ(conv) + Q/DQ(skip)``)
    becomes a ``residual`` stage. A pair that ends the chain is not taken: it is the site's
    output quantization. So ORT's ``conv -> Q/DQ -> Mul -> Add -> Q/DQ`` (a BatchNorm it kept
    apart from the conv) and ``conv -> Q/DQ -> Add(skip) -> Relu -> Q/DQ`` are one kernel each.
    """
    pairs = pairs or {}
    out_shape = _shape(cur)
    if out_shape is None:
        return
    d2s = _depth_to_space(graph, site, cur)
    if d2s is not None:
        site.d2s, chain = d2s
        site.members.extend(chain)
        site.fused.append("depth_to_space")
        cur = chain[-1]
        out_shape = _shape(cur)
    post: list[tuple] = []
    oc = out_shape[1]

    def affine():
        if not post or post[-1][0] != "affine":
            post.append(("affine", np.ones(oc, np.float64), np.zeros(oc, np.float64)))
        return post[-1]

    while True:
        chain = _hswish(graph, cur)
        if chain is not None:
            post.append(("hswish",))
            site.members.extend(chain)
            site.fused.append("hswish")
            cur = chain[-1]
            continue
        user = graph.single_user(cur)
        pair = pairs.get(user) if user is not None else None
        if (pair is not None and pair.x is not None and pair.q.same_as(user)
                and pair.x.same_as(cur)
                and not site.d2s and graph.single_user(pair.q) is not None
                and graph.single_user(pair.q).same_as(pair.d)):
            post.append(("fq", pair.params))
            site.members.extend([pair.q, pair.d])
            site.fused.append("qdq")
            cur = pair.d
            continue
        if user is None or _shape(user) != out_shape or _dtype(user) != "float32":
            break
        nxt = graph.defn[user]
        if _op(nxt, "relax.nn.relu"):
            post.append(("relu",))
            name = "relu"
        elif _op(nxt, "relax.sigmoid"):
            post.append(("sigmoid",))
            name = "sigmoid"
        elif (_op(nxt, "relax.clip") and _activation_bounds(nxt) is not None
              and _activation_bounds(nxt)[0] == 0.0 and _activation_bounds(nxt)[1] is None):
            post.append(("relu",))
            name = "relu"
        elif any(_op(nxt, f"relax.{o}") for o in ("multiply", "add", "subtract", "divide")):
            a, b = nxt.args
            if a.same_as(b):
                break
            other = b if a.same_as(cur) else a
            c = _const(other)
            vec = _channel_vector(c, out_shape, 1) if c is not None else None
            if vec is None:
                if (_op(nxt, "relax.add") and c is None and site.residual is None
                        and post and post[-1][0] == "fq" and not site.d2s
                        and _shape(other) == out_shape and _dtype(other) == "float32"
                        and user not in claimed):
                    site.residual = other
                    post.append(("residual",))
                    site.members.append(user)
                    site.fused.append("add")
                    claimed.add(user)
                    cur = user
                    continue
                break
            vec = vec.astype(np.float64)
            if _op(nxt, "relax.multiply"):
                _, A, B = affine()
                A *= vec
                B *= vec
                name = "mul"
            elif _op(nxt, "relax.add"):
                affine()[2][:] += vec
                name = "add"
            elif not a.same_as(cur):  # k - x, k / x: not affine in x (or not simply)
                break
            elif _op(nxt, "relax.subtract"):
                affine()[2][:] -= vec
                name = "sub"
            else:
                if np.any(vec == 0):
                    break
                _, A, B = affine()
                A /= vec
                B /= vec
                name = "div"
        else:
            break
        site.members.append(user)
        site.fused.append(name)
        cur = user
    while post and post[-1][0] == "fq":  # the output's own quantization: not a stage
        post.pop()
        del site.members[-2:]
        site.fused.pop()
    site.post = post


def _depthwise(site: _Site) -> bool:
    """A conv whose every group has one input channel (``groups == IC``)."""
    return (site.kind == "conv2d" and site.weight.shape[1] == 1
            and int(site.call.attrs.groups) > 1)




