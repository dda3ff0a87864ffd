"""Tuning on a fleet of devices: candidates measured through TVM's RPC tracker.

``tvmforge tune --rpc-tracker HOST:PORT --rpc-key KEY`` builds every candidate here (cross-
compiled for an ARM target) and measures it on a device that the tracker lends under ``KEY``,
as many at once as the tracker has devices under that key. It is TVM's own machinery: the
tracker (``python -m tvm.exec.rpc_tracker``), the servers on the devices (``python -m
tvm.exec.rpc_server --tracker HOST:PORT --key KEY``) and MetaSchedule's ``RPCRunner``; what
tvmforge adds is the plumbing around it:

- **Shared libraries, linked here.** A candidate travels as a ``.so`` linked by the target's
  own linker (``aarch64-linux-gnu-gcc`` for ARM), so a device needs no compiler: TVM's
  runtime-only wheel (or the aarch64 runtime of ``targets/qemu``) is enough.
- **Which device measured what.** Each session is requested from the tracker by hand (what
  ``TrackerSession.request`` does), so the device's address is known; it is appended to a
  file, and ``tune`` reports how many candidates each device measured.
- **Devices that vanish.** A device that dies mid-session fails only the candidate it was
  measuring (MetaSchedule records it as an error and moves on); the tracker drops it, and the
  next requests go to the others. When no device is left under the key, a request fails at
  once with that reason instead of waiting in the tracker's queue until the session timeout.

On a 2-core machine two loopback servers measure at the same time on the same cores, so their
timings disturb each other: a loopback fleet shows the mechanism, not a speed-up.
"""

from __future__ import annotations

import functools
import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tvmforge.errors import InputError

DEFAULT_SESSION_TIMEOUT = 60.0
_CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Fleet:
    """Devices lent by an RPC tracker under one key."""

    host: str
    port: int
    key: str
    session_timeout: float = DEFAULT_SESSION_TIMEOUT

    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_tracker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9190`` for IPv6) to ``(host, port)``.

    Raises
    ------
    InputError
        When ``text`` is not of that form.
    """
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(
            f"--rpc-tracker {text!r} is not HOST:PORT",
            hint="e.g. --rpc-tracker 127.0.0.1:9190 (the tracker's --host and --port)",
        )
    return host, int(port)


def tracker_summary(host: str, port: int) -> dict[str, Any]:
    """The tracker's own summary: ``{"queue_info": {key: {"free", "pending"}}, "server_info":
    [{"key": "server:KEY", "addr": [host, port]}, ...]}``.

    Raises
    ------
    InputError
        When nothing answers at ``host:port`` (TVM's client would retry for a minute), or
        what answers is not a tracker.
    """
    from tvm.rpc import client

    try:
        socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT).close()
    except OSError as err:
        raise InputError(
            f"no RPC tracker answers at {host}:{port} ({err.strerror or err})",
            hint="start one with `python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port "
            f"{port}`, or check --rpc-tracker",
        ) from None
    try:
        tracker = client.connect_tracker(host, port)
        summary = tracker.summary()
        tracker.close()
    except Exception as err:  # a port that answers but speaks no tracker protocol
        raise InputError(
            f"{host}:{port} is not an RPC tracker ({str(err).splitlines()[0][:120]})",
            hint="point --rpc-tracker at `python -m tvm.exec.rpc_tracker`",
        ) from None
    return summary


def devices(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per key: ``{"servers": ["host:port", ...], "free": n, "pending": n}``, sorted by key."""
    keys: dict[str, dict[str, Any]] = {}
    for info in summary.get("server_info", []):
        key = str(info.get("key", ""))
        key = key.split(":", 1)[1] if key.startswith("server:") else key
        addr = info.get("addr") or ["?", 0]
        entry = keys.setdefault(key, {"servers": [], "free": 0, "pending": 0})
        entry["servers"].append(f"{addr[0]}:{addr[1]}")
    for key, queue in summary.get("queue_info", {}).items():
        entry = keys.setdefault(key, {"servers": [], "free": 0, "pending": 0})
        entry["free"] = int(queue.get("free", 0))
        entry["pending"] = int(queue.get("pending", 0))
    return {k: keys[k] for k in sorted(keys)}


def check_fleet(fleet: Fleet) -> list[str]:
    """The servers registered under ``fleet.key``; raises when there are none."""
    found = devices(tracker_summary(fleet.host, fleet.port))
    servers = found.get(fleet.key, {}).get("servers", [])
    if not servers:
        known = ", ".join(f"{k} ({len(v['servers'])})" for k, v in found.items()) or "none"
        raise InputError(
            f"the RPC tracker at {fleet.address()} has no device under key {fleet.key!r} "
            f"(keys it has: {known})",
            hint="start a server on the device with `python -m tvm.exec.rpc_server --tracker "
            f"{fleet.address()} --key {fleet.key}`, or fix --rpc-key",
        )
    return servers


def _create_session(usage_file: str, rpc_config: Any) -> Any:
    """MetaSchedule's session factory, noting which device the tracker lent.

    Runs in a runner worker process. The request is ``TrackerSession.request`` written out,
    because that one does not say which server it connected to.
    """
    from tvm.rpc import base, client

    tracker = client.connect_tracker(rpc_config.tracker_host, rpc_config.tracker_port)
    try:
        key = rpc_config.tracker_key
        servers = tracker.summary().get("server_info", [])
        if not any(str(s.get("key")) == f"server:{key}" for s in servers):
            raise RuntimeError(f"no device left under key {key!r}")
        base.sendjson(tracker._sock, [base.TrackerCode.REQUEST, key, "",
                                      rpc_config.session_priority])
        value = base.recvjson(tracker._sock)
        if value[0] != base.TrackerCode.SUCCESS:
            raise RuntimeError(f"the tracker refused the request: {value!r}")
        url, port, matchkey = value[1]
    finally:
        tracker.close()
    session = client.connect(url, port, matchkey,
                             session_timeout=rpc_config.session_timeout_sec or 0)
    with open(usage_file, "a") as f:
        f.write(f"{url}:{port}\n")
    return session


def _alloc_argument(session: Any, device: Any, args_info: Any, alloc_repeat: int) -> list:
    """MetaSchedule's argument allocation, for devices whose TVM has no random filler.

    The stock one calls ``tvm.contrib.random.random_fill_for_measure`` on the device, which
    TVM's runtime-only library does not have (a board with the runtime wheel, the qemu runtime).
    There the random values are made here and copied over: small integers for integer tensors
    (indices stay small), uniform [-1, 1) for floats.
    """
    import numpy as np
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    try:
        remote_fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
    except AttributeError:
        remote_fill = None
    if remote_fill is not None:
        return alloc_argument_common(remote_fill, device, args_info, alloc_repeat)
    rng = np.random.default_rng(0)

    def fill(tensor: Any) -> None:
        import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)

        dtype = np.dtype(str(tensor.dtype))
        shape = tuple(int(d) for d in tensor.shape)
        if dtype.kind == "b":
            data = rng.integers(0, 2, shape).astype(dtype)
        elif dtype.kind in "iu":
            low = 0 if dtype.kind == "u" else -8
            data = rng.integers(low, low + 16, shape).astype(dtype)
        else:
            data = rng.uniform(-1, 1, shape).astype(dtype)
        tensor.copyfrom(data)

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def make_runner(fleet: Fleet, workers: int, usage_file: Path) -> Any:
    """MetaSchedule's ``RPCRunner`` on the fleet, one worker per device."""
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, RPCConfig, RPCRunner

    config = RPCConfig(
        tracker_host=fleet.host,
        tracker_port=fleet.port,
        tracker_key=fleet.key,
        session_priority=1,
        session_timeout_sec=int(max(1, round(fleet.session_timeout))),
    )
    return RPCRunner(
        rpc_config=config,
        # the same measurement as the local runner's (LocalRunner's defaults)
        evaluator_config=EvaluatorConfig(number=3, repeat=1, min_repeat_ms=100,
                                         enable_cpu_cache_flush=False),
        f_create_session=functools.partial(_create_session, str(usage_file)),
        f_alloc_argument=_alloc_argument,
        max_workers=max(1, workers),
    )


def usage(usage_file: Path) -> dict[str, int]:
    """Candidates measured per device (``host:port``), most first."""
    try:
        lines = Path(usage_file).read_text().split()
    except OSError:
        return {}
    return dict(Counter(lines).most_common())


def usage_line(per_device: dict[str, int]) -> str:
    if not per_device:
        return "measured on no device"
    parts = ", ".join(f"{addr} ({n})" for addr, n in per_device.items())
    s = "s" if len(per_device) != 1 else ""
    return f"measured on {len(per_device)} device{s}: {parts}"


# --------------------------------------------------------------------------------------------
# A loopback fleet: a tracker and servers on this machine (tests, benchmarks, trying it out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(predicate, timeout: float, what: str, proc=None, log: Path | None = None) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = ""
    if log is not None and log.exists():
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        tail = f": {lines[-1]}" if lines else ""
    raise RuntimeError(f"{what} did not come up in {timeout:g} s{tail}")


class LoopbackFleet:
    """A real RPC tracker and real servers as processes on 127.0.0.1, torn down on exit.

    ``add_server(key)`` starts ``python -m tvm.exec.rpc_server`` (this Python's TVM) and
    ``add_server(key, qemu_cpu="neoverse-n1")`` an aarch64 server under qemu on the runtime of
    ``targets/qemu`` (``qemu.start_rpc_server``). Servers run with ``TVM_NUM_THREADS=threads``.
    Every process writes a log in ``logs``.
    """

    def __init__(self, logs: Path, threads: int = 1) -> None:
        self.logs = Path(logs)
        self.threads = threads
        self.port = 0
        self.procs: list[Any] = []
        self.servers: dict[str, Any] = {}

    def __enter__(self) -> LoopbackFleet:
        import subprocess
        import sys

        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        log = self.logs / "tracker.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
             "--port", str(self.port), "--port-end", str(self.port + 1)],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs.append(proc)
        _wait_for(lambda: _answers(self.port), 60, "the RPC tracker", proc, log)
        return self

    def fleet(self, key: str, session_timeout: float = DEFAULT_SESSION_TIMEOUT) -> Fleet:
        return Fleet("127.0.0.1", self.port, key, session_timeout)

    def add_server(self, key: str, *, qemu_cpu: str | None = None, timeout: float = 120) -> str:
        """Start a server under ``key``; returns its ``host:port`` once the tracker lists it."""
        import subprocess
        import sys

        port = _free_port()
        name = f"server-{key}-{port}"
        log = self.logs / f"{name}.log"
        env = {**os.environ, "TVM_NUM_THREADS": str(self.threads)}
        if qemu_cpu is None:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker",
                 f"127.0.0.1:{self.port}", "--key", key, "--host", "127.0.0.1",
                 "--port", str(port), "--port-end", str(port + 1)],
                stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )
        else:
            from tvmforge.targets import qemu

            proc = qemu.start_rpc_server(
                ("127.0.0.1", self.port), key, qemu_cpu=qemu_cpu, port=port, log=log,
                threads=self.threads,
            )
        self.procs.append(proc)
        addr = f"127.0.0.1:{port}"
        self.servers[addr] = proc

        def listed() -> bool:
            try:
                return addr in devices(tracker_summary("127.0.0.1", self.port)).get(
                    key, {}).get("servers", [])
            except InputError:
                return False

        _wait_for(listed, timeout, f"the RPC server {name}", proc, log)
        return addr

    def kill_server(self, addr: str) -> None:
        """Kill one server (and the session process it forked), as a device that dies."""
        import signal

        proc = self.servers.pop(addr)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def summary(self) -> dict[str, Any]:
        return tracker_summary("127.0.0.1", self.port)

    def __exit__(self, *exc: object) -> None:
        import signal

        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except Exception:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
