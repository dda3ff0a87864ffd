"""``Constant`` in every form ONNX allows: ``value`` (a tensor), and since opset 12
``value_int``/``value_ints`` (int64 scalar/1-D) and ``value_float``/``value_floats`` (float32);
TVM's converter took only ``value``. String and sparse constants cannot be compiled (a string
tensor is refused earlier, by the importer's check of what it cannot compile).

``Unsqueeze``/``Squeeze`` take such a 0-d ``value_int`` as their ``axes`` too (ONNX asks for
1-D; ONNX Runtime and ONNX's own function bodies, AffineGrid's, use a scalar)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.errors import CompileError
from tvmforge.frontend.converters import register

_FORMS = {
    "value_int": np.int64,
    "value_ints": np.int64,
    "value_float": np.float32,
    "value_floats": np.float32,
}


@register("Constant")
class Constant(onnx_frontend.Constant):
    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        if "value" in attr:
            return onnx_frontend.Constant._impl_v13.__func__(cls, bb, inputs, attr, params)
        for name, dtype in _FORMS.items():
            if name in attr:
                value = np.asarray(attr[name], dtype=dtype)
                return relax.const(value, str(value.dtype))
        node = attr["tvm_custom"]["name"] or "(unnamed)"
        form = next((k for k in attr if k.startswith(("value", "sparse"))), "no value")
        raise CompileError(
            f"node {node} (Constant): a constant given as {form} cannot be compiled",
            hint="export it as a dense numeric tensor",
        )


def _axes_1d(inputs):
    """``inputs`` with a 0-d constant ``axes`` (what ``value_int`` makes; ONNX Runtime takes
    it) as a 1-D one."""
    if len(inputs) > 1 and isinstance(inputs[1], tvm.ir.GenericConst):
        value = inputs[1].value.numpy()
        if value.ndim == 0:
            inputs = [inputs[0], relax.const(value.reshape(1)), *inputs[2:]]
    return inputs


@register("Unsqueeze")
class Unsqueeze(onnx_frontend.Unsqueeze):
    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        return onnx_frontend.Unsqueeze._impl_v13.__func__(cls, bb, _axes_1d(inputs), attr, params)


@register("Squeeze")
class Squeeze(onnx_frontend.Squeeze):
    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        return onnx_frontend.Squeeze._impl_v13.__func__(cls, bb, _axes_1d(inputs), attr, params)
