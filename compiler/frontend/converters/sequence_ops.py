"""``Celu`` and ``ReverseSequence``, two opset-10/12 ops TVM's importer lacks.

- ``Celu(x) = max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``.
- ``ReverseSequence`` reverses the first ``sequence_lens[b]`` steps of every batch entry ``b``
  along ``time_axis`` (``batch_axis`` says which axis is ``b``) and copies the rest: what
  TensorFlow's bidirectional RNNs export. The lengths are run-time values; the result has the
  input's shape, so they need not be frozen: each output element reads
  ``t' = len[b] - 1 - t if t < len[b] else t``.
"""

from __future__ import annotations

from tvm import relax, te, tirx
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register


@register("Celu")
class Celu(onnx_frontend.OnnxOpConverter):
    @classmethod
    def _impl_v12(cls, bb, inputs, attr, params):
        x = inputs[0]
        dtype = str(x.ty.dtype)
        alpha = relax.const(float(attr.get("alpha", 1.0)), dtype)
        zero = relax.const(0.0, dtype)
        expm1 = relax.op.subtract(relax.op.exp(relax.op.divide(x, alpha)), relax.const(1.0, dtype))
        neg = relax.op.multiply(alpha, expm1)
        return relax.op.add(relax.op.maximum(x, zero), relax.op.minimum(neg, zero))


def _reverse(x, lens, batch_axis: int, time_axis: int):
    def fcompute(*index):
        b, t = index[batch_axis], tirx.Cast("int64", index[time_axis])
        n = tirx.Cast("int64", lens[b])
        src = tirx.Select(t < n, n - 1 - t, t)
        full = list(index)
        full[time_axis] = src
        return x[tuple(full)]

    return te.compute(x.shape, fcompute, name="reverse_sequence")


@register("ReverseSequence")
class ReverseSequence(onnx_frontend.OnnxOpConverter):
    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x, lens = inputs[0], inputs[1]
        batch_axis = int(attr.get("batch_axis", 1))
        time_axis = int(attr.get("time_axis", 0))
        return bb.emit_te(_reverse, x, lens, batch_axis, time_axis)
