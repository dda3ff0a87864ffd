"""The rewrite of a Relax function's quantizable sites into int8 kernels (``int8_kernels``): u8/s8
activations carried between int8 layers, weights packed for the dot-product instruction,
requantization fused into each kernel's epilogue."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tvmforge.passes.quantize.patterns import _depthwise, _Graph, _null, _op, _Pair, _shape, _Site
from tvmforge.passes.quantize.qparams import (
    ChannelQParams,
    QParams,
    emit_dequantize,
    emit_quantize,
    weight_params,
)
from tvmforge.passes.quantize.report import LayerInfo, QuantReport
from tvmforge.passes.schedule import int8_kernels as K

# --------------------------------------------------------------------------------------------
# Rewriting


@dataclass
class _QVal:
    """A quantized tensor: ``expr`` is uint8 in ``layout`` ("NHWC" for a 4-D NCHW original,
    "plain" otherwise) with per-tensor ``params``."""

    expr: relax.Expr
    layout: str
    params: QParams | ChannelQParams


_QUANT_FRIENDLY = ("relax.nn.max_pool2d", "relax.nn.relu")


class _Rewriter:
    def __init__(self, graph: _Graph, sites: list[_Site], params: Mapping[relax.Var, QParams],
                 vnni: bool, report: QuantReport, pairs: Mapping[relax.Var, _Pair] | None = None,
                 sdot: bool = False, avx2: bool = False):
        self.graph, self.sites, self.params = graph, sites, params
        self.pairs = dict(pairs or {})
        self.vnni, self.report = vnni, report
        self.sdot = sdot and not vnni
        # AVX2 ``vpmaddubsw`` kernels: exact with 7-bit weights (|q| <= 64), see weight_max
        self.avx2 = avx2 and not vnni and not self.sdot
        self.site_of_tail = {s.tail: s for s in sites}
        self.inner = {m for s in sites for m in s.members[:-1]}
        self.inputs = ({s.x for s in sites} | {s.residual for s in sites if s.residual is not None}
                       | {s.y for s in sites if s.y is not None})
        self.channel_params: dict[relax.Var, ChannelQParams] = {}
        self.channel_only: set[relax.Var] = set()
        self.env: dict[relax.Var, relax.Expr | _QVal] = {}
        self.float_cache: dict[relax.Var, relax.Expr] = {}
        self.quant_cache: dict[tuple[relax.Var, str], _QVal] = {}
        self.kernels: dict[tvm.ir.GlobalVar, str] = {}
        self.bb: relax.BlockBuilder | None = None
        # float outputs a conv wrote NHWC because a spatial mean reads them (by original var)
        self.nhwc_float: dict[relax.Var, relax.Expr] = {}

    # ---- representations ---------------------------------------------------------------

    def quant_out(self, var: relax.Var) -> bool:
        """Whether a consumer of ``var`` takes it quantized."""
        for user in self.graph.users.get(var, []):
            if user is None:
                continue
            if var in self.inputs and var not in self.channel_only:
                return True
            value = self.graph.defn[user]
            if any(_op(value, name) for name in _QUANT_FRIENDLY) and value.args[0].same_as(var):
                return True
            if (user in self.pairs and self.pairs[user].x is not None
                    and self.pairs[user].q.same_as(user)):
                return True
        return False

    def fixed_params(self, var: relax.Var) -> QParams | None:
        """Parameters a QDQ model gives ``var``: its own pair's, or those of the pair that
        quantizes it (then ``var`` needs no calibration)."""
        if var in self.pairs and self.pairs[var].d.same_as(var):
            return self.pairs[var].params
        for user in self.graph.users.get(var, []):
            if user is not None and user in self.pairs and self.pairs[user].q.same_as(user) \
                    and self.pairs[user].x is not None and self.pairs[user].x.same_as(var):
                return self.pairs[user].params
        return None

    def float_of(self, expr: relax.Expr) -> relax.Expr:
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self.float_of(f) for f in expr.fields])
        if not isinstance(expr, relax.Var):
            return expr
        val = self.env.get(expr, expr)
        if not isinstance(val, _QVal):
            return val
        if expr not in self.float_cache:
            axis = 3 if val.layout == "NHWC" else 1  # of a per-channel one
            f = self.bb.emit(emit_dequantize(val.expr, val.params, axis=axis))
            if val.layout == "NHWC":
                f = self.bb.emit(relax.op.permute_dims(f, [0, 3, 1, 2]))
            self.float_cache[expr] = f
        return self.float_cache[expr]

    def quant_of(self, var: relax.Expr, layout: str) -> _QVal:
        val = self.env.get(var, var) if isinstance(var, relax.Var) else var
        if isinstance(val, _QVal) and val.layout == layout and isinstance(val.params, QParams):
            return val
        key = (var, layout)
        pair = self.pairs.get(var)
        if (key not in self.quant_cache and pair is not None and pair.d.same_as(var)
                and pair.dtype == "uint8" and not isinstance(self.env.get(pair.q), _QVal)):
            q = self.env.get(pair.q, pair.q)
            if layout == "NHWC":
                q = self.bb.emit(relax.op.permute_dims(q, [0, 2, 3, 1]))
            self.quant_cache[key] = _QVal(q, layout, pair.params)
        if key not in self.quant_cache:
            if isinstance(val, _QVal):
                val = self.float_of(var)
            p = self.params[var]
            x = val
            if layout == "NHWC":
                x = self.bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
            q = self.bb.emit(emit_quantize(x, p), name_hint="quantized")
            self.quant_cache[key] = _QVal(q, layout, p)
        return self.quant_cache[key]

    def set_channel_params(self, params: Mapping[relax.Var, ChannelQParams]) -> None:
        """Depthwise inputs quantized per channel; a layer producing one that no other layer
        takes quantized then outputs float (the per-channel quantize follows it)."""
        self.channel_params = dict(params)
        others = ({s.x for s in self.sites if not _depthwise(s)}
                  | {s.y for s in self.sites if s.y is not None}
                  | {s.residual for s in self.sites if s.residual is not None})
        self.channel_only = {v for v in self.channel_params if v not in others}

    def channelwise(self, site: _Site) -> bool:
        """Whether ``site`` (a depthwise conv) takes its input quantized per channel: it has
        per-channel parameters and no kernel produced it as uint8 already."""
        val = self.env.get(site.x)
        if isinstance(val, _QVal):  # per channel already when its producer quantized it so
            return _depthwise(site) and isinstance(val.params, ChannelQParams)
        return site.x in self.channel_params and _depthwise(site)

    def quant_of_channels(self, var: relax.Var) -> _QVal:
        """``var`` (NCHW float) quantized per channel, NHWC."""
        val = self.env.get(var)
        if isinstance(val, _QVal) and isinstance(val.params, ChannelQParams):
            return val
        key = (var, "NHWC/channels")
        if key not in self.quant_cache:
            p = self.channel_params[var]
            x = self.bb.emit(relax.op.permute_dims(self.float_of(var), [0, 2, 3, 1]))
            q = self.bb.emit(emit_quantize(x, p, axis=-1), name_hint="quantized")
            self.quant_cache[key] = _QVal(q, "NHWC", p)
        return self.quant_cache[key]

    def sub(self, expr):
        if isinstance(expr, relax.Var):
            return self.float_of(expr)
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self.sub(f) for f in expr.fields])
        if isinstance(expr, relax.TupleGetItem):
            return relax.TupleGetItem(self.sub(expr.tuple_value), expr.index)
        return expr

    # ---- the walk ----------------------------------------------------------------------

    def run(self, mod: tvm.IRModule) -> tuple[relax.Function, tvm.IRModule]:
        func = self.graph.func
        bb = self.bb = relax.BlockBuilder(mod)
        name = "__tvmforge_quantized_main"
        with bb.function(name, list(func.params), attrs=dict(func.attrs or {})):
            for block in func.body.blocks:
                dataflow = isinstance(block, relax.DataflowBlock)
                with bb.dataflow() if dataflow else _null():
                    for binding in block.bindings:
                        self.binding(binding, dataflow)
            bb.emit_func_output(self.sub(func.body.body))
        out = bb.get()
        gv = out.get_global_var(name)
        new_main = out[gv]
        del out[gv]
        symbol = (func.attrs or {}).get("global_symbol")
        new_main = (new_main.with_attr("global_symbol", symbol) if symbol is not None
                    else new_main.without_attr("global_symbol"))
        return new_main, out

    def binding(self, binding, dataflow: bool) -> None:
        bb = self.bb
        var, value = binding.var, binding.value
        is_output = dataflow and not isinstance(var, relax.DataflowVar)
        if isinstance(binding, relax.MatchCast):
            self.env[var] = bb.match_cast(self.sub(value), binding.ty)
            return
        if var in self.inner:
            return
        pair = self.pairs.get(var)
        if pair is not None and isinstance(self.env.get(pair.x), _QVal) \
                and self.env[pair.x].params == pair.params:
            # QDQ of a tensor that is already quantized with these parameters: the same tensor
            # (the kernel rounded and saturated exactly as the quantize would)
            self.env[var] = self.env[pair.x]
            if is_output and pair.d.same_as(var):
                self.env[var] = bb.emit_output(self.float_of(var), name_hint=var.name)
            return
        if var in self.site_of_tail:
            self.env[var] = self.emit_site(self.site_of_tail[var])
        elif (_op(value, "relax.nn.max_pool2d") and isinstance(self.env.get(value.args[0]), _QVal)
              and self.env[value.args[0]].layout == "NHWC" and value.attrs.layout == "NCHW"):
            q = self.env[value.args[0]]
            a = value.attrs
            pooled = bb.emit(relax.op.nn.max_pool2d(
                q.expr, a.pool_size, a.strides, a.padding, a.dilation, a.ceil_mode,
                a.count_include_pad, layout="NHWC"))
            self.env[var] = _QVal(pooled, "NHWC", q.params)
        elif (isinstance(value, relax.Call) and value.args
              and isinstance(value.args[0], relax.Var) and value.args[0] in self.nhwc_float
              and self._spatial_mean(var, value.args[0]) is not None):
            keep = self._spatial_mean(var, value.args[0])
            m = bb.emit(relax.op.mean(self.nhwc_float[value.args[0]], axis=[1, 2],
                                      keepdims=keep))
            if keep:  # [n, 1, 1, c] -> [n, c, 1, 1]: the same bytes
                n, _, _, c = _shape(m)
                m = bb.emit(relax.op.reshape(m, [n, c, 1, 1]))
            self.env[var] = m
        elif _op(value, "relax.nn.relu") and isinstance(self.env.get(value.args[0]), _QVal):
            q = self.env[value.args[0]]
            zp = relax.const(np.uint8(q.params.zero_point), "uint8")
            self.env[var] = _QVal(bb.emit(relax.op.maximum(q.expr, zp)), q.layout, q.params)
        else:
            if isinstance(value, relax.Call):
                op = value.op if isinstance(value.op, tvm.ir.Op) else self.sub(value.op)
                expr = relax.Call(op, [self.sub(a) for a in value.args], value.attrs,
                                  value.ty_args)
            else:
                expr = self.sub(value)
            self.env[var] = bb.emit_output(expr, name_hint=var.name) if is_output else \
                bb.emit(expr, name_hint=var.name)
            return
        if is_output:
            self.env[var] = bb.emit_output(self.float_of(var), name_hint=var.name)

    # ---- one site ----------------------------------------------------------------------

    def emit_matmul(self, site: _Site) -> relax.Expr | _QVal:
        """``a @ b`` of two activations, both quantized per tensor (``int8_kernels.qmatmul``)."""
        aq = self.quant_of(site.x, "plain")
        bq = self.quant_of(site.y, "plain")
        out_quant = self.quant_out(site.tail)
        py = self.params[site.tail] if out_quant else None
        mult = np.float32(aq.params.scale) * np.float32(bq.params.scale)
        if py is not None:
            mult = mult / np.float32(py.scale)
        epi = K.Epilogue(out_dtype="uint8" if out_quant else "float32",
                         zero_point=py.zero_point if py else 0)
        te_fn = functools.partial(K.qmatmul, a_zero_point=aq.params.zero_point,
                                  b_zero_point=bq.params.zero_point, mult=float(mult), epi=epi)
        call = self.bb.call_te(te_fn, aq.expr, bq.expr, primfunc_name_hint="qmatmul_int32")
        self.kernels[call.args[0]] = "int32"
        out = self.bb.emit(call, name_hint=site.tail.name + "_q")
        self.report.layers.append(LayerInfo(site.name, site.kind, "int32", epi.out_dtype))
        return _QVal(out, "plain", py) if out_quant else out

    def emit_site(self, site: _Site) -> relax.Expr | _QVal:
        if site.kind == "matmul":
            return self.emit_matmul(site)
        bb = self.bb
        conv = site.kind == "conv2d"
        layout = "NHWC" if conv else "plain"
        channelwise = self.channelwise(site)
        xq = self.quant_of_channels(site.x) if channelwise else self.quant_of(site.x, layout)
        px = xq.params
        if conv:
            w_oihw = site.weight
        else:
            w_oihw = site.weight.T[:, :, None, None]
        oc = w_oihw.shape[0]
        s_w, w_q = weight_params(w_oihw, axis=0, qmax=self.weight_max(site))
        groups = int(site.call.attrs.groups) if conv else 1
        if channelwise:  # depthwise: output o reads input channel o // (OC / IC) only
            x_scale, x_zp = px.arrays()
            src = np.arange(oc) // (oc // len(x_scale))
            x_scale, x_zp = x_scale[src], x_zp[src]
        else:
            x_scale, x_zp = np.float32(px.scale), px.zero_point
        s_acc = (x_scale * s_w).astype(np.float32)
        bias = site.bias if site.bias is not None else np.zeros(oc, np.float32)
        wsum = w_q.reshape(oc, -1).astype(np.int64).sum(axis=1)
        bias_q = np.round(bias.astype(np.float64) / s_acc.astype(np.float64)) - x_zp * wsum
        if self.sdot and groups == 1:  # sdot reads x_q - 128: the bias gives the 128 back
            bias_q = bias_q + 128 * wsum
        bias_q = np.clip(bias_q, -(2**31), 2**31 - 1).astype(np.int32)
        out_quant = self.quant_out(site.tail)
        py = self.params[site.tail] if out_quant else None
        # a tensor only depthwise convs take (per channel): the kernel quantizes it per
        # channel itself (NHWC u8) instead of writing float for a quantize pass to re-read
        chan_out = (conv and not out_quant and site.tail in self.channel_only
                    and site.tail in self.channel_params)
        if chan_out:
            py = self.channel_params[site.tail]
        real = bool(site.post) or chan_out  # the epilogue works on real values
        out_scale = np.float32(py.scale) if py and not real else np.float32(1.0)
        mult = (s_acc / out_scale).astype(np.float32)
        lower = upper = None
        if site.act is not None:
            lo, hi = site.act
            lower = None if lo is None else float(np.float32(lo) / out_scale)
            upper = None if hi is None else float(np.float32(hi) / out_scale)
        # a float output of a VNNI conv is written NCHW by the kernel itself (no transpose)
        nchw_out = (conv and not out_quant and not chan_out and groups == 1
                    and (self.vnni or self.sdot or self.avx2))
        # ... unless a spatial mean (an SE block's squeeze) reads it: then NHWC, the mean
        # reduces NHWC, and the NCHW view other users take fuses into their kernels as reads
        nhwc_float = (nchw_out and not site.d2s
                      and any(self._spatial_mean(u, site.tail) is not None
                              for u in self.graph.users.get(site.tail, []) if u is not None))
        nchw_out = nchw_out and not nhwc_float
        res_arg, res_kind, res_zp, res_mult = None, None, 0, 1.0
        if site.residual is not None:
            rv = self.env.get(site.residual, site.residual)
            if isinstance(rv, _QVal) and rv.layout == layout:
                res_arg, res_kind = rv.expr, "uint8"
                res_zp, res_mult = rv.params.zero_point, float(np.float32(rv.params.scale)
                                                               / out_scale)
            else:
                r = self.float_of(site.residual)
                if conv and not nchw_out:
                    r = bb.emit(relax.op.permute_dims(r, [0, 2, 3, 1]))
                res_arg, res_kind, res_mult = r, "float32", float(np.float32(1.0) / out_scale)
        u8_out = out_quant or chan_out
        kk = site.d2s * site.d2s or 1  # conv channels per depth-to-space output channel
        post_rows: list[np.ndarray] = []
        for stage in site.post:
            if stage[0] == "affine":
                post_rows += [np.repeat(stage[1], kk).astype(np.float32),
                              np.repeat(stage[2], kk).astype(np.float32)]
            elif stage[0] == "fq":
                fq = stage[1]
                post_rows += [np.full(oc, np.float32(1.0) / np.float32(fq.scale), np.float32),
                              np.full(oc, float(fq.zero_point), np.float32),
                              np.full(oc, np.float32(fq.scale), np.float32)]
        if real and u8_out:
            if chan_out:
                scale, zp = (np.repeat(np.asarray(a, np.float32), kk) for a in py.arrays())
            else:
                scale = np.full(oc, np.float32(py.scale), np.float32)
                zp = np.full(oc, float(py.zero_point), np.float32)
            post_rows += [(np.float32(1.0) / scale).astype(np.float32), zp.astype(np.float32)]
        epi = K.Epilogue(
            out_dtype="uint8" if u8_out else "float32",
            zero_point=py.zero_point if py and not chan_out else 0,
            lower=lower, upper=upper,
            residual=res_kind, residual_zp=res_zp, residual_mult=res_mult,
            layout="NCHW" if nchw_out else "NHWC",
            post=tuple(stage[0] for stage in site.post),
            requant=real and u8_out,
        )
        x_expr = xq.expr
        x_shape = _shape(site.x)
        if conv:
            a = site.call.attrs
            pad = [int(p) for p in a.padding]
            spec = K.ConvSpec(
                kernel=(int(w_oihw.shape[2]), int(w_oihw.shape[3])),
                strides=tuple(int(s) for s in a.strides),
                padding=tuple(pad),
                dilation=tuple(int(d) for d in a.dilation),
                groups=groups,
            )
        else:
            spec = K.ConvSpec(kernel=(1, 1))
            m = int(np.prod(x_shape[:-1]))
            x_expr = bb.emit(relax.op.reshape(x_expr, [1, 1, m, x_shape[-1]]))
            if res_arg is not None:
                res_arg = bb.emit(relax.op.reshape(res_arg, [1, 1, m, oc]))
        ocp = -(-oc // 16) * 16
        if groups == 1:
            kernel_fn, weight = K.qconv2d_nhwc, K.pack_weight_vnni(w_q)
            vec = lambda v, dt: np.pad(v, (0, ocp - oc)).astype(dt)  # noqa: E731
            kind = ("vnni" if self.vnni else "sdot" if self.sdot else "avx2" if self.avx2
                    else "int32")
        else:
            kernel_fn = K.qconv2d_grouped_nhwc
            weight = np.ascontiguousarray(w_q.transpose(2, 3, 1, 0))  # KH, KW, ICg, OC
            vec = lambda v, dt: v.astype(dt)  # noqa: E731
            kind = "int32"
            # depthwise, NHWC, channels a multiple of 4: its own schedule (vnni/sdot hosts)
            dw_sched = (_depthwise(site) and oc == int(w_oihw.shape[0]) and oc % 4 == 0
                        and oc == groups and (self.vnni or self.sdot))
        args = [x_expr, relax.const(weight, "int8"), relax.const(vec(bias_q, "int32"), "int32"),
                relax.const(vec(mult, "float32"), "float32")]
        if res_arg is not None:
            args.append(res_arg)
        if channelwise:  # the padding inserts each channel's own zero point
            args.append(relax.const(px.arrays()[1].astype(np.uint8), "uint8"))
        if epi.has_post:
            rows = np.stack(post_rows) if post_rows else np.zeros((0, oc), np.float32)
            if groups == 1:
                rows = np.pad(rows, ((0, 0), (0, ocp - oc)))
            args.append(relax.const(np.ascontiguousarray(rows, np.float32), "float32"))
        te_fn = functools.partial(kernel_fn, spec=spec, epi=epi,
                                  x_zero_point=None if channelwise else px.zero_point,
                                  out_channels=oc)
        if kind == "sdot":
            te_fn = functools.partial(te_fn, signed=True)
        elif kind == "int32" and groups == 1:  # no dot product: the float rules schedule it
            te_fn = functools.partial(te_fn, flat=True)
        call = bb.call_te(te_fn, *args, primfunc_name_hint=f"q{site.kind}_{kind}")
        self.kernels[call.args[0]] = "depthwise" if groups > 1 and dw_sched else kind
        out = bb.emit(call, name_hint=site.tail.name + "_q")
        if not conv:
            out = bb.emit(relax.op.reshape(out, [*x_shape[:-1], oc]))
        self.report.layers.append(LayerInfo(site.name, site.kind, kind, epi.out_dtype,
                                            fused=list(site.fused),
                                            reason=self._requantized(w_oihw, s_w, w_q)))
        if site.d2s:
            return self._depth_to_space(out, site.d2s, nhwc=not nchw_out, u8=u8_out, py=py)
        if out_quant or chan_out:
            return _QVal(out, layout, py)
        if conv and not nchw_out:
            if nhwc_float:
                self.nhwc_float[site.tail] = out
            return bb.emit(relax.op.permute_dims(out, [0, 3, 1, 2]))
        return out

    def weight_max(self, site: _Site) -> int:
        """The largest weight code of ``site``: 64 (7 bits) for an AVX2 ``vpmaddubsw`` kernel,
        whose u8 x s8 pairs saturate in s16 beyond ``2 * 255 * 64 = 32640``; 127 otherwise
        (grouped and depthwise convs are plain int32 arithmetic on every family)."""
        if not self.avx2 or site.kind == "matmul":
            return 127
        if site.kind == "conv2d" and int(site.call.attrs.groups) != 1:
            return 127
        return 64

    def _requantized(self, w: np.ndarray, s_w: np.ndarray, w_q: np.ndarray) -> str:
        """The report's note when a QDQ model's weights could not keep their codes: 8-bit
        weights (``[-127, 127]``) requantized to the 7 bits of the AVX2 kernels. Weights
        already 7-bit (ONNX Runtime's ``reduce_range``) come back as their own codes (the scale
        ``max|w| / 64`` is the model's), and then nothing is said."""
        if not self.pairs or int(np.abs(w_q).max(initial=0)) > 64 or not self.avx2:
            return ""
        shape = (-1,) + (1,) * (w.ndim - 1)
        if np.array_equal(w_q.astype(np.float32) * s_w.reshape(shape), w):
            return ""
        return ("the model's 8-bit weights requantized to 7 bits (|q| <= 64) for the AVX2 "
                "vpmaddubsw kernel, which saturates beyond")

    def _spatial_mean(self, user: relax.Var, var: relax.Var) -> bool | None:
        """``keepdims`` when ``user`` is ``mean(var, axis=[2, 3])`` of a 4-D tensor."""
        value = self.graph.defn.get(user)
        if value is None or not _op(value, "relax.mean") or not value.args[0].same_as(var):
            return None
        axes = value.attrs.axis
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3] or _shape(var) is None \
                or len(_shape(var)) != 4:
            return None
        return bool(value.attrs.keepdims)

    def _depth_to_space(self, out: relax.Expr, k: int, nhwc: bool, u8: bool,
                        py) -> relax.Expr | _QVal:
        """The conv's ``[n, o*k*k, h, w]`` result (NHWC or NCHW, uint8 or float) rearranged
        to ``[n, o, h*k, w*k]``: uint8 stays NHWC (a copy of bytes), float ends NCHW."""
        bb = self.bb
        r = relax.op
        if nhwc:
            n, h, w, c = _shape(out)
            o = c // (k * k)
            t = bb.emit(r.reshape(out, [n, h, w, o, k, k]))
            t = bb.emit(r.permute_dims(t, [0, 1, 4, 2, 5, 3]))  # n, h, kh, w, kw, o
            t = bb.emit(r.reshape(t, [n, h * k, w * k, o]))
            if u8:
                return _QVal(t, "NHWC", py)
            return bb.emit(r.permute_dims(t, [0, 3, 1, 2]))
        n, c, h, w = _shape(out)
        o = c // (k * k)
        t = bb.emit(r.reshape(out, [n, o, k, k, h, w]))
        t = bb.emit(r.permute_dims(t, [0, 1, 4, 2, 5, 3]))
        return bb.emit(r.reshape(t, [n, o, h * k, w * k]))


def substitute(vmap: dict[relax.Var, relax.Expr], expr: relax.Expr) -> relax.Expr:
    """``expr`` with the variables of ``vmap`` replaced, through tuples and their items (what a
    probe that re-emits a function's bindings needs)."""
    if isinstance(expr, relax.Var):
        return vmap.get(expr, expr)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([substitute(vmap, f) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(substitute(vmap, expr.tuple_value), expr.index)
    return expr


def _expose(func: relax.Function, tensors: Sequence[relax.Var],
            channels: Sequence[relax.Var] = ()) -> relax.Function:
    """``func`` returning ``tensors`` (a tuple) instead of its own result, then for each of
    ``channels`` (NCHW) its per-channel minima and maxima, ``[2, C]``."""
    wanted = set(tensors) | set(channels)
    vmap: dict[relax.Var, relax.Var] = {}

    def sub(expr):
        return substitute(vmap, expr)

    bb = relax.BlockBuilder()
    with bb.function("main", list(func.params), attrs=dict(func.attrs or {})):
        for block in func.body.blocks:
            dataflow = isinstance(block, relax.DataflowBlock)
            with bb.dataflow() if dataflow else _null():
                for binding in block.bindings:
                    var, value = binding.var, binding.value
                    if isinstance(binding, relax.MatchCast):
                        vmap[var] = bb.match_cast(sub(value), binding.ty)
                        continue
                    if isinstance(value, relax.Call):
                        value = relax.Call(value.op, [sub(a) for a in value.args], value.attrs,
                                           value.ty_args)
                    else:
                        value = sub(value)
                    out = dataflow and (not isinstance(var, relax.DataflowVar) or var in wanted)
                    vmap[var] = (bb.emit_output if out else bb.emit)(value, name_hint=var.name)
        stats = []
        if channels:
            with bb.dataflow():
                for v in channels:
                    t = sub(v)
                    lo = relax.op.min(t, axis=[0, 2, 3])
                    hi = relax.op.max(t, axis=[0, 2, 3])
                    stats.append(bb.emit_output(relax.op.stack([lo, hi], axis=0)))
        bb.emit_func_output(relax.Tuple([sub(v) for v in tensors] + stats))
    return bb.get()["main"]




