"""Scratch space that a killed process does not leave behind for good.

Every temporary folder or file tvmforge makes carries the id of the process that made it
(``tvmforge-<kind>-<pid>-XXXX`` in the temporary directory; ``.<artifact>.<pid>.XXXX.part``
beside an artifact being written). A process killed with SIGKILL cannot clean up, so the next
run removes what dead processes left (``sweep``): a 1.5 GB build folder of a killed compile is
gone after the next compile.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

__all__ = ["part_file", "scratch_dir", "sweep"]

_DIR = re.compile(r"^tvmforge-[a-z]+-(\d+)-")
_PART = re.compile(r"^\..+\.(\d+)\.[^.]+\.part$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary folder named after this process (removed on exit, or by a later sweep)."""
    return tempfile.TemporaryDirectory(prefix=f"tvmforge-{kind}-{os.getpid()}-")


def part_file(dest: Path) -> tuple[int, str]:
    """A ``.part`` file beside ``dest`` (``mkstemp``'s fd and path), named after this process."""
    return tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".part", dir=dest.parent)


def sweep(folder: Path | None = None) -> int:
    """Remove the scratch folders in the temporary directory, and the ``.part`` files in
    ``folder``, of processes that no longer run; how many were removed."""
    removed = 0
    tmp = Path(tempfile.gettempdir())
    for root, pattern in ((tmp, _DIR), *(((folder, _PART),) if folder is not None else ())):
        try:
            entries = list(root.iterdir())
        except OSError:
            continue
        for entry in entries:
            m = pattern.match(entry.name)
            if m is None or _alive(int(m.group(1))):
                continue
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed += 1
            except OSError:
                continue
    return removed
