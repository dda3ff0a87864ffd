"""What the manifest records about the passes a build ran: read off the pipeline itself, so
the record cannot drift from what runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tvmforge.targets import ResolvedTarget

__all__ = ["pass_list"]


# Graph passes that rewrite nothing unless the target is a CPU (each checks the current target).
_CPU_ONLY_PASSES = frozenset(
    {"FoldChannelShuffle", "NchwcLayout", "PackDenseWeights", "FastMathCpu"}
)


def pass_list(
    target: ResolvedTarget, databases: Sequence[Path], caller: Sequence[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """The passes compile runs, in order, as the manifest records them.

    Read off the pipeline itself (``pipeline.graph_passes``, the backend's library dispatch,
    ``pipeline.legalize_passes``), so the record cannot drift from what runs: the graph
    passes (those that act only on CPUs left out for other targets), ``caller``'s entries
    (pruning, quantization, with their settings) where the pipeline runs the caller's graph
    passes, the dispatch, legalization and fusion passes, the tuning databases applied, the
    default schedules, and the buffer passes on the lowered graph.
    """
    import tvm

    from tvmforge.driver.pipeline import _backend, buffer_passes, graph_passes, legalize_passes

    marker = "tvmforge.CallerPasses"
    slot = tvm.transform.module_pass(lambda mod, _ctx: mod, opt_level=0, name=marker)
    on_cpu = target.device == "cpu"
    steps: list[dict[str, Any]] = []
    for p in graph_passes([slot]):
        name = p.info.name
        if name == marker:
            steps += [dict(c) for c in caller]
        elif on_cpu or name not in _CPU_ONLY_PASSES:
            steps.append({"name": name, **({"winograd": True} if name == "NchwcLayout" else {})})
    tvm_target = target.tvm_target()
    dispatch = _backend(tvm_target).library_dispatch_passes(tvm_target)
    steps += [{"name": p.info.name} for p in dispatch]
    steps += [{"name": p.info.name} for p in legalize_passes()]
    steps.append({"name": "MetaScheduleApplyDatabase", "databases": [str(d) for d in databases]})
    steps.append(
        {"name": "default_schedules", "kind": "schedule_cpu_default" if on_cpu else "dlight-gpu"}
    )
    steps += [{"name": p.info.name} for p in buffer_passes()]
    return steps
