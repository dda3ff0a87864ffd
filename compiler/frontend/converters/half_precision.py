"""float16/bfloat16 ``MatMul``, ``Softmax`` and ``LogSoftmax`` accumulate in float32.

TVM's kernels summed half-precision products and exponentials in half precision: up to 13
ulp off at an inner size of 256, where ONNX Runtime (CPU) and numpy accumulate in float32.
The inputs are widened inside the kernel (``matmul``'s ``out_dtype``; a cast that fuses into
the softmax) and the result rounded to the input's type once. Other dtypes are TVM's.
"""

from __future__ import annotations

from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register

_HALF = ("float16", "bfloat16")


def _half(expr) -> str | None:
    dtype = str(getattr(expr.ty, "dtype", ""))
    return dtype if dtype in _HALF else None


@register("MatMul")
class MatMul(onnx_frontend.MatMul):
    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        a, b = inputs[0], inputs[1]
        dtype = _half(a)
        if dtype is None or _half(b) != dtype:
            return onnx_frontend.MatMul._impl_v13.__func__(cls, bb, inputs, attr, params)
        return relax.op.astype(relax.op.matmul(a, b, out_dtype="float32"), dtype)


def _widened(base, impl: str, cls, bb, inputs, attr, params):
    x = inputs[0]
    dtype = _half(x)
    method = getattr(base, impl).__func__
    if dtype is None:
        return method(cls, bb, inputs, attr, params)
    wide = bb.normalize(relax.op.astype(x, "float32"))
    out = bb.normalize(method(cls, bb, [wide, *inputs[1:]], attr, params))
    return relax.op.astype(out, dtype)


@register("Softmax")
class Softmax(onnx_frontend.Softmax):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        return _widened(onnx_frontend.Softmax, "_impl_v1", cls, bb, inputs, attr, params)

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        return _widened(onnx_frontend.Softmax, "_impl_v13", cls, bb, inputs, attr, params)


@register("LogSoftmax")
class LogSoftmax(onnx_frontend.LogSoftmax):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        return _widened(onnx_frontend.LogSoftmax, "_impl_v1", cls, bb, inputs, attr, params)

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        return _widened(onnx_frontend.LogSoftmax, "_impl_v13", cls, bb, inputs, attr, params)
