"""Structural checks of an ONNX graph before anything imports it, each failure one line that
names the tensor or node: a graph whose nodes form a cycle, a node input nothing produces, an
output nothing produces, an unknown element type, an initializer whose data does not fill its
shape. (TVM's importer and ONNX Runtime fail on these with a bare name or a ``KeyError``.)"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto

from tvmforge.errors import InputError

__all__ = ["validate_graph"]

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
