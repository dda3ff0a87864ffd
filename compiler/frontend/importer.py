"""ONNX in, Relax out: load and validate a model, fix its input shapes, import it into Relax.

Every way a model can be unusable is found here and reported as one line naming the file, the
input or the node, and what to do: a missing or unparsable file, an ``--input-shape`` for an
input that does not exist, a dynamic dimension left unfixed, and every unsupported operator
(all of them at once, each with its node's name).

A dynamic *batch* dimension (the leading dim of an input) may stay dynamic: it becomes a
symbolic ``tirx.Var`` in Relax, named after its ONNX ``dim_param`` (``batch`` when it has
none), and the artifact then runs with any batch size. ``compile`` keeps it so when the model
leaves it open and no ``--input-shape`` fixes it; ``--input-shape x=Nx3x224x224`` asks for it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tvmforge.errors import CompileError, InputError, TvmforgeError
from tvmforge.frontend.validate import check_types, validate_graph
from tvmforge.frontend.value_inputs import check_shape_values
from tvmforge.runtime.tensors import TensorInfo

log = logging.getLogger(__name__)

# Operator domains with converters: ONNX's own, its classic-ML domain, Microsoft's contrib ops.
_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})

# Ops the importer handles outside its converter map.
_IMPORTER_BUILTINS = frozenset({"Constant", "If"})


@dataclass
class OnnxModel:
    """A loaded, validated ONNX model and what we know about it."""

    path: str
    proto: onnx.ModelProto
    sha256: str
    # ``freeze_inputs``: the inputs made constants and their values. A reference runtime runs
    # ``given_proto`` (the model before ``--freeze``) with these fed as inputs: ONNX Runtime
    # 1.31 crashes inlining an ``If`` on a frozen input (silero-vad's sample rate).
    frozen: dict[str, np.ndarray] = field(default_factory=dict)
    given_proto: onnx.ModelProto | None = None
    # A ``zoo:`` wheel model's benchmark configuration, applied where the caller gives no
    # ``--input-shape`` / ``--freeze`` of its own: the shipped file is left as it is (ONNX
    # Runtime rejects silero-vad's LSTM branch once its input shapes are written into it).
    shape_defaults: dict[str, tuple[int, ...]] = field(default_factory=dict)
    frozen_defaults: dict[str, list[float]] = field(default_factory=dict)

    @property
    def opset(self) -> int:
        for imp in self.proto.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return int(imp.version)
        return 1

    @property
    def inputs(self) -> list[TensorInfo]:
        """Real inputs: graph inputs that are not initializers (old IR lists both)."""
        inits = {t.name for t in self.proto.graph.initializer}
        return [_value_info(v) for v in self.proto.graph.input if v.name not in inits]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [_value_info(v) for v in self.proto.graph.output]


def _dtype_of(elem_type: int) -> str:
    if elem_type == 0:
        return "float32"
    return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)))


def _value_info(v: onnx.ValueInfoProto) -> TensorInfo:
    tt = v.type.tensor_type
    dims: list[int | str] = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or f"?{i}")
    return TensorInfo(v.name, tuple(dims), _dtype_of(tt.elem_type))


def load_model(path: str | Path) -> OnnxModel:
    """Read and check an ONNX file.

    Raises
    ------
    InputError
        The file is missing, unreadable, not an ONNX model or truncated.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file", hint="check the path to the .onnx model")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not an ONNX file")
    data = p.read_bytes()
    if not data:
        raise InputError(f"{p}: the file is empty", hint="re-export the model")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as err:  # protobuf raises DecodeError and friends
        raise InputError(
            f"{p}: not an ONNX model or truncated (protobuf could not parse it: "
            f"{_first_line(err)})",
            hint="re-export or re-download the file",
        ) from None
    if not proto.HasField("graph") or not proto.graph.output:
        raise InputError(
            f"{p}: not an ONNX model (no graph or outputs in it)",
            hint="pass a .onnx file exported from a framework",
        )
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        try:
            onnx.load_external_data_for_model(proto, str(p.parent))
        except Exception as err:
            raise InputError(
                f"{p}: its weights live in external data files that could not be read "
                f"({_first_line(err)})",
                hint="keep the data files beside the model",
            ) from None
    validate_graph(proto, str(p))
    check_types(proto, str(p))
    try:
        onnx.checker.check_model(proto)
    except Exception as err:
        # Many exported models bend the spec in harmless ways; the importer is the judge.
        log.info("%s: onnx.checker: %s", p, _first_line(err))
    return OnnxModel(str(p), proto, hashlib.sha256(data).hexdigest())


def load(spec: str | Path | onnx.ModelProto) -> OnnxModel:
    """Load a model from a path, a ``zoo:NAME`` light model, or a ``ModelProto``.

    Raises
    ------
    InputError
        For a missing or malformed file, or an unknown zoo name.
    """
    from tvmforge.frontend import zoo

    if isinstance(spec, onnx.ModelProto):
        data = spec.SerializeToString()
        validate_graph(spec, "<in-memory model>")
        check_types(spec, "<in-memory model>")
        return OnnxModel("<in-memory model>", spec, hashlib.sha256(data).hexdigest())
    text = str(spec)
    if text.startswith(zoo.PREFIX) and not Path(text).exists():
        name = text[len(zoo.PREFIX) :]
        try:
            proto = zoo.shipped_model(name) if name in zoo.WHEEL_MODELS else zoo.load(name)
        except KeyError:
            raise InputError(
                f"{text}: no such zoo model", hint=f"known: {', '.join(zoo.names())}"
            ) from None
        except RuntimeError as err:
            raise InputError(f"{text}: {err}") from None
        entry = zoo.WHEEL_MODELS.get(name)
        return OnnxModel(
            text,
            proto,
            hashlib.sha256(proto.SerializeToString()).hexdigest(),
            shape_defaults=dict(entry.shapes) if entry else {},
            frozen_defaults={k: list(v) for k, v in entry.frozen.items()} if entry else {},
        )
    return load_model(text)


# In ``--input-shape``, this dimension stays dynamic (a symbolic batch size); leading axis only.
DYNAMIC = "N"
_SHAPE_RE = re.compile(r"^(?P<name>.+)=(?P<dims>(?:\d+|N)(?:[x,](?:\d+|N))*)$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_input_shape(spec: str) -> tuple[str, tuple[int | str, ...]]:
    """Parse ``NAME=1x3x224x224`` (``,`` works as separator too); ``N`` as the first dim
    (``NAME=Nx3x224x224``) keeps the batch dimension dynamic.

    Raises
    ------
    InputError
        When the text is not of that form.
    """
    m = _SHAPE_RE.match(spec.strip())
    if not m:
        raise InputError(
            f"--input-shape {spec!r} is not NAME=DIMxDIMx...",
            hint="e.g. --input-shape data=1x3x224x224, or data=Nx3x224x224 for a dynamic batch",
        )
    dims = tuple(d if d == DYNAMIC else int(d) for d in re.split(r"[x,]", m["dims"]))
    return m["name"], dims


def batch_symbol(dim: int | str) -> str:
    """The name a dynamic leading dimension gets in Relax: its ONNX ``dim_param`` when that
    is an identifier (inputs that share it share the size), else ``batch``."""
    return dim if isinstance(dim, str) and _IDENTIFIER.match(dim) else "batch"


def parse_freeze(spec: str) -> tuple[str, list[float]]:
    """Parse ``NAME=VALUE`` or ``NAME=V1,V2,...`` (``--freeze``).

    Raises
    ------
    InputError
        When the text is not of that form.
    """
    name, sep, text = spec.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(
            f"--freeze {spec!r} is not NAME=VALUE[,VALUE...]", hint="e.g. --freeze sr=16000"
        ) from None
    return name, values


def freeze_inputs(model: OnnxModel, values: dict[str, list[float]]) -> OnnxModel:
    """Turn inputs into constants of the given values (they leave the artifact's inputs).

    A model that branches on an input (silero-vad's ``sr``: 8 or 16 kHz) compiles to one
    static graph once that input is frozen: the pre-pass folds the condition and inlines the
    branch taken.

    Raises
    ------
    InputError
        For a name that is not an input, or values that do not fit its shape.
    """
    if not values:
        return model
    infos = {i.name: i for i in model.inputs}
    proto = onnx.ModelProto.FromString(model.proto.SerializeToString())
    frozen = dict(model.frozen)
    for name, vals in values.items():
        info = infos.get(name)
        if info is None:
            raise InputError(
                f"{model.path}: --freeze names {name!r}, which is not an input of the model",
                hint=f"its inputs are: {', '.join(infos)}",
            )
        flat = np.asarray(vals).reshape(-1)
        shape = tuple(d if isinstance(d, int) else -1 for d in info.shape)
        if -1 in shape and len(shape) == 1:
            shape = (flat.size,)
        elif -1 in shape or flat.size != int(np.prod(shape, dtype=np.int64)):
            raise InputError(
                f"{model.path}: --freeze {name} gives {flat.size} value(s) for an input of "
                f"shape {_fmt_shape(info.shape)}"
            )
        array = flat.astype(np.dtype(info.dtype)).reshape(shape)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
        kept = [v for v in proto.graph.input if v.name != name]
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
        frozen[name] = array
    return OnnxModel(model.path, proto, model.sha256, frozen=frozen,
                     given_proto=model.given_proto or model.proto,
                     shape_defaults=model.shape_defaults)


def resolve_inputs(
    model: OnnxModel,
    overrides: dict[str, tuple[int | str, ...]],
    *,
    dynamic_batch: bool = False,
) -> list[TensorInfo]:
    """The model's inputs with every dimension fixed, except a dynamic batch dimension.

    A dimension stays dynamic (a name, see ``batch_symbol``) only as the leading dimension of
    an input: where ``--input-shape`` says ``N`` there, or, with ``dynamic_batch``, where the
    model leaves it dynamic and no override fixes it (inputs of rank 2 and more). Every other
    dynamic dimension must be fixed.

    Raises
    ------
    InputError
        For an override naming no input, of the wrong rank, contradicting a static dim or
        asking for ``N`` where it cannot be (not the leading dim; not ``dynamic_batch``), and
        for a dynamic dimension that no override fixes.
    """
    inputs = model.inputs
    names = [i.name for i in inputs]
    defaults = {k: v for k, v in model.shape_defaults.items() if k in names}
    overrides = {**defaults, **overrides}
    for name in overrides:
        if name not in names:
            raise InputError(
                f"{model.path}: --input-shape names {name!r}, which is not an input of the model",
                hint=f"its inputs are: {', '.join(names)}",
            )
    resolved = []
    for info in inputs:
        if info.name in overrides:
            resolved.append(_override(model, info, overrides[info.name], dynamic_batch))
            continue
        dynamic = [(a, d) for a, d in enumerate(info.shape) if not isinstance(d, int)]
        shape = info.shape
        if dynamic_batch and len(shape) >= 2 and dynamic and dynamic[0][0] == 0:
            shape = (batch_symbol(shape[0]), *shape[1:])
            dynamic = dynamic[1:]
        if dynamic:
            axis, dim = dynamic[0]
            raise InputError(
                f"{model.path}: input {info.name!r} has dynamic dimension {axis} ({dim!r}) "
                f"in shape {_fmt_shape(info.shape)}",
                hint=_fix_hint(info, dynamic_batch),
            )
        resolved.append(TensorInfo(info.name, shape, info.dtype))
    return resolved


def _override(
    model: OnnxModel, info: TensorInfo, dims: tuple[int | str, ...], dynamic_batch: bool
) -> TensorInfo:
    """``info`` with the shape ``--input-shape`` gives it, checked against the model's."""
    text = "x".join(str(d) for d in dims)
    if info.shape and len(dims) != len(info.shape):
        raise InputError(
            f"{model.path}: input {info.name!r} has rank {len(info.shape)} "
            f"{_fmt_shape(info.shape)}, but --input-shape gives {len(dims)} dims",
            hint=f"give {len(info.shape)} dims",
        )
    for axis, want in enumerate(dims):
        have = info.shape[axis] if axis < len(info.shape) else None
        if want == DYNAMIC and (axis != 0 or not dynamic_batch):
            where = (
                "here (tune and calibration need fixed sizes)"
                if axis == 0
                else (f"for dimension {axis}: only the leading (batch) dimension can stay dynamic")
            )
            raise InputError(
                f"{model.path}: --input-shape {info.name}={text}: N (dynamic) is not allowed "
                f"{where}",
                hint="give a number",
            )
        if isinstance(have, int) and have != want:
            raise InputError(
                f"{model.path}: input {info.name!r} dimension {axis} is fixed to {have} "
                f"in the model; --input-shape asks for {want}",
                hint="only dynamic dimensions can be changed",
            )
    shape = tuple(
        batch_symbol(info.shape[0] if info.shape else "") if d == DYNAMIC else d for d in dims
    )
    return TensorInfo(info.name, shape, info.dtype)


def _fix_hint(info: TensorInfo, dynamic_batch: bool) -> str:
    """How to fix ``info``'s dynamic dims with ``--input-shape``: ``<name>`` for each."""
    dims = []
    for axis, d in enumerate(info.shape):
        if isinstance(d, int):
            dims.append(str(d))
        elif axis == 0 and dynamic_batch and len(info.shape) >= 2:
            dims.append(DYNAMIC)
        else:
            dims.append(f"<{d if _IDENTIFIER.match(str(d)) else f'dim{axis}'}>")
    example = "x".join(dims)
    note = "; N keeps the batch dimension dynamic" if DYNAMIC in dims else ""
    return f"fix it with --input-shape {info.name}={example} (a number for each <...>{note})"


def _fmt_shape(shape: tuple[int | str, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _supported_ops() -> frozenset[str]:
    from tvmforge.frontend import converters

    return converters.supported_ops() | _IMPORTER_BUILTINS


def _iter_nodes(graph: onnx.GraphProto, prefix: str = ""):
    for index, node in enumerate(graph.node):
        label = node.name or f"#{index}"
        yield prefix + label, node
        for attr in node.attribute:
            subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for sub in subgraphs:
                yield from _iter_nodes(sub, prefix=f"{prefix}{label}/{attr.name}/")


def unsupported_nodes(model: OnnxModel) -> list[tuple[str, str]]:
    """``(node name, op)`` for every node the importer cannot convert, in graph order; a node
    that reads a string tensor is one (its op is written ``OP(string)``)."""
    supported = _supported_ops()
    strings = _string_tensors(model.proto.graph)
    bad = []
    for label, node in _iter_nodes(model.proto.graph):
        foreign = node.domain not in _DOMAINS
        op = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        if foreign or node.op_type not in supported or op in BY_DESIGN:
            bad.append((label, op))
        elif any(name in strings for name in node.input):
            bad.append((label, f"{op}(string)"))
    return bad


def _string_tensors(graph: onnx.GraphProto) -> set[str]:
    """Names the graph declares as string tensors (inputs, outputs, value_info, weights)."""
    string = onnx.TensorProto.STRING
    names = {t.name for t in graph.initializer if t.data_type == string}
    for v in [*graph.input, *graph.output, *graph.value_info]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type == string:
            names.add(v.name)
    return names


# What tvmforge does not compile by design, and why (the reason goes into the error line).
_STRING_REASON = (
    "string tensors, which tvmforge does not compile (its kernels work on numbers): do the "
    "text processing (tokenizing, matching, label lookup) before or after the model"
)
_TRAINING_REASON = (
    "training-only operators (gradients, optimizer steps): export the model for inference"
)
_MAP_REASON = (
    "a sequence of maps, which tvmforge does not compile (outputs are tensors): convert the "
    "classifier with skl2onnx's options={'zipmap': False} to get the probabilities as a tensor"
)
BY_DESIGN: dict[str, str] = {
    "ai.onnx.ml.ZipMap": _MAP_REASON,
    **dict.fromkeys(
        ["StringConcat", "StringSplit", "StringNormalizer", "RegexFullMatch"], _STRING_REASON
    ),
    **dict.fromkeys(
        ["ai.onnx.preview.training.Gradient", "ai.onnx.preview.training.Adagrad",
         "ai.onnx.preview.training.Adam", "ai.onnx.preview.training.Momentum"],
        _TRAINING_REASON,
    ),
}


def unsupported_reason(op: str) -> str | None:
    """Why tvmforge does not compile ``op`` (as ``unsupported_nodes`` writes it) by design;
    ``None`` for an op it merely lacks a converter for."""
    return _STRING_REASON if op.endswith("(string)") else BY_DESIGN.get(op)


def check_supported(model: OnnxModel) -> None:
    """Raise one ``CompileError`` listing every unsupported node.

    Raises
    ------
    CompileError
        When any node's op has no converter, or is one tvmforge does not compile by design
        (string tensors, training operators), with the reason.
    """
    bad = unsupported_nodes(model)
    if not bad:
        return
    ops = sorted({op for _, op in bad})
    shown = ", ".join(f"{name} ({op})" for name, op in bad[:20])
    more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
    reasons = sorted({r for op in ops if (r := unsupported_reason(op))})
    if reasons and all(unsupported_reason(op) for op in ops):
        what = " and ".join(r.split(",")[0].split(" (")[0] for r in reasons)
        raise CompileError(
            f"{model.path}: {len(bad)} node(s) use {what} [{', '.join(ops)}]: {shown}{more}",
            hint="; ".join(reasons),
        )
    hint = "replace these ops when exporting, or run `tvmforge inspect` for the op list"
    loops = [op for op in ops if op in _UNROLLED]
    if loops:
        hint = (
            f"{' and '.join(_UNROLLED[op] for op in loops)}, so they can be unrolled; a trip "
            "count known only at run time is not supported: " + hint
        )
    if reasons:
        hint = "; ".join(reasons) + "; for the others: " + hint
    raise CompileError(
        f"{model.path}: {len(bad)} node(s) use operators tvmforge cannot import "
        f"[{', '.join(ops)}]: {shown}{more}",
        hint=hint,
    )


# Control flow that the pre-pass (``simplify``) unrolls, and what it needs for that.
_UNROLLED = {
    "Loop": "a Loop compiles when its trip count folds to a constant (at most 256) and its "
    "condition only passes through",
    "Scan": "a Scan compiles when its sequence length is static (at most 256)",
}


def to_relax(model: OnnxModel, inputs: list[TensorInfo], dataflow: bool = True):
    """Import the model into a Relax ``IRModule`` with weights embedded as constants.

    ``dataflow``: the pure bindings outside dataflow blocks become dataflow blocks
    (``ConvertToDataflow``). TVM's importer writes a model with control flow (an ``If`` on a
    computed value: openWakeWord's classifiers) without any, and fusion works inside them only:
    unfused, the 'hey jarvis' classifier ran 27 one-op kernels, 4x ONNX Runtime's time.

    Raises
    ------
    CompileError
        When TVM's importer fails; the message carries its reason.
    """
    from tvm.relax.frontend.onnx import from_onnx

    from tvmforge.frontend import converters
    from tvmforge.frontend.simplify import simplify

    proto, report = simplify(model.proto, inputs)
    log.info("%s: simplified: %s", model.path, report)
    check_shape_values(proto, model.path)
    check_supported(OnnxModel(model.path, proto, model.sha256))
    shapes = relax_shapes(inputs)
    dtypes = {i.name: i.dtype for i in inputs}
    try:
        with converters.installed():
            mod = from_onnx(
                proto,
                shape_dict=shapes,
                dtype_dict=dtypes,
                keep_params_in_input=False,
            )
    except TvmforgeError as err:  # a converter's own one-line refusal: add the file
        if err.message.startswith(model.path):
            raise
        raise type(err)(f"{model.path}: {err.message}", hint=err.hint) from None
    except Exception as err:
        raise CompileError(
            f"{model.path}: the ONNX importer failed: {_first_line(err)}",
            hint="rerun with --verbose for details, and report the model",
        ) from err
    if dataflow:
        from tvm import relax

        mod = relax.transform.ConvertToDataflow()(mod)
    return mod


def relax_shapes(inputs: list[TensorInfo]) -> dict[str, list]:
    """Input shapes for the importer: a dynamic dim becomes a ``tirx.Var`` (int64), one per
    name, so inputs that share a batch name share its size."""
    import tvm

    symbols: dict[str, Any] = {}
    shapes = {}
    for info in inputs:
        shapes[info.name] = [
            d if isinstance(d, int) else symbols.setdefault(d, tvm.tirx.Var(d, "int64"))
            for d in info.shape
        ]
    return shapes


def _first_line(err: BaseException) -> str:
    """The most useful single line of an exception's text (TVM puts it last)."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    for ln in reversed(lines):
        if not ln.startswith(("File ", "at ", "^")):
            return ln
    return lines[-1]
