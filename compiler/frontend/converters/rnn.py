"""ONNX ``RNN``, ``GRU`` and ``LSTM`` → Relax, unrolled over the (static) sequence length.

TVM 0.27's ONNX importer has none of the three. tvmforge fixes every input shape before import,
so the sequence length ``T`` is known and the recurrence is unrolled into ``T`` steps per
direction. The input projection of all steps and directions is one matmul,
``X[T*B, I] · W[nd*G*H, I]ᵀ + bias``; each step then adds one ``H[t-1] · R[d]ᵀ`` matmul and the
element-wise gate maths (which FuseOps fuses). The maths, as in the ONNX spec (``f``, ``g``,
``h`` are the ``activations``; every pre-activation is clipped to ``[-clip, clip]`` when
``clip`` is set)::

    RNN   H = f(Xt·Wᵀ + H·Rᵀ + Wb + Rb)
    GRU   z = f(Xt·Wzᵀ + H·Rzᵀ + Wbz + Rbz)            gates in W, R, B: z, r, h
          r = f(Xt·Wrᵀ + H·Rrᵀ + Wbr + Rbr)
          n = g(Xt·Whᵀ + (r ⊙ H)·Rhᵀ + Rbh + Wbh)      linear_before_reset = 0
          n = g(Xt·Whᵀ + r ⊙ (H·Rhᵀ + Rbh) + Wbh)      linear_before_reset ≠ 0
          H = (1 - z) ⊙ n + z ⊙ H
    LSTM  i = f(Xt·Wiᵀ + H·Riᵀ + Pi ⊙ C + Wbi + Rbi)   gates in W, R, B: i, o, f, c; P: i, o, f
          f = f(Xt·Wfᵀ + H·Rfᵀ + Pf ⊙ C + Wbf + Rbf)   (f = 1 - i when input_forget ≠ 0)
          c = g(Xt·Wcᵀ + H·Rcᵀ + Wbc + Rbc)
          C = f ⊙ C + i ⊙ c
          o = f(Xt·Woᵀ + H·Roᵀ + Po ⊙ C + Wbo + Rbo)
          H = o ⊙ h(C)

The reverse direction runs from ``t = T-1`` down to 0 and writes ``Y`` in the original time
order. ``layout = 1`` (opset 14) only transposes X, the initial states and the outputs.

Not supported: a ``sequence_lens`` that is computed at run time or shorter than ``T`` for some
batch entry (per-sequence masking); the converter raises ``NotImplementedError`` naming the op
and node. Weights need not be constants.

``activation_alpha`` / ``activation_beta`` are consumed in order by the activations that take
them (over both directions), as ONNX Runtime does; a missing value takes the ONNX default of
the matching operator (LeakyRelu 0.01, ThresholdedRelu 1.0, HardSigmoid 0.2 / 0.5, Elu 1.0) and
1.0 / 0.0 for ScaledTanh and Affine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter, get_constant

from tvmforge.errors import InputError
from tvmforge.frontend.converters import register

Activation = Callable[[relax.Expr], relax.Expr]


@dataclass(frozen=True)
class _ActivationKind:
    """An ONNX RNN activation: which of alpha / beta it takes, their defaults, its maths."""

    uses_alpha: bool
    uses_beta: bool
    alpha: float
    beta: float
    build: Callable[[relax.Expr, float, float, str], relax.Expr]


def _const(value: float, dtype: str) -> relax.Expr:
    return relax.const(value, dtype)


def _thresholded_relu(x, alpha, _beta, dtype):
    zero = _const(0.0, dtype)
    return relax.op.where(relax.op.greater(x, _const(alpha, dtype)), x, zero)


def _elu(x, alpha, _beta, dtype):
    neg = relax.op.multiply(
        _const(alpha, dtype), relax.op.subtract(relax.op.exp(x), _const(1.0, dtype))
    )
    return relax.op.where(relax.op.greater_equal(x, _const(0.0, dtype)), x, neg)


_ACTIVATIONS: dict[str, _ActivationKind] = {
    "sigmoid": _ActivationKind(False, False, 0.0, 0.0, lambda x, a, b, t: relax.op.sigmoid(x)),
    "tanh": _ActivationKind(False, False, 0.0, 0.0, lambda x, a, b, t: relax.op.tanh(x)),
    "relu": _ActivationKind(False, False, 0.0, 0.0, lambda x, a, b, t: relax.op.nn.relu(x)),
    "leakyrelu": _ActivationKind(
        True, False, 0.01, 0.0, lambda x, a, b, t: relax.op.nn.leakyrelu(x, a)
    ),
    "thresholdedrelu": _ActivationKind(True, False, 1.0, 0.0, _thresholded_relu),
    "scaledtanh": _ActivationKind(
        True,
        True,
        1.0,
        1.0,
        lambda x, a, b, t: relax.op.multiply(
            _const(a, t), relax.op.tanh(relax.op.multiply(_const(b, t), x))
        ),
    ),
    "hardsigmoid": _ActivationKind(
        True,
        True,
        0.2,
        0.5,
        lambda x, a, b, t: relax.op.clip(
            relax.op.add(relax.op.multiply(_const(a, t), x), _const(b, t)), 0.0, 1.0
        ),
    ),
    "elu": _ActivationKind(True, False, 1.0, 0.0, _elu),
    "softsign": _ActivationKind(
        False,
        False,
        0.0,
        0.0,
        lambda x, a, b, t: relax.op.divide(x, relax.op.add(_const(1.0, t), relax.op.abs(x))),
    ),
    "softplus": _ActivationKind(
        False,
        False,
        0.0,
        0.0,
        lambda x, a, b, t: relax.op.log(relax.op.add(_const(1.0, t), relax.op.exp(x))),
    ),
    "affine": _ActivationKind(
        True,
        True,
        1.0,
        0.0,
        lambda x, a, b, t: relax.op.add(relax.op.multiply(_const(a, t), x), _const(b, t)),
    ),
}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _activations(
    where: str, names: Sequence[str], alphas: Sequence[float], betas: Sequence[float], dtype: str
) -> list[Activation]:
    """One callable per name; alphas/betas are consumed in order by the functions using them."""
    alpha_iter, beta_iter = iter(alphas), iter(betas)
    out: list[Activation] = []
    for name in names:
        kind = _ACTIVATIONS.get(name.lower())
        if kind is None:
            known = ", ".join(sorted(_ACTIVATIONS))
            raise NotImplementedError(f"{where}: activation {name!r} is not supported ({known})")
        alpha = next(alpha_iter, kind.alpha) if kind.uses_alpha else kind.alpha
        beta = next(beta_iter, kind.beta) if kind.uses_beta else kind.beta
        out.append(lambda x, k=kind, a=float(alpha), b=float(beta): k.build(x, a, b, dtype))
    return out


@dataclass
class _Direction:
    """Per-direction operands, already shaped for a step: weights transposed, biases 2-D."""

    reverse: bool
    r_t: relax.Expr  # [H, G*H]  (GRU with linear_before_reset = 0: [H, 2H], rh_t holds the rest)
    h0: relax.Expr  # [B, H]
    acts: list[Activation]
    rh_t: relax.Expr | None = None  # GRU, linear_before_reset = 0: [H, H]
    rbh: relax.Expr | None = None  # GRU, linear_before_reset != 0: [1, H]
    c0: relax.Expr | None = None  # LSTM: [B, H]
    peep: tuple[relax.Expr, relax.Expr, relax.Expr] | None = None  # LSTM: Pi, Po, Pf [1, H]


class _Recurrent(OnnxOpConverter):
    """Shared import of RNN / GRU / LSTM; subclasses give the gate count and the step."""

    op: str = ""
    gates: int = 1
    default_activations: tuple[str, ...] = ()
    outputs: int = 2

    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        return cls._convert(bb, inputs, attr, params, layout=0)

    @classmethod
    def _impl_v14(cls, bb, inputs, attr, params):
        return cls._convert(bb, inputs, attr, params, layout=int(attr.get("layout", 0)))

    # -- the import ---------------------------------------------------------------------------

    @classmethod
    def _convert(cls, bb: relax.BlockBuilder, inputs, attr: dict, params, layout: int):
        name = attr.get("tvm_custom", {}).get("name")
        where = f"{cls.op} node {name!r}" if name else f"{cls.op} node (unnamed)"
        x, r, b = inputs[0], inputs[2], inputs[3]
        dtype = str(x.ty.dtype)
        shape = _static_shape(x, where, "X")
        if len(shape) != 3:  # what ONNX Runtime refuses at run time, refused at compile time
            raise InputError(
                f"{where}: input X has shape {shape}; {cls.op} takes rank 3 "
                "([seq, batch, input], or [batch, seq, input] with layout 1)",
                hint="the input shapes or --freeze values given lead the model to an "
                "{op} it cannot run: check --input-shape and --freeze".replace("{op}", cls.op),
            )
        if layout not in (0, 1):
            raise NotImplementedError(f"{where}: layout {layout} is not 0 or 1")
        if layout == 1:
            batch, seq, _ = shape
            x = bb.emit(relax.op.permute_dims(x, [1, 0, 2]))
        else:
            seq, batch, _ = shape
        hidden = int(attr.get("hidden_size", 0)) or _static_shape(r, where, "R")[2]
        direction = _text(attr.get("direction", b"forward"))
        if direction not in ("forward", "reverse", "bidirectional"):
            raise NotImplementedError(f"{where}: unknown direction {direction!r}")
        nd = 2 if direction == "bidirectional" else 1
        gh = cls.gates * hidden
        clip = attr.get("clip")
        clip = float(clip) if clip is not None else None
        _check_sequence_lens(inputs[4], params, seq, where)

        names = [_text(a) for a in attr.get("activations", ())] or list(cls.default_activations)
        per_dir = len(cls.default_activations)
        if len(names) == per_dir and nd == 2:
            names = names * 2
        if len(names) != per_dir * nd:
            raise NotImplementedError(
                f"{where}: {len(names)} activations given, {per_dir * nd} expected "
                f"({per_dir} per direction)"
            )
        acts = _activations(
            where,
            names,
            attr.get("activation_alpha", ()),
            attr.get("activation_beta", ()),
            dtype,
        )

        # Biases: ``proj_bias`` goes into the input projection; GRU with linear_before_reset
        # keeps Rbh apart (it is multiplied by r).
        lbr = cls.op == "GRU" and int(attr.get("linear_before_reset", 0)) != 0
        rbh_all = None
        proj_bias = None
        if b is not None:
            wb, rb = _split(bb, b, [gh], axis=1)  # [nd, G*H] each
            if lbr:
                rb_zr, rbh_all = _split(bb, rb, [2 * hidden], axis=1)
                zeros = relax.const(np.zeros((nd, hidden), dtype), dtype)
                rb = _concat(bb, [rb_zr, zeros], axis=1)
            proj_bias = _reshape(bb, _add(bb, wb, rb), [nd * gh])

        # X·Wᵀ for every step and direction at once, then one [B, G*H] slice per (d, t).
        x2d = relax.op.reshape(x, [seq * batch, shape[2]])
        proj = cls._project_inputs(bb, x2d, inputs, nd * gh, shape[2])
        if proj_bias is not None:
            proj = relax.op.add(proj, proj_bias)
        proj = relax.op.reshape(proj, [seq, batch, nd, gh])
        proj = relax.op.permute_dims(proj, [2, 0, 1, 3])  # [nd, T, B, G*H]
        proj = bb.emit(relax.op.reshape(proj, [nd * seq, batch, gh]))
        steps = _split(bb, proj, nd * seq, axis=0)
        xp = [
            [bb.emit(relax.op.reshape(steps[d * seq + t], [batch, gh])) for t in range(seq)]
            for d in range(nd)
        ]

        dirs = cls._directions(
            bb, inputs, attr, layout, nd, batch, hidden, dtype, direction, acts, rbh_all
        )
        ys: list[list[relax.Expr]] = [[None] * seq for _ in range(nd)]  # type: ignore[list-item]
        last_h: list[relax.Expr] = []
        last_c: list[relax.Expr] = []
        for d, dr in enumerate(dirs):
            h, c = dr.h0, dr.c0
            order = range(seq - 1, -1, -1) if dr.reverse else range(seq)
            for t in order:
                h, c = cls._step(bb, xp[d][t], h, c, dr, hidden, clip, attr, dtype)
                ys[d][t] = h
            last_h.append(h)
            last_c.append(c)

        y = relax.op.concat([ys[d][t] for t in range(seq) for d in range(nd)], axis=0)
        y = relax.op.reshape(y, [seq, nd, batch, hidden])
        if layout == 1:
            y = relax.op.permute_dims(y, [2, 0, 1, 3])
        results = [bb.emit(y), _final_state(bb, last_h, nd, batch, hidden, layout)]
        if cls.outputs == 3:
            results.append(_final_state(bb, last_c, nd, batch, hidden, layout))
        return relax.Tuple(results)

    @classmethod
    def _project_inputs(cls, bb, x2d: relax.Expr, inputs, rows: int, input_size: int):
        """``X·Wᵀ`` of all steps and directions: ``x2d`` is ``[T*B, I]``, ``W`` (``inputs[1]``)
        holds ``rows = nd*G*H`` rows; the result is ``[T*B, rows]``. A hook for variants whose
        W is stored differently (the quantized LSTM)."""
        w_t = relax.op.permute_dims(relax.op.reshape(inputs[1], [rows, input_size]), [1, 0])
        return relax.op.matmul(x2d, w_t)

    @classmethod
    def _recur(cls, bb, h: relax.Expr, dr: _Direction) -> relax.Expr:
        """``H[t-1]·Rᵀ`` of one step (``[B, G*H]``); a hook like ``_project_inputs``."""
        return relax.op.matmul(h, dr.r_t)

    @classmethod
    def _directions(
        cls, bb, inputs, attr, layout, nd, batch, hidden, dtype, direction, acts, rbh_all
    ) -> list[_Direction]:
        per_dir = len(cls.default_activations)
        gh = cls.gates * hidden
        rs = _per_direction(bb, inputs[2], nd, [gh, hidden])
        h0s = _initial_states(bb, inputs[5], nd, batch, hidden, dtype, layout)
        rbhs = _per_direction(bb, rbh_all, nd, [1, hidden]) if rbh_all is not None else None
        c0s = peeps = None
        if cls.op == "LSTM":
            c0s = _initial_states(bb, inputs[6], nd, batch, hidden, dtype, layout)
            if inputs[7] is not None:
                peeps = [
                    tuple(_split(bb, p, 3, axis=1))
                    for p in _per_direction(bb, inputs[7], nd, [1, 3 * hidden])
                ]
        lbr = int(attr.get("linear_before_reset", 0)) != 0
        out = []
        for d in range(nd):
            r_d = rs[d]
            rh_t = None
            if cls.op == "GRU" and not lbr:
                r_zr, r_h = _split(bb, r_d, [2 * hidden], axis=0)
                r_d = r_zr
                rh_t = _transpose(bb, r_h, [1, 0])
            out.append(
                _Direction(
                    reverse=direction == "reverse" or d == 1,
                    r_t=_transpose(bb, r_d, [1, 0]),
                    h0=h0s[d],
                    acts=acts[d * per_dir : (d + 1) * per_dir],
                    rh_t=rh_t,
                    rbh=rbhs[d] if rbhs is not None else None,
                    c0=c0s[d] if c0s is not None else None,
                    peep=peeps[d] if peeps is not None else None,  # type: ignore[arg-type]
                )
            )
        return out

    @classmethod
    def _step(cls, bb, xp, h, c, dr: _Direction, hidden, clip, attr, dtype):
        """One time step: return the new (H, C); C is None for RNN and GRU."""
        raise NotImplementedError


def _clipped(x: relax.Expr, clip: float | None) -> relax.Expr:
    return x if clip is None else relax.op.clip(x, -clip, clip)


@register("RNN")
class RNN(_Recurrent):
    """ONNX RNN (simple recurrence, one gate)."""

    op = "RNN"
    gates = 1
    default_activations = ("Tanh",)

    @classmethod
    def _step(cls, bb, xp, h, c, dr, hidden, clip, attr, dtype):
        pre = relax.op.add(xp, relax.op.matmul(h, dr.r_t))
        return bb.emit(dr.acts[0](_clipped(pre, clip))), None


@register("GRU")
class GRU(_Recurrent):
    """ONNX GRU (gates z, r, h), ``linear_before_reset`` 0 and 1."""

    op = "GRU"
    gates = 3
    default_activations = ("Sigmoid", "Tanh")

    @classmethod
    def _step(cls, bb, xp, h, c, dr, hidden, clip, attr, dtype):
        f, g = dr.acts
        xz, xr, xh = _split(bb, xp, 3, axis=1)
        hr_all = bb.emit(relax.op.matmul(h, dr.r_t))
        if dr.rh_t is None:  # linear_before_reset: H·Rᵀ covers all three gates
            hz, hr, hh = _split(bb, hr_all, 3, axis=1)
        else:
            hz, hr = _split(bb, hr_all, 2, axis=1)
        z = bb.emit(f(_clipped(relax.op.add(xz, hz), clip)))
        r = bb.emit(f(_clipped(relax.op.add(xr, hr), clip)))
        if dr.rh_t is None:
            if dr.rbh is not None:
                hh = relax.op.add(hh, dr.rbh)
            pre = relax.op.add(xh, relax.op.multiply(r, hh))
        else:
            pre = relax.op.add(xh, relax.op.matmul(bb.emit(relax.op.multiply(r, h)), dr.rh_t))
        n = bb.emit(g(_clipped(pre, clip)))
        one_minus_z = relax.op.subtract(relax.const(1.0, dtype), z)
        h = bb.emit(relax.op.add(relax.op.multiply(one_minus_z, n), relax.op.multiply(z, h)))
        return h, None


@register("LSTM")
class LSTM(_Recurrent):
    """ONNX LSTM (gates i, o, f, c), with peepholes, ``input_forget`` and three outputs."""

    op = "LSTM"
    gates = 4
    default_activations = ("Sigmoid", "Tanh", "Tanh")
    outputs = 3

    @classmethod
    def _step(cls, bb, xp, h, c, dr, hidden, clip, attr, dtype):
        f, g, act_h = dr.acts
        gates = bb.emit(relax.op.add(xp, cls._recur(bb, h, dr)))
        gi, go, gf, gc = _split(bb, gates, 4, axis=1)
        if dr.peep is not None:
            pi, _, pf = dr.peep  # Po multiplies the new C, below
            gi = relax.op.add(gi, relax.op.multiply(pi, c))
            gf = relax.op.add(gf, relax.op.multiply(pf, c))
        i = bb.emit(f(_clipped(gi, clip)))
        if int(attr.get("input_forget", 0)) != 0:
            forget = relax.op.subtract(relax.const(1.0, dtype), i)
        else:
            forget = f(_clipped(gf, clip))
        cell = g(_clipped(gc, clip))
        c = bb.emit(relax.op.add(relax.op.multiply(forget, c), relax.op.multiply(i, cell)))
        if dr.peep is not None:
            go = relax.op.add(go, relax.op.multiply(dr.peep[1], c))  # Po ⊙ C (the new C)
        o = f(_clipped(go, clip))
        return bb.emit(relax.op.multiply(o, act_h(c))), c


# -- helpers ----------------------------------------------------------------------------------


def _static_shape(expr: relax.Expr, where: str, what: str) -> list[int]:
    ty = expr.ty
    shape = getattr(ty, "shape", None)
    values = getattr(shape, "values", None)
    if values is None or any(not isinstance(v, tvm.tirx.IntImm) for v in values):
        raise NotImplementedError(
            f"{where}: input {what} needs a static shape (got {ty}); fix the model's input "
            "shapes before import"
        )
    return [int(v) for v in values]


def _check_sequence_lens(seq_lens, params, seq: int, where: str) -> None:
    """Accept only an absent ``sequence_lens`` or a constant equal to ``seq`` everywhere."""
    if seq_lens is None:
        return
    seq_lens = get_constant(seq_lens, params)
    if not isinstance(seq_lens, tvm.ir.GenericConst):
        raise NotImplementedError(
            f"{where}: sequence_lens is computed at run time; only an absent sequence_lens or a "
            f"constant equal to the sequence length ({seq}) for every batch entry is supported"
        )
    lens = seq_lens.value.numpy().reshape(-1)
    if not np.all(lens == seq):
        raise NotImplementedError(
            f"{where}: sequence_lens {lens.tolist()} is shorter than the sequence length ({seq}) "
            "for some batch entries; per-sequence lengths are not supported"
        )


# Weights, biases and peepholes are usually constants: these helpers slice and shape them in
# numpy at import time. FoldConstant would not (it leaves a split's tuple items alone), so each
# direction's Rᵀ would otherwise be computed at run time.


def _numpy(x: relax.Expr) -> np.ndarray | None:
    return x.value.numpy() if isinstance(x, tvm.ir.GenericConst) else None


def _reshape(bb, x: relax.Expr, shape: list[int]) -> relax.Expr:
    if (a := _numpy(x)) is not None:
        return relax.const(a.reshape(shape))
    return bb.emit(relax.op.reshape(x, shape))


def _transpose(bb, x: relax.Expr, axes: list[int]) -> relax.Expr:
    if (a := _numpy(x)) is not None:
        return relax.const(np.ascontiguousarray(a.transpose(axes)))
    return bb.emit(relax.op.permute_dims(x, axes))


def _add(bb, x: relax.Expr, y: relax.Expr) -> relax.Expr:
    if (a := _numpy(x)) is not None and (b := _numpy(y)) is not None:
        return relax.const(a + b)
    return bb.emit(relax.op.add(x, y))


def _concat(bb, xs: list[relax.Expr], axis: int) -> relax.Expr:
    arrays = [_numpy(x) for x in xs]
    if all(a is not None for a in arrays):
        return relax.const(np.concatenate(arrays, axis=axis))
    return bb.emit(relax.op.concat(xs, axis=axis))


def _split(bb, x: relax.Expr, sections: int | list[int], axis: int) -> list[relax.Expr]:
    """``relax.op.split`` bound and unpacked into its parts (one part: ``x`` itself)."""
    if sections == 1:
        return [x]
    if (a := _numpy(x)) is not None:
        return [relax.const(np.ascontiguousarray(p)) for p in np.split(a, sections, axis=axis)]
    parts = bb.emit(relax.op.split(x, sections, axis=axis))
    count = sections if isinstance(sections, int) else len(sections) + 1
    return [bb.emit(relax.TupleGetItem(parts, i)) for i in range(count)]


def _per_direction(bb, x: relax.Expr, nd: int, shape: list[int]) -> list[relax.Expr]:
    """Split ``x`` on axis 0 into ``nd`` parts, each reshaped to ``shape``."""
    return [_reshape(bb, part, shape) for part in _split(bb, x, nd, axis=0)]


def _initial_states(bb, state, nd, batch, hidden, dtype, layout) -> list[relax.Expr]:
    if state is None:
        zeros = relax.const(np.zeros((batch, hidden), dtype), dtype)
        return [zeros] * nd
    if layout == 1:  # [B, nd, H] → [nd, B, H]
        state = bb.emit(relax.op.permute_dims(state, [1, 0, 2]))
    return _per_direction(bb, state, nd, [batch, hidden])


def _final_state(bb, states, nd, batch, hidden, layout) -> relax.Expr:
    out = relax.op.reshape(relax.op.concat(states, axis=0), [nd, batch, hidden])
    if layout == 1:
        out = relax.op.permute_dims(out, [1, 0, 2])
    return bb.emit(out)
