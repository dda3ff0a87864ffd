"""What ``prune_channels`` did (``PruneReport``: FLOPs, parameters and weight bytes before and
after, per layer), and its summary line and layer table as the CLI prints them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)



@dataclass
class LayerChange:
    """One conv2d / depthwise conv / matmul: channels, weight parameters and FLOPs, (before,
    after)."""

    name: str
    op: str
    channels: tuple[int, int]  # output channels before, after
    in_channels: tuple[int, int]
    flops: tuple[int, int]
    params: tuple[int, int] = (0, 0)  # scalars of the layer's weight

    @property
    def changed(self) -> bool:
        return self.channels[0] != self.channels[1] or self.in_channels[0] != self.in_channels[1]


@dataclass
class PruneReport:
    """What ``prune_channels`` did: FLOPs (conv2d + matmul), parameters and weight bytes
    before/after, in total and per layer.

    ``layers`` holds every conv2d / matmul the analysis follows; ``other_params`` and
    ``other_flops`` the rest, so that ``sum(layer params) + other_params == params`` and
    ``sum(layer FLOPs) + other_flops == flops`` before and after: biases, BatchNorm constants
    and the weights of layers the analysis does not follow (grouped convs) are ``other``.
    """

    method: str
    ratio: float
    align: int
    min_channels: int = 0
    flops_before: int = 0
    flops_after: int = 0
    params_before: int = 0
    params_after: int = 0
    weight_bytes_before: int = 0  # bytes of all constants of ``main``
    weight_bytes_after: int = 0
    other_params: tuple[int, int] = (0, 0)
    other_flops: tuple[int, int] = (0, 0)
    removed_channels: int = 0
    lossless_channels: int = 0  # removed channels that were constant (folded exactly)
    calibrated_layers: int = 0
    layers: list[LayerChange] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # why channels were left alone

    @property
    def flops_removed(self) -> float:
        return 1.0 - self.flops_after / self.flops_before if self.flops_before else 0.0

    def to_json(self) -> dict:
        data = asdict(self)
        data["flops_removed"] = round(self.flops_removed, 4)
        data["other_params"] = list(self.other_params)
        data["other_flops"] = list(self.other_flops)
        data["layers"] = [
            {
                **asdict(c),
                "channels": list(c.channels),
                "in_channels": list(c.in_channels),
                "flops": list(c.flops),
                "params": list(c.params),
            }
            for c in self.layers
        ]
        return data

    def summary(self) -> str:
        return summary_line(self.to_json())


def _pct(before: int, after: int) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "+0.0%"


def summary_line(report: Mapping) -> str:
    """One line for a build log from a report's JSON (``PruneReport.to_json``)."""
    r = report
    changed = sum(
        c["channels"][0] != c["channels"][1] or c["in_channels"][0] != c["in_channels"][1]
        for c in r["layers"]
    )
    return (
        f"{changed} of {len(r['layers'])} layer(s) narrowed ({r['removed_channels']} channel(s) "
        f"removed, {r['lossless_channels']} constant); FLOPs {r['flops_before'] / 1e9:.3f}G -> "
        f"{r['flops_after'] / 1e9:.3f}G ({_pct(r['flops_before'], r['flops_after'])}), "
        f"parameters {r['params_before'] / 1e6:.3f}M -> {r['params_after'] / 1e6:.3f}M "
        f"({_pct(r['params_before'], r['params_after'])}), weights "
        f"{r['weight_bytes_before'] / 1e6:.2f} MB -> {r['weight_bytes_after'] / 1e6:.2f} MB"
    )


def layer_table(report: Mapping, everything: bool = False) -> list[str]:
    """The per-layer table of a report's JSON: the pruned layers (all with ``everything``),
    then one row for the rest and the totals."""
    rows = [("layer", "op", "out ch", "in ch", "params", "FLOPs")]

    def pair(v, fmt=str) -> str:
        return fmt(v[0]) if v[0] == v[1] else f"{fmt(v[0])} -> {fmt(v[1])}"

    def mega(n: int) -> str:
        for scale, unit, digits in ((1e9, "G", 3), (1e6, "M", 3), (1e4, "k", 1)):
            if n >= scale:
                return f"{n / (scale if unit != 'k' else 1e3):.{digits}f}{unit}"
        return str(n)

    shown = [
        c
        for c in report["layers"]
        if everything
        or c["channels"][0] != c["channels"][1]
        or c["in_channels"][0] != c["in_channels"][1]
    ]
    for c in shown:
        rows.append(
            (
                c["name"],
                c["op"],
                pair(c["channels"]),
                pair(c["in_channels"]),
                pair(c["params"], mega),
                pair(c["flops"], mega),
            )
        )
    hidden = len(report["layers"]) - len(shown)
    if hidden:
        rest = [c for c in report["layers"] if c not in shown]
        rows.append(
            (
                f"({hidden} unchanged layer(s))",
                "",
                "",
                "",
                mega(sum(c["params"][0] for c in rest)),
                mega(sum(c["flops"][0] for c in rest)),
            )
        )
    rows.append(
        (
            "(biases, BatchNorm, other)",
            "",
            "",
            "",
            pair(report["other_params"], mega),
            pair(report["other_flops"], mega),
        )
    )
    rows.append(
        (
            "total",
            "",
            "",
            "",
            pair((report["params_before"], report["params_after"]), mega),
            pair((report["flops_before"], report["flops_after"]), mega),
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            v.ljust(w) if i < 2 else v.rjust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]




