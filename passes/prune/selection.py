"""Which channels to keep: channel counts aligned to the CPU's vector width (``default_align``),
importance per channel group, and the plan that removes the least important channels until the
FLOPs target is met."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tvm

from tvmforge.passes.prune.channel_groups import FIXED, Chan, ChannelGraph

log = logging.getLogger(__name__)


# compile(mod) -> run(list of input arrays) -> list of output arrays
Runner = Callable[[tvm.IRModule], Callable[[Sequence[np.ndarray]], list[np.ndarray]]]



def default_align(target: tvm.target.Target | None) -> tuple[int, int]:
    """``(align, min_channels)``: pruned layers keep a multiple of ``align`` channels or
    exactly ``min_channels``.

    On a CPU, ``min_channels`` is the fp32 vector lanes (at least 8) and ``align`` twice that:
    ``pack_conv_weights`` packs output channels in blocks of one vector and
    ``schedule_cpu_default`` gives a packed conv a register tile of ``nf`` blocks, ``nf`` a
    divisor of the block count of at most 4; ``pack_dense_weights`` uses panels of two
    vectors. An odd block count (208 = 13 x 16) leaves ``nf = 1``: twice the loads per FMA.
    Measured on ResNet-50 pruned to 50 % of its FLOPs (AVX-512, 2 threads, tvmforge's default
    schedules with packed weights, interleaved runs, one process, 2026-11-22): multiples of 16
    ran 1.67-1.71x faster than unpruned, multiples of 32 1.83x, of 64 1.92x (fewer, coarser
    choices: 64-channel layers can no longer be pruned); earlier, without packed weights,
    multiples of 8 ran 1.2-1.4x and unaligned counts 0.9-0.95x (slower than no pruning).
    Without a target: 8 and 8; GPUs: 16 and 16 (not measured).
    """
    if target is None:
        return 8, 8
    from tvmforge.targets.features import features_of

    features = features_of(target)
    if features is not None:
        lanes = max(8, features.lanes)
        return 2 * lanes, lanes
    return 16, 16


def _kept_counts(size: int, align: int, minimum: int) -> list[int]:
    """The channel counts below ``size`` a pruned space may keep, widest first."""
    counts = list(range(align * ((size - 1) // align), align - 1, -align))
    if minimum < min(align, size):
        counts.append(minimum)
    return counts


def default_runner(mod: tvm.IRModule) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
    """Compile ``mod`` for the host CPU with TVM's default pipeline; a function running it."""
    from tvmforge.passes.probe import build_runner

    return build_runner(mod, tvm.target.Target({"kind": "llvm"}))




# ---- selection -----------------------------------------------------------------------------


@dataclass
class _Space:
    root: int
    order: np.ndarray  # removable indices, in removal order
    free: int  # leading entries of ``order`` removed for free (constant channels)
    levels: list[tuple[float, int]]  # (score, channels removed after this chunk), ascending


class _Plan:
    """Which channels each space keeps; FLOPs of the layers under that choice."""

    def __init__(
        self,
        graph: ChannelGraph,
        order: int | None,
        align: int,
        other_flops: int,
        importance: Mapping[int, np.ndarray] | None = None,
        min_channels: int | None = None,
    ):
        self.graph = graph
        self.importance = importance or {}
        self.roots = graph.roots()
        self.offset, total = {}, 0
        for r in self.roots:
            self.offset[r] = total
            total += graph.size(r)
        self.keep = np.ones(total, bool)
        self.other_flops = other_flops
        self.constant = self._constant_channels()
        minimum = align if min_channels is None else min_channels
        self.spaces = [self._space(r, order, align, minimum) for r in self.roots]
        self._positions = [self._global(layer.inp) for layer in graph.layers]

    def _global(self, chan: Chan | None) -> np.ndarray | None:
        """Positions of ``chan`` as indices into ``self.keep`` (-1: fixed)."""
        if chan is None:
            return None
        roots = self.graph.roots_of(chan)
        out = np.full(len(chan), -1, np.int64)
        tracked = roots != FIXED
        out[tracked] = [
            self.offset[int(r)] + int(i)
            for r, i in zip(roots[tracked], chan.index[tracked], strict=True)
        ]
        return out

    def kept_positions(self, chan: Chan) -> np.ndarray:
        g = self._global(chan)
        return np.where(g < 0, True, self.keep[np.maximum(g, 0)])

    def _constant_channels(self) -> np.ndarray:
        """Channels whose value is one constant at every layer that consumes them."""
        ok = np.ones(len(self.keep), bool)
        for layer in self.graph.layers:
            if layer.kind == "depthwise" or layer.inp is None:
                continue
            g = self._global(layer.inp)
            bad = (g >= 0) & ~np.isfinite(layer.inp.cval)
            ok[g[bad]] = False
        return ok

    def _space(self, root: int, order: int | None, align: int, minimum: int) -> _Space:
        graph = self.graph
        size, pinned = graph.size(root), graph.pinned(root)
        start = self.offset[root]
        constant = self.constant[start : start + size] & ~pinned
        importance = self.importance.get(root)
        if importance is None:  # norms (for "taylor": a space no calibrated consumer reads)
            importance = np.zeros(size)
            for m in graph.members(root):
                importance += graph.layers[m].output_norms(order or 1)
        removable = ~pinned
        mean = importance[removable].mean() if removable.any() else 1.0
        score = importance / mean if mean > 0 else importance
        free_idx = np.flatnonzero(constant)
        rest = np.flatnonzero(removable & ~constant)
        free_idx = free_idx[np.argsort(score[free_idx], kind="stable")]
        rest = rest[np.argsort(score[rest], kind="stable")]
        order_idx = np.concatenate([free_idx, rest]).astype(np.int64)
        # constant channels go for free, as far as the alignment of what is left allows;
        # layers too narrow to have an aligned count below their width lose only those
        counts = _kept_counts(size, align, minimum)
        kept = size - len(free_idx)
        if counts:
            kept = min(c for c in [*counts, size] if c >= kept) if kept > counts[-1] else counts[-1]
        free = size - max(kept, 1)
        levels: list[tuple[float, int]] = []
        removed = free
        for c in counts:
            if size - c <= removed:
                continue
            if size - c > len(order_idx):
                break
            chunk = order_idx[removed : size - c]
            levels.append((float(score[chunk].mean()), size - c))
            removed = size - c
        return _Space(root, order_idx, free, levels)

    def apply(self, removed: Mapping[int, int]) -> None:
        """Keep everything but the first ``removed[root]`` channels of each space's order."""
        self.keep[:] = True
        for space in self.spaces:
            n = removed.get(space.root, 0)
            self.keep[self.offset[space.root] + space.order[:n]] = False

    def layer_channels(self, i: int) -> tuple[int, int]:
        """(out, in) channels layer ``i`` keeps under the current choice."""
        layer = self.graph.layers[i]
        g = self._positions[i]
        in_kept = (
            layer.in_channels
            if g is None
            else int(np.where(g < 0, True, self.keep[np.maximum(g, 0)]).sum())
        )
        if layer.kind == "depthwise":
            return in_kept, in_kept
        start = self.offset[self.graph.find(layer.space)]
        return int(self.keep[start : start + layer.out_channels].sum()), in_kept

    def flops(self) -> int:
        total = self.other_flops
        for i, layer in enumerate(self.graph.layers):
            total += layer.flops(*self.layer_channels(i))
        return total

    def choose(self, ratio: float, total_flops: int) -> None:
        """Free removals, then the cheapest chunks until ``ratio`` of the FLOPs are gone."""
        base = {s.root: s.free for s in self.spaces}
        chunks = sorted((score, s.root, n) for s in self.spaces for score, n in s.levels)
        target = total_flops * (1.0 - ratio)

        def upto(t: int) -> dict[int, int]:
            removed = dict(base)
            for _, root, n in chunks[:t]:
                removed[root] = max(removed[root], n)
            return removed

        self.apply(base)
        if ratio <= 0 or self.flops() <= target:
            return
        lo, hi = 0, len(chunks)
        self.apply(upto(hi))
        if self.flops() > target:
            log.info(
                "prune_channels: only %.1f%% of the FLOPs can go (asked for %.1f%%)",
                100 * (1 - self.flops() / total_flops),
                100 * ratio,
            )
            return
        while lo < hi:
            mid = (lo + hi) // 2
            self.apply(upto(mid))
            if self.flops() <= target:
                hi = mid
            else:
                lo = mid + 1
        self.apply(upto(lo))




