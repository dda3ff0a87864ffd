"""tvmforge's Relax passes, one per file, registered here by name.

The import list is the registry: ``PASSES`` maps a pass's name to its factory, and
``compiler/pipeline.py`` decides the order. Every pass is a plain Relax transform that works in
any TVM pipeline, not only tvmforge's.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm

from .schedule_cpu_default import schedule_cpu_default

PassFactory = Callable[..., tvm.transform.Pass]

PASSES: dict[str, PassFactory] = {}
PASSES["schedule_cpu_default"] = schedule_cpu_default


def get_pass(name: str, **options) -> tvm.transform.Pass:
    """Instantiate a registered pass by name.

    Raises
    ------
    KeyError
        For a name that is not registered.
    """
    return PASSES[name](**options)
