"""``NonMaxSuppression`` thresholds as ONNX defines them.

- A box is suppressed when its IoU with a kept box is *greater* than ``iou_threshold``; TOPI
  suppresses at ``>=`` and skips suppression altogether for a threshold of 0. The threshold
  handed to TOPI is the next float32 above the given one, which turns ``>=`` into ``>``.
- An absent ``iou_threshold`` means 0 (TVM's converter used 0.5), an absent
  ``score_threshold`` means no score filtering (TVM's used 0.0, dropping negative scores).

The thresholds must be constants (``value_inputs``).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register


def _const(expr, params) -> float | None:
    if expr is None:
        return None
    value = onnx_frontend.get_constant(expr, params)
    if isinstance(value, tvm.ir.GenericConst):
        return float(value.value.numpy().reshape(-1)[0])
    return None


@register("NonMaxSuppression")
class NonMaxSuppression(onnx_frontend.NonMaxSuppression):
    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        inputs = list(inputs) + [None] * (5 - len(inputs))
        iou = _const(inputs[3], params)
        iou = 0.0 if iou is None else iou
        above = np.nextafter(np.float32(iou), np.float32(np.inf), dtype=np.float32)
        inputs[3] = relax.const(np.array(above, np.float32))
        if inputs[4] is None:
            inputs[4] = relax.const(np.array(np.finfo(np.float32).min, np.float32))
        return onnx_frontend.NonMaxSuppression._impl_v10.__func__(cls, bb, inputs, attr, params)
