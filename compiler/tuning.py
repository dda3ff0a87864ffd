"""Tuning databases: where MetaSchedule records live and which of them apply to a target.

``tuning_logs/<tuning-key>/`` holds JSON databases (``database_workload.json`` +
``database_tuning_record.json``). The JSON database does not check the target when it answers a
query (apache/tvm#15549), so the folder key *is* the check: a record is only offered to targets
whose ``tuning_key`` names that folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tvmforge.targets import ResolvedTarget

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def shipped_roots() -> list[Path]:
    """Folders that may hold shipped ``tuning_logs/`` (source tree, then installed data)."""
    roots = [
        Path(__file__).resolve().parent.parent / "tuning_logs",
        Path(sys.prefix) / "share" / "tvmforge" / "tuning_logs",
    ]
    return [r for r in roots if r.is_dir()]


def is_database(folder: Path) -> bool:
    return (folder / WORKLOADS).is_file() and (folder / RECORDS).is_file()


def databases_for(target: ResolvedTarget, user_logs: list[Path] | tuple[Path, ...] = ()) -> list[Path]:
    """Databases whose records apply to ``target``: shipped ones, then the user's.

    A user folder may be a database itself or hold one folder per tuning key.
    """
    found: list[Path] = []
    if target.tuning_key:
        for root in shipped_roots():
            db = root / target.tuning_key
            if is_database(db):
                found.append(db)
    for folder in user_logs:
        folder = Path(folder)
        if target.tuning_key and is_database(folder / target.tuning_key):
            found.append(folder / target.tuning_key)
        elif is_database(folder):
            found.append(folder)
    return found
