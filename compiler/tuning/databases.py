"""Where tuning records live: the shipped databases, the user's cache, ``--tuning-log``
folders, one MetaSchedule JSON database per tuning key (the JSON database does not check the
target when it answers, so records of one CPU never share a folder with another's)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from tvmforge.targets import ResolvedTarget

log = logging.getLogger(__name__)

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


# --------------------------------------------------------------------------------------------
# Databases


def shipped_roots() -> list[Path]:
    """Folders that may hold shipped ``tuning_logs/`` (source tree, then installed data)."""
    roots = [
        Path(__file__).resolve().parents[2] / "tuning_logs",
        Path(sys.prefix) / "share" / "tvmforge" / "tuning_logs",
    ]
    return [r for r in roots if r.is_dir()]


def user_cache() -> Path:
    """Where ``compile --tune-trials`` tunes without ``--tuning-log``: the user's cache."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tvmforge" / "tuning_logs"


def is_database(folder: Path) -> bool:
    return (folder / WORKLOADS).is_file() and (folder / RECORDS).is_file()


def database_dir(work_dir: Path, target: ResolvedTarget) -> Path:
    """The database folder that ``tune`` writes for ``target`` under ``work_dir``.

    A target without a tuning key (an arbitrary JSON target) tunes into ``work_dir`` itself.
    """
    return Path(work_dir) / target.tuning_key if target.tuning_key else Path(work_dir)


def count_records(folder: Path) -> int:
    """Tuning records in a database folder (one JSON line each)."""
    path = Path(folder) / RECORDS
    if not path.is_file():
        return 0
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def databases_for(
    target: ResolvedTarget, user_logs: list[Path] | tuple[Path, ...] = (), *,
    shipped: bool = True,
) -> list[Path]:
    """Databases whose records apply to ``target``: shipped ones, the user cache's (where
    ``tvmforge tune`` writes by default), then the ``--tuning-log`` folders given
    (``shipped=False``: only those).

    A user folder may be a database itself or hold one folder per tuning key.
    """
    found: list[Path] = []
    if target.tuning_key and shipped:
        for root in [*shipped_roots(), user_cache()]:
            db = root / target.tuning_key
            if is_database(db) and db not in found:
                found.append(db)
    for folder in user_logs:
        folder = Path(folder)
        if target.tuning_key and is_database(folder / target.tuning_key):
            found.append(folder / target.tuning_key)
        elif is_database(folder):
            found.append(folder)
    return found




