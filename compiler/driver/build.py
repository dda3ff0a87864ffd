"""The driver: ONNX model → Relax → tvmforge pipeline → VM executable → artifact.

``compile_model`` is what ``tvmforge compile`` and the Python API call. It validates everything
about the input before spending time on the build, and writes the artifact atomically only after
the build (and the optional check) succeeded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tvmforge.errors import CompileError, InputError
from tvmforge.frontend import importer as frontend
from tvmforge.frontend.importer import OnnxModel, TensorInfo
from tvmforge.runtime import artifact
from tvmforge.targets import ResolvedTarget, resolve
from tvmforge.tuning.databases import databases_for

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class Built:
    """A compiled model in memory: the executable and everything the manifest says about it."""

    model: OnnxModel
    target: ResolvedTarget
    executable: Any  # tvm.relax.Executable
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    databases: list[Path]
    seconds: dict[str, float] = field(default_factory=dict)
    frozen: dict[str, list[float]] = field(default_factory=dict)
    pruning: dict[str, Any] | None = None  # prune_channels' report, when pruning was asked for
    quantization: dict[str, Any] | None = None  # quantize_int8's settings and report
    precision: dict[str, Any] = field(default_factory=dict)  # resolve_precision's note
    # the kernels the tuning databases covered (pipeline.collect_tuning_coverage, plus the
    # target's tuning key); ``manifest.coverage_line`` says it in one line
    tuning_coverage: dict[str, Any] | None = None
    # per kernel (the name the VM reports): the ONNX nodes it computes, its ops, FLOPs
    # (``provenance.tracking``); ``tvmforge profile`` joins its times with them
    kernels: dict[str, dict[str, Any]] | None = None

    def manifest(self) -> dict[str, Any]:
        import tvm

        from tvmforge import __version__

        caller: list[dict[str, Any]] = []
        extra: dict[str, Any] = {}
        if self.pruning is not None:
            settings = {k: self.pruning[k] for k in ("ratio", "method", "align", "min_channels")}
            caller.append({"name": "prune_channels", **settings,
                           "calibrated": self.pruning["calibrated_layers"] > 0})
            extra["pruning"] = self.pruning
        if self.quantization is not None:
            q = self.quantization
            caller.append({"name": f"quantize_{q['settings']['mode']}", **q["settings"]})
            extra["quantization"] = q["report"]
        if self.precision:
            extra["precision"] = self.precision
        if self.tuning_coverage is not None:
            extra["tuning"] = self.tuning_coverage
        if self.kernels is not None:
            extra["kernels"] = self.kernels
        from tvmforge.driver.manifest import pass_list

        passes = pass_list(self.target, self.databases, caller)
        return {
            "model": {
                "source": self.model.path,
                "sha256": self.model.sha256,
                "opset": self.model.opset,
                "producer": self.model.proto.producer_name,
            },
            "inputs": [i.to_json() for i in self.inputs],
            "frozen_inputs": self.frozen,
            "outputs": [o.to_json() for o in self.outputs],
            "target": self.target.describe(),
            "passes": passes,
            "versions": {"tvmforge": __version__, "tvm": tvm.__version__},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            **extra,
        }


def _relax_outputs(mod, model: OnnxModel) -> list[TensorInfo]:
    from tvm import relax

    ret = mod["main"].ret_ty
    leaves = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    names = [o.name for o in model.outputs]
    if len(leaves) != len(names):
        raise CompileError(
            f"{model.path}: the imported graph returns {len(leaves)} tensors for "
            f"{len(names)} ONNX outputs"
        )
    outs = []
    for name, sinfo in zip(names, leaves, strict=True):
        if sinfo.shape is None:  # known only at run time (NonZero's count): ?0, ?1, ...
            shape = tuple(f"?{k}" for k in range(max(int(sinfo.ndim), 0)))
        else:
            shape = tuple(int(v) if hasattr(v, "value") else str(v) for v in sinfo.shape.values)
        outs.append(TensorInfo(name, shape, str(sinfo.dtype)))
    return outs


def build_model(
    model: str | Path | onnx.ModelProto | OnnxModel,
    target: str | ResolvedTarget = "x86",
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    frozen_inputs: dict[str, list[float]] | None = None,
    threads: int | None = None,
    tuning_logs: Sequence[Path] = (),
    use_shipped_logs: bool = True,
    progress: Progress | None = None,
    prune: float | None = None,
    prune_method: str = "l1",
    calibration: Mapping[str, Any] | str | Path | None = None,
    quantize: str | None = None,
    calibration_method: str = "minmax",
    skip_layers: Sequence[str] = (),
    graph_passes: Sequence[Any] = (),
    precision: str = "auto",
    group_size: int = 32,
    asymmetric: bool = False,
    scale_search: bool = False,
    activation_scales: str = "static",
) -> Built:
    """Import, optimize and build a model for a target, in memory.

    ``prune`` (a fraction of the conv/dense FLOPs in ``[0, 1)``; ``0`` removes only constant
    channels, exactly) runs ``prune_channels`` with ``prune_method`` (``l1``, ``l2``;
    ``channel`` means ``l1``; ``taylor`` scores channels on ``calibration``) and, given
    ``calibration`` (``{input: [N, *shape]}`` or an ``.npz`` of that), refits the layers after
    removed channels; the report (FLOPs, parameters and weight bytes before/after, in total and
    per layer; the library size after export) lands in ``Built.pruning`` and the manifest.

    ``quantize="int8"`` runs ``quantize_int8`` (after pruning) with activation ranges from
    ``calibration`` (``.npz``, a folder of them, ``{input: [N, *shape]}``, or ``"random"``,
    which must be asked for by name) by ``calibration_method`` (``minmax``, ``percentile``,
    ``entropy``); layers named in ``skip_layers`` stay float. The settings and the per-layer
    report land in ``Built.quantization`` and the manifest. ``quantize="int4"`` makes the
    matmuls with constant weights 4-bit weight-only kernels (groups of ``group_size`` along K,
    symmetric unless ``asymmetric``, ``scale_search`` for a scale per group that lowers the
    weight error); it needs no calibration data. ``activation_scales="dynamic"`` with
    ``quantize="int8"`` quantizes the matmuls' inputs with their own range at run time (no
    calibration data; convolutions stay float).

    ``precision`` (``auto``, ``fp32``, ``int8``) says how a pre-quantized (QDQ) model is built:
    ``auto`` gives it integer kernels with its own scales where the target has int8
    dot-product kernels and float kernels that round at its Q/DQ points elsewhere
    (``calibration.resolve_precision``); what was chosen, and why, lands in
    ``Built.precision`` and the manifest.

    ``graph_passes`` (Relax passes) run in the graph stage after pruning and quantization,
    before tvmforge's own layout and packing passes: e.g. ``[pack_conv_weights()]`` keeps the
    convs' activations NCHW (what ``benchmarks/layout_ab.py`` compares the blocked layout with).

    Raises
    ------
    InputError
        For bad input (file, shapes, target).
    CompileError
        For a model that could not be imported or built.
    """
    import tvm

    from tvmforge.driver.pipeline import collect_tuning_coverage, tvmforge_pipeline

    say = progress or (lambda _msg: None)
    if isinstance(target, str):
        from tvmforge.targets import TargetSpecError

        try:
            target = resolve(target, threads=threads)
        except TargetSpecError as err:
            raise InputError(str(err)) from None
    onnx_model = model if isinstance(model, OnnxModel) else frontend.load(model)
    frozen_inputs = {**onnx_model.frozen_defaults, **dict(frozen_inputs or {})}
    onnx_model = frontend.freeze_inputs(onnx_model, frozen_inputs)
    inputs = frontend.resolve_inputs(onnx_model, dict(input_shapes or {}), dynamic_batch=True)
    from tvmforge.driver.calibration import resolve_precision

    quantize, precision_note = resolve_precision(
        onnx_model, inputs, target.tvm_target(), quantize, precision)
    lenient = quantize == "int4" or activation_scales == "dynamic"
    _check_static_for(onnx_model, inputs, prune=prune,
                      quantize=quantize if not lenient else None)
    seconds: dict[str, float] = {}

    say("importing ONNX into Relax")
    t0 = time.perf_counter()
    from tvmforge.driver import provenance
    from tvmforge.frontend.converters.quantized import as_qdq

    with as_qdq(precision_note["model"] == "qoperator" and quantize == "int8"):
        # to_relax, and which ONNX node each binding computes (the module is the same)
        mod, onnx_nodes = provenance.import_with_provenance(onnx_model, inputs)
    outputs = _relax_outputs(mod, onnx_model)
    seconds["import"] = time.perf_counter() - t0

    # A --tuning-log folder holds one database per tuning key (or is one).
    databases = databases_for(target, list(tuning_logs), shipped=use_shipped_logs)
    say(f"building for {target.spec()}")
    t0 = time.perf_counter()
    tvm_target = target.tvm_target()
    pruner = None
    if prune is not None:
        pruner = _pruning_pass(onnx_model, inputs, prune, prune_method, calibration, threads)
    quantizer = None
    if quantize is not None:
        from tvmforge.driver.calibration import quantize_pass

        quantizer, q_settings = quantize_pass(
            onnx_model, inputs, quantize, calibration, calibration_method, skip_layers, threads,
            group_size=group_size, asymmetric=asymmetric, scale_search=scale_search,
            activation_scales=activation_scales,
        )
        from tvmforge.passes.schedule.intrinsics import int8_family

        if quantize == "int8" and int8_family(tvm_target) is None:
            log.warning(
                "%s: %s has no int8 kernel family (AVX-512 VNNI, AVX2 vpmaddubsw, ARM sdot): "
                "its int8 kernels compute exactly but run slower than float (ResNet-50's plain "
                "int32 kernels: 3.6x); build float for this CPU, or int8 for one with VNNI "
                "(--target x86:avx512-vnni), AVX2 (x86:avx2) or sdot (--target arm:neoverse-n1)",
                onnx_model.path, target.spec(),
            )
    from tvmforge.passes.schedule.batch_outer import collect_declined

    def _compile(fuse: bool):
        pipeline = tvmforge_pipeline(
            target=tvm_target, databases=databases,
            graph=[*(p for p in (pruner, quantizer) if p is not None), *graph_passes],
            fuse=fuse,
        )
        return tvm.compile(mod, target=tvm_target, relax_pipeline=pipeline)

    try:
        # dynamic-batch kernels left unscheduled; the kernels tuning records covered
        # ... and which ONNX nodes each kernel computes (provenance)
        with collect_declined() as mixed, collect_tuning_coverage() as coverage, \
                provenance.tracking(onnx_nodes) as kernels:
            try:
                executable = _compile(fuse=True)
            except Exception as err:
                # TVM 0.27's FuseOps can move an allocation sized by a shape that only a run-time
                # value defines (Range(0, n) of a computed n) ahead of its definition; the VM's
                # shape lowering then fails. Unfused, every such shape is bound first.
                if "has not been computed" not in str(err):
                    raise
                log.warning(
                    "%s: a run-time shape defeats operator fusion (TVM: %s); building with one "
                    "kernel per operator", onnx_model.path, frontend._first_line(err)[:120],
                )
                executable = _compile(fuse=False)
    except Exception as err:
        from tvmforge.errors import interrupted

        if interrupted():  # a Ctrl-C/SIGTERM that TVM's FFI handed back as a RuntimeError
            raise KeyboardInterrupt from None
        raise CompileError(
            f"{onnx_model.path}: building for {target.spec()} failed: {frontend._first_line(err)}",
            hint="rerun with --verbose for the compiler's trace",
        ) from err
    seconds["build"] = time.perf_counter() - t0
    built = Built(onnx_model, target, executable, inputs, outputs, databases, seconds)
    built.precision = precision_note
    built.kernels = dict(kernels) or None
    if coverage:
        built.tuning_coverage = {**coverage, "tuning_key": target.tuning_key}
    if precision_note["model"] in ("qdq", "qoperator"):
        say(f"pre-quantized model ({precision_note['model']}): "
            f"{precision_note['kernels']} kernels; {precision_note['reason']}")
    built.frozen = {
        k: np.asarray(v).reshape(-1).tolist() for k, v in (frozen_inputs or {}).items()
    }
    dynamic = [i for i in inputs if not i.static]
    if dynamic and mixed:
        fixed = "x".join(str(d) if isinstance(d, int) else "1" for d in dynamic[0].shape)
        log.warning(
            "%s: the batch dimension of %s stays dynamic (any batch size runs); %d kernel(s) "
            "mix samples across the batch (%s): the default schedules need a fixed batch for "
            "those, and they can run many times slower than with one (--input-shape %s=%s)",
            onnx_model.path,
            ", ".join(repr(i.name) for i in dynamic),
            len(mixed),
            "; ".join(mixed[:3]) + ("; ..." if len(mixed) > 3 else ""),
            dynamic[0].name,
            fixed,
        )
    if pruner is not None and pruner.report is not None:
        built.pruning = pruner.report.to_json()
        say(f"pruning: {pruner.report.summary()}")
    if quantizer is not None and quantizer.report is not None:
        built.quantization = {"settings": q_settings, "report": quantizer.report.to_json()}
        say(f"quantization: {quantizer.report.summary()}")
    return built


def _check_static_for(model: OnnxModel, inputs: list[TensorInfo], **options: Any) -> None:
    """Pruning and quantization measure the model at fixed shapes: no dynamic batch there."""
    asked = [f"--{k}" for k, v in options.items() if v is not None]
    dynamic = next((i for i in inputs if not i.static), None)
    if not asked or dynamic is None:
        return
    fixed = "x".join(str(d) if isinstance(d, int) else "1" for d in dynamic.shape)
    raise InputError(
        f"{model.path}: {' and '.join(asked)} need(s) fixed input shapes, but input "
        f"{dynamic.name!r} keeps a dynamic batch dimension "
        f"[{', '.join(str(d) for d in dynamic.shape)}]",
        hint=f"fix it with --input-shape {dynamic.name}={fixed}",
    )


PRUNE_METHODS = {"l1": "l1", "l2": "l2", "channel": "l1", "taylor": "taylor"}


def _pruning_pass(
    model: OnnxModel,
    inputs: list[TensorInfo],
    ratio: float,
    method: str,
    calibration: Mapping[str, Any] | str | Path | None,
    threads: int | None,
):
    """``prune_channels`` set up for this model: ONNX layer names, calibration, a fast runner."""
    import numpy as np

    from tvmforge.driver.calibration import host_runner, load_samples, onnx_layer_names
    from tvmforge.passes.prune.prune_channels import ordinal_key, prune_channels

    if not 0.0 <= ratio < 1.0:
        raise InputError(f"--prune {ratio}: the ratio is a fraction of FLOPs in [0, 1)")
    if method not in PRUNE_METHODS:
        raise InputError(f"--prune-method {method!r}: use one of {', '.join(PRUNE_METHODS)}")
    if PRUNE_METHODS[method] == "taylor" and calibration is None:
        raise InputError(
            "--prune-method taylor scores channels on calibration activations: pass "
            "--calibration DATA"
        )
    arrays = None
    if calibration is not None:
        samples = load_samples(calibration, inputs)
        arrays = [np.stack([s[i] for s in samples]) for i in range(len(inputs))]
    names = onnx_layer_names(model.proto)
    # BatchNorm folding changes conv weights: name layers by their place too
    graph = model.proto.graph
    weights = {t.name: t for t in graph.initializer}
    ordinal = 0  # the how-many-th conv2d / matmul of the Relax graph this node becomes
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        w = weights.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Conv" and w is not None and len(w.dims) != 4:
            continue  # conv1d / conv3d: not a conv2d
        if w is not None:
            shape = tuple(w.dims)
            if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
                shape = shape[::-1]
            names[ordinal_key(ordinal, shape)] = node.name or node.output[0]
        ordinal += 1
    return prune_channels(
        ratio,
        method=PRUNE_METHODS[method],
        calibration=arrays,
        runner=host_runner(threads),
        layer_names=names,
    )


def export(built: Built, output: str | Path, progress: Progress | None = None) -> Path:
    """Export the built library and write the artifact atomically."""
    say = progress or (lambda _msg: None)
    say(f"exporting {output}")
    t0 = time.perf_counter()
    from tvmforge.runtime import scratch

    scratch.sweep()  # build folders of killed compiles
    with scratch.scratch_dir("build") as tmp:
        lib = Path(tmp) / artifact.LIBRARY
        kwargs = {"cc": built.target.export_cc} if built.target.export_cc else {}
        try:
            built.executable.export_library(str(lib), **kwargs)
        except Exception as err:
            raise CompileError(
                f"{built.model.path}: linking the library for {built.target.spec()} failed: "
                f"{frontend._first_line(err)}",
                hint=f"check that {built.target.export_cc or 'the host C compiler'} works",
            ) from err
        built.seconds["export"] = time.perf_counter() - t0
        if built.pruning is not None:
            # the unpruned library is not built: estimate it as this one plus the weight
            # bytes pruning removed (the constants are stored in the library as they are)
            size = lib.stat().st_size
            removed = built.pruning["weight_bytes_before"] - built.pruning["weight_bytes_after"]
            built.pruning["library_bytes_after"] = size
            built.pruning["library_bytes_before_estimate"] = size + removed
        return artifact.write(output, lib, built.manifest())


def compile_model(
    model: str | Path | onnx.ModelProto,
    target: str | ResolvedTarget = "x86",
    output: str | Path = "model.tar",
    **options: Any,
) -> Path:
    """Compile an ONNX model into an artifact; the Python twin of ``tvmforge compile``.

    Parameters
    ----------
    model:
        Path to an ``.onnx`` file, ``zoo:NAME``, or an ``onnx.ModelProto``.
    target:
        ``x86``, ``arm``, ``cuda`` (optionally ``:PRESET``) or a JSON TVM target.
    output:
        Where to write the artifact.
    **options:
        ``input_shapes``, ``threads``, ``tuning_logs``, ``use_shipped_logs``, ``progress``
        as for ``build_model``.

    Returns
    -------
    Path
        The artifact written.
    """
    progress = options.get("progress")
    built = build_model(model, target, **options)
    return export(built, output, progress)
