"""End-to-end A/B of two versions of tvmforge: a git revision against the working tree.

    python benchmarks/commit_ab.py REV MODEL... [--rounds N] [--threads T] [--no-tune] [--int8]

Each model is compiled twice, each build in a fresh process: once by the source of ``REV``
(``git archive`` into a temporary folder, imported through ``PYTHONPATH`` ahead of the
installed package) and once by the working tree. Both artifacts and ONNX Runtime are then
timed in this process, alternating in rounds (5 runs each per round, after 2 warm-up runs), so
that a load which drifts between rounds hits all three alike; the figures are medians over
every round, with each one's ratio to ONNX Runtime's median. The outputs of both builds are
checked against ONNX Runtime first. This is how the README's "A -> B" figures for a change are
taken (``REV`` the commit before it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

_BUILD = """
import sys
import numpy as np
from tvmforge.driver import build
kwargs = {}
if sys.argv[5] == "int8":  # calibrated on 8 seeded random samples, the same for both builds
    from tvmforge.driver.calibration import load_samples
    inputs = build.build_model(sys.argv[1], "x86", threads=int(sys.argv[3])).inputs
    samples = load_samples("random", inputs, random_samples=8)
    kwargs = {"quantize": "int8", "calibration": {
        info.name: np.stack([s[k] for s in samples]) for k, info in enumerate(inputs)}}
built = build.build_model(sys.argv[1], "x86", threads=int(sys.argv[3]),
                          use_shipped_logs=sys.argv[4] == "1", **kwargs)
build.export(built, sys.argv[2])
"""


def _checkout(rev: str, into: Path) -> Path:
    """``rev``'s source under ``into``, and a folder to put on ``PYTHONPATH`` so that
    ``import tvmforge`` imports it (the package-dir mapping of ``pyproject.toml``)."""
    src = into / "src"
    src.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    for sub in ("passes", "targets"):
        (src / "compiler" / sub).symlink_to(src / sub)
    path = into / "path"
    path.mkdir()
    (path / "tvmforge").symlink_to(src / "compiler")
    return path


def _build(
    model: str, out: Path, pythonpath: str | None, threads: int, logs: bool, int8: bool = False
) -> float:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", _BUILD, model, str(out), str(threads), "1" if logs else "0",
         "int8" if int8 else "float"],
        check=True, env=env, cwd=out.parent,
    )
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="git revision to compare the working tree with")
    parser.add_argument("models", nargs="+", help="model specs (zoo:NAME or .onnx paths)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-tune", action="store_true", help="apply no tuning records")
    parser.add_argument(
        "--int8", action="store_true",
        help="compare int8 builds (calibrated on 8 seeded random samples; the error and the "
        "ratio are against ONNX Runtime's float model)",
    )
    args = parser.parse_args(argv)

    from tvmforge.bench import reference
    from tvmforge.frontend import importer as frontend
    from tvmforge.frontend import zoo
    from tvmforge.runtime import executor as runtime

    with tempfile.TemporaryDirectory(prefix="commit_ab_") as tmp:
        tmp_path = Path(tmp)
        old_path = _checkout(args.rev, tmp_path)
        for spec in args.models:
            artifacts = {}
            for tag, pythonpath in ((args.rev, str(old_path)), ("working tree", None)):
                out = tmp_path / f"{len(artifacts)}.tar"
                seconds = _build(
                    spec, out, pythonpath, args.threads, not args.no_tune, args.int8
                )
                print(f"{spec}: built by {tag} in {seconds:.1f} s", flush=True)
                artifacts[tag] = runtime.load(out, threads=args.threads)
            arrays = runtime.random_inputs(next(iter(artifacts.values())).inputs, 0)
            model = frontend.load(zoo.load(spec[4:]) if spec.startswith("zoo:") else spec)
            sess = reference.session(model, args.threads)
            feed = {i.name: arrays[i.name] for i in sess.get_inputs()}
            refs = sess.run(None, feed)
            results = []
            for tag, compiled in artifacts.items():
                outs = compiled.run(arrays)
                outs = list(outs.values()) if isinstance(outs, dict) else list(outs)
                results.append([np.asarray(a) for a in outs])
                err = max(
                    float(np.abs(np.asarray(a) - r).max()) / max(float(np.abs(r).max()), 1e-30)
                    for a, r in zip(outs, refs, strict=True)
                )
                print(f"  {tag}: max error relative to the largest output {err:.1e}")
            same = all(np.array_equal(a, b) for a, b in zip(*results, strict=True))
            print(f"  the two builds' outputs are {'identical' if same else 'different'}")
            times: dict[str, list[float]] = {tag: [] for tag in [*artifacts, "onnxruntime"]}
            for _ in range(args.rounds):
                for tag, compiled in artifacts.items():
                    compiled.time(arrays, 2)
                    times[tag].extend(compiled.time(arrays, 5))
                    time.sleep(0.1)  # the pool's workers stop spinning
                for _ in range(2):
                    sess.run(None, feed)
                for _ in range(5):
                    t0 = time.perf_counter()
                    sess.run(None, feed)
                    times["onnxruntime"].append(time.perf_counter() - t0)
                time.sleep(0.1)
            ort = statistics.median(times["onnxruntime"])
            print(
                f"{spec}: "
                + " | ".join(
                    f"{tag} {statistics.median(v) * 1e3:.2f} ms ({statistics.median(v) / ort:.2f}x)"
                    for tag, v in times.items()
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
