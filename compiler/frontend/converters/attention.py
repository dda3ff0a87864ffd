"""The ONNX transformer ops of opset 23+: ``Attention`` and ``RotaryEmbedding``.

``Attention`` (opset 23, 24; the window attributes of 25 too) is scaled dot-product attention
on ``Q``, ``K``, ``V``, either 4-D ``[batch, heads, seq, head_size]`` or 3-D
``[batch, seq, heads * head_size]`` with the ``q_num_heads``/``kv_num_heads`` attributes. As
the spec (and its reference, ``onnx/reference/ops/op_attention.py``) has it:

- ``Q`` and ``K`` are each scaled by ``sqrt(scale)`` (``scale`` defaults to
  ``1/sqrt(head_size)``; the factor is rounded to the input type first);
- ``past_key``/``past_value`` are concatenated in front of ``K``/``V`` along the sequence axis
  and returned as ``present_key``/``present_value``;
- grouped-query attention (``kv heads < q heads``, ``q heads % kv heads == 0``) repeats each KV
  head ``q/kv`` times (``[h0, h0, h1, h1, ...]``);
- ``softcap > 0`` maps the scores to ``softcap * tanh(scores / softcap)`` before the bias;
- the additive bias is the sum of: ``attn_mask`` (boolean: ``True`` attends, ``False`` adds
  ``-inf``; otherwise added as is; any rank that broadcasts to ``[B, Hq, Sq, Skv]``; a last
  axis shorter than ``Skv`` is padded with ``-inf``/``False``), the causal mask of
  ``is_causal`` (bottom-right aligned: query ``i`` attends key ``j`` iff ``j <= i + offset``,
  ``offset`` = past length, or ``nonpad_kv_seqlen[b] - Sq`` per batch for an external cache),
  the sliding window of ``left_window_size``/``right_window_size`` (opset 25, same offset),
  and the padding mask of ``nonpad_kv_seqlen`` (opset 24: keys ``j >= nonpad[b]`` add
  ``-inf``);
- the softmax runs in ``softmax_precision`` when given (but never narrower than fp32 for
  16-bit inputs, see below); an all ``-inf`` row of scores
  softmaxes to zeros (not NaN), and a query row whose *bias* is all ``-inf`` (no key allowed)
  gives a zero row in ``Y`` and in the mode-3 ``qk_matmul_output``;
- ``qk_matmul_output`` is the raw ``Q K^T`` (mode 0), after softcap (1), after the bias (2) or
  the (guarded) softmax (3), always of the input type.

fp16/bf16 inputs are computed in fp32 (the scaled Q and K, both matmuls, the bias, the
softmax) and rounded to the input type at the outputs, as ONNX Runtime's CPU kernel does: within
an fp16 ulp of the reference, which rounds at every step. A ``softmax_precision`` narrower than
that fp32 compute type is computed in fp32 too (it only differs in being more exact).

The com.microsoft ``Attention`` (a different op of the same name: ``input``, ``weights``,
``bias`` and a ``num_heads`` attribute) is told apart by its ``num_heads`` attribute, which the
ONNX op does not have, and stays TVM's converter.

``RotaryEmbedding`` (opset 23) rotates ``X`` (4-D ``[B, H, S, D]`` or 3-D ``[B, S, H * D]``
with ``num_heads``) by the ``cos_cache``/``sin_cache`` angles, gathered by ``position_ids``
(``[B, S]``; indices checked at run time) or given per token (``[B, S, r/2]``), over the first
``rotary_embedding_dim`` (``r``, default ``D``) features, as halves or, with ``interleaved``,
as even/odd pairs; the rest pass through.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.errors import CompileError
from tvmforge.frontend.converters import register
from tvmforge.frontend.converters.checked_gather import CheckedGather

# ONNX TensorProto element types a ``softmax_precision`` may name.
_PRECISIONS = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}
_FLOATS = ("float16", "bfloat16", "float32", "float64")
_WIDTH = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}


def _name(attr) -> str:
    return attr.get("tvm_custom", {}).get("name", "") or "<unnamed>"


def _fail(attr, op: str, what: str, hint: str) -> CompileError:
    return CompileError(f"node {_name(attr)} ({op}): {what} is not supported", hint=hint)


def _dims(expr: relax.Expr) -> list:
    """The shape of ``expr``: Python ints for static dims, PrimExprs for symbolic ones."""
    shape = expr.ty.shape
    if not isinstance(shape, relax.ShapeExpr):
        raise TypeError("unknown shape")
    return [int(d) if isinstance(d, tvm.tirx.IntImm) else d for d in shape.values]


def _const(value, dtype: str) -> relax.Constant:
    return relax.const(value, dtype)


def _ninf(dtype: str) -> relax.Constant:
    return relax.const(-math.inf, dtype)


def _rounded(value: float, dtype: str) -> float:
    """``value`` rounded to ``dtype`` (as the reference's ``Q.dtype.type(value)``)."""
    if dtype in ("float16", "float32", "float64"):
        return float(np.array(value, dtype=dtype))
    if dtype == "bfloat16":
        bits = np.array(value, np.float32).view(np.uint32)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return float(np.array(bits, np.uint32).view(np.float32))
    return value


def _known_shapes(bb, inputs, attr, op: str) -> list:
    """The inputs normalized (``None`` kept); each a tensor whose rank and dims are known."""
    out = []
    for x in inputs:
        if x is not None:
            x = bb.normalize(x)
            ty = getattr(x, "ty", None)
            if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
                raise _fail(attr, op, "an input of unknown shape",
                            "give the model's inputs static (or named symbolic) shapes")
        out.append(x)
    return out


def _arange(bb, n) -> relax.Expr:
    """``[0, 1, ..., n - 1]`` as int64; ``n`` an int or a symbolic dim."""
    if isinstance(n, int):
        return relax.const(np.arange(n, dtype=np.int64), "int64")
    return bb.normalize(relax.op.arange(0, n, 1, "int64"))


def _all_neginf(bb, x: relax.Expr) -> relax.Expr:
    """``[..., 1]`` bools: whether each row of ``x`` (last axis) is all ``-inf``.

    Not ``max(x) == -inf``: TVM's max reduction starts from the lowest *finite* value
    (-3.4e38 for fp32), so the max of an all ``-inf`` row is finite. A row is counted instead:
    the max of ``x != -inf`` as 0/1 is 0 exactly when no entry is above ``-inf``.
    """
    x = bb.normalize(x)
    live = relax.op.astype(relax.op.not_equal(x, _ninf(str(x.ty.dtype))), "int32")
    return bb.normalize(
        relax.op.equal(relax.op.max(live, axis=-1, keepdims=True), relax.const(0, "int32"))
    )


@register("Attention")
class Attention(onnx_frontend.Attention):
    """ONNX ``Attention`` (opset 23+); com.microsoft ``Attention`` goes to TVM's converter."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        if "num_heads" in attr:  # com.microsoft Attention
            return onnx_frontend.Attention._impl_v1.__func__(cls, bb, inputs, attr, params)
        return cls._onnx(bb, inputs, attr)

    _impl_v23 = _impl_v1

    @classmethod
    def _onnx(cls, bb, inputs, attr):
        op = "Attention"
        q, k, v, mask, past_k, past_v, nonpad = _known_shapes(bb, inputs[:7], attr, op)
        dtype = str(q.ty.dtype)
        if dtype not in _FLOATS:
            raise _fail(attr, op, f"Q of type {dtype}", "feed Q, K, V as floating point")
        rank = q.ty.ndim
        if rank not in (3, 4) or k.ty.ndim != rank or v.ty.ndim != rank:
            raise _fail(attr, op, "Q, K, V not all 3-D or all 4-D",
                        "reshape Q, K, V to [batch, heads, seq, head_size]")
        if (past_k is None) != (past_v is None):
            raise _fail(attr, op, "past_key without past_value (or the reverse)",
                        "give both past_key and past_value, or neither")
        if nonpad is not None and past_k is not None:
            raise _fail(attr, op, "nonpad_kv_seqlen together with past_key/past_value",
                        "use either the internal cache (past_*) or nonpad_kv_seqlen")

        if rank == 3:
            hq, hkv = attr.get("q_num_heads"), attr.get("kv_num_heads")
            if not hq or not hkv:
                raise _fail(attr, op, "3-D Q, K, V without q_num_heads/kv_num_heads",
                            "set both head-count attributes, or feed 4-D Q, K, V")
            q, k, v = (cls._split_heads(bb, x, h, attr) for x, h in ((q, hq), (k, hkv), (v, hkv)))
        q_dims, k_dims = _dims(q), _dims(k)
        hq, hkv, head = q_dims[1], k_dims[1], q_dims[3]
        if not isinstance(head, int):
            raise _fail(attr, op, "a dynamic head size", "export the model with static Q/K dims")

        # 16-bit floats are computed in fp32 (each matmul, the bias and the softmax) and
        # rounded to the input type once, at the outputs.
        ct = "float32" if dtype in ("float16", "bfloat16") else dtype

        def compute(x):
            return x if str(x.ty.dtype) == ct else bb.normalize(relax.op.astype(x, ct))

        # Q * sqrt(scale), K * sqrt(scale), the factor rounded to the input type.
        scale = attr.get("scale")
        scale = 1.0 / math.sqrt(head) if scale is None else float(scale)
        factor = _const(_rounded(math.sqrt(scale), dtype), ct)

        present_k = k if past_k is None else bb.normalize(relax.op.concat([past_k, k], axis=2))
        present_v = v if past_v is None else bb.normalize(relax.op.concat([past_v, v], axis=2))
        sq, skv = q_dims[2], _dims(present_k)[2]

        bias = cls._bias(bb, attr, ct, mask, nonpad, past_k, sq, skv)

        k_all, v_all = present_k, present_v
        if not (isinstance(hq, int) and isinstance(hkv, int)) and not tvm.ir.structural_equal(
            hq, hkv
        ):
            raise _fail(attr, op, "dynamic head counts", "export the model with static heads")
        if isinstance(hq, int) and isinstance(hkv, int) and hq != hkv:
            if hq % hkv:
                raise _fail(attr, op, f"{hq} query heads over {hkv} key/value heads",
                            "q heads must be a multiple of kv heads")
            k_all = bb.normalize(relax.op.repeat(k_all, hq // hkv, axis=1))
            v_all = bb.normalize(relax.op.repeat(v_all, hq // hkv, axis=1))
        q = relax.op.multiply(compute(q), factor)
        k_all = relax.op.multiply(compute(k_all), factor)

        qk = bb.normalize(relax.op.matmul(q, relax.op.permute_dims(k_all, [0, 1, 3, 2])))
        raw_qk = qk
        softcap = float(attr.get("softcap", 0.0))
        if softcap > 0:
            cap = _const(softcap, ct)
            qk = bb.normalize(relax.op.multiply(relax.op.tanh(relax.op.divide(qk, cap)), cap))
        capped_qk = qk
        if bias is not None:
            qk = bb.normalize(relax.op.add(qk, bias))

        # The softmax runs in softmax_precision, or wider where the compute type is wider.
        precision = attr.get("softmax_precision")
        sm_dtype = ct
        if precision is not None:
            if int(precision) not in _PRECISIONS:
                raise _fail(attr, op, f"softmax_precision {precision}",
                            "use float, float16, double or bfloat16 (1, 10, 11, 16)")
            named = _PRECISIONS[int(precision)]
            if _WIDTH[named] > _WIDTH[ct] or (_WIDTH[named] < _WIDTH[ct] and ct == dtype):
                sm_dtype = named
        scores = qk if sm_dtype == ct else relax.op.astype(qk, sm_dtype)
        probs = cls._softmax(bb, scores, sm_dtype)
        if bias is not None:  # a row with no allowed key is a zero row, whatever the scores
            probs = relax.op.where(_all_neginf(bb, bias), _const(0, sm_dtype), probs)
        probs = bb.normalize(probs)
        if sm_dtype != ct:  # the reference rounds the probabilities to T1 before P @ V
            probs = bb.normalize(relax.op.astype(probs, dtype))

        y = bb.normalize(relax.op.matmul(compute(probs), compute(v_all)))
        if str(y.ty.dtype) != dtype:
            y = bb.normalize(relax.op.astype(y, dtype))
        if rank == 3:
            b, s = _dims(y)[0], _dims(y)[2]
            y = relax.op.reshape(bb.normalize(relax.op.permute_dims(y, [0, 2, 1, 3])), [b, s, -1])

        n_out = attr["tvm_custom"]["num_outputs"]
        if n_out == 1:
            return y
        mode = int(attr.get("qk_matmul_output_mode", 0))
        if mode not in (0, 1, 2, 3):
            raise _fail(attr, op, f"qk_matmul_output_mode {mode}", "use a mode of 0 to 3")
        qk_out = (raw_qk, capped_qk, qk, probs)[mode]
        if str(bb.normalize(qk_out).ty.dtype) != dtype:
            qk_out = relax.op.astype(qk_out, dtype)
        return relax.Tuple([y, present_k, present_v, qk_out][:n_out])

    @classmethod
    def _split_heads(cls, bb, x, heads: int, attr) -> relax.Expr:
        """``[B, S, heads * D]`` -> ``[B, heads, S, D]``."""
        b, s, hidden = _dims(x)
        if not isinstance(hidden, int) or hidden % heads:
            raise _fail(attr, "Attention", f"a hidden size of {hidden} over {heads} heads",
                        "the hidden size must be a multiple of the head count")
        x = relax.op.reshape(x, [b, s, heads, hidden // heads])
        return bb.normalize(relax.op.permute_dims(x, [0, 2, 1, 3]))

    @classmethod
    def _bias(cls, bb, attr, dtype, mask, nonpad, past_k, sq, skv):
        """The additive bias (0 / -inf / the float mask), or ``None`` when there is none."""
        op = "Attention"
        zero, ninf = _const(0, dtype), _ninf(dtype)
        if mask is not None:
            mdims = _dims(mask)
            if str(mask.ty.dtype) == "bool":
                mask = relax.op.where(mask, zero, ninf)
            elif str(mask.ty.dtype) != dtype:
                mask = relax.op.astype(mask, dtype)
            mask = bb.normalize(mask)
            # A last axis shorter than the keys is padded with -inf (False for a bool mask).
            if isinstance(skv, int) and isinstance(mdims[-1], int):
                pad = skv - mdims[-1]
            elif tvm.ir.structural_equal(skv, mdims[-1]):
                pad = 0
            else:
                raise _fail(attr, op, "an attn_mask whose last axis may differ from the keys'",
                            "export the model with static attn_mask and key lengths")
            if pad < 0:
                raise _fail(attr, op, "an attn_mask longer than the key sequence",
                            "give attn_mask a last axis of at most past + kv length")
            if pad:
                tail = relax.op.broadcast_to(ninf, [*mdims[:-1], pad])
                mask = bb.normalize(relax.op.concat([mask, tail], axis=-1))

        parts = [] if mask is None else [mask]
        offset = None  # the causal/window frontier: a scalar, or [B, 1, 1, 1] per batch
        is_causal = bool(attr.get("is_causal", 0))
        left = int(attr.get("left_window_size", -1))
        right = int(attr.get("right_window_size", -1))
        if left < -1 or right < -1:
            raise _fail(attr, op, f"window sizes {left}, {right}", "use -1 or a size >= 0")
        if is_causal or left >= 0 or right >= 0:
            if past_k is None and nonpad is not None:
                per_batch = relax.op.subtract(nonpad, relax.const(sq, "int64"))
                offset = relax.op.reshape(bb.normalize(per_batch), [-1, 1, 1, 1])
            else:
                past = 0 if past_k is None else _dims(past_k)[2]
                offset = relax.const(int(past), "int64")
            # diff[i, j] = i + offset - j
            i = bb.normalize(relax.op.expand_dims(_arange(bb, sq), 1))
            j = _arange(bb, skv)
            diff = bb.normalize(relax.op.subtract(relax.op.add(i, offset), j))
            allowed = []
            if is_causal:
                allowed.append(relax.op.greater_equal(diff, relax.const(0, "int64")))
            if left >= 0:
                allowed.append(relax.op.less_equal(diff, relax.const(left, "int64")))
            if right >= 0:
                allowed.append(relax.op.greater_equal(diff, relax.const(-right, "int64")))
            ok = allowed[0]
            for a in allowed[1:]:
                ok = relax.op.logical_and(ok, a)
            parts.append(bb.normalize(relax.op.where(ok, zero, ninf)))
        if nonpad is not None:
            keep = relax.op.less(_arange(bb, skv), relax.op.reshape(nonpad, [-1, 1, 1, 1]))
            parts.append(bb.normalize(relax.op.where(keep, zero, ninf)))
        if not parts:
            return None
        bias = parts[0]
        for p in parts[1:]:
            bias = relax.op.add(bias, p)
        return bb.normalize(bias)

    @classmethod
    def _softmax(cls, bb, x, dtype):
        """Softmax over the last axis that maps an all ``-inf`` row to zeros (not NaN)."""
        zero = _const(0, dtype)
        dead = _all_neginf(bb, x)
        probs = relax.op.nn.softmax(relax.op.where(dead, zero, x), axis=-1)
        return relax.op.where(dead, zero, probs)


@register("RotaryEmbedding")
class RotaryEmbedding(onnx_frontend.OnnxOpConverter):
    """ONNX ``RotaryEmbedding`` (opset 23)."""

    @classmethod
    def _impl_v23(cls, bb, inputs, attr, params):
        op = "RotaryEmbedding"
        x, cos, sin, pos = _known_shapes(bb, inputs[:4], attr, op)
        dims = _dims(x)
        interleaved = bool(attr.get("interleaved", 0))
        if len(dims) == 4:  # [B, H, S, D]: angles broadcast as [B, 1, S, r/2]
            head = dims[3]
            expand_axis = 1
        elif len(dims) == 3:  # [B, S, H * D] -> [B, S, H, D]: angles as [B, S, 1, r/2]
            heads = int(attr.get("num_heads", 0))
            if heads <= 0 or not isinstance(dims[2], int) or dims[2] % heads:
                raise _fail(attr, op, "3-D input without a num_heads that divides its last axis",
                            "set num_heads, or feed X as [batch, heads, seq, head_size]")
            head = dims[2] // heads
            x = relax.op.reshape(x, [dims[0], dims[1], heads, head])
            expand_axis = 2
        else:
            raise _fail(attr, op, f"a {len(dims)}-D input", "feed X as 3-D or 4-D")
        if not isinstance(head, int):
            raise _fail(attr, op, "a dynamic head size", "export the model with a static head")
        rot = int(attr.get("rotary_embedding_dim", 0)) or head
        if rot > head or rot % 2:
            raise _fail(attr, op, f"rotary_embedding_dim {rot} for head size {head}",
                        "use an even rotary_embedding_dim of at most the head size")

        if pos is not None:
            cos = CheckedGather._impl_v13(bb, [cos, pos], {"axis": 0}, None)
            sin = CheckedGather._impl_v13(bb, [sin, pos], {"axis": 0}, None)
        half = rot // 2
        cache_half = _dims(bb.normalize(cos))[-1]
        if isinstance(cache_half, int) and cache_half != half:
            raise _fail(attr, op, f"a cos/sin cache of width {cache_half} for rotation {rot}",
                        "the caches' last axis must be rotary_embedding_dim / 2")
        cos = bb.normalize(relax.op.expand_dims(cos, expand_axis))
        sin = bb.normalize(relax.op.expand_dims(sin, expand_axis))

        last = len(_dims(bb.normalize(x))) - 1
        if interleaved:
            x1 = relax.op.strided_slice(x, [last], [0], [rot], [2])
            x2 = relax.op.strided_slice(x, [last], [1], [rot], [2])
        else:
            x1 = relax.op.strided_slice(x, [last], [0], [half])
            x2 = relax.op.strided_slice(x, [last], [half], [rot])
        real = relax.op.subtract(relax.op.multiply(cos, x1), relax.op.multiply(sin, x2))
        imag = relax.op.add(relax.op.multiply(sin, x1), relax.op.multiply(cos, x2))
        if interleaved:
            pairs = relax.op.stack([real, imag], axis=-1)
            rotated = relax.op.reshape(pairs, [*_dims(bb.normalize(x1))[:-1], rot])
        else:
            rotated = relax.op.concat([real, imag], axis=-1)
        if rot < head:
            rest = relax.op.strided_slice(x, [last], [rot], [head])
            rotated = relax.op.concat([rotated, rest], axis=-1)
        if len(dims) == 3:
            rotated = relax.op.reshape(rotated, dims)
        return rotated
