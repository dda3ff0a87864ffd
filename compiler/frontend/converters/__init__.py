"""tvmforge's own ONNX → Relax converters, for ops TVM's importer lacks or gets wrong.

A converter is a TVM ``OnnxOpConverter`` subclass (``_impl_vN(cls, bb, inputs, attr, params)``
methods, one per opset version) registered here with ``@register("OpType")``. During import,
``installed()`` extends the importer's converter map with ours (ours win on a name clash); no
installed TVM file is edited, and outside the ``with`` block TVM is left as it was.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from tvm.relax.frontend.onnx import onnx_frontend

CONVERTERS: dict[str, type[onnx_frontend.OnnxOpConverter]] = {}

_stock_map: Callable[[], dict] = onnx_frontend._get_convert_map
_lock = threading.RLock()


def register(op_type: str):
    """Class decorator: make ``cls`` the converter for ONNX ``op_type``."""

    def deco(cls):
        CONVERTERS[op_type] = cls
        return cls

    return deco


def convert_map() -> dict:
    """TVM's converter map extended with tvmforge's converters."""
    return {**_stock_map(), **CONVERTERS}


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Make TVM's ONNX importer use ``convert_map()`` inside the block."""
    _load_all()
    with _lock:
        onnx_frontend._get_convert_map = convert_map
        try:
            yield
        finally:
            onnx_frontend._get_convert_map = _stock_map


def supported_ops() -> frozenset[str]:
    _load_all()
    return frozenset(convert_map())


def _load_all() -> None:
    """Import every converter module (each registers itself on import)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
