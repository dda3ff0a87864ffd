"""LayerNormalization and RMSNormalization for every axis, with LayerNorm's optional outputs.

- ``LayerNormalization`` (opset 17) normalizes over the axes ``[axis, rank)`` and has three
  outputs: ``Y``, and the ``Mean`` and ``InvStdDev`` it used, of shape ``X.shape[:axis]``
  followed by ones. TVM's converter returned 0-d placeholders for the last two (a wrong
  result when a model uses them). With only ``Y`` asked for, and ``Scale``/``B`` of the
  normalized shape, it stays Relax's fused ``layer_norm``; otherwise it is written out.
- ``RMSNormalization`` (opset 23): ``X / sqrt(mean(X², axes) + epsilon) * Scale`` over
  ``[axis, rank)``; TVM's ``rms_norm`` failed to build for ``axis`` 0.

Both compute in float32 for a float16/bfloat16 input when ``stash_type`` is 1 (the default),
as the spec says, and return the input's dtype.
"""

from __future__ import annotations

from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register


def _shape(expr) -> list[int] | None:
    shape = getattr(expr.ty, "shape", None)
    if not isinstance(shape, relax.ShapeExpr):
        return None
    try:
        return [int(d) for d in shape.values]
    except TypeError:
        return None


def _rank(expr) -> int:
    return int(expr.ty.ndim)


def _compute_dtype(dtype: str, stash_type: int) -> str:
    return "float32" if stash_type == 1 and dtype in ("float16", "bfloat16") else dtype


@register("LayerNormalization")
class LayerNormalization(onnx_frontend.OnnxOpConverter):
    @classmethod
    def _impl_v17(cls, bb, inputs, attr, params):
        x, scale = inputs[0], inputs[1]
        bias = inputs[2] if len(inputs) > 2 else None
        rank = _rank(x)
        axis = int(attr.get("axis", -1))
        axis = axis + rank if axis < 0 else axis
        eps = float(attr.get("epsilon", 1e-5))
        dtype = str(x.ty.dtype)
        cdt = _compute_dtype(dtype, int(attr.get("stash_type", 1)))
        axes = list(range(axis, rank))
        n_out = int(attr["tvm_custom"]["num_outputs"])
        x_shape = _shape(x)
        norm_shape = x_shape[axis:] if x_shape is not None else None
        fused = (
            n_out == 1
            and cdt == dtype
            and norm_shape is not None
            and _shape(scale) == norm_shape
            and (bias is None or _shape(bias) == norm_shape)
        )
        if fused:
            if bias is None:
                bias = relax.op.zeros_like(scale)
            return relax.op.nn.layer_norm(x, scale, bias, axes, eps)
        xc = relax.op.astype(x, cdt) if cdt != dtype else x
        mean = bb.normalize(relax.op.mean(xc, axes, keepdims=True))
        centered = bb.normalize(relax.op.subtract(xc, mean))
        var = relax.op.mean(relax.op.multiply(centered, centered), axes, keepdims=True)
        inv = bb.normalize(relax.op.rsqrt(relax.op.add(var, relax.const(eps, cdt))))
        y = relax.op.multiply(centered, inv)
        y = relax.op.multiply(y, relax.op.astype(scale, cdt) if cdt != dtype else scale)
        if bias is not None:
            y = relax.op.add(y, relax.op.astype(bias, cdt) if cdt != dtype else bias)
        if cdt != dtype:
            y = relax.op.astype(y, dtype)
        if n_out == 1:
            return y
        # Mean and InvStdDev are in the stash type (float32 by default).
        return relax.Tuple([bb.normalize(y), mean, inv])


@register("RMSNormalization")
class RMSNormalization(onnx_frontend.OnnxOpConverter):
    @classmethod
    def _impl_v23(cls, bb, inputs, attr, params):
        x, scale = inputs[0], inputs[1]
        rank = _rank(x)
        axis = int(attr.get("axis", -1))
        axis = axis + rank if axis < 0 else axis
        eps = float(attr.get("epsilon", 1e-5))
        dtype = str(x.ty.dtype)
        cdt = _compute_dtype(dtype, int(attr.get("stash_type", 1)))
        axes = list(range(axis, rank))
        xc = relax.op.astype(x, cdt) if cdt != dtype else x
        ms = relax.op.mean(relax.op.multiply(xc, xc), axes, keepdims=True)
        inv = relax.op.rsqrt(relax.op.add(ms, relax.const(eps, cdt)))
        y = relax.op.multiply(relax.op.multiply(xc, inv),
                              relax.op.astype(scale, cdt) if cdt != dtype else scale)
        return relax.op.astype(y, dtype) if cdt != dtype else y


@register("BatchNormalization")
class BatchNormalization(onnx_frontend.BatchNormalization):
    """``training_mode=1`` (opset 14+) normalizes with the batch's own mean and (population)
    variance over every axis but the channel axis 1, and returns the running statistics
    ``mean * momentum + batch_mean * (1 - momentum)`` (and the same for the variance) as its
    second and third outputs; TVM's converter used the given mean and variance instead.
    Inference mode is TVM's."""

    @classmethod
    def _impl_v15(cls, bb, inputs, attr, params):
        if not int(attr.get("training_mode", 0)):
            return onnx_frontend.BatchNormalization._impl_v15.__func__(
                cls, bb, inputs, attr, params
            )
        x, scale, bias, mean, var = inputs[:5]
        rank = _rank(x)
        eps = float(attr.get("epsilon", 1e-5))
        momentum = float(attr.get("momentum", 0.9))
        dtype = str(x.ty.dtype)
        axes = [a for a in range(rank) if a != 1]
        batch_mean = bb.normalize(relax.op.mean(x, axes, keepdims=True))
        centered = bb.normalize(relax.op.subtract(x, batch_mean))
        batch_var = bb.normalize(
            relax.op.mean(relax.op.multiply(centered, centered), axes, keepdims=True)
        )
        per_channel = [-1] + [1] * (rank - 2)
        y = relax.op.divide(
            centered, relax.op.sqrt(relax.op.add(batch_var, relax.const(eps, dtype)))
        )
        y = relax.op.add(
            relax.op.multiply(y, relax.op.reshape(scale, per_channel)),
            relax.op.reshape(bias, per_channel),
        )
        n_out = int(attr["tvm_custom"]["num_outputs"])
        if n_out == 1:
            return y

        def running(stat, batch):
            old = relax.op.multiply(stat, relax.const(momentum, dtype))
            new = relax.op.multiply(
                relax.op.reshape(batch, [-1]), relax.const(1.0 - momentum, dtype)
            )
            return bb.normalize(relax.op.add(old, new))

        outs = [bb.normalize(y), running(mean, batch_mean), running(var, batch_var)]
        return relax.Tuple(outs[:n_out])
