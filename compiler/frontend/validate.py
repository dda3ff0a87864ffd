"""Structural checks of an ONNX graph before anything imports it, each failure one line that
names the tensor or node: a graph whose nodes form a cycle, a node input nothing produces, an
output nothing produces, an unknown element type, an initializer whose data does not fill its
shape, a convolution or pooling whose window attributes contradict its weight or its rank, and
type annotations that contradict what ONNX's own type inference derives. (TVM's importer fails
on these with a bare name or a ``KeyError``, or compiles them into something ONNX Runtime
refuses to run.)"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto

from tvmforge.errors import InputError

__all__ = ["check_types", "validate_graph"]

_KNOWN_TYPES = frozenset(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
# element types whose data lives in TensorProto's typed fields, by field name
_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data",
           "uint64_data")


def _type_error(path: str, what: str, name: str, elem: int) -> InputError:
    return InputError(
        f"{path}: {what} {name!r} has element type {elem}, which ONNX does not define",
        hint="re-export the model; its type annotations are damaged",
    )


def _check_value_infos(path: str, infos: Iterable[onnx.ValueInfoProto], what: str) -> None:
    for v in infos:
        if v.type.HasField("tensor_type"):
            elem = v.type.tensor_type.elem_type
            if elem != TensorProto.UNDEFINED and elem not in _KNOWN_TYPES:
                raise _type_error(path, what, v.name, elem)


def _check_initializer(path: str, t: onnx.TensorProto) -> None:
    if t.data_type not in _KNOWN_TYPES:
        raise _type_error(path, "initializer", t.name, t.data_type)
    if any(d < 0 for d in t.dims):
        raise InputError(f"{path}: initializer {t.name!r} has a negative dimension {list(t.dims)}",
                         hint="re-export the model")
    if t.data_location == TensorProto.EXTERNAL or t.data_type == TensorProto.STRING:
        return
    count = math.prod(t.dims)
    if t.HasField("raw_data"):
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            return
        if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
            want = (count + 1) // 2
        else:
            want = count * itemsize
        have = len(t.raw_data)
    else:
        have = next((len(getattr(t, f)) for f in _FIELDS if len(getattr(t, f))), 0)
        want = count
        if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
            want = 2 * count
        if have == 0 and count == 0:
            return
        if t.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT8,
                           TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
                           TensorProto.BOOL, TensorProto.INT4, TensorProto.UINT4) \
                and have != want:
            return  # packed several to an int32 entry by some exporters: leave it to onnx
    if have != want:
        raise InputError(
            f"{path}: initializer {t.name!r} holds {have} bytes/values, its shape "
            f"{list(t.dims)} needs {want}",
            hint="re-export the model; this weight is damaged",
        )


def validate_graph(proto: onnx.ModelProto, path: str) -> None:
    """Refuse a graph that cannot be computed, with one line naming what is wrong.

    Raises
    ------
    InputError
        For a cycle, a dangling node input or graph output, an unknown element type, or an
        initializer whose data does not match its shape.
    """
    graph = proto.graph
    for t in graph.initializer:
        _check_initializer(path, t)
    _check_value_infos(path, graph.input, "input")
    _check_value_infos(path, graph.output, "output")
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    available |= {t.values.name for t in graph.sparse_initializer}
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producer.setdefault(out, index)
    # Kahn's algorithm: a node runs once all its (top-level) inputs exist
    waiting: list[set[str]] = []
    readers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        need = {i for i in node.input if i and i not in available}
        for name in need:
            if name not in producer:
                label = node.name or f"#{index} ({node.op_type})"
                raise InputError(
                    f"{path}: node {label!r} reads {name!r}, which no node, input or "
                    "initializer produces",
                    hint="re-export the model; the graph is incomplete",
                )
            readers.setdefault(name, []).append(index)
        waiting.append(need)
    ready = [i for i, need in enumerate(waiting) if not need]
    done = 0
    while ready:
        index = ready.pop()
        done += 1
        for out in graph.node[index].output:
            for reader in readers.pop(out, []):
                waiting[reader].discard(out)
                if not waiting[reader]:
                    ready.append(reader)
    if done < len(graph.node):
        stuck = next(i for i, need in enumerate(waiting) if need)
        node = graph.node[stuck]
        label = node.name or f"#{stuck} ({node.op_type})"
        raise InputError(
            f"{path}: the graph has a cycle (node {label!r} waits on "
            f"{sorted(waiting[stuck])[0]!r}, which depends on it)",
            hint="an ONNX graph must be acyclic; re-export the model",
        )
    for out in graph.output:
        if out.name not in producer and out.name not in available:
            raise InputError(
                f"{path}: output {out.name!r} is produced by no node, input or initializer",
                hint="re-export the model; the graph is incomplete",
            )
    check_window_attributes(proto, path)


_WINDOWED = {"Conv": 1, "ConvTranspose": 1, "MaxPool": 0, "AveragePool": 0, "LpPool": 0}


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints)
    return None


def check_window_attributes(proto: onnx.ModelProto, path: str) -> None:
    """Refuse a Conv/ConvTranspose whose ``kernel_shape`` differs from its weight's window, or a
    windowed op whose ``pads``/``strides``/``dilations``/``kernel_shape`` have the wrong length
    for its rank: ONNX's checker lets them through, ONNX Runtime fails them when it runs
    ("kernel_shape is not compatible with W shape"), and compiled, they would compute
    something else than the model says."""
    graph = proto.graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    for v in [*graph.input, *graph.value_info]:
        shape = v.type.tensor_type.shape if v.type.HasField("tensor_type") else None
        if shape is not None and shape.dim and all(d.HasField("dim_value") for d in shape.dim):
            dims.setdefault(v.name, [d.dim_value for d in shape.dim])
    for index, node in enumerate(graph.node):
        if node.op_type not in _WINDOWED or node.domain not in ("", "ai.onnx"):
            continue
        label = node.name or f"#{index}"
        window = None
        weight = node.input[_WINDOWED[node.op_type]] if node.op_type in ("Conv", "ConvTranspose") \
            and len(node.input) > 1 else None
        if weight and len(dims.get(weight, [])) >= 3:
            window = dims[weight][2:]
        kernel = _ints(node, "kernel_shape")
        rank = len(window) if window is not None else (len(kernel) if kernel else None)

        def refuse(what: str, label=label, op=node.op_type) -> InputError:
            return InputError(
                f"{path}: node {label!r} ({op}): {what} (ONNX Runtime refuses it too)",
                hint="re-export the model, or correct the node's attributes",
            )

        if window is not None and kernel is not None and kernel != window:
            raise refuse(f"kernel_shape {kernel} does not match the window {window} of its "
                         f"weight {weight!r}")
        if rank is None:
            continue
        for attr, length in (("strides", rank), ("dilations", rank), ("pads", 2 * rank),
                             ("kernel_shape", rank), ("output_padding", rank)):
            values = _ints(node, attr)
            if values is not None and len(values) != length:
                raise refuse(f"{attr} {values} has {len(values)} values, its {rank}-d window "
                             f"needs {length}")
            if values is not None and attr != "pads" and attr != "output_padding" and any(
                v < 1 for v in values
            ):
                raise refuse(f"{attr} {values} must be positive")
        pads = _ints(node, "pads")
        if pads is not None and any(v < 0 for v in pads):
            raise refuse(f"pads {pads} must not be negative")


# Initializers above this many elements go to type inference as typed inputs (their values
# matter to no inference rule; serializing them cost 2.5 s for BERT-base, 0.05 s without).
_INFERENCE_WEIGHT_ELEMS = 64


def _without_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with its big initializers replaced by graph inputs of their type and shape."""
    graph = proto.graph
    if not graph.initializer:
        return proto
    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    g = light.graph
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    declared = {i.name for i in graph.input}
    for t in graph.initializer:
        if math.prod(t.dims) <= _INFERENCE_WEIGHT_ELEMS:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    return light


def _type_name(elem: int) -> str:
    try:
        return TensorProto.DataType.Name(elem).lower()
    except ValueError:
        return str(elem)


def check_types(proto: onnx.ModelProto, path: str) -> None:
    """Refuse type annotations that contradict ONNX's type inference (an output declared int64
    that a Relu of a float computes, say): ONNX Runtime refuses such a model when it loads it.
    Other complaints of the strict inference (shapes that exports annotate loosely, operators it
    has no schema for) are left to the importer, which is the judge of those."""
    try:
        onnx.shape_inference.infer_shapes(_without_weights(proto), check_type=True,
                                          strict_mode=True)
    except Exception as err:  # onnx raises InferenceError, or ValueError past 2 GB
        text = str(err)
        if "TypeInferenceError" not in text or "elem type differs" not in text:
            return
        where = text[text.find("(op_type:"):].split(")", 1)[0] + ")" if "(op_type:" in text \
            else ""
        detail = text[text.find("Inferred elem type"):].splitlines()[0]
        detail = re.sub(r"\((\d+)\)", lambda m: _type_name(int(m.group(1))), detail)
        raise InputError(
            f"{path}: a type annotation contradicts the model's own operators {where}: {detail} "
            "(ONNX Runtime refuses it too)",
            hint="re-export the model; its value_info/output types are wrong",
        ) from None
