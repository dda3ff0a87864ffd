"""Where tuning records live: the shipped databases, the user's cache, ``--tuning-log``
folders, one MetaSchedule JSON database per tuning key (the JSON database does not check the
target when it answers, so records of one CPU never share a folder with another's)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
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


LOCK = ".tvmforge-writer.lock"


@contextlib.contextmanager
def writer_lock(folder: Path, say=lambda _msg: None) -> Iterator[None]:
    """Hold the database in ``folder`` for one writer at a time.

    MetaSchedule's JSON database numbers workloads by their line in ``database_workload.json``
    as *it* read the file: two tunes appending to one folder at once each stored the workloads
    again and wrote records that point at each other's lines. A second ``tune`` into a folder
    waits here (saying for whom) and then reads what the first one wrote. The lock is an
    ``flock`` on a file in the folder, released by the OS when its holder dies.
    """
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            say(f"waiting for {holder}, which is tuning into {folder}")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"tvmforge tune (pid {os.getpid()})\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)


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
    return [readable(db) for db in found]


# --------------------------------------------------------------------------------------------
# Damaged databases: a line cut short (a tune killed mid-write, a disk filled up) made TVM's
# reader fail every compile that applied the database, naming no file.


def _damaged_lines(folder: Path) -> tuple[list[bytes], list[bytes], list[str]]:
    """The sound workload and record lines of a database, and one note per damaged line.

    A workload line must be a JSON list; a record line a JSON list whose first entry is the
    index of a sound workload. A record of a damaged workload goes with it.
    """
    notes: list[str] = []
    workloads: list[bytes] = []
    index_map: dict[int, int] = {}  # old workload index -> index among the sound ones
    lines = (folder / WORKLOADS).read_bytes().splitlines()
    for n, line in enumerate(ln for ln in lines if ln.strip()):
        try:
            ok = isinstance(json.loads(line), list)
        except ValueError:
            ok = False
        if ok:
            index_map[n] = len(workloads)
            workloads.append(line)
        else:
            notes.append(f"{folder / WORKLOADS}: workload {n + 1} is damaged")
    records: list[bytes] = []
    for n, line in enumerate((folder / RECORDS).read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            ok = isinstance(rec, list) and len(rec) == 2 and int(rec[0]) in index_map
        except (ValueError, TypeError):
            ok = False
        if ok:
            rec[0] = index_map[int(rec[0])]
            records.append(json.dumps(rec, separators=(",", ":")).encode())
        else:
            notes.append(f"{folder / RECORDS}: line {n} is damaged")
    return workloads, records, notes


def readable(folder: Path) -> Path:
    """``folder``, or, where some of its lines are damaged, a copy without them (in the
    temporary folder, keyed by the files' contents), with one warning per damaged line: a
    damaged record is skipped, never a failed compile."""
    try:
        workloads, records, notes = _damaged_lines(folder)
    except OSError:
        return folder
    if not notes:
        return folder
    for note in notes:
        log.warning("%s; skipped (retune to replace it)", note)
    digest = hashlib.sha256()
    for name in (WORKLOADS, RECORDS):
        digest.update((folder / name).read_bytes())
    clean = Path(tempfile.gettempdir()) / f"tvmforge-db-{digest.hexdigest()[:16]}"
    if not is_database(clean):
        clean.mkdir(parents=True, exist_ok=True)
        for name, lines in ((WORKLOADS, workloads), (RECORDS, records)):
            tmp = clean / f".{name}.part"
            tmp.write_bytes(b"".join(line + b"\n" for line in lines))
            os.replace(tmp, clean / name)
    return clean


def repair(folder: Path) -> int:
    """Move a database's damaged lines out of it (into ``*.damaged`` beside it), so that
    ``tune`` can append to it; the number of lines moved."""
    if not is_database(folder):
        return 0
    workloads, records, notes = _damaged_lines(folder)
    if not notes:
        return 0
    for note in notes:
        log.warning("%s; moved to %s.damaged", note, note.split(":")[0])
    for name, lines in ((WORKLOADS, workloads), (RECORDS, records)):
        path = folder / name
        with open(f"{path}.damaged", "ab") as keep:
            keep.write(path.read_bytes())
        tmp = folder / f".{name}.part"
        tmp.write_bytes(b"".join(line + b"\n" for line in lines))
        os.replace(tmp, path)
    return len(notes)




