"""Targets tvmforge builds for, registered by short key.

A target on the command line is ``KEY`` or ``KEY:PRESET`` (``x86``, ``x86:avx2``,
``arm:neoverse-n1``, ``cuda:sm_90``) or a JSON TVM target (``'{"kind": "llvm", ...}'``) for
anything else.
"""

from __future__ import annotations

import json
import shutil
from types import ModuleType
from typing import Any

from tvmforge.targets import arm, cuda, x86
from tvmforge.targets.base import Capability, ResolvedTarget, TargetFamily

REGISTRY: dict[str, TargetFamily] = {m.key: m for m in (x86, arm, cuda)}  # type: ignore[misc]

__all__ = [
    "REGISTRY",
    "Capability",
    "ResolvedTarget",
    "TargetFamily",
    "device_of",
    "host_key",
    "host_target",
    "resolve",
]


class TargetSpecError(ValueError):
    """A target string that names no known target; the message says what would."""


def _known() -> str:
    names = []
    for fam in REGISTRY.values():
        names.append(fam.key)
        names.extend(f"{fam.key}:{p}" for p in fam.presets)
    return ", ".join(names)


def resolve(spec: str, *, threads: int | None = None) -> ResolvedTarget:
    """Turn a target string into a ``ResolvedTarget``.

    Raises
    ------
    TargetSpecError
        For an unknown key or preset, or JSON that TVM does not accept.
    """
    spec = spec.strip()
    if spec.startswith("{"):
        return _resolve_json(spec, threads)
    fam_key, _, preset = spec.partition(":")
    fam = REGISTRY.get(fam_key)
    if fam is None:
        raise TargetSpecError(f"unknown target {spec!r}; known: {_known()}, or a JSON TVM target")
    try:
        return fam.resolve(preset or None, threads)
    except KeyError:
        raise TargetSpecError(
            f"unknown {fam_key} preset {preset!r}; known: {', '.join(fam.presets)}"
        ) from None


def device_of(target: Any) -> str:
    """The runtime device kind of a TVM target: ``cpu`` for LLVM/C, else the target kind."""
    kind = target.kind.name
    return "cpu" if kind in ("llvm", "c") else kind


def host_key() -> str:
    """The family key of this machine's CPU (``x86`` or ``arm``)."""
    from tvmforge.targets.features import host_arch

    return {"aarch64": "arm"}.get(host_arch(), "x86")


def host_target(*, threads: int | None = None) -> ResolvedTarget:
    """This machine's CPU as a target (what calibration and probes run on)."""
    return resolve(host_key(), threads=threads)


def _resolve_json(spec: str, threads: int | None) -> ResolvedTarget:
    import tvm

    try:
        target = json.loads(spec)
    except json.JSONDecodeError as err:
        raise TargetSpecError(f"target is not valid JSON: {err}") from None
    if not isinstance(target, dict) or "kind" not in target:
        raise TargetSpecError(
            'a JSON target must be an object with a "kind", e.g. {"kind": "llvm"}'
        )
    host = target.pop("host", None)
    try:
        tvm_target = tvm.target.Target(target, host=host) if host else tvm.target.Target(target)
    except Exception as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise TargetSpecError(f"TVM rejects the target {spec}: {first}") from None
    kind = tvm_target.kind.name
    triple = str(target.get("mtriple", ""))
    arch = "aarch64" if triple.startswith("aarch64") else "x86_64"
    device = "cpu" if kind in ("llvm", "c") else kind
    if device != "cpu" and host is None:
        host = {"kind": "llvm"}
    export_cc = arm.CROSS_CC if arch == "aarch64" and shutil.which(arm.CROSS_CC) else None
    if threads and kind == "llvm":
        target["num-cores"] = threads
    return ResolvedTarget(
        key="json",
        preset=kind,
        target=target,
        host=host,
        device=device,
        arch=arch,
        export_cc=export_cc,
        tuning_key="",  # no shipped logs are known to fit an arbitrary target
        threads=threads,
    )


def family(key: str) -> ModuleType:
    """The module of a registered family."""
    return REGISTRY[key]  # type: ignore[return-value]
