"""Hash every scheduled kernel of a set of models: the check that a refactor changed no kernel.

Each model is built for a CPU target up to the end of the default schedules (tuning records
off, so only tvmforge's own schedules are hashed); the TVMScript of every PrimFunc at that
point is hashed with sha256. Two runs, before and after a change, are compared with
``--compare``: any kernel whose hash differs is listed by model and kernel name.

    python benchmarks/kernel_hashes.py --out /tmp/before.json
    python benchmarks/kernel_hashes.py --compare /tmp/before.json

The build is stopped right after scheduling (no LLVM code generation), so the eight default
models hash in a few minutes on two cores. ``--target`` takes any tvmforge target string; a
preset of another CPU (``x86:avx512-vnni``) hashes the kernels that CPU would get, on any
machine: ``benchmarks/results/kernel_hashes_avx512-vnni.json`` is the reference the tests
compare with (``tests/benchmarks/test_kernel_hashes.py``; regenerate it with ``--out`` when a
kernel changes on purpose, and say why in the commit).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import tvm

DEFAULT_MODELS = (
    "zoo:resnet50",
    "zoo:inception_v1",
    "zoo:squeezenet",
    "zoo:shufflenet",
    "zoo:densenet121",
    "zoo:ppocr-det",
    "zoo:ppocr-rec",
    "zoo:bert-base",
)
# The last pass of the schedule stage: the module after it is what the hashes are taken of.
_LAST_SCHEDULE_PASS = "ScheduleCpuDefault"


_STOP = "tvmforge-kernel-hashes: kernels captured"


class _Scheduled(Exception):
    """Raised once the kernels are captured, to skip code generation."""


_RELAX_VAR = re.compile(r"\blv(\d+)")


def _canonical(text: str) -> str:
    """The kernel's text with the Relax binding names it inherits (``lv194``: the position of
    the binding in the whole model, which any change upstream renumbers) numbered by first
    appearance in the kernel, so that only the kernel itself is hashed."""
    order: dict[str, str] = {}
    return _RELAX_VAR.sub(lambda m: "lv" + order.setdefault(m[1], str(len(order))), text)


@tvm.instrument.pass_instrument
class _CaptureSchedules:
    """Keeps the kernels of the last schedule stage that ran; ``stop`` ends the build there.

    A quantized build runs the pipeline more than once (calibration builds the float model
    first), so it is not stopped: the last module scheduled is the int8 build's.
    """

    def __init__(self, stop: bool) -> None:
        self.kernels: dict[str, str] | None = None
        self.stop = stop

    def run_after_pass(self, mod, info) -> None:
        if info.name != _LAST_SCHEDULE_PASS:
            return
        kernels = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc):
                text = _canonical(func.script(show_meta=False))
                kernels[gvar.name_hint] = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.kernels = kernels
        if self.stop:
            raise _Scheduled(_STOP)


def model_hashes(
    model: str, target: str, quantize: str | None = None, threads: int = 2
) -> dict[str, str]:
    """The hash of each scheduled kernel of ``model`` built for ``target``."""
    import tvmforge

    capture = _CaptureSchedules(stop=not quantize)
    options = {}
    if quantize:
        options = {"quantize": quantize, "calibration": "random"}
    with tvm.transform.PassContext(opt_level=3, instruments=[capture]):
        try:
            tvmforge.build_model(
                model, target, threads=threads, use_shipped_logs=False, **options
            )
        except _Scheduled:
            pass
        except Exception as err:  # a stop raised inside TVM arrives wrapped
            if not capture.stop or capture.kernels is None:
                raise
            cause = err.__cause__ if err.__cause__ is not None else err
            if _STOP not in f"{err!s}{cause!s}{cause!r}" and not isinstance(cause, _Scheduled):
                raise
    if capture.kernels is None:
        raise RuntimeError(f"{model}: the schedule stage ({_LAST_SCHEDULE_PASS}) never ran")
    return capture.kernels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=list(DEFAULT_MODELS))
    ap.add_argument("--target", default="x86")
    ap.add_argument("--threads", type=int, default=2,
                    help="num-cores the parallel loops are split for (part of the kernel)")
    ap.add_argument(
        "--int8",
        action="append",
        default=[],
        metavar="MODEL",
        help="also hash MODEL's int8 build (random calibration); repeatable",
    )
    ap.add_argument("--out", type=Path, help="write the hashes as JSON")
    ap.add_argument("--compare", type=Path, help="compare with an earlier --out file")
    args = ap.parse_args(argv)
    result: dict[str, dict[str, str]] = {}
    jobs = [(m, None) for m in args.models] + [(m, "int8") for m in args.int8]
    for model, quantize in jobs:
        key = f"{model} [{quantize}]" if quantize else model
        t0 = time.perf_counter()
        result[key] = model_hashes(model, args.target, quantize, args.threads)
        print(f"{key}: {len(result[key])} kernels, {time.perf_counter() - t0:.1f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"target": args.target, "models": result}, indent=1))
    if args.compare:
        before = json.loads(args.compare.read_text())["models"]
        changed = 0
        for key, kernels in result.items():
            old = before.get(key)
            if old is None:
                print(f"{key}: not in {args.compare}")
                continue
            for name in sorted(set(old) | set(kernels)):
                if old.get(name) != kernels.get(name):
                    changed += 1
                    print(f"{key}: {name} {old.get(name)} -> {kernels.get(name)}")
        total = sum(len(k) for k in result.values())
        print(f"{total - changed} of {total} kernels identical, {changed} differ")
        return 1 if changed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
