"""tvmforge's Relax passes, one per file, registered here by name.

The import list is the registry: ``PASSES`` maps a pass's name to its factory, and
``compiler/driver/pipeline.py`` decides the order. Every pass is a plain Relax transform that
works in any TVM pipeline, not only tvmforge's.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm

from tvmforge.passes.graph.conv_transpose_direct import conv_transpose_direct
from tvmforge.passes.graph.fast_math_cpu import fast_math_cpu
from tvmforge.passes.graph.fold_constants_numpy import fold_constants_numpy
from tvmforge.passes.graph.fold_conv_bn import fold_conv_bn
from tvmforge.passes.graph.nchwc_layout import nchwc_layout
from tvmforge.passes.graph.pack_conv_weights import pack_conv_weights
from tvmforge.passes.graph.pack_dense_weights import pack_dense_weights
from tvmforge.passes.graph.simplify_power import simplify_power
from tvmforge.passes.graph.sink_transposes import sink_transposes
from tvmforge.passes.graph.stack_sum_to_add import stack_sum_to_add
from tvmforge.passes.prune.prune_channels import prune_channels
from tvmforge.passes.quantize.quantize_int8 import quantize_int8
from tvmforge.passes.schedule.rules import schedule_cpu_default

PassFactory = Callable[..., tvm.transform.Pass]

PASSES: dict[str, PassFactory] = {}
PASSES["fold_constants_numpy"] = fold_constants_numpy
PASSES["fold_conv_bn"] = fold_conv_bn
PASSES["stack_sum_to_add"] = stack_sum_to_add
PASSES["simplify_power"] = simplify_power
PASSES["pack_conv_weights"] = pack_conv_weights
PASSES["pack_dense_weights"] = pack_dense_weights
PASSES["fast_math_cpu"] = fast_math_cpu
PASSES["conv_transpose_direct"] = conv_transpose_direct
PASSES["schedule_cpu_default"] = schedule_cpu_default
PASSES["prune_channels"] = prune_channels
PASSES["quantize_int8"] = quantize_int8
PASSES["sink_transposes"] = sink_transposes
PASSES["nchwc_layout"] = nchwc_layout


def get_pass(name: str, **options) -> tvm.transform.Pass:
    """Instantiate a registered pass by name.

    Raises
    ------
    KeyError
        For a name that is not registered.
    """
    return PASSES[name](**options)
