"""Calibration for pruning: the activations that feed each pruned layer, run on calibration
samples, and their moments (what the least-squares refit and Taylor importance need)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from tvm import relax

from tvmforge.passes.prune.channel_groups import Chan, Layer, static_shape

log = logging.getLogger(__name__)


# ---- calibration ---------------------------------------------------------------------------


def _runs(chan: Chan) -> int:
    """How many consecutive positions each channel of ``chan`` spans (flatten → dense: H*W)."""
    change = (np.diff(chan.space) != 0) | (np.diff(chan.index) != 0)
    bounds = np.concatenate([[0], np.flatnonzero(change) + 1, [len(chan)]])
    lengths = np.diff(bounds)
    return int(lengths[0]) if np.all(lengths == lengths[0]) else 1


def _channel_rows(x: np.ndarray, layer: Layer, s: int) -> np.ndarray:
    """Activations of ``layer``'s input as rows of channel vectors."""
    if layer.kind == "matmul":
        rows = x.reshape(-1, x.shape[-1] // s, s)
        return rows.transpose(0, 2, 1).reshape(-1, x.shape[-1] // s)
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


class _Moments:
    def __init__(self, channels: int):
        self.sum = np.zeros(channels)
        self.outer = np.zeros((channels, channels))
        self.count = 0

    def add(self, rows: np.ndarray) -> None:
        rows64 = rows.astype(np.float64)
        self.sum += rows64.sum(axis=0)
        self.outer += rows64.T @ rows64
        self.count += len(rows64)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.sum / self.count
        return mean, self.outer / self.count - np.outer(mean, mean)


def _calibration_samples(func: relax.Function, calibration) -> list[list[np.ndarray]]:
    params = list(func.params)
    if isinstance(calibration, Mapping):
        by_name = {p.name: p for p in params}
        missing = [p.name for p in params if p.name not in calibration]
        if missing:
            raise ValueError(
                f"calibration data lacks input(s) {', '.join(missing)}; "
                f"it has {', '.join(map(str, calibration))}"
            )
        arrays = [np.asarray(calibration[p.name]) for p in by_name.values()]
    else:
        arrays = [np.asarray(a) for a in calibration]
        if len(arrays) != len(params):
            raise ValueError(f"calibration gives {len(arrays)} arrays for {len(params)} inputs")
    per_input = []
    for p, a in zip(params, arrays, strict=True):
        shape = static_shape(p)
        if shape is None:
            raise ValueError(f"input {p.name} has a dynamic shape")
        if a.shape[1:] == shape:
            samples = [a[i] for i in range(a.shape[0])]
        elif shape and shape[0] == 1 and a.shape[1:] == shape[1:]:
            samples = [a[i : i + 1] for i in range(a.shape[0])]
        elif a.shape == shape:
            samples = [a]
        else:
            raise ValueError(
                f"calibration array for {p.name} has shape {a.shape}; "
                f"expected [num_samples, {', '.join(map(str, shape))}]"
            )
        dtype = str(p.ty.dtype)
        per_input.append([np.ascontiguousarray(x, dtype=dtype) for x in samples])
    counts = {len(s) for s in per_input}
    if len(counts) != 1:
        raise ValueError("calibration arrays have different numbers of samples")
    return [list(sample) for sample in zip(*per_input, strict=True)]




