"""The artifact: one ``.tar`` with the exported library (weights inside) and ``manifest.json``.

Layout::

    model.tar
    ├── manifest.json   inputs/outputs (names, shapes, dtypes), target, passes, source sha256,
    │                   tvmforge and TVM versions
    └── model.so        the Relax VM executable, exported with ``export_library``

A user with nothing but ``apache-tvm`` untars it and runs ``tvm.runtime.load_module("model.so")``
with ``tvm.relax.VirtualMachine``. Writes are atomic: the tar is written to a temporary file in
the destination folder and renamed into place, so an interrupted compile leaves no half artifact;
the artifact gets the mode the umask gives a new file.

A library is code: loading it runs its constructors. The manifest records the library's sha256
(``library_sha256``), and ``read`` refuses a library that does not match it before anything
loads it. Load artifacts only from sources you trust.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from tvmforge.errors import InputError

FORMAT = "tvmforge-artifact/1"
MANIFEST = "manifest.json"
LIBRARY = "model.so"


def sha256_of(path: str | Path) -> str:
    """The sha256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask_mode() -> int:
    """The mode a new file gets under this process's umask (``0o666 & ~umask``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write(path: str | Path, library_file: str | Path, manifest: dict[str, Any]) -> Path:
    """Pack ``library_file`` and ``manifest`` into ``path`` atomically."""
    dest = Path(path).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, **manifest, "library_sha256": sha256_of(library_file)}
    from tvmforge.runtime import scratch

    scratch.sweep(dest.parent)  # what killed writers left beside it
    fd, tmp = scratch.part_file(dest)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
            data = json.dumps(manifest, indent=2, sort_keys=False).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
            tar.add(str(library_file), arcname=LIBRARY)
        os.chmod(tmp, _umask_mode())  # mkstemp made it 0600
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
    try:
        names = tar.getnames()
    except (tarfile.TarError, OSError, EOFError):
        tar.close()
        raise InputError(
            f"{p}: not a complete tvmforge artifact (the tar is truncated or damaged)",
            hint="recompile the model, or copy the artifact again",
        ) from None
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


# What a manifest must hold, and the type of each entry.
_REQUIRED: dict[str, type] = {"inputs": list, "outputs": list, "target": dict}
_TARGET_KEYS = ("arch", "device")


def _manifest_of(tar: tarfile.TarFile, path: str | Path) -> dict[str, Any]:
    member = tar.extractfile(MANIFEST)
    if member is None:
        raise InputError(f"{path}: its {MANIFEST} is not a file")
    try:
        manifest = json.load(member)
    except (json.JSONDecodeError, UnicodeDecodeError, tarfile.TarError, OSError) as err:
        raise InputError(
            f"{path}: its {MANIFEST} is not readable JSON ({type(err).__name__})",
            hint="the artifact is damaged: recompile the model",
        ) from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: its {MANIFEST} is not a JSON object",
                         hint="the artifact is damaged: recompile the model")
    if manifest.get("format") != FORMAT:
        raise InputError(
            f"{path}: artifact format {manifest.get('format')!r} is not {FORMAT!r}",
            hint="recompile the model with this tvmforge",
        )
    bad = [k for k, kind in _REQUIRED.items() if not isinstance(manifest.get(k), kind)]
    bad += [f"target.{k}" for k in _TARGET_KEYS
            if isinstance(manifest.get("target"), dict) and k not in manifest["target"]]
    if bad:
        raise InputError(f"{path}: its {MANIFEST} lacks or mistypes {', '.join(bad)}",
                         hint="the artifact is damaged: recompile the model")
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of an artifact."""
    with _open(path) as tar:
        return _manifest_of(tar, path)


def read(path: str | Path, dest_dir: str | Path) -> tuple[dict[str, Any], Path]:
    """The manifest and the library (extracted into ``dest_dir``) of an artifact, both from one
    open of the file (a file replaced meanwhile cannot pair one artifact's manifest with
    another's library), the library checked against the manifest's sha256.

    Raises
    ------
    InputError
        For a file that is not a complete, intact tvmforge artifact.
    """
    with _open(path) as tar:
        manifest = _manifest_of(tar, path)
        try:
            tar.extract(LIBRARY, path=dest_dir, filter="data")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise InputError(
                f"{path}: its {LIBRARY} cannot be read ({type(err).__name__}: the file is "
                "truncated or damaged)",
                hint="recompile the model, or copy the artifact again",
            ) from None
    lib = Path(dest_dir) / LIBRARY
    want = manifest.get("library_sha256")
    if want is not None and sha256_of(lib) != want:
        raise InputError(
            f"{path}: its {LIBRARY} does not match the sha256 its manifest records; refusing "
            "to load it (a library is code)",
            hint="recompile the model, or get the artifact again from a source you trust",
        )
    return manifest, lib


def extract_library(path: str | Path, dest_dir: str | Path) -> Path:
    """Extract the library into ``dest_dir`` and return its path (checked; see ``read``)."""
    return read(path, dest_dir)[1]
