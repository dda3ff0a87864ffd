"""Names for a layer that survive rewrites: a weight's content hash and a conv/matmul's ordinal
with its weight shape (how calibration, quantization and the report find the same layer again)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


def weight_key(weight: np.ndarray) -> str:
    """A key naming a weight by its contents (``layer_names`` maps these to layer names)."""
    w = np.ascontiguousarray(weight)
    h = hashlib.sha1(f"{w.shape}{w.dtype}".encode())
    h.update(w.tobytes())
    return h.hexdigest()[:20]


def ordinal_key(index: int, shape: Sequence[int]) -> str:
    """A key naming the ``index``-th conv2d/matmul of ``main`` whose weight has ``shape``."""
    return f"#{index}:{'x'.join(str(int(d)) for d in shape)}"



