"""What the ``tvmforge`` commands share: typed parameters (input shapes, frozen inputs), the
options several commands take, the progress line, and the wrapper that turns every failure
into one line and the contract's exit status."""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tvmforge.errors import InputError, TvmforgeError, interrupted

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Shape(click.ParamType):
    """``NAME=1x3x224x224``; ``NAME=Nx3x224x224`` for a dynamic batch."""

    name = "NAME=SHAPE"

    def convert(self, value: Any, param, ctx) -> tuple[str, tuple[int | str, ...]]:
        from tvmforge.frontend.importer import parse_input_shape

        if isinstance(value, tuple):
            return value
        try:
            return parse_input_shape(value)
        except InputError as err:
            self.fail(err.line(), param, ctx)


# Options shared by the commands that compile.
target_option = click.option(
    "--target",
    "-t",
    default="x86",
    show_default=True,
    metavar="x86|arm|cuda[:PRESET]|JSON",
    help="Target to build for; `tvmforge targets` lists presets. JSON: a TVM target dict.",
)
input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    type=Shape(),
    help="Fix an input's dynamic dims, e.g. data=1x3x224x224 (repeatable). N as the first "
    "dim keeps the batch dynamic (data=Nx3x224x224): one artifact for any batch size; "
    "compile does that by default where the batch is the only dynamic dim.",
)
class Freeze(click.ParamType):
    """``NAME=VALUE[,VALUE...]``."""

    name = "NAME=VALUE"

    def convert(self, value: Any, param, ctx) -> tuple[str, list[float]]:
        from tvmforge.frontend.importer import parse_freeze

        if isinstance(value, tuple):
            return value
        try:
            return parse_freeze(value)
        except InputError as err:
            self.fail(err.line(), param, ctx)


freeze_option = click.option(
    "--freeze",
    "frozen",
    multiple=True,
    type=Freeze(),
    help="Compile an input in as a constant, e.g. --freeze sr=16000 (repeatable).",
)
fixed_threads_option = click.option(
    "--fixed-threads", is_flag=True,
    help="Keep the thread count while other programs use the cores (for a machine given to "
    "this model alone); by default fewer threads run while the cores are busy.",
)
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="Runtime worker threads."
)
tuning_log_option = click.option(
    "--tuning-log",
    "tuning_logs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Extra MetaSchedule database folder(s) to apply after the shipped ones.",
)


def transform_options(func: Callable) -> Callable:
    """``--quantize/--group-size/--asymmetric/--scale-search/--calibration/
    --calibration-method/--skip-layers/--precision/--prune/--prune-method``,
    gathered into one ``transforms`` keyword: what ``build_model`` takes as is."""
    options = [
        click.option("--quantize", type=click.Choice(["int8", "int4"]), default=None,
                     help="int8: post-training quantization of convs and matmuls (needs "
                          "--calibration); int4: 4-bit weight-only matmuls (no data needed)."),
        click.option("--activation-scales", type=click.Choice(["static", "dynamic"]),
                     default="static", show_default=True,
                     help="--quantize int8: static = calibrated ranges (needs --calibration); "
                          "dynamic = each matmul's input quantized with its own range at run "
                          "time (transformers; no data, convs stay float)."),
        click.option("--group-size", type=click.Choice(["16", "32", "64", "128"]),
                     default="32", show_default=True,
                     help="--quantize int4: weights per scale, along the reduction axis."),
        click.option("--asymmetric", is_flag=True,
                     help="--quantize int4: a zero point per group (default: symmetric)."),
        click.option("--scale-search", is_flag=True,
                     help="--quantize int4: per group, the scale (of a few below max/7) with "
                          "the least weight error."),
        click.option("--calibration", default=None, metavar="DATA|random",
                     help=".npz keyed by input name with arrays [samples, *input_shape], or a "
                          "folder of them; 'random' only if you accept unknown accuracy."),
        click.option("--calibration-method", type=click.Choice(["minmax", "percentile",
                                                                "entropy"]),
                     default="minmax", show_default=True,
                     help="How activation ranges are taken from the calibration data."),
        click.option("--skip-layers", default="", metavar="NAME,...",
                     help="ONNX node names to leave in float when quantizing."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "int8"]),
                     default="auto", show_default=True,
                     help="A pre-quantized (QDQ) model's kernels: auto = integer kernels with "
                          "its own scales where the CPU has int8 dot products (VNNI, AMX, "
                          "sdot), float ones rounding at its Q/DQ points elsewhere; fp32 or "
                          "int8 forces one."),
        click.option("--prune", type=click.FloatRange(0, 1, max_open=True), default=None,
                     metavar="RATIO",
                     help="Remove RATIO of the conv/dense FLOPs as whole channels; 0 removes "
                          "only all-zero channels (exact)."),
        click.option("--prune-method", type=click.Choice(["l1", "l2", "channel", "taylor"]),
                     default="l1", show_default=True,
                     help="Channel importance for --prune: filter norm (l1, l2; channel = l1) "
                          "or taylor (output error on --calibration data)."),
    ]

    @functools.wraps(func)
    def wrapper(*args, quantize, calibration, calibration_method, skip_layers, prune,
                prune_method, precision, group_size, asymmetric, scale_search,
                activation_scales, **kwargs):
        if calibration not in (None, "random") and not Path(calibration).exists():
            raise click.BadParameter(
                f"{calibration}: no such file or folder (an .npz keyed by input name, a folder "
                "of them, or 'random')", param_hint="--calibration")
        kwargs["transforms"] = {
            "quantize": quantize,
            "calibration": calibration,
            "calibration_method": calibration_method,
            "skip_layers": tuple(n for n in skip_layers.split(",") if n),
            "prune": prune,
            "prune_method": prune_method,
            "precision": precision,
            "group_size": int(group_size),
            "asymmetric": asymmetric,
            "scale_search": scale_search,
            "activation_scales": activation_scales,
        }
        return func(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _progress() -> Callable[[str], None] | None:
    if not sys.stderr.isatty():
        return None
    return lambda msg: click.echo(f"tvmforge: {msg}...", err=True)


def is_verbose(ctx: click.Context | None = None) -> bool:
    """``--verbose`` given before the subcommand (``tvmforge -v compile``) or after it
    (``tvmforge compile -v``)."""
    ctx = ctx or click.get_current_context(silent=True)
    if ctx is None:
        return False
    return bool((ctx.find_root().params or {}).get("verbose")) or bool(
        ctx.meta.get("tvmforge.verbose")
    )


def _verbose_after(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value:
        return
    ctx.meta["tvmforge.verbose"] = True
    logging.getLogger().setLevel(logging.INFO)
    import warnings

    warnings.resetwarnings()


def _reports_errors(func: Callable) -> Callable:
    """Turn every failure into one line and the right exit status; also gives the command a
    ``--verbose`` of its own, so that it works after the subcommand too."""

    @click.option("--verbose", "-v", is_flag=True, expose_value=False, is_eager=True,
                  callback=_verbose_after, help="Log each step; show tracebacks on errors.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        verbose = is_verbose(ctx)
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing was written", err=True)
            ctx.exit(130)
        except TvmforgeError as err:
            if interrupted() and not isinstance(err, KeyboardInterrupt):
                click.echo("error: interrupted; nothing was written", err=True)
                ctx.exit(130)
            if verbose:
                traceback.print_exc()
            click.echo(f"error: {err.line()}", err=True)
            ctx.exit(err.exit_code)
        except BrokenPipeError:  # `tvmforge inspect m.onnx | head`: the reader left; fine
            sys.stderr.close()
            ctx.exit(0)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except Exception as err:
            if interrupted():  # TVM's FFI hands a KeyboardInterrupt back as a RuntimeError
                click.echo("error: interrupted; nothing was written", err=True)
                ctx.exit(130)
            if verbose:
                traceback.print_exc()
            from tvmforge.frontend.importer import _first_line

            click.echo(
                f"error: {ctx.info_name} failed: {type(err).__name__}: {_first_line(err)}; "
                "rerun with --verbose for the traceback",
                err=True,
            )
            ctx.exit(1)

    return wrapper



