"""Run an aarch64 TVM artifact on an x86 machine under qemu user-mode emulation.

The mechanism: ``qemu-aarch64-static`` runs one aarch64 Linux *process* on the host, translating
its instructions and passing its system calls to the host kernel. It runs an aarch64 Python
(Debian bookworm's ``python3.11``), which imports the aarch64 wheels of TVM and numpy and loads the
exported Relax VM library (a ``.so`` linked by ``aarch64-linux-gnu-gcc``) exactly as a board would.
``-L SYSROOT`` makes qemu resolve the dynamic loader and shared libraries (libc, libstdc++,
libpython) inside an arm64 sysroot; every other path (the library, the runner script, the input and
output files) is the host's own, so the runner exchanges data with this process through ``.npz``
files in a temporary folder.

``QEMU_CPU`` is set to the target's core (``cortex-a72``, ``neoverse-n1``...). qemu's default
``max`` CPU has every extension, so it would run code that the real core cannot; with the core
named, an instruction the core lacks (``sdot`` on a Cortex-A72, SVE on a Neoverse-N1) raises
SIGILL here as it would on the board.

The runtime lives in one folder, ``runtime_root()`` (``$TVMFORGE_AARCH64_ROOT``, else
``~/.cache/tvmforge/aarch64``), made once by ``prepare()`` (``python -m tvmforge.targets.qemu``):

``sysroot/``
    arm64 Debian bookworm with ``python3.11-minimal``, ``libpython3.11-stdlib`` and
    ``libstdc++6``, unpacked by ``mmdebstrap --variant=extract`` (no dpkg of the host is touched,
    no package script runs).
``pyarm/``
    The ``manylinux`` aarch64 wheels of ``apache-tvm``, ``apache-tvm-ffi``, numpy, ml_dtypes,
    typing_extensions, and cloudpickle and psutil (for TVM's RPC server), installed by ``pip
    install --target``. ``libtvm_compiler.so`` and ``libtvm_runtime_cuda.so`` are deleted
    (230 MB), so TVM loads runtime-only: the runner uses ``tvm.runtime.vm.VirtualMachine``, not
    ``tvm.relax``; an RPC server there (``start_rpc_server``) has no random filler, so the
    fleet's runner sends the measurement inputs.
``READY``
    The marker, written last, naming what the folder was made from. A folder without it (or
    made from other pins) is never taken as ready; ``prepare()`` builds in a temporary folder
    beside the root and renames it into place, so a root is either complete or absent.

Emulated code runs about 45x slower than native, so what runs here should be small.
"""

from __future__ import annotations

import argparse
import compileall
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tvmforge.targets.base import Capability

QEMU = "qemu-aarch64-static"
MMDEBSTRAP = "mmdebstrap"
ROOT_ENV = "TVMFORGE_AARCH64_ROOT"
MARKER = "READY"
SUITE = "bookworm"
PYTHON = "python3.11"
DEBIAN_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6")
WHEELS = (
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post1",
    "numpy",
    "ml_dtypes",
    "typing_extensions",
    # TVM's RPC server (an aarch64 device of a tuning fleet) starts its serving process with
    # these; the VM runner does not need them.
    "cloudpickle==3.1.2",
    "psutil==7.2.2",
)
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64")
# Only the runtime is needed in the emulated process; these two are most of the wheel's size.
_DROPPED_LIBS = ("libtvm_compiler.so", "libtvm_runtime_cuda.so")
_FORMAT = 1
_PREPARE_HINT = "python -m tvmforge.targets.qemu"
_INSTALL_HINT = "apt-get install qemu-user-static mmdebstrap"
_DEFAULT_MIRRORS = ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security")

# The program the emulated Python runs. argv: library, entry, repeat, work folder. It reads
# ``inputs.npz`` + ``inputs.json`` from the work folder and writes ``outputs.npz``,
# ``outputs.json`` (dtypes and per-call seconds) there.
_RUNNER = r"""
import json, os, sys, time
import ml_dtypes  # registers bfloat16 and float8 names with numpy
import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

lib_path, entry, repeat, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def load(name):
    meta = json.load(open(os.path.join(work, name + ".json")))
    with np.load(os.path.join(work, name + ".npz"), allow_pickle=False) as data:
        return [data[f"a{i}"].view(np.dtype(d)) for i, d in enumerate(meta["dtypes"])]

def flatten(value, out):
    if isinstance(value, tvm.runtime.Tensor):
        out.append(value.numpy())
    elif isinstance(value, (list, tuple)) or type(value).__name__ == "Array":
        for item in value:
            flatten(item, out)
    else:
        out.append(np.asarray(value))
    return out

dev = tvm.cpu()
vm = VirtualMachine(tvm.runtime.load_module(lib_path), dev)
args = [tvm.runtime.tensor(a, dev) for a in load("inputs")]
times = []
for _ in range(max(repeat, 1)):
    t0 = time.perf_counter()
    result = vm[entry](*args)
    times.append(time.perf_counter() - t0)
outputs = flatten(result, [])
np.savez(os.path.join(work, "outputs.npz"),
         **{f"a{i}": a.view(f"u{a.dtype.itemsize}") if a.dtype.isbuiltin != 1 else a
            for i, a in enumerate(outputs)})
with open(os.path.join(work, "outputs.json"), "w") as f:
    json.dump({"dtypes": [a.dtype.name for a in outputs], "times": times}, f)
"""


# An RPC server in the emulated Python. ``python -m tvm.exec.rpc_server`` cannot be used: it
# starts the serving process with ``subprocess`` on ``sys.executable``, an aarch64 binary the
# host kernel cannot exec (qemu-user runs one process, not its children's ``exec``). The
# serving state is what that process would run; the session processes it forks stay inside the
# emulator. argv: tracker host, tracker port, key, host, port.
_RPC_SERVER = r"""
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from tvm.rpc.server import PopenRPCServerState
tracker_host, tracker_port, key, host, port = sys.argv[1:6]
state = PopenRPCServerState(host, int(port), int(port) + 1,
                            tracker_addr=(tracker_host, int(tracker_port)), key=key)
PopenRPCServerState.current = state
state.thread.join()
"""


class EmulationError(RuntimeError):
    """The emulated process failed; the message is the last line of its stderr.

    Attributes
    ----------
    returncode:
        The process's exit status (negative: killed by that signal, e.g. ``-4`` for SIGILL).
    stderr:
        Everything it wrote to stderr.
    """

    def __init__(self, message: str, returncode: int | None, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


def runtime_root() -> Path:
    """Where the aarch64 runtime lives.

    Returns
    -------
    Path
        ``$TVMFORGE_AARCH64_ROOT`` if set, else ``~/.cache/tvmforge/aarch64``.
    """
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".cache" / "tvmforge" / "aarch64"


def _spec() -> dict[str, object]:
    """What a root is made from; a root whose marker says otherwise is rebuilt."""
    return {
        "format": _FORMAT,
        "suite": SUITE,
        "packages": list(DEBIAN_PACKAGES),
        "wheels": list(WHEELS),
        "platforms": list(WHEEL_PLATFORMS),
    }


def _python(root: Path) -> Path:
    return root / "sysroot" / "usr" / "bin" / PYTHON


def _is_ready(root: Path) -> bool:
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("spec") != _spec():
        return False
    return _python(root).is_file() and (root / "pyarm" / "tvm" / "__init__.py").is_file()


def available(*, root: Path | None = None) -> Capability:
    """Whether aarch64 libraries can run here under qemu.

    Parameters
    ----------
    root:
        The runtime root to check; ``runtime_root()`` if ``None``.

    Returns
    -------
    Capability
        True when ``qemu-aarch64-static`` is on PATH and the runtime root is complete; otherwise
        False with a reason that says what to run.
    """
    if shutil.which(QEMU) is None:
        return Capability(False, f"{QEMU} not found: {_INSTALL_HINT}")
    root = Path(root) if root is not None else runtime_root()
    if not _is_ready(root):
        hint = _PREPARE_HINT if root == runtime_root() else f"{_PREPARE_HINT} --root {root}"
        return Capability(False, f"aarch64 runtime not prepared at {root}: run `{hint}`")
    return Capability(True)


# --------------------------------------------------------------------------------------------
# prepare


def _parse_sources(text: str, deb822: bool) -> list[tuple[list[str], list[str]]]:
    """(URIs, suites) of each ``deb`` entry of one apt sources file."""
    entries: list[tuple[list[str], list[str]]] = []
    if deb822:
        for stanza in text.split("\n\n"):
            fields: dict[str, str] = {}
            key = None
            for line in stanza.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[0] in " \t" and key:
                    fields[key] += " " + line.strip()
                    continue
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            entries.append((fields.get("uris", "").split(), fields.get("suites", "").split()))
        return entries
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            entries.append(([words[0]], [words[1]]))
    return entries


def debian_mirrors(apt_dir: Path = Path("/etc/apt")) -> tuple[str, str]:
    """The Debian mirror and security mirror this machine's apt is configured with.

    A machine may reach only its configured mirror (a proxy or a snapshot), so the sysroot is
    fetched from the same place. Falls back to ``deb.debian.org`` for a host that names no
    ``bookworm`` source (not Debian, or another release).

    Returns
    -------
    tuple[str, str]
        The URIs for ``bookworm`` and ``bookworm-security``.
    """
    files = [apt_dir / "sources.list"]
    files += sorted((apt_dir / "sources.list.d").glob("*.list"))
    files += sorted((apt_dir / "sources.list.d").glob("*.sources"))
    main = security = None
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uris, suites in _parse_sources(text, path.suffix == ".sources"):
            uris = [u for u in uris if u.startswith(("http://", "https://", "file:"))]
            if not uris:
                continue
            if main is None and SUITE in suites:
                main = uris[0]
            if security is None and f"{SUITE}-security" in suites:
                security = uris[0]
    return (main or _DEFAULT_MIRRORS[0], security or _DEFAULT_MIRRORS[1])


def _tool(cmd: list[str], what: str, log: Path, quiet: bool) -> None:
    """Run one preparation step; on failure raise with the step and the line that says why.

    That line is the step's first error line (``E: ...`` from apt, ``ERROR: ...`` from pip),
    else its last line of output; everything it wrote is in ``log``.
    """
    if not quiet:
        print(f"[tvmforge qemu] {what}", file=sys.stderr, flush=True)
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        start = out.tell()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        with open(log, errors="replace") as f:
            f.seek(start)
            lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("E:", "ERROR:", "error:"))]
        why = (errors or lines or [f"exit status {proc.returncode}"])[0 if errors else -1]
        raise RuntimeError(f"{what} failed ({cmd[0]}): {why} (log: {log})")


def prepare(root: Path | None = None, *, quiet: bool = False) -> Path:
    """Build the aarch64 runtime root (once; later calls return at once).

    Builds ``sysroot/`` (mmdebstrap) and ``pyarm/`` (pip) in a temporary folder beside ``root``,
    byte-compiles them, checks that the emulated Python imports TVM, writes the marker and
    renames the folder to ``root``. An incomplete or outdated root is replaced.

    Parameters
    ----------
    root:
        Where to put it; ``runtime_root()`` if ``None``.
    quiet:
        Print no progress lines to stderr.

    Returns
    -------
    Path
        The ready root.

    Raises
    ------
    RuntimeError
        A tool is missing (the message says what to install) or a step failed (the message
        gives its last line of output and the log file).
    """
    root = Path(root).expanduser().absolute() if root is not None else runtime_root()
    if _is_ready(root):
        return root
    for tool in (QEMU, MMDEBSTRAP):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: {_INSTALL_HINT}")
    if importlib.util.find_spec("pip") is None:
        raise RuntimeError(f"pip is not importable by {sys.executable}: python -m ensurepip")

    root.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
    log = root.parent / f"{root.name}.prepare.log"
    log.write_text("")
    try:
        main_uri, security_uri = debian_mirrors()
        sources = work / "sources.list"
        sources.write_text(
            f"deb {main_uri} {SUITE} main\ndeb {security_uri} {SUITE}-security main\n"
        )
        _tool(
            [
                MMDEBSTRAP,
                "--arch=arm64",
                "--variant=extract",
                f"--include={','.join(DEBIAN_PACKAGES)}",
                SUITE,
                str(work / "sysroot"),
                str(sources),
            ],
            f"arm64 {SUITE} sysroot from {main_uri}",
            log,
            quiet,
        )
        sources.unlink()
        pip = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--quiet"]
        pip += ["--disable-pip-version-check", "--no-warn-script-location"]
        pip += ["--target", str(work / "pyarm"), "--only-binary=:all:"]
        pip += ["--implementation", "cp", "--python-version", "3.11", "--abi", "cp311"]
        for plat in WHEEL_PLATFORMS:
            pip += ["--platform", plat]
        _tool(pip + list(WHEELS), "aarch64 wheels (pip --target)", log, quiet)
        for name in _DROPPED_LIBS:
            for path in glob.glob(str(work / "pyarm" / "**" / name), recursive=True):
                os.remove(path)
        _byte_compile(work, root)
        _smoke_test(work, log, quiet)
        marker = {"spec": _spec(), "mirrors": [main_uri, security_uri], "made": time.time()}
        (work / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        os.chmod(work, 0o755)  # mkdtemp made it 0700
        _install(work, root)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        print(
            f"[tvmforge qemu] ready: {root} ({size / 2**20:.0f} MiB, "
            f"{time.monotonic() - t_start:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return root


def _byte_compile(work: Path, root: Path) -> None:
    """Write the ``.pyc`` files now, with the host's Python, when it is the same minor version.

    The bytecode of one CPython minor version is the same on every machine, and compiling on the
    host takes seconds where the emulated interpreter takes a few times longer on its first run
    (and on every run if the root is read-only). Tracebacks name the final paths.
    """
    if sys.version_info[:2] != (3, 11):
        return
    stdlib = Path("usr") / "lib" / PYTHON
    for sub in (Path("pyarm"), Path("sysroot") / stdlib):
        # quiet=2 prints nothing, not even the files that do not compile (lib2to3's test data)
        compileall.compile_dir(str(work / sub), ddir=str(root / sub), quiet=2, workers=1)


def _smoke_test(work: Path, log: Path, quiet: bool) -> None:
    """Check that the emulated Python starts and imports the runtime-only TVM."""
    code = "import tvm; from tvm.runtime.vm import VirtualMachine; print(tvm.__version__)"
    cmd = [QEMU, "-L", str(work / "sysroot"), str(_python(work)), "-c", code]
    env = _emulated_env(work, "cortex-a72")
    if not quiet:
        print("[tvmforge qemu] checking the emulated runtime", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(
            f"the emulated runtime does not start: {_last_line(proc.stderr, proc.returncode)}"
            f" (log: {log})"
        )


def _install(work: Path, root: Path) -> None:
    """Move the finished folder to ``root``; an old, unready root is moved aside and deleted."""
    old = None
    if root.exists() or root.is_symlink():
        if _is_ready(root):  # another process finished first
            return
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.rename(root, old / "root")
    try:
        os.rename(work, root)
    except OSError:
        if not _is_ready(root):  # lost a race to a root that is not even ready
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# run


def _emulated_env(root: Path, qemu_cpu: str) -> dict[str, str]:
    """The environment of the emulated Python: the host's, without its Python settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "QEMU_"))}
    env.pop("VIRTUAL_ENV", None)
    env.update(
        {
            "PYTHONPATH": str(root / "pyarm"),
            "PYTHONNOUSERSITE": "1",
            "TVM_USE_RUNTIME_LIB": "1",  # do not even look for libtvm_compiler.so
            "QEMU_CPU": qemu_cpu,
        }
    )
    return env


def _last_line(stderr: str, returncode: int | None) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if lines:
        return lines[-1]
    return f"emulated process exited with status {returncode}"


def _save(path: Path, arrays: list[np.ndarray]) -> None:
    """Arrays to ``path.npz`` + ``path.json``; non-builtin dtypes (bfloat16...) go as raw bits."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    np.savez(
        path.with_suffix(".npz"),
        **{
            f"a{i}": a if a.dtype.isbuiltin == 1 else a.view(f"u{a.dtype.itemsize}")
            for i, a in enumerate(arrays)
        },
    )
    path.with_suffix(".json").write_text(json.dumps({"dtypes": [a.dtype.name for a in arrays]}))


def run_library(
    lib_path: Path,
    inputs: list[np.ndarray],
    *,
    qemu_cpu: str,
    entry: str = "main",
    repeat: int = 1,
    timeout: float = 600,
    root: Path | None = None,
) -> tuple[list[np.ndarray], list[float]]:
    """Run an exported aarch64 Relax VM library under qemu and return its outputs.

    Parameters
    ----------
    lib_path:
        The library, as written by ``Executable.export_library`` for an aarch64 target.
    inputs:
        The arguments of ``entry``, in order.
    qemu_cpu:
        The ``QEMU_CPU`` core to emulate (``targets.arm.qemu_cpu(preset)``); instructions that
        core lacks raise SIGILL.
    entry:
        The VM function to call.
    repeat:
        How many times to call it; each call is timed.
    timeout:
        Seconds the whole emulated process may take.
    root:
        The runtime root; ``runtime_root()`` if ``None``.

    Returns
    -------
    tuple[list[numpy.ndarray], list[float]]
        The outputs of the last call (a tuple result flattened, in order) and the seconds each
        call took (emulated time: ~45x native).

    Raises
    ------
    RuntimeError
        The runtime is not available (the message says how to prepare it), or the emulated
        process failed or timed out (``EmulationError``: the message is the last line of its
        stderr, e.g. ``qemu: uncaught target signal 4 (Illegal instruction) - core dumped``).
    FileNotFoundError
        ``lib_path`` does not exist.
    """
    root = Path(root).expanduser().absolute() if root is not None else runtime_root()
    cap = available(root=root)
    if not cap:
        raise RuntimeError(cap.reason)
    lib = Path(lib_path).absolute()
    if not lib.is_file():
        raise FileNotFoundError(f"no such library: {lib}")
    with tempfile.TemporaryDirectory(prefix="tvmforge-qemu-") as tmp:
        work = Path(tmp)
        (work / "runner.py").write_text(_RUNNER)
        _save(work / "inputs", list(inputs))
        cmd = [QEMU, "-L", str(root / "sysroot"), str(_python(root)), str(work / "runner.py")]
        cmd += [str(lib), entry, str(int(repeat)), str(work)]
        try:
            proc = subprocess.run(
                cmd,
                env=_emulated_env(root, qemu_cpu),
                cwd=work,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else ""
            raise EmulationError(
                f"{lib.name} under {QEMU} (QEMU_CPU={qemu_cpu}) timed out after {timeout:g} s",
                None,
                stderr or "",
            ) from None
        if proc.returncode != 0:
            raise EmulationError(
                _last_line(proc.stderr, proc.returncode), proc.returncode, proc.stderr
            )
        meta = json.loads((work / "outputs.json").read_text())
        with np.load(work / "outputs.npz", allow_pickle=False) as data:
            outputs = [_restore(data[f"a{i}"], dtype) for i, dtype in enumerate(meta["dtypes"])]
    return outputs, [float(t) for t in meta["times"]]


def start_rpc_server(
    tracker: tuple[str, int],
    key: str,
    *,
    qemu_cpu: str,
    port: int = 9091,
    host: str = "127.0.0.1",
    log: Path | None = None,
    threads: int | None = None,
    root: Path | None = None,
) -> subprocess.Popen:
    """Start an aarch64 TVM RPC server under qemu that registers with ``tracker`` as ``key``.

    It is an emulated ARM device for a tuning fleet (``tvmforge tune --rpc-tracker``): kernels
    built for an aarch64 target are uploaded to it and timed there, in emulated time (~45x
    native), with ``QEMU_CPU=qemu_cpu`` refusing what that core lacks. The process gets its own
    session (``os.killpg(proc.pid, ...)`` ends it and the session processes it forked).

    Parameters
    ----------
    tracker:
        The tracker's ``(host, port)``.
    key:
        The device key it registers under (``--rpc-key`` of ``tune``).
    qemu_cpu:
        The core to emulate (``targets.arm.qemu_cpu(preset)``).
    port, host:
        Where the server listens.
    log:
        File for its output [default: discarded].
    threads:
        ``TVM_NUM_THREADS`` of the server [default: the runtime's own choice].
    root:
        The runtime root; ``runtime_root()`` if ``None``.

    Raises
    ------
    RuntimeError
        The runtime is not available (the message says how to prepare it).
    """
    root = Path(root).expanduser().absolute() if root is not None else runtime_root()
    cap = available(root=root)
    if not cap:
        raise RuntimeError(cap.reason)
    env = _emulated_env(root, qemu_cpu)
    if threads:
        env["TVM_NUM_THREADS"] = str(threads)
    cmd = [QEMU, "-L", str(root / "sysroot"), str(_python(root)), "-c", _RPC_SERVER,
           tracker[0], str(tracker[1]), key, host, str(port)]
    out = open(log, "w") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        if log is not None:
            out.close()


def _restore(array: np.ndarray, dtype: str) -> np.ndarray:
    if array.dtype.name == dtype:
        return array
    import ml_dtypes  # noqa: F401  (registers bfloat16, float8_* with numpy)

    return array.view(np.dtype(dtype))


def main(argv: list[str] | None = None) -> int:
    """``python -m tvmforge.targets.qemu``: prepare the aarch64 runtime root."""
    parser = argparse.ArgumentParser(
        prog="python -m tvmforge.targets.qemu",
        description="Prepare the aarch64 runtime that runs ARM builds here under qemu.",
    )
    parser.add_argument("--root", type=Path, default=None, help=f"default: {runtime_root()}")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        root = prepare(args.root, quiet=args.quiet)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
