"""What a target is, as data: a family (x86, arm, cuda) with named presets, resolved to a
``ResolvedTarget`` that the build, the artifact and the runtime read.

Target differences live here and in one module per family, never as ``if target == ...``
chains elsewhere: the compiler asks a ``ResolvedTarget`` for its TVM target, its exporter, its
device and whether this machine can build and run it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Capability:
    """Whether this machine can do something with a target, and why not."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class ResolvedTarget:
    """One concrete target: everything the compiler needs to build and export for it.

    Attributes
    ----------
    key:
        The family key (``x86``, ``arm``, ``cuda``, ``json``).
    preset:
        The preset's name within the family (``native``, ``cortex-a72``, ``sm_80``...).
    target:
        The TVM target as a dict (TVM 0.27 accepts only dicts).
    host:
        The host target dict for device targets, else ``None``.
    device:
        The runtime device kind: ``cpu`` or ``cuda``.
    arch:
        The machine architecture the exported library is for (``x86_64``, ``aarch64``).
    export_cc:
        The C compiler that links the exported library; ``None`` for the host's default.
    tuning_key:
        The folder under ``tuning_logs/`` whose records are valid for this target.
    threads:
        Worker threads the runtime should use; ``None`` for TVM's default.
    """

    key: str
    preset: str
    target: dict[str, Any]
    host: dict[str, Any] | None
    device: str
    arch: str
    export_cc: str | None = None
    tuning_key: str = ""
    threads: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def tvm_target(self):
        """The ``tvm.target.Target`` (imported lazily: ``tvmforge targets`` stays fast)."""
        import tvm

        if self.host is not None:
            return tvm.target.Target(self.target, host=self.host)
        return tvm.target.Target(self.target)

    @property
    def gpu(self) -> bool:
        return self.device != "cpu"

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the target."""
        return {
            "key": self.key,
            "preset": self.preset,
            "target": self.target,
            "host": self.host,
            "device": self.device,
            "arch": self.arch,
            "tuning_key": self.tuning_key,
            "threads": self.threads,
        }

    def spec(self) -> str:
        """A string that ``resolve`` turns back into this target."""
        if self.key == "json":
            return json.dumps(self.target)
        return f"{self.key}:{self.preset}"


class TargetFamily(Protocol):
    """One module of ``targets/``: a family of targets with presets."""

    key: str
    summary: str
    presets: dict[str, str]  # preset name -> one-line description
    default_preset: str

    def resolve(self, preset: str | None, threads: int | None) -> ResolvedTarget: ...

    def can_build(self) -> Capability: ...

    def can_run(self) -> Capability: ...
