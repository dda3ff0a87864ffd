"""The artifact: one ``.tar`` with the exported library (weights inside) and ``manifest.json``.

Layout::

    model.tar
    ├── manifest.json   inputs/outputs (names, shapes, dtypes), target, passes, source sha256,
    │                   tvmforge and TVM versions
    └── model.so        the Relax VM executable, exported with ``export_library``

A user with nothing but ``apache-tvm`` untars it and runs ``tvm.runtime.load_module("model.so")``
with ``tvm.relax.VirtualMachine``. Writes are atomic: the tar is written to a temporary file in
the destination folder and renamed into place, so an interrupted compile leaves no half artifact.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from tvmforge.errors import InputError

FORMAT = "tvmforge-artifact/1"
MANIFEST = "manifest.json"
LIBRARY = "model.so"


def write(path: str | Path, library_file: str | Path, manifest: dict[str, Any]) -> Path:
    """Pack ``library_file`` and ``manifest`` into ``path`` atomically."""
    dest = Path(path).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, **manifest}
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
            data = json.dumps(manifest, indent=2, sort_keys=False).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
            tar.add(str(library_file), arcname=LIBRARY)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _open(path: str | Path) -> tarfile.TarFile:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file", hint="pass an artifact made by `tvmforge compile`")
    try:
        tar = tarfile.open(p, mode="r:")
    except (tarfile.TarError, OSError) as err:
        raise InputError(
            f"{p}: not a tvmforge artifact (not a readable tar: {type(err).__name__})",
            hint="pass the .tar that `tvmforge compile -o` wrote",
        ) from None
    names = tar.getnames()
    if MANIFEST not in names or LIBRARY not in names:
        tar.close()
        raise InputError(
            f"{p}: not a tvmforge artifact (no {MANIFEST} and {LIBRARY} inside)",
            hint="pass the .tar that `tvmforge compile -o` wrote",
        )
    return tar


def is_artifact(path: str | Path) -> bool:
    """True for a readable tar that holds a manifest and a library."""
    try:
        _open(path).close()
    except InputError:
        return False
    return True


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of an artifact."""
    with _open(path) as tar:
        member = tar.extractfile(MANIFEST)
        assert member is not None
        try:
            manifest = json.load(member)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: its {MANIFEST} is not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise InputError(
            f"{path}: artifact format {manifest.get('format')!r} is not {FORMAT!r}",
            hint="recompile the model with this tvmforge",
        )
    return manifest


def extract_library(path: str | Path, dest_dir: str | Path) -> Path:
    """Extract the library into ``dest_dir`` and return its path."""
    with _open(path) as tar:
        tar.extract(LIBRARY, path=dest_dir, filter="data")
    return Path(dest_dir) / LIBRARY
