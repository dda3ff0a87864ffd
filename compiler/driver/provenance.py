"""Which ONNX nodes each compiled kernel computes: carried from the importer to the kernels.

TVM's ONNX importer names every Relax binding ``lv<N>``; nothing in the module says which ONNX
node a binding came from. Names are not the carrier here either: a binding's name becomes the
name of a kernel's buffer, so a kernel built from renamed bindings would read differently
(``benchmarks/kernel_hashes.py``). Provenance is kept beside the module instead, as a table
from binding var (by identity) to ONNX node, and nothing in the module changes:

- ``import_with_provenance`` imports the model as ``to_relax`` does while watching the
  importer's ``_convert_operator``: a binding whose value is what a node's converter returned
  belongs to that node, and so do the bindings the converter emitted on the way (a conv's
  bias reshape, a Gemm's transpose: they take the node of their first consumer).
- inside ``tracking``, the vars that tvmforge's Python rewrites emit while rewriting a
  binding (its NCHW{B}c twin, a Winograd conv's three kernels, a conv with a BatchNorm
  folded in) belong to that binding's node; TVM's own mutators keep a binding's var when they
  re-emit it. A rewrite that rebuilds a function binding by binding under the old names is
  followed by name where the name is unambiguous.
- ``recording`` puts read-only stages around fusion: before it, each op's binding names its
  node (or takes the node of a consumer at most ``INHERIT_HOPS`` away), and a node no binding
  computes any more (folded into a consumer: a conv into its BatchNorm, a channel shuffle into
  a conv) goes with its nearest consumers that are computed; after ``FuseOps``, each fused
  call's ops are found by replaying its function on the unfused ops; after ``FuseTIR`` every
  kernel (a TIR PrimFunc, the name the VM reports) gets the nodes of all its call sites, its
  ops and its FLOPs.

A kernel no node reaches is described by what it does (``unattributed_label``): a layout change
tvmforge inserts, or the ops of a kernel whose nodes a rewrite lost (calibrated int8's
quantizer rebuilds the graph and loses most of them).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ImportedNodes",
    "import_with_provenance",
    "recording",
    "tracking",
    "unattributed_label",
]

# Nodes named per kernel in the manifest (the rest is counted).
MAX_NODES = 24

# One import at a time watches TVM's importer (the watch is a class attribute).
_IMPORTING = threading.Lock()

# How far (in bindings) an op that no node was followed to takes the node of its consumer:
# far enough for the helpers a rewrite emits around an op, not so far that a rewrite which
# lost every node would name all the model's ops after its last one.
INHERIT_HOPS = 3


@dataclass
class ImportedNodes:
    """The ONNX nodes the importer converted, ``ops`` (``{label: op_type}`` in graph order; a
    node's label is its name, or its first output's name when it has none), and ``of_var``,
    which node each binding var of the imported module computes (keyed by the var itself)."""

    ops: dict[str, str] = field(default_factory=dict)
    of_var: dict[Any, str] = field(default_factory=dict)
    # which nodes consume each node's outputs; the nodes computed at run time (from inputs)
    consumers: dict[str, list[str]] = field(default_factory=dict)
    runtime: set[str] = field(default_factory=set)


def import_with_provenance(model, inputs) -> tuple[Any, ImportedNodes]:
    """``frontend.to_relax(model, inputs)``, and which ONNX node each binding computes.

    The module is exactly what ``to_relax`` returns."""
    from tvm.relax.frontend.onnx import onnx_frontend

    from tvmforge.frontend import importer as frontend

    seen: list[tuple[str, str, Any]] = []
    importers: list[Any] = []
    original = onnx_frontend.ONNXGraphImporter._convert_operator

    def watched(self, op_name, inputs_, attrs, opset):
        sym = original(self, op_name, inputs_, attrs, opset)
        name = (attrs.get("tvm_custom") or {}).get("name") or ""
        seen.append((str(name), op_name, sym))
        if not importers or importers[-1] is not self:
            importers.append(self)
        return sym

    with _IMPORTING, _patched(onnx_frontend.ONNXGraphImporter, "_convert_operator", watched):
        mod = frontend.to_relax(model, inputs, dataflow=False)
    outputs = _output_names(importers, seen) if any(not name for name, _, _ in seen) else {}
    nodes = ImportedNodes()
    labelled: list[tuple[str, Any]] = []
    for k, (name, op, sym) in enumerate(seen):
        label = name or outputs.get(k) or f"{op}_{k}"
        nodes.ops.setdefault(label, op)
        labelled.append((label, sym))
    for _gv, func in mod.functions_items():
        if _is_relax_function(func):
            labels = _binding_labels(func, labelled)
            nodes.of_var.update(labels)
            _graph_of(func, labels, nodes)
    return _to_dataflow(mod, nodes), nodes


def _to_dataflow(mod, nodes: ImportedNodes):
    """``to_relax``'s last step, ``ConvertToDataflow``, with the labels carried over: it gives
    the bindings new vars (dataflow vars) in the same order."""
    from tvm import relax

    converted = relax.transform.ConvertToDataflow()(mod)
    for gv, func in mod.functions_items():
        if not _is_relax_function(func):
            continue
        before, after = _bindings(func), _bindings(converted[gv])
        if len(before) != len(after):
            continue
        for old, new in zip(before, after, strict=True):
            label = nodes.of_var.get(old.var)
            if label is not None and not new.var.same_as(old.var):
                nodes.of_var[new.var] = label
    return converted


def _graph_of(func, labels: dict[Any, str], nodes: ImportedNodes) -> None:
    """The node graph as the imported bindings give it: which nodes consume which, and which
    nodes read an input or another such node (the rest computes on weights alone)."""
    from tvm import relax

    for b in _bindings(func):
        label = labels.get(b.var)
        if label is None:
            continue
        for v in relax.analysis.free_vars(b.value):
            source = labels.get(v)
            if source is None or source in nodes.runtime:
                nodes.runtime.add(label)  # an input (a param), or a node computed at run time
            if source is not None and source != label:
                users = nodes.consumers.setdefault(source, [])
                if label not in users:
                    users.append(label)


@contextlib.contextmanager
def _patched(owner: type, attr: str, value: Any) -> Iterator[None]:
    old = getattr(owner, attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, attr, old)


def _is_relax_function(func: Any) -> bool:
    from tvm import relax

    return isinstance(func, relax.Function)


def _output_names(importers: list[Any], seen: list[tuple[str, str, Any]]) -> dict[int, str]:
    """For each converted node (by index in ``seen``), its first output's ONNX name: the
    importer's ``_nodes`` maps output names to the expressions recorded."""
    by_hash: dict[int, list[int]] = {}
    for k, (_, _, sym) in enumerate(seen):
        by_hash.setdefault(hash(sym), []).append(k)
    found: dict[int, str] = {}
    for importer in importers:
        for tensor, expr in getattr(importer, "_nodes", {}).items():
            for k in by_hash.get(hash(expr), []):
                if k not in found and _same(expr, seen[k][2]):
                    found[k] = str(tensor)
    return found


def _same(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a.same_as(b))
    except (AttributeError, TypeError):
        return False


def _sym_parts(sym: Any) -> list[Any]:
    """The expressions a converter returned: one, or a tuple's fields."""
    from tvm import relax

    if isinstance(sym, relax.Tuple):
        return list(sym.fields)
    return [sym] if isinstance(sym, relax.Expr) else []


def _bindings(func) -> list[Any]:
    from tvm import relax

    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return []
    return [b for block in body.blocks for b in block.bindings]


def _binding_labels(func, labelled: list[tuple[str, Any]]) -> dict[Any, str]:
    """``{var: label}`` for the function's bindings: a binding whose value (or var) is what a
    node's converter returned takes its label; the others take the label of the first
    labelled binding that uses them (walking back from the end)."""
    from tvm import relax

    by_hash: dict[int, list[tuple[str, Any]]] = {}
    for label, sym in labelled:
        for part in _sym_parts(sym):
            by_hash.setdefault(hash(part), []).append((label, part))
    bindings = [b for b in _bindings(func) if isinstance(b, relax.VarBinding)]
    labels: dict[Any, str] = {}
    for b in bindings:
        for key in (b.value, b.var):
            hit = next((lab for lab, part in by_hash.get(hash(key), []) if _same(key, part)),
                       None)
            if hit is not None:
                labels[b.var] = hit
                break
    _inherit_from_consumers(bindings, labels, lambda label: label)
    return labels


def _inherit_from_consumers(bindings: list[Any], labels: dict[Any, Any], carry,
                            hops: int | None = None) -> None:
    """Give each unlabelled binding ``carry(label)`` of the first labelled binding that uses
    it, walking from the end (a chain of helpers takes the label of the node at its end), at
    most ``hops`` bindings away from one labelled in its own right."""
    from tvm import relax

    users: dict[Any, list[Any]] = {}
    for b in bindings:
        for v in relax.analysis.free_vars(b.value):
            users.setdefault(v, []).append(b.var)
    depth = dict.fromkeys(labels, 0)
    for b in reversed(bindings):
        if b.var in labels:
            continue
        user = next((u for u in users.get(b.var, []) if u in labels), None)
        if user is not None and (hops is None or depth[user] < hops):
            labels[b.var] = carry(labels[user])
            depth[b.var] = depth[user] + 1


# --- provenance through the passes ------------------------------------------------------

# Per thread: the open ``tracking`` blocks (innermost last) and the bindings tvmforge's Python
# mutators are visiting. The hooks (``_carrying``) are installed once for all threads.
_LOCAL = threading.local()
_HOOKS = threading.Lock()
_HOOK_USERS = [0, None]  # open tracking blocks in all threads, the installed hooks' exit stack


def _trackers() -> list[_Tracker]:
    trackers = getattr(_LOCAL, "trackers", None)
    if trackers is None:
        trackers = _LOCAL.trackers = []
    return trackers


def _visiting() -> list[Any]:
    stack = getattr(_LOCAL, "bindings", None)
    if stack is None:
        stack = _LOCAL.bindings = []
    return stack


def _carry(var: Any, name_hint: str = "") -> Any:
    """``var``, just emitted, computes the node of the binding a Python mutator is rewriting
    (what it emits replaces that binding); emitted outside such a rewrite under the name of a
    var that computes a node (a pass that rebuilds the function binding by binding, keeping
    the names), it computes that node."""
    trackers = _trackers()
    if not trackers:
        return var
    tracker = trackers[-1]
    if var in tracker.of_var:
        return var
    stack = _visiting()
    label = tracker.of_var.get(stack[-1].var) if stack else None
    if label is None and name_hint:
        label = tracker.label_named(name_hint)
    if label is not None:
        tracker.add(var, label)
    return var


@contextlib.contextmanager
def _carrying() -> Iterator[None]:
    """While open, what Python mutators emit is entered in the innermost tracker's table:
    ``PyExprMutator``'s binding visitor is watched (a stack of the bindings being visited; a
    mutator that does not override it gets ``PyExprMutator.visit_var_binding_``, the C++
    default it would have run, watched the same way) and the vars ``BlockBuilder.emit``/
    ``emit_output``/``emit_normalized`` bind are entered with the node of the binding on top.
    Nothing is emitted differently."""
    from tvm.relax import BlockBuilder, expr_functor

    base = expr_functor._PyExprMutator
    init = base.__init__
    emit, emit_output = BlockBuilder.emit, BlockBuilder.emit_output
    emit_normalized = BlockBuilder.emit_normalized
    signature = inspect.signature(init)

    def watching(visit):
        def visit_var_binding(binding):
            stack = _visiting()
            stack.append(binding)
            try:
                return visit(binding)
            finally:
                stack.pop()

        return visit_var_binding

    def init_watched(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        visit = bound.arguments.get("f_visit_var_binding_")
        inst = getattr(self, "_inst", None)  # the user's mutator (tvm.ir.utils.derived_object)
        if visit is None and inst is not None:
            # not overridden: PyExprMutator's own method, which runs the C++ default
            visit = inst.visit_var_binding_
        if visit is not None:
            bound.arguments["f_visit_var_binding_"] = watching(visit)
        init(*bound.args, **bound.kwargs)

    def emit_carried(self, expr, name_hint=""):
        return _carry(emit(self, expr, name_hint), name_hint)

    def emit_output_carried(self, output, name_hint=""):
        return _carry(emit_output(self, output, name_hint), name_hint)

    def emit_normalized_carried(self, binding):
        emit_normalized(self, binding)
        _carry(binding.var)

    with _patched(base, "__init__", init_watched), \
            _patched(BlockBuilder, "emit", emit_carried), \
            _patched(BlockBuilder, "emit_output", emit_output_carried), \
            _patched(BlockBuilder, "emit_normalized", emit_normalized_carried):
        yield


@contextlib.contextmanager
def tracking(nodes: ImportedNodes) -> Iterator[dict[str, dict[str, Any]]]:
    """While open, which node each binding computes is followed through the passes of a
    compile, and the recording stages (``recording``) write into the dict yielded here, per
    kernel (the PrimFunc name the VM reports)::

        {"fused_conv2d_nchwc_packed_add_relu": {"onnx_nodes": ["conv1", "relu1"],
         "onnx_ops": ["Conv", "Relu"], "ops": ["conv2d_nchwc_packed", "add", "relu"],
         "calls": 1, "flops": 114688.0, "inferred": False}, ...}

    ``onnx_nodes`` lists at most ``MAX_NODES`` names (``nodes_total`` counts them all when
    there are more); ``inferred`` marks a kernel none of whose ops was followed to a node
    (they took the node of the op that consumes them); a kernel whose ops are all layout
    changes has ``inserted`` saying so, and one that no node reaches has ``onnx_nodes``
    empty. A later compile inside the block (the unfused retry) replaces what an earlier one
    wrote.
    """
    found: dict[str, dict[str, Any]] = {}
    tracker = _Tracker(nodes, found)
    _install_hooks()
    _trackers().append(tracker)
    try:
        yield found
    finally:
        _trackers().remove(tracker)
        _remove_hooks()


def _install_hooks() -> None:
    with _HOOKS:
        if _HOOK_USERS[0] == 0:
            stack = contextlib.ExitStack()
            stack.enter_context(_carrying())
            _HOOK_USERS[1] = stack
        _HOOK_USERS[0] += 1


def _remove_hooks() -> None:
    with _HOOKS:
        _HOOK_USERS[0] -= 1
        if _HOOK_USERS[0] == 0:
            _HOOK_USERS[1].close()
            _HOOK_USERS[1] = None


def recording(passes: list[Any]) -> list[Any]:
    """``passes`` (``pipeline.legalize_passes``) with a recording stage after ``FoldConstant``
    (one kernel per op), ``FuseOps`` (which ops each fused function holds) and ``FuseTIR``
    (the kernels); each reads the module and returns it unchanged, and does nothing outside
    ``tracking``."""
    stages = {"FoldConstant": "legal", "FuseOps": "fused", "FuseTIR": "kernels"}
    out = []
    for p in passes:
        out.append(p)
        stage = stages.get(p.info.name)
        if stage is not None:
            out.append(_recorder(stage))
    return out


def _recorder(stage: str):
    import tvm

    @tvm.transform.module_pass(opt_level=0, name=f"tvmforge.RecordKernels.{stage}")
    def _pass(mod, _ctx):
        trackers = _trackers()
        if trackers:
            getattr(trackers[-1], stage)(mod)
        return mod

    return _pass


def _call_tir(expr) -> tuple[Any, list[Any]] | None:
    """``(PrimFunc GlobalVar, tensor args)`` of a ``call_tir`` (or its in-place form)."""
    import tvm
    from tvm import relax

    if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
        return None
    if not str(expr.op.name).startswith("relax.call_tir") or not expr.args:
        return None
    callee = expr.args[0]
    if not isinstance(callee, tvm.ir.GlobalVar):
        return None
    args = expr.args[1] if len(expr.args) > 1 else None
    fields = list(args.fields) if isinstance(args, relax.Tuple) else ([args] if args else [])
    return callee, fields


def _arg_key(arg: Any, loose: bool) -> Any:
    from tvm import relax

    if isinstance(arg, relax.Var):
        return arg
    return "const" if loose else arg


def _key(prim, args: list[Any], loose: bool = False) -> tuple:
    return (str(prim.name_hint), tuple(_arg_key(a, loose) for a in args))


def _main_bindings(mod) -> list[Any]:
    from tvm import relax

    gv = next((g for g in mod.get_global_vars() if g.name_hint == "main"), None)
    if gv is None or not isinstance(mod[gv], relax.Function):
        return []
    return [b for b in _bindings(mod[gv]) if isinstance(b, relax.VarBinding)]


class _Tracker:
    """What the recording stages of one compile learnt (see ``tracking``)."""

    def __init__(self, nodes: ImportedNodes, found: dict[str, dict[str, Any]]) -> None:
        self.nodes = nodes
        self.of_var: dict[Any, str] = dict(nodes.of_var)  # grows as passes emit
        self.found = found
        self.label_of: dict[Any, tuple[str, bool]] = {}  # var -> (label, carried by itself)
        self.absorbed: dict[str, list[str]] = {}  # node -> nodes folded into it
        self.by_name: dict[str, set[str]] = {}  # var name -> the nodes of vars so named
        for var, label in self.of_var.items():
            self.by_name.setdefault(str(var.name), set()).add(label)
        self.index: dict[tuple, Any] = {}  # (PrimFunc, args) -> var, one kernel per op
        self.loose: dict[tuple, Any] = {}  # the same with constants left out
        self.sites: dict[Any, tuple[list[Any], list[str]]] = {}  # var -> (op vars, op names)

    def add(self, var: Any, label: str) -> None:
        """``var`` computes node ``label``."""
        self.of_var[var] = label
        self.by_name.setdefault(str(var.name), set()).add(label)

    def label_named(self, name: str) -> str | None:
        """The node of the vars named ``name``, when every such var computes the same one."""
        labels = self.by_name.get(name, set())
        return next(iter(labels)) if len(labels) == 1 else None

    def legal(self, mod) -> None:
        """One kernel per op: which ONNX node each op's binding names (or, for a binding
        that names none, the node of its first consumer that does)."""
        bindings = _main_bindings(mod)
        labels: dict[Any, tuple[str, bool]] = {
            b.var: (self.of_var[b.var], True) for b in bindings if b.var in self.of_var
        }
        _inherit_from_consumers(bindings, labels, lambda label: (label[0], False),
                                hops=INHERIT_HOPS)
        self.label_of = labels
        self.absorbed = self._absorbed({label for label, own in labels.values() if own})
        self.index, self.loose, self.sites = {}, {}, {}
        for b in bindings:
            call = _call_tir(b.value)
            if call is None:
                continue
            prim, args = call
            self.index.setdefault(_key(prim, args), b.var)
            self.loose.setdefault(_key(prim, args, loose=True), b.var)
            self.sites[b.var] = ([b.var], [str(prim.name_hint)])
        self._publish(mod, bindings)  # final unless fusion follows

    def _absorbed(self, present: set[str]) -> dict[str, list[str]]:
        """``{present node: [nodes folded into it]}``: a node computed at run time that no
        binding computes any more was folded into a node that consumes it (a conv into the
        BatchNormalization after it, a channel shuffle into the conv it feeds); it is named
        with the nearest consumers that are still computed."""
        absorbed: dict[str, list[str]] = {}
        for label in self.nodes.ops:
            if label in present or label not in self.nodes.runtime:
                continue
            seen, todo = {label}, list(self.nodes.consumers.get(label, []))
            while todo:
                user = todo.pop(0)
                if user in seen:
                    continue
                seen.add(user)
                if user in present:
                    absorbed.setdefault(user, []).append(label)
                else:
                    todo.extend(self.nodes.consumers.get(user, []))
        return absorbed

    def fused(self, mod) -> None:
        """Each fused call's ops, found by replaying its function's body on the unfused ops
        (FuseOps shares one function among identical groups, so the function's own vars
        are those of its first group only, and it binds each group's result to a new var:
        ``alias`` maps those back to the unfused op's var)."""
        import tvm
        from tvm import relax

        sites: dict[Any, tuple[list[Any], list[str]]] = {}
        alias: dict[Any, Any] = {}
        tuples: dict[Any, list[Any]] = {}
        for b in _main_bindings(mod):
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.GlobalVar):
                func = mod[v.op]
                if isinstance(func, relax.Function):
                    args = [alias.get(a, a) if isinstance(a, relax.Var) else a for a in v.args]
                    members, ops, outs = self._members(func, args)
                    sites[b.var] = (members, ops)
                    if len(outs) == 1 and outs[0] is not None:
                        alias[b.var] = outs[0]
                    tuples[b.var] = outs
                continue
            if isinstance(v, relax.TupleGetItem) and v.tuple_value in tuples:
                outs = tuples[v.tuple_value]
                if 0 <= int(v.index) < len(outs) and outs[int(v.index)] is not None:
                    alias[b.var] = outs[int(v.index)]
                continue
            call = _call_tir(v)
            if call is not None:
                sites[b.var] = self.sites.get(b.var) or ([], [str(call[0].name_hint)])
        self.sites = sites

    def _members(self, func, args: list[Any]) -> tuple[list[Any], list[str], list[Any]]:
        """``(unfused op vars, op names, unfused vars of its results)`` of one fused call."""
        from tvm import relax

        env: dict[Any, Any] = dict(zip(func.params, args, strict=False))
        members: list[Any] = []
        ops: list[str] = []
        for ib in _bindings(func):
            if not isinstance(ib, relax.VarBinding):
                continue
            call = _call_tir(ib.value)
            if call is None:
                if isinstance(ib.value, relax.Var) and ib.value in env:
                    env[ib.var] = env[ib.value]
                continue
            prim, cargs = call
            ops.append(str(prim.name_hint))
            mapped = [env.get(a, a) if isinstance(a, relax.Var) else a for a in cargs]
            var = self.index.get(_key(prim, mapped))
            if var is None:
                var = self.loose.get(_key(prim, mapped, True))
            if var is not None:
                members.append(var)
                env[ib.var] = var
        result = func.body.body if isinstance(func.body, relax.SeqExpr) else func.body
        fields = list(result.fields) if isinstance(result, relax.Tuple) else [result]
        outs = [env.get(f) if isinstance(f, relax.Var) else None for f in fields]
        return members, ops, outs

    def kernels(self, mod) -> None:
        self._publish(mod, _main_bindings(mod))

    def _publish(self, mod, bindings: list[Any]) -> None:
        """Per kernel called from main: the ONNX nodes of the ops of all its call sites."""
        kernels: dict[str, dict[str, Any]] = {}
        for b in bindings:
            call = _call_tir(b.value)
            if call is None:
                continue
            prim = call[0]
            name = str(prim.name_hint)
            members, ops = self.sites.get(b.var, ([], [name]))
            entry = kernels.get(name)
            if entry is None:
                entry = kernels[name] = {"labels": [], "ops": ops, "calls": 0, "own": [],
                                         "flops": _flops(mod[prim])}
            entry["calls"] += 1
            for m in members:
                label = self.label_of.get(m)
                if label is None:
                    continue
                if label[1] and label[0] not in entry["own"]:
                    entry["own"].append(label[0])
                if label[0] not in entry["labels"]:
                    entry["labels"].append(label[0])
        self.found.clear()
        order = {label: k for k, label in enumerate(self.nodes.ops)}
        for name, e in kernels.items():
            nodes = list(e["labels"])
            for label in e["own"]:  # what was folded into an op followed to its node
                nodes += [a for a in self.absorbed.get(label, []) if a not in nodes]
            nodes.sort(key=lambda label: order.get(label, len(order)))
            onnx_ops = list(dict.fromkeys(self.nodes.ops[n] for n in nodes))
            row: dict[str, Any] = {
                "onnx_nodes": nodes[:MAX_NODES],
                "onnx_ops": onnx_ops,
                "ops": e["ops"],
                "calls": e["calls"],
                "flops": e["flops"],
                "inferred": bool(nodes) and not e["own"],
            }
            if len(nodes) > MAX_NODES:
                row["nodes_total"] = len(nodes)
            if not nodes or _is_layout(e["ops"]):
                row["inserted"] = unattributed_label(e["ops"])
            self.found[name] = row


def _flops(func) -> float | None:
    """The kernel's floating-point operations by TVM's estimate, or ``None`` when TVM
    cannot count them (symbolic extents)."""
    import tvm
    from tvm import tirx

    if not isinstance(func, tirx.PrimFunc):
        return None
    try:
        from tvm.s_tir.analysis import estimate_tir_flops

        return float(estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:
        return None


def _is_layout(ops: list[str]) -> bool:
    """Whether every op of a kernel is a layout change (``layout_transform``: no ONNX op is
    one; tvmforge's layout passes insert them)."""
    return bool(ops) and all("layout_transform" in op for op in ops)


def unattributed_label(ops: list[str]) -> str:
    """What a kernel is when it is a layout change tvmforge inserted, or when no ONNX node
    was followed to it: described by its ops."""
    if _is_layout(ops):
        return "layout transform inserted by tvmforge"
    plain = dict.fromkeys(op.rstrip("0123456789_") for op in ops)
    return f"not traced to an ONNX node (ops: {', '.join(plain) or 'none'})"
