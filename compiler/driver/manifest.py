"""What the manifest records about the passes a build ran (read off the pipeline itself, so
the record cannot drift from what runs), and the line that says how much of the model the
tuning records covered."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tvmforge.targets import ResolvedTarget

__all__ = ["coverage_line", "pass_list"]


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


def coverage_line(coverage: dict[str, Any] | None) -> str:
    """One line saying how many of the model's tunable kernels tuning records scheduled.

    ``coverage`` is ``Built.tuning_coverage`` (the manifest's ``"tuning"`` entry); e.g.
    ``tuning records: 41 of 53 kernels (tuning_logs/x86-avx512-vnni)``, or
    ``tuning records: none apply (0 of 53 kernels; no database for x86-avx2)``. Where several
    databases covered kernels, each is named with its count.
    """
    if not coverage:
        return "tuning records: not measured"
    kernels, covered = coverage["kernels"], coverage["covered"]
    if kernels == 0:
        return "tuning records: no kernel to tune (every kernel is scheduled by hand)"
    databases = [_short_path(d) for d in coverage["databases"]]
    key = coverage.get("tuning_key") or ""
    if not databases:
        where = f"no database for {key}" if key else "no database for this target"
        return f"tuning records: none apply (0 of {kernels} kernels; {where})"
    if covered == 0:
        return (f"tuning records: none apply (0 of {kernels} kernels; no record matches in "
                f"{', '.join(databases)})")
    used = [(d, n) for d, n in zip(databases, coverage["covered_by"], strict=True) if n]
    source = used[0][0] if len(used) == 1 else ", ".join(f"{d}: {n}" for d, n in used)
    return f"tuning records: {covered} of {kernels} kernels ({source})"


def _short_path(path: str) -> str:
    """A database folder as a user would name it: ``tuning_logs/<key>`` for a shipped one,
    relative to the working directory or ``~/...`` under the home folder (whichever of the two
    is nearer), else the path as it is."""
    from tvmforge.tuning.databases import shipped_roots

    p = Path(path)
    for root in shipped_roots():
        if p.is_relative_to(root):
            return str(Path(root.name) / p.relative_to(root))
    bases = [(base, shown) for base, shown in ((Path.cwd(), ""), (Path.home(), "~"))
             if p.is_absolute() and p.is_relative_to(base) and p != base]
    if not bases:
        return str(p)
    base, shown = max(bases, key=lambda b: len(b[0].parts))
    return str(Path(shown) / p.relative_to(base)) if shown else str(p.relative_to(base))
