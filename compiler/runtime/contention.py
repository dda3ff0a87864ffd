"""Fewer threads while other programs want the same cores, all of them again when they stop.

Why
---
TVM's thread pool splits every parallel loop evenly between its threads and waits for the
last one. When another process keeps one of our cores busy, the OS shares that core between
it and our thread there, which then finishes its half of each loop late, kernel after
kernel; and waiting threads call ``sched_yield``, which on Linux 6.6+ (EEVDF) pushes their
next turn a full time slice further each time, so a waiter on a shared core falls behind by
tens to hundreds of milliseconds. Measured on 2 cores with one busy neighbour process
(``yes``), ShuffleNet, 2 threads: median 10.0 ms and p99 226 ms, against 9.7 ms and 14 ms on
one thread (quiet: 7.4 ms on two, 9.1 on one). Splitting the loops into chunks that threads
claim at run time did not help: the thread the OS took the core from still holds its chunk
until it gets the core back (``docs/performance-log.md``).

What
----
``ThreadGovernor`` reads, around each inference, how long this process's threads waited
for a CPU while they could run (the second field of ``/proc/self/task/TID/schedstat``: time
on a run queue, kept by the kernel's scheduler). ``waiting / wall`` is how many of our
threads, on average, wanted a core and had none. More than ``WAITING_THREADS`` of them in
``CONTENDED_CALLS`` measured calls in a row, or nearly a whole thread's worth in
``STARVED_CALLS`` (``STARVED_THREADS``): the pool shrinks to the threads that did run
(``threads - waiting``, rounded, at least one). While shrunk, a call now and then (after
``PROBE_CALLS`` calls and ``probe_interval`` seconds) runs on all the threads again: if they
all ran, the pool stays whole; if not, it shrinks back and the interval doubles (from
``FIRST_PROBE_S`` up to ``MAX_PROBE_S``), so a machine that stays busy pays for a probe
rarely. Reading the counters costs a few microseconds a thread per call; Linux only (other
systems keep the thread count fixed).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("tvmforge")

# Threads waiting on average (waiting time / wall time) above which a call counts as contended;
# CONTENDED_CALLS such calls in a row shrink the pool, or STARVED_CALLS in a row in which at
# least STARVED_THREADS waited (nearly a thread's worth: one thread kept off a core for most of
# the call). One call is not enough: another library's threads spinning for a few milliseconds
# after their own run (ONNX Runtime's do) starve one call and are gone by the next.
WAITING_THREADS = 0.25
CONTENDED_CALLS = 3
STARVED_THREADS = 0.9
STARVED_CALLS = 2
# A probe runs once at least PROBE_CALLS calls and the probe interval have passed since the
# pool shrank or the last probe; the interval starts at FIRST_PROBE_S and doubles after each
# probe that finds the cores still busy, up to MAX_PROBE_S.
PROBE_CALLS = 4
FIRST_PROBE_S = 0.5
MAX_PROBE_S = 16.0
_TASKS = "/proc/self/task"
# The thread list is re-read every this many measured calls (12 us a read).
_RELIST_CALLS = 32
# Calls shorter than this are measured one in (this / their time), at most one in 64: the
# counters cost ~3 us a thread per call, which a 0.1 ms model would feel.
_MEASURED_SPAN_NS = 2_000_000


def _read_wait_ns(fd: int) -> int:
    """Nanoseconds the thread of ``fd`` (its ``schedstat``) has waited on a run queue."""
    fields = os.pread(fd, 96, 0).split()
    return int(fields[1])


class ThreadGovernor:
    """The thread count of this process's TVM pool, adapted to how busy its cores are.

    Parameters
    ----------
    threads:
        The most threads (the count ``set_threads`` chose or was given).
    set_pool:
        Sets the pool's thread count (``runtime.config_threadpool``).
    """

    def __init__(self, threads: int, set_pool: Callable[[int], None]) -> None:
        self.full = threads
        self.current = threads
        self._set_pool = set_pool
        self._fds: dict[int, int] = {}
        self._tids: set[int] = set()
        self._listed = 0
        self._skip = 0  # calls to run unmeasured before the next measured one
        self._lock = threading.Lock()
        self._contended = 0
        self._starved = 0
        self._calls_since_shrink = 0
        self._shrunk_at = 0.0  # time.monotonic() of the last shrink or probe
        self.probe_interval = FIRST_PROBE_S
        self._probing = False
        self.enabled = threads > 1 and os.path.isdir(_TASKS)
        self.changes: list[tuple[float, int, float]] = []  # (time, threads, waiting threads)

    def _waits(self) -> int:
        """Total run-queue wait of this process's threads (their ``schedstat``), ns."""
        if not self._listed:
            try:
                self._tids = {int(t) for t in os.listdir(_TASKS)}
            except OSError:
                return 0
            for gone in set(self._fds) - self._tids:
                os.close(self._fds.pop(gone))
        total = 0
        for tid in self._tids:
            fd = self._fds.get(tid)
            try:
                if fd is None:
                    fd = self._fds[tid] = os.open(f"{_TASKS}/{tid}/schedstat", os.O_RDONLY)
                total += _read_wait_ns(fd)
            except (OSError, ValueError, IndexError):  # the thread ended meanwhile
                if tid in self._fds:
                    os.close(self._fds.pop(tid))
        return total

    @contextmanager
    def call(self) -> Iterator[None]:
        """Around one inference: measure it (or let it run, between measured calls of a
        short model), then adapt the pool for the next calls."""
        if not self.enabled or not self._lock.acquire(blocking=False):
            yield  # another thread's call is being measured; this one runs as it is
            return
        try:
            if self.current < self.full:
                self._calls_since_shrink += 1
            probe = (
                self.current < self.full
                and self._calls_since_shrink >= PROBE_CALLS
                and time.monotonic() - self._shrunk_at >= self.probe_interval
            )
            if self._skip > 0 and not probe:
                self._skip -= 1
                yield
                return
            if probe:
                self._probing = True
                self._set_pool(self.full)
            wait0, t0 = self._waits(), time.perf_counter_ns()
            yield
            wall = time.perf_counter_ns() - t0
            waiting = (self._waits() - wait0) / wall if wall > 0 else 0.0
            self._listed = (self._listed + 1) % _RELIST_CALLS
            self._skip = max(1, min(64, _MEASURED_SPAN_NS // max(wall, 1))) - 1
            self._after(waiting)
        finally:
            self._lock.release()

    def _after(self, waiting: float) -> None:
        if self._probing:
            self._probing = False
            self._calls_since_shrink = 0
            self._shrunk_at = time.monotonic()
            if waiting <= WAITING_THREADS:
                self._change(self.full, waiting, applied=True)
                self.probe_interval = FIRST_PROBE_S
            else:
                self._set_pool(self.current)
                self.probe_interval = min(2 * self.probe_interval, MAX_PROBE_S)
            return
        if waiting <= WAITING_THREADS:
            self._contended = self._starved = 0
            return
        self._contended += 1
        self._starved = self._starved + 1 if waiting >= STARVED_THREADS else 0
        if (self._starved >= STARVED_CALLS or self._contended >= CONTENDED_CALLS) \
                and self.current > 1:
            ran = max(1, min(self.current - 1, math.floor(self.current - waiting + 0.5)))
            self._contended = self._starved = 0
            self._calls_since_shrink = 0
            self._shrunk_at = time.monotonic()
            self._change(ran, waiting)

    def _change(self, threads: int, waiting: float, applied: bool = False) -> None:
        if threads == self.current:
            return
        if not applied:  # (a probe has set the pool already)
            self._set_pool(threads)
        log.debug(
            "threads %d -> %d (%.2f threads waited for a CPU)", self.current, threads, waiting
        )
        self.current = threads
        self.changes.append((time.time(), threads, waiting))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:  # the descriptors of a model dropped without close()
        try:
            self.close()
        except Exception:
            pass
