"""Loading and running an artifact: ``tvmforge.load(path)(**arrays) -> {output name: array}``.

An x86 or CUDA artifact runs in-process on TVM's Relax VM. An aarch64 artifact runs in-process on
an ARM machine, and on an x86 machine under qemu user emulation when an aarch64 TVM runtime has
been prepared (``tvmforge.targets.qemu``).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from tvmforge.errors import CompileError, InputError, TvmforgeError
from tvmforge.runtime import artifact, scratch
from tvmforge.runtime.tensors import TensorInfo
from tvmforge.targets import x86
from tvmforge.targets.features import detect_host, host_arch


def thread_choice() -> tuple[int | None, str]:
    """The worker threads to use when none are asked for, and why.

    The physical cores this process may run on (its affinity mask), and no more than a
    container's CPU quota grants (cgroup ``cpu.max``: 1.5 CPUs give 2 threads, 1 CPU one): a
    thread per core of a 64-core host in a 2-CPU container would be preempted all the time.
    ``None`` when ``TVM_NUM_THREADS`` or ``OMP_NUM_THREADS`` is set (TVM reads them itself).
    TVM's own default halves the logical CPU count on x86 to skip hyper-threads; on a machine
    (or VM) without hyper-threading that is half the cores: a 2-core VM ran ResNet-50 on one
    thread, 71.5 ms against 37.8 ms with two. ONNX Runtime's default is the physical cores too.
    """
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            return None, f"{var}={os.environ[var]}"
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or usable
    except Exception:  # psutil missing or unable to read the topology
        physical = usable
    threads = max(1, min(usable, physical))
    why = f"the physical cores this process may run on ({usable} CPU(s) in its affinity mask)"
    from tvmforge.targets.features import cpu_quota

    quota = cpu_quota()
    if quota is not None and math.ceil(quota) < threads:
        threads = max(1, math.ceil(quota))
        why = f"the container's CPU quota ({quota:g} CPUs, cgroup)"
    return threads, why


def default_threads() -> int | None:
    """Worker threads when none are asked for (``thread_choice``)."""
    return thread_choice()[0]


SPIN_COUNT = 100_000


def set_threads(threads: int | None) -> None:
    """Use ``threads`` worker threads in TVM's runtime thread pool (``None``: the physical
    cores available, ``default_threads``, unless the environment sets a count)."""
    if not threads:
        threads = default_threads()
        if not threads:
            return
    import tvm

    os.environ["TVM_NUM_THREADS"] = str(threads)
    # Workers spin this long for the next kernel before sleeping (TVM reads it when it builds
    # the pool, which config_threadpool does). TVM's default lets them fall asleep between
    # the kernels of one inference, and waking them costs: SqueezeNet 6.24 -> 4.92 ms median
    # on 2 threads with 1e5 (1e6: 4.88); after the last kernel a worker spins ~30 ms of CPU.
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(SPIN_COUNT))
    # TVM pins each worker to a core but leaves the calling thread, which runs a share of
    # every parallel loop too, free on all of them: whenever the scheduler puts it on the
    # pinned worker's core the two take turns there. Measured (ShuffleNet, 2 threads, 6
    # rounds of 20 runs in each of 3 processes): pinned, medians 2.19-3.70 ms with a third
    # of the rounds at 2.8-3.7; unpinned, 2.21-2.63 ms; ResNet-50 28 ms either way. The
    # issue-4 table's small models had swung 0.67x <-> 1.23x ONNX Runtime between runs.
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))


def resize_pool(threads: int) -> None:
    """Run the calling thread's TVM pool on ``threads`` threads from the next kernel on.

    TVM re-pins the pool's threads (the caller included) on every reconfiguration unless
    ``TVM_BIND_THREADS`` says not to; ``set_threads`` sets it, but it may have been removed
    since (a test's monkeypatch did): pinned, the caller and a worker shared one core, and the
    whole process's affinity mask shrank to it."""
    import tvm

    os.environ.setdefault("TVM_BIND_THREADS", "0")
    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))


def pool_threads() -> int:
    """Worker threads TVM's runtime thread pool runs parallel kernels on, in this process."""
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())


# How a kernel's run-time check of an input (``frontend/converters/checked_gather.py``) starts
# its message; such a failure is the caller's bad input (exit 2), not a crash.
OUT_OF_RANGE = "tvmforge: index out of range"

DEFAULT_BATCH = 1  # the size random inputs give a dynamic (batch) dimension


def random_inputs(
    infos: list[TensorInfo], seed: int = 0, batch: int = DEFAULT_BATCH
) -> dict[str, np.ndarray]:
    """Seeded random arrays of the right shapes and dtypes (floats in [0, 1), ints in [0, 2));
    a dynamic dimension (a name in the shape) gets the size ``batch``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for info in infos:
        shape = tuple(int(d) if isinstance(d, int) else batch for d in info.shape)
        dtype = np.dtype(info.dtype)
        if dtype.kind == "f":
            arrays[info.name] = rng.random(shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[info.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            arrays[info.name] = rng.integers(0, 2, shape).astype(dtype)
    return arrays


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_inputs(
    infos: list[TensorInfo], arrays: Mapping[str, Any], source: str = "inputs"
) -> list[np.ndarray]:
    """The arrays in input order, checked against the model's inputs.

    A dynamic dimension (a name in the input's shape, e.g. ``batch``) takes any size of at
    least 1, the same in every input that names it.

    Raises
    ------
    InputError
        For a missing input, an unknown name, or a shape that does not match.
    """
    names = [i.name for i in infos]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(
            f"{source}: missing array(s) for input(s) {', '.join(map(repr, missing))}",
            hint=f"the model's inputs are {', '.join(names)}",
        )
    unknown = [k for k in arrays if k not in names]
    if unknown:
        raise InputError(
            f"{source}: {', '.join(map(repr, unknown))} is not an input of the model",
            hint=f"the model's inputs are {', '.join(names)}",
        )
    ordered = []
    sizes: dict[str, tuple[int, str]] = {}  # dynamic dim -> (size, the input that set it)
    for info in infos:
        arr = np.asarray(arrays[info.name])
        fits = arr.ndim == len(info.shape) and all(
            have == want if isinstance(want, int) else have >= 1
            for have, want in zip(arr.shape, info.shape, strict=False)
        )
        if not fits:
            dynamic = " (any size >= 1 for a named dimension)" if not info.static else ""
            raise InputError(
                f"{source}: input {info.name!r} has shape {list(arr.shape)}, "
                f"the model expects {_fmt(info.shape)}{dynamic}",
                hint="reshape the array or recompile with --input-shape",
            )
        for have, want in zip(arr.shape, info.shape, strict=True):
            if isinstance(want, int):
                continue
            size, first = sizes.setdefault(want, (have, info.name))
            if size != have:
                raise InputError(
                    f"{source}: input {info.name!r} has {want} = {have}, but input {first!r} "
                    f"has {want} = {size}",
                    hint=f"every input that has the dimension {want!r} needs the same size",
                )
        if arr.dtype != np.dtype(info.dtype):
            if np.can_cast(arr.dtype, info.dtype, casting="same_kind"):
                _check_representable(arr, np.dtype(info.dtype), info.name, source)
                arr = arr.astype(info.dtype)
            else:
                raise InputError(
                    f"{source}: input {info.name!r} has dtype {arr.dtype}, "
                    f"the model expects {info.dtype}"
                )
        # np.ascontiguousarray makes a 0-d array 1-d: a scalar input keeps its 0 dimensions
        ordered.append(np.ascontiguousarray(arr) if arr.ndim else np.array(arr, copy=True))
    return ordered


def _check_representable(arr: np.ndarray, dtype: np.dtype, name: str, source: str) -> None:
    """Refuse integer values that ``dtype`` cannot hold (a cast would wrap them silently)."""
    if arr.dtype.kind not in "iu" or dtype.kind not in "iu" or arr.size == 0:
        return
    info = np.iinfo(dtype)
    lo, hi = arr.min(), arr.max()
    if int(lo) < info.min or int(hi) > info.max:
        bad = int(lo) if int(lo) < info.min else int(hi)
        raise InputError(
            f"{source}: input {name!r} holds {bad}, which {dtype} cannot represent "
            f"(range {info.min} to {info.max})",
            hint=f"pass values the model's {dtype} input can hold",
        )


class Executor(Protocol):
    def run(self, args: list[np.ndarray]) -> list[np.ndarray]: ...

    def time(self, args: list[np.ndarray], repeat: int) -> list[float]: ...


def _flatten(result: Any) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        if result.__dlpack_device__()[0] == 1:  # CPU: DLPack view + copy, ~1 us (.numpy() ~25)
            return [np.from_dlpack(result).copy()]
        return [result.numpy()]
    out: list[np.ndarray] = []
    for item in result:
        out.extend(_flatten(item))
    return out


class LocalVM:
    """The artifact's library on this process's Relax VM."""

    _DEVICES: ClassVar[dict[str, str]] = {"cpu": "cpu", "cuda": "cuda"}

    def __init__(self, lib_path: Path, device: str, adapt: bool = False) -> None:
        import tvm
        from tvm import relax

        dev_kind = self._DEVICES.get(device, device)
        self.dev = tvm.device(dev_kind, 0)
        if not self.dev.exist:
            raise TvmforgeError(
                f"{lib_path}: built for {device}, but this machine has no {device} device",
                hint="run it on a machine with that device",
            )
        if dev_kind == "cuda":
            from tvmforge.targets import cuda

            cuda.prepare_runtime()
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), self.dev)
        self._main = self.vm["main"]  # looked up once, not per call
        self._on_cpu = dev_kind == "cpu"
        self._local = threading.local()  # per-thread input tensors (see ``_tensors``)
        from tvmforge.runtime.contention import ThreadGovernor

        threads = pool_threads() if dev_kind == "cpu" else 1
        self.governor = ThreadGovernor(threads, resize_pool)
        self.governor.enabled &= adapt

    def _tensors(self, args: list[np.ndarray]):
        """The arguments as device tensors. On the CPU each is copied into this thread's tensor
        of the last call when shape and dtype match, through a numpy view of it (~1 us an
        input, against ~30-70 us for a new tensor)."""
        import tvm

        if not self._on_cpu:
            return [tvm.runtime.tensor(np.asarray(a), self.dev) for a in args]
        cache = getattr(self._local, "inputs", None)
        if cache is None or len(cache) != len(args):
            cache = self._local.inputs = [None] * len(args)
        out = []
        for k, a in enumerate(args):
            a = np.asarray(a)
            slot = cache[k]
            if slot is not None and slot[2] == a.shape and slot[3] == a.dtype:
                np.copyto(slot[1], a)
                out.append(slot[0])
                continue
            t = tvm.runtime.tensor(a, self.dev)
            cache[k] = (t, np.from_dlpack(t), a.shape, a.dtype)
            out.append(t)
        return out

    def run(self, args: list[np.ndarray]) -> list[np.ndarray]:
        tensors = self._tensors(args)
        with self.governor.call():
            result = self._main(*tensors)
        return _flatten(result)

    def time(self, args: list[np.ndarray], repeat: int) -> list[float]:
        tensors = self._tensors(args)
        times = []
        for _ in range(repeat):
            with self.governor.call():
                t0 = time.perf_counter()
                self._main(*tensors)
                self.dev.sync()
                times.append(time.perf_counter() - t0)
        return times


class QemuVM:
    """An aarch64 library run under qemu user emulation on an x86 machine."""

    def __init__(self, lib_path: Path, qemu_cpu: str) -> None:
        self.lib_path = lib_path
        self.qemu_cpu = qemu_cpu

    def run(self, args: list[np.ndarray]) -> list[np.ndarray]:
        from tvmforge.targets import qemu

        outs, _ = qemu.run_library(self.lib_path, args, qemu_cpu=self.qemu_cpu)
        return outs

    def time(self, args: list[np.ndarray], repeat: int) -> list[float]:
        from tvmforge.targets import qemu

        _, times = qemu.run_library(self.lib_path, args, qemu_cpu=self.qemu_cpu, repeat=repeat)
        return times


class CompiledModel:
    """A loaded artifact: call it with numpy arrays named after the ONNX inputs."""

    def __init__(self, path: Path, manifest: dict[str, Any], executor: Executor, tmp) -> None:
        self.path = path
        self.manifest = manifest
        self.inputs = [TensorInfo.from_json(d) for d in manifest["inputs"]]
        self.outputs = [TensorInfo.from_json(d) for d in manifest["outputs"]]
        self._executor = executor
        self._tmp = tmp  # keeps the extracted library alive as long as the model

    @property
    def governor(self):
        """The ``ThreadGovernor`` adapting this model's thread count, or ``None`` (qemu)."""
        return getattr(self._executor, "governor", None)

    @property
    def emulated(self) -> bool:
        """Whether the model runs under qemu user emulation (its times say nothing of the
        device's speed)."""
        return isinstance(self._executor, QemuVM)

    def run(self, arrays: Mapping[str, Any], source: str = "inputs") -> dict[str, np.ndarray]:
        """Run once; returns ``{ONNX output name: array}``."""
        args = check_inputs(self.inputs, arrays, source)
        try:
            outs = self._executor.run(args)
        except Exception as err:  # a kernel's check of the inputs' values
            text = str(err)
            if OUT_OF_RANGE not in text:
                raise
            detail = text[text.index(OUT_OF_RANGE) + len(OUT_OF_RANGE):].splitlines()[0]
            raise InputError(f"{source}: {detail.lstrip(': ')}",
                             hint="pass indices inside the table the model reads") from None
        return {info.name: out for info, out in zip(self.outputs, outs, strict=True)}

    def __call__(self, **arrays: Any) -> dict[str, np.ndarray]:
        return self.run(arrays)

    def time(self, arrays: Mapping[str, Any], repeat: int = 10) -> list[float]:
        """Seconds per call for ``repeat`` calls (after one warm-up call)."""
        args = check_inputs(self.inputs, arrays)
        self._executor.run(args)
        return self._executor.time(args, repeat)


def _check_host_can_run(path: Path, target: dict[str, Any]) -> None:
    """Refuse an x86 artifact built for an ISA level this CPU lacks (read from CPUID)."""
    key = str(target.get("tuning_key", ""))
    if target.get("arch") != "x86_64" or target.get("device") != "cpu":
        return
    level = key.removeprefix("x86-")
    if not key.startswith("x86-") or level not in x86.LEVELS:
        return
    host = detect_host().x86_level
    if not x86.level_at_least(host, level):
        raise TvmforgeError(
            f"{path}: built for {target.get('preset')} ({key}), but this CPU only has x86-{host}",
            hint="recompile with --target x86 on this machine, or --target x86:avx2",
        )


def load(path: str | Path, *, threads: int | None = None, adapt: bool = True) -> CompiledModel:
    """Load an artifact written by ``tvmforge compile``.

    ``threads`` worker threads run its parallel kernels (``None``: ``thread_choice``). With
    ``adapt``, fewer of them run while other programs keep this process's cores busy, and all
    of them again when the cores are free (``runtime.contention``); ``adapt=False`` keeps
    the count fixed (a machine given to this model alone).

    Raises
    ------
    InputError
        When the file is not a tvmforge artifact.
    TvmforgeError
        When this machine cannot run it (wrong architecture, no GPU, missing CPU features).
    """
    path = Path(path)
    tmp = scratch.scratch_dir("run")
    try:
        manifest, lib = artifact.read(path, tmp.name)
    except BaseException:
        tmp.cleanup()
        raise
    target = manifest["target"]
    host = host_arch()
    set_threads(threads)
    try:
        if target["arch"] == host:
            _check_host_can_run(path, target)
            executor: Executor = LocalVM(lib, target["device"], adapt)
        elif target["arch"] == "aarch64":
            from tvmforge.targets import arm, qemu

            ok = qemu.available()
            if not ok:
                raise TvmforgeError(
                    f"{path}: built for aarch64; this {host} machine can run it only under "
                    f"qemu, which is not ready ({ok.reason})"
                )
            preset = target.get("preset")
            cpu = arm.qemu_cpu(preset) if preset in arm.presets else "max"
            executor = QemuVM(lib, cpu)
        else:
            raise TvmforgeError(
                f"{path}: built for {target['arch']}, this machine is {host}",
                hint="run it on a machine of that architecture",
            )
    except Exception:
        tmp.cleanup()
        raise
    return CompiledModel(path, manifest, executor, tmp)


__all__ = ["CompileError", "CompiledModel", "check_inputs", "load", "random_inputs"]
