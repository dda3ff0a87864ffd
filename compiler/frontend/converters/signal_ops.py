"""Signal-processing and other standard ONNX ops that TVM 0.27's importer lacks.

- ``HannWindow`` / ``HammingWindow`` / ``BlackmanWindow`` (opset 17): the generalized cosine
  window ``w[n] = a0 - a1·cos(2πn/N') + a2·cos(4πn/N')`` for ``n < size``, where ``N' = size``
  when ``periodic`` (the default) and ``size - 1`` otherwise; Hann ``(0.5, 0.5, 0)``, Hamming
  ``(25/46, 21/46, 0)``, Blackman ``(0.42, 0.5, 0.08)``. ``size`` must be a constant (tvmforge
  freezes it: ``value_inputs.SHAPE_VALUES``), so the window is a constant, computed at compile
  time in float64 and cast to ``output_datatype`` (float by default; an integer type
  truncates toward zero, as the reference does; a symmetric window of size 1 is NaN, as the
  spec's function body gives).
- ``MelWeightMatrix`` (opset 17): every input is a constant, so the
  ``[dft_length // 2 + 1, num_mel_bins]`` matrix is computed at compile time, with the ONNX
  reference's arithmetic (the mel edges in the inputs' float type, the bins floored in float64)
  and cast to ``output_datatype``. Bins that fall outside the matrix (an upper edge above the
  Nyquist frequency) are dropped.
- ``TensorScatter`` (opset 24): ``present = past_cache`` with ``update`` written at
  ``write_indices[b] + s`` (``mod max_sequence_length`` when ``mode = "circular"``) along
  ``axis`` for every batch entry ``b`` (axis 0 is the batch) and ``s < sequence_length``; one
  TE kernel that reads, per output element, either the cache or the update. Indices a linear
  write would put past the end are not written. ``axis`` must not be the batch axis 0.
- ``TfIdfVectorizer`` (opset 9), integer inputs ``[C]`` or ``[B, C]``: counts, per row, the
  n-grams of ``pool_int64s`` (``ngram_counts[i]`` is where the (i+1)-grams start) whose length
  lies in ``[min_gram_length, max_gram_length]``, taking the tokens ``skip + 1`` apart for every
  ``skip <= max_skip_count`` (unigrams once), and adds the count of pool n-gram ``j`` at output
  coordinate ``ngram_indexes[j]``. ``TF`` outputs the counts, ``IDF`` ``weights[o]`` (or 1)
  where the count is > 0, ``TFIDF`` ``count · weights[o]`` (or the count); like ONNX Runtime
  and the reference, the weights are indexed by output coordinate ``o``. Built from Relax ops:
  per (gram length, skip) one comparison of shifted slices of ``X`` with the pool, a sum over
  positions, and a one-hot matmul onto the output coordinates. ``pool_strings`` (string
  tensors) is refused: tvmforge does not compile string tensors.
- ``DeformConv`` (opset 19/22), N-D: the input is sampled per (input channel, kernel tap,
  output position) at ``o·stride - pad_begin + k·dilation + offset`` with multilinear
  interpolation (points outside the input read 0, the reference's GridSample with
  ``align_corners = 1`` and zero padding), scaled by ``mask`` (ones when absent); the sampled
  columns ``[N, C·K, P]`` then go through a grouped matmul with ``W`` and ``B`` is added.
  ``offset`` channels are ``(offset_group, *kernel, spatial dim)``, ``mask`` channels
  ``(offset_group, *kernel)``. float16/bfloat16 are computed in float32.
- ``DFT`` (opset 17 and 20) and ``STFT`` (opset 17) as matmuls with a constant twiddle matrix
  (computed in float64 at compile time): real (``[..., 1]``) or complex (``[..., 2]``) input,
  ``dft_length`` (zero-pad or crop), ``axis``, ``onesided`` (forward: the first
  ``L // 2 + 1`` bins; inverse: the one-sided spectrum of a real signal, as ``numpy.fft.irfft``)
  and ``inverse`` (scaled by ``1 / L``). STFT frames the signal ``[B, T, 1|2]`` with
  ``frame_step``, multiplies by ``window`` and transforms each frame. ``dft_length``, ``axis``,
  ``frame_step`` and ``frame_length`` must be constants (``value_inputs.SHAPE_VALUES``). The
  matmul is O(L²) per transform (no FFT), in float32 (float64 for double inputs; float16 and
  bfloat16 are computed in float32).
"""

from __future__ import annotations

import itertools

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter, get_constant, get_type

from tvmforge.errors import CompileError
from tvmforge.frontend.converters import register

# ----------------------------------------------------------------------------- helpers


def _name(attr: dict) -> str:
    custom = attr.get("tvm_custom") or {}
    return str(custom.get("name") or "?")


def _refuse(attr: dict, op: str, what: str, hint: str) -> CompileError:
    return CompileError(f"node {_name(attr)} ({op}): {what} is not supported", hint=hint)


def _str_attr(attr: dict, key: str, default: str) -> str:
    value = attr.get(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _shape(expr: relax.Expr, attr: dict, op: str) -> list[int]:
    """The static shape of ``expr``; a CompileError where a dim is only known at run time."""
    dims = getattr(expr.ty, "shape", None)
    try:
        return [int(d) for d in dims]
    except (TypeError, ValueError):
        raise _refuse(
            attr,
            op,
            f"an input of run-time shape {dims}",
            hint="give the model's inputs fixed shapes (--input-shape NAME=D1,D2,...)",
        ) from None


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype.dtype)


def _constant(expr, params, attr: dict, op: str, what: str) -> np.ndarray:
    """The value of a constant input, or a CompileError naming it."""
    expr = get_constant(expr, params)
    if not isinstance(expr, tvm.ir.GenericConst):
        raise _refuse(
            attr,
            op,
            f"{what} computed at run time",
            hint=f"give {what} as a constant (or --freeze the graph input it comes from)",
        )
    return expr.value.numpy()


def _given(inputs, k: int):
    return inputs[k] if len(inputs) > k and inputs[k] is not None else None


def _const_of(array: np.ndarray, dtype: str) -> relax.Expr:
    """``array`` as a Relax constant of ``dtype`` (via float32 where numpy lacks the type)."""
    try:
        with np.errstate(invalid="ignore"):
            return relax.const(np.asarray(array).astype(np.dtype(dtype)), dtype)
    except TypeError:
        return relax.op.astype(relax.const(np.asarray(array, np.float32), "float32"), dtype)


def _compute_dtype(dtype: str) -> str:
    return "float64" if dtype == "float64" else "float32"


# ----------------------------------------------------------------------------- windows


class _CosineWindow(OnnxOpConverter):
    """``a0 - a1·cos(2πn/N') + a2·cos(4πn/N')`` (see the module doc)."""

    COEFFS: tuple[float, float, float] = (0.0, 0.0, 0.0)
    OP = ""

    @classmethod
    def _impl_v17(cls, bb, inputs, attr, params):
        size = int(np.asarray(_constant(inputs[0], params, attr, cls.OP, "size")).reshape(-1)[0])
        if size < 0:
            raise _refuse(attr, cls.OP, f"a negative size ({size})", hint="give size >= 0")
        denom = size if int(attr.get("periodic", 1)) else size - 1
        a0, a1, a2 = cls.COEFFS
        with np.errstate(divide="ignore", invalid="ignore"):
            angle = np.arange(size, dtype=np.float64) * (2.0 * np.pi) / np.float64(denom)
            window = a0 - a1 * np.cos(angle) + a2 * np.cos(2.0 * angle)
        return _const_of(window, get_type(attr.get("output_datatype", 1)))


@register("HannWindow")
class HannWindow(_CosineWindow):
    COEFFS = (0.5, 0.5, 0.0)
    OP = "HannWindow"


@register("HammingWindow")
class HammingWindow(_CosineWindow):
    COEFFS = (25.0 / 46.0, 21.0 / 46.0, 0.0)
    OP = "HammingWindow"


@register("BlackmanWindow")
class BlackmanWindow(_CosineWindow):
    COEFFS = (0.42, 0.5, 0.08)
    OP = "BlackmanWindow"


# ----------------------------------------------------------------------------- MelWeightMatrix


def mel_weight_matrix(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz):
    """The ``[dft_length // 2 + 1, num_mel_bins]`` float64 matrix, with the ONNX reference's
    arithmetic (the edges keep their own float type)."""
    num_mel_bins = int(np.asarray(num_mel_bins).reshape(-1)[0])
    dft_length = int(np.asarray(dft_length).reshape(-1)[0])
    sample_rate = int(np.asarray(sample_rate).reshape(-1)[0])
    lower = np.asarray(lower_edge_hertz).reshape(())
    upper = np.asarray(upper_edge_hertz).reshape(())
    num_spectrogram_bins = dft_length // 2 + 1
    bins = np.arange(0, num_mel_bins + 2)
    low_mel = 2595 * np.log1p(lower / 700) / np.log(10)
    high_mel = 2595 * np.log1p(upper / 700) / np.log(10)
    mel_step = (high_mel - low_mel) / bins.shape[0]
    freqs = bins * mel_step + low_mel
    freqs = 700 * np.expm1(freqs / 2595 * np.log(10))
    points = (((dft_length + 1) * freqs) // sample_rate).astype(int)
    out = np.zeros((num_spectrogram_bins, num_mel_bins))

    def put(j: int, i: int, value: float) -> None:
        if 0 <= j < num_spectrogram_bins:
            out[j, i] = value

    for i in range(num_mel_bins):
        left, center, right = int(points[i]), int(points[i + 1]), int(points[i + 2])
        if center == left:
            put(center, i, 1.0)
        else:
            for j in range(left, center + 1):
                put(j, i, (j - left) / (center - left))
        if right > center:
            for j in range(center, right):
                put(j, i, (right - j) / (right - center))
    return out


@register("MelWeightMatrix")
class MelWeightMatrix(OnnxOpConverter):
    """Computed at compile time from its five constant inputs (see the module doc)."""

    @classmethod
    def _impl_v17(cls, bb, inputs, attr, params):
        names = (
            "num_mel_bins",
            "dft_length",
            "sample_rate",
            "lower_edge_hertz",
            "upper_edge_hertz",
        )
        values = [
            _constant(inputs[k], params, attr, "MelWeightMatrix", n) for k, n in enumerate(names)
        ]
        if (
            int(np.asarray(values[0]).reshape(-1)[0]) < 0
            or int(np.asarray(values[2]).reshape(-1)[0]) <= 0
        ):
            raise _refuse(
                attr,
                "MelWeightMatrix",
                "a negative num_mel_bins or a sample_rate <= 0",
                hint="give num_mel_bins >= 0 and sample_rate > 0",
            )
        matrix = mel_weight_matrix(*values)
        return _const_of(matrix, get_type(attr.get("output_datatype", 1)))


# ----------------------------------------------------------------------------- TensorScatter


@register("TensorScatter")
class TensorScatter(OnnxOpConverter):
    """KV-cache write (see the module doc)."""

    @classmethod
    def _impl_v24(cls, bb, inputs, attr, params):
        op = "TensorScatter"
        past, update = inputs[0], inputs[1]
        indices = _given(inputs, 2)
        mode = _str_attr(attr, "mode", "linear")
        if mode not in ("linear", "circular"):
            raise _refuse(attr, op, f"mode {mode!r}", hint="use linear or circular")
        shape, ushape = _shape(past, attr, op), _shape(update, attr, op)
        rank = len(shape)
        axis = int(attr.get("axis", -2))
        if not -rank <= axis < rank:
            raise _refuse(
                attr,
                op,
                f"axis {axis} of a rank-{rank} cache",
                hint=f"give an axis in [-{rank}, {rank})",
            )
        axis %= rank
        if axis == 0:
            raise _refuse(
                attr,
                op,
                "axis 0 (the batch axis)",
                hint="the sequence axis must follow the batch axis",
            )
        if (
            len(ushape) != rank
            or any(ushape[i] != shape[i] for i in range(rank) if i != axis)
            or ushape[axis] > shape[axis]
        ):
            raise _refuse(
                attr,
                op,
                f"an update of shape {ushape} for a cache of shape {shape} on axis {axis}",
                hint="the update must match the cache except on axis (<= there)",
            )
        max_len, seq_len = shape[axis], ushape[axis]
        if seq_len == 0:
            return past
        circular = mode == "circular"

        def scatter(cache, upd, *idx):
            def f(*i):
                c = i[axis]
                rel = c - idx[0][i[0]] if idx else c
                if circular:
                    rel = tirx.floormod(rel, max_len)
                hit = tirx.all(rel >= 0, rel < seq_len)
                safe = tirx.max(tirx.min(rel, seq_len - 1), 0)
                at = list(i)
                at[axis] = safe
                return tirx.Select(hit, upd[tuple(at)], cache[i])

            return te.compute(shape, f, name="tensor_scatter")

        args = [past, update] + ([indices] if indices is not None else [])
        return bb.emit_te(scatter, *args, primfunc_name_hint="tensor_scatter")


# ----------------------------------------------------------------------------- TfIdfVectorizer


@register("TfIdfVectorizer")
class TfIdfVectorizer(OnnxOpConverter):
    """n-gram counting over integer tokens (see the module doc)."""

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        op = "TfIdfVectorizer"
        if attr.get("pool_strings"):
            raise _refuse(
                attr,
                op,
                "a string pool (pool_strings, string input)",
                hint="tvmforge does not compile string tensors; map the tokens to "
                "integer ids before the model and use pool_int64s",
            )
        mode = _str_attr(attr, "mode", "")
        if mode not in ("TF", "IDF", "TFIDF"):
            raise _refuse(attr, op, f"mode {mode!r}", hint="use TF, IDF or TFIDF")
        pool = [int(v) for v in attr.get("pool_int64s", [])]
        counts = [int(v) for v in attr.get("ngram_counts", [])]
        indexes = [int(v) for v in attr.get("ngram_indexes", [])]
        weights = [float(v) for v in attr.get("weights", [])]
        min_len = int(attr.get("min_gram_length", 1))
        max_len = int(attr.get("max_gram_length", 1))
        max_skip = int(attr.get("max_skip_count", 0))
        if not indexes or min(indexes) < 0:
            raise _refuse(
                attr,
                op,
                "an empty or negative ngram_indexes",
                hint="give one output coordinate >= 0 per pool n-gram",
            )
        width = max(indexes) + 1
        if weights and len(weights) < width:
            raise _refuse(
                attr,
                op,
                f"{len(weights)} weights for {width} output coordinates",
                hint="give one weight per output coordinate",
            )

        # Pool n-grams: token tuple -> pool index (the later of duplicates wins, as in ORT).
        grams: dict[tuple[int, ...], int] = {}
        gram_id = 0
        for k, start in enumerate(counts):
            n = k + 1
            end = counts[k + 1] if k + 1 < len(counts) else len(pool)
            for g in range(max(end - start, 0) // n):
                if min_len <= n <= max_len:
                    grams[tuple(pool[start + g * n : start + (g + 1) * n])] = gram_id
                gram_id += 1
        if any(j >= len(indexes) for j in grams.values()):
            raise _refuse(
                attr,
                op,
                "fewer ngram_indexes than pool n-grams",
                hint="give one output coordinate per pool n-gram",
            )

        x = inputs[0]
        xshape = _shape(x, attr, op)
        if len(xshape) > 2:
            raise _refuse(attr, op, f"a rank-{len(xshape)} input", hint="give [C] or [B, C]")
        rows = xshape[0] if len(xshape) == 2 else 1
        width_c = xshape[-1] if xshape else 1
        x2 = relax.op.reshape(relax.op.astype(x, "int64"), [rows, width_c])

        parts, cols = [], []
        for n in sorted({len(g) for g in grams}):
            sized = [(g, j) for g, j in grams.items() if len(g) == n]
            table = np.array([g for g, _ in sized], np.int64)  # [G, n]
            total = None
            for skip in range(1, (1 if n == 1 else max_skip + 1) + 1):
                span = width_c - (n - 1) * skip
                if span <= 0:
                    break
                match = None
                for k in range(n):
                    tokens = relax.op.strided_slice(
                        x2, axes=[1], begin=[k * skip], end=[k * skip + span]
                    )
                    eq = relax.op.equal(
                        relax.op.expand_dims(tokens, 2),
                        relax.const(table[:, k].reshape(1, 1, -1), "int64"),
                    )
                    match = eq if match is None else relax.op.logical_and(match, eq)
                found = relax.op.sum(relax.op.astype(match, "float32"), axis=[1])
                total = found if total is None else relax.op.add(total, found)
            if total is not None:
                parts.append(total)
                cols.extend(indexes[j] for _, j in sized)

        if parts:
            counted = parts[0] if len(parts) == 1 else relax.op.concat(parts, axis=1)
            onehot = np.zeros((len(cols), width), np.float32)
            onehot[np.arange(len(cols)), cols] = 1.0
            y = relax.op.matmul(counted, relax.const(onehot, "float32"))
        else:
            y = relax.const(np.zeros((rows, width), np.float32), "float32")

        if mode != "TF":
            w = relax.const(np.asarray(weights[:width] or [1.0] * width, np.float32), "float32")
            if mode == "IDF":
                zero = relax.const(np.zeros((), np.float32), "float32")
                y = relax.op.where(
                    relax.op.greater(y, zero),
                    relax.op.broadcast_to(relax.op.reshape(w, [1, width]), [rows, width]),
                    relax.op.zeros_like(y),
                )
            elif weights:
                y = relax.op.multiply(y, w)
        if len(xshape) < 2:
            y = relax.op.reshape(y, [width])
        return y


# ----------------------------------------------------------------------------- DeformConv


@register("DeformConv")
class DeformConv(OnnxOpConverter):
    """Deformable convolution, N-D (see the module doc)."""

    @classmethod
    def _impl_v19(cls, bb, inputs, attr, params):
        op = "DeformConv"
        x, w, offset = inputs[0], inputs[1], inputs[2]
        bias, mask = _given(inputs, 3), _given(inputs, 4)
        xs, ws, osh = _shape(x, attr, op), _shape(w, attr, op), _shape(offset, attr, op)
        nd = len(xs) - 2
        if nd < 1:
            raise _refuse(attr, op, f"a rank-{len(xs)} input", hint="give [N, C, D1, ...]")
        n_batch, chans = xs[0], xs[1]
        out_chans = ws[0]
        kshape = [int(v) for v in attr.get("kernel_shape", ws[2:])]
        strides = [int(v) for v in attr.get("strides", [1] * nd)]
        dils = [int(v) for v in attr.get("dilations", [1] * nd)]
        pads = [int(v) for v in attr.get("pads", [0] * (2 * nd))]
        group = int(attr.get("group", 1))
        ogroups = int(attr.get("offset_group", 1))
        taps = int(np.prod(kshape))
        if (
            len(kshape) != nd
            or kshape != ws[2:]
            or len(strides) != nd
            or len(dils) != nd
            or len(pads) != 2 * nd
        ):
            raise _refuse(
                attr,
                op,
                f"kernel_shape/strides/dilations/pads of the wrong length "
                f"or a kernel_shape {kshape} that is not W's {ws[2:]}",
                hint="give one value per spatial dimension (two for pads)",
            )
        if chans != ws[1] * group or out_chans % group or chans % ogroups:
            raise _refuse(
                attr,
                op,
                f"X {xs} with W {ws}, group {group}, offset_group {ogroups}",
                hint="C must be W.shape[1]·group and divisible by offset_group; "
                "M must be divisible by group",
            )
        out_sp = [
            (xs[2 + d] + pads[d] + pads[nd + d] - ((kshape[d] - 1) * dils[d] + 1)) // strides[d] + 1
            for d in range(nd)
        ]
        if osh != [n_batch, ogroups * taps * nd, *out_sp]:
            raise _refuse(
                attr,
                op,
                f"an offset of shape {osh}",
                hint=f"offset must be {[n_batch, ogroups * taps * nd, *out_sp]}",
            )
        if mask is not None and _shape(mask, attr, op) != [n_batch, ogroups * taps, *out_sp]:
            raise _refuse(
                attr,
                op,
                f"a mask of shape {_shape(mask, attr, op)}",
                hint=f"mask must be {[n_batch, ogroups * taps, *out_sp]}",
            )

        dtype = _dtype(x)
        cdt = _compute_dtype(dtype)
        per_og = chans // ogroups
        kstride = [int(np.prod(kshape[d + 1 :])) for d in range(nd)]

        def sample(data, off, *msk):
            def f(*i):
                n, c = i[0], i[1]
                k, o = i[2 : 2 + nd], i[2 + nd :]
                og = tirx.floordiv(c, per_og)
                tap = sum(k[d] * kstride[d] for d in range(nd))
                lows, fracs = [], []
                for d in range(nd):
                    ch = (og * taps + tap) * nd + d
                    pos = tirx.Cast(cdt, o[d] * strides[d] - pads[d] + k[d] * dils[d]) + tirx.Cast(
                        cdt, off[(n, ch, *o)]
                    )
                    low = tirx.floor(pos)
                    lows.append(tirx.Cast("int64", low))
                    fracs.append(pos - low)
                acc = tirx.const(0.0, cdt)
                for corner in itertools.product((0, 1), repeat=nd):
                    at, inside, weight = [], [], tirx.const(1.0, cdt)
                    for d, bit in enumerate(corner):
                        p = lows[d] + bit
                        inside += [p >= 0, p < xs[2 + d]]
                        at.append(tirx.max(tirx.min(p, xs[2 + d] - 1), 0))
                        weight = weight * (fracs[d] if bit else tirx.const(1.0, cdt) - fracs[d])
                    value = tirx.Cast(cdt, data[(n, c, *at)])
                    acc = acc + tirx.Select(tirx.all(*inside), weight * value, tirx.const(0.0, cdt))
                if msk:
                    acc = acc * tirx.Cast(cdt, msk[0][(n, og * taps + tap, *o)])
                return acc

            return te.compute((n_batch, chans, *kshape, *out_sp), f, name="deform_sample")

        args = [x, offset] + ([mask] if mask is not None else [])
        cols = bb.emit_te(sample, *args, primfunc_name_hint="deform_conv_sample")
        points = int(np.prod(out_sp))
        in_per_g, out_per_g = chans // group, out_chans // group
        cols = relax.op.reshape(cols, [n_batch, group, in_per_g * taps, points])
        wmat = relax.op.reshape(relax.op.astype(w, cdt), [1, group, out_per_g, in_per_g * taps])
        y = relax.op.matmul(wmat, cols)  # [N, G, M/G, P]
        y = relax.op.reshape(y, [n_batch, out_chans, *out_sp])
        if bias is not None:
            y = relax.op.add(
                y, relax.op.reshape(relax.op.astype(bias, cdt), [1, out_chans] + [1] * nd)
            )
        return relax.op.astype(y, dtype) if cdt != dtype else y


# ----------------------------------------------------------------------------- DFT / STFT


def _dft_matrices(n_in: int, length: int, inverse: bool, onesided: bool):
    """Twiddle matrices ``(rr, ir, ri, ii)`` of shape ``[n_in, n_out]`` (float64) such that
    ``out_re = x_re·rr + x_im·ir`` and ``out_im = x_re·ri + x_im·ii``, with the input cropped
    or zero-padded to what the transform of length ``length`` reads (``ri``/``ii`` are None
    for the inverse one-sided transform, whose output is real)."""
    if inverse and onesided:  # irfft: half spectrum in, real signal of `length` out
        used = min(n_in, length // 2 + 1)
        k = np.arange(used)[:, None]
        t = np.arange(length)[None, :]
        scale = np.where((k == 0) | ((length % 2 == 0) & (k == length // 2)), 1.0, 2.0)
        theta = 2 * np.pi * ((k * t) % length) / length
        rr = np.zeros((n_in, length))
        ir = np.zeros((n_in, length))
        rr[:used] = scale * np.cos(theta) / length
        ir[:used] = -scale * np.sin(theta) / length
        return rr, ir, None, None
    n_out = length // 2 + 1 if onesided else length
    used = min(n_in, length)
    t = np.arange(used)[:, None]
    k = np.arange(n_out)[None, :]
    theta = 2 * np.pi * ((t * k) % length) / length
    sign = 1.0 if inverse else -1.0
    scale = 1.0 / length if inverse else 1.0
    cos = np.zeros((n_in, n_out))
    sin = np.zeros((n_in, n_out))
    cos[:used] = scale * np.cos(theta)
    sin[:used] = scale * sign * np.sin(theta)
    # (xr + i·xi)(cos + i·sin) = xr·cos - xi·sin + i(xr·sin + xi·cos)
    return cos, -sin, sin, cos


def _transform_last(
    x: relax.Expr, n_in: int, length: int, inverse: bool, onesided: bool, complex_in: bool, cdt: str
) -> relax.Expr:
    """``x`` of shape ``[..., n_in, 1|2]`` (compute dtype) → ``[..., n_out, 1|2]``."""
    rr, ir, ri, ii = _dft_matrices(n_in, length, inverse, onesided)
    re = relax.op.squeeze(relax.op.strided_slice(x, axes=[-1], begin=[0], end=[1]), [-1])
    im = (
        relax.op.squeeze(relax.op.strided_slice(x, axes=[-1], begin=[1], end=[2]), [-1])
        if complex_in
        else None
    )

    def mix(a, b):
        out = relax.op.matmul(re, relax.const(a, cdt))
        if im is not None:
            out = relax.op.add(out, relax.op.matmul(im, relax.const(b, cdt)))
        return out

    out_re = mix(rr, ir)
    if ri is None:  # real output
        return relax.op.expand_dims(out_re, -1)
    return relax.op.stack([out_re, mix(ri, ii)], axis=-1)


def _dft(bb, attr, x, length, axis, *, inverse, onesided):
    op = "DFT"
    shape = _shape(x, attr, op)
    rank = len(shape)
    if rank < 2 or shape[-1] not in (1, 2):
        raise _refuse(
            attr,
            op,
            f"an input of shape {shape}",
            hint="the last dimension must be 1 (real) or 2 (complex)",
        )
    if not -rank <= axis < rank or axis % rank == rank - 1:
        raise _refuse(
            attr,
            op,
            f"axis {axis} of a rank-{rank} input",
            hint="axis must name a signal dimension, not the last",
        )
    axis %= rank
    n_in = shape[axis]
    if length is None:
        length = 2 * (n_in - 1) if (inverse and onesided) else n_in
    if length < 1:
        raise _refuse(attr, op, f"dft_length {length}", hint="give dft_length >= 1")
    dtype = _dtype(x)
    cdt = _compute_dtype(dtype)
    xc = relax.op.astype(x, cdt)
    perm = [d for d in range(rank - 1) if d != axis] + [axis, rank - 1]
    moved = relax.op.permute_dims(xc, perm) if axis != rank - 2 else xc
    y = _transform_last(moved, n_in, length, inverse, onesided, shape[-1] == 2, cdt)
    if axis != rank - 2:
        inv = [0] * rank
        for pos, d in enumerate(perm):
            inv[d] = pos
        y = relax.op.permute_dims(y, inv)
    return relax.op.astype(y, dtype)


def _int_value(inputs, k, params, attr, op, what):
    if _given(inputs, k) is None:
        return None
    value = np.asarray(_constant(inputs[k], params, attr, op, what)).reshape(-1)
    return int(value[0]) if value.size else None


@register("DFT")
class DFT(OnnxOpConverter):
    """Discrete Fourier transform as a twiddle matmul (see the module doc)."""

    @classmethod
    def _impl_v17(cls, bb, inputs, attr, params):
        length = _int_value(inputs, 1, params, attr, "DFT", "dft_length")
        return _dft(
            bb,
            attr,
            inputs[0],
            length,
            int(attr.get("axis", 1)),
            inverse=bool(attr.get("inverse", 0)),
            onesided=bool(attr.get("onesided", 0)),
        )

    @classmethod
    def _impl_v20(cls, bb, inputs, attr, params):
        length = _int_value(inputs, 1, params, attr, "DFT", "dft_length")
        axis = _int_value(inputs, 2, params, attr, "DFT", "axis")
        return _dft(
            bb,
            attr,
            inputs[0],
            length,
            -2 if axis is None else axis,
            inverse=bool(attr.get("inverse", 0)),
            onesided=bool(attr.get("onesided", 0)),
        )


@register("STFT")
class STFT(OnnxOpConverter):
    """Short-time Fourier transform: framing, window, twiddle matmul (see the module doc)."""

    @classmethod
    def _impl_v17(cls, bb, inputs, attr, params):
        op = "STFT"
        x = inputs[0]
        shape = _shape(x, attr, op)
        if len(shape) != 3 or shape[-1] not in (1, 2):
            raise _refuse(
                attr, op, f"a signal of shape {shape}", hint="give [batch, signal_length, 1 | 2]"
            )
        step = _int_value(inputs, 1, params, attr, op, "frame_step")
        window = _given(inputs, 2)
        frame_len = _int_value(inputs, 3, params, attr, op, "frame_length")
        if frame_len is None:
            frame_len = _shape(window, attr, op)[0] if window is not None else shape[1]
        if window is not None and _shape(window, attr, op) != [frame_len]:
            raise _refuse(
                attr,
                op,
                f"a window of shape {_shape(window, attr, op)} for frame_length {frame_len}",
                hint="the window must have frame_length values",
            )
        if step is None or step < 1 or not 1 <= frame_len <= shape[1]:
            raise _refuse(
                attr,
                op,
                f"frame_step {step} with frame_length {frame_len} for a "
                f"signal of length {shape[1]}",
                hint="give frame_step >= 1 and 1 <= frame_length <= signal length",
            )
        onesided = bool(attr.get("onesided", 1))
        frames = (shape[1] - frame_len) // step + 1
        dtype = _dtype(x)
        cdt = _compute_dtype(dtype)
        xc = relax.op.astype(x, cdt)
        # frames[b, f, t, c] = x[b, f*step + t, c], as one gather along the signal axis
        where = (np.arange(frames)[:, None] * step + np.arange(frame_len)[None, :]).reshape(-1)
        framed = relax.op.take(xc, relax.const(where.astype(np.int64), "int64"), axis=1)
        framed = relax.op.reshape(framed, [shape[0], frames, frame_len, shape[2]])
        if window is not None:
            win = relax.op.reshape(relax.op.astype(window, cdt), [1, 1, frame_len, 1])
            framed = relax.op.multiply(framed, win)
        y = _transform_last(framed, frame_len, frame_len, False, onesided, shape[2] == 2, cdt)
        return relax.op.astype(y, dtype)
