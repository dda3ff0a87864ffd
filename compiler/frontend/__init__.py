"""ONNX in, Relax out: loading and validating a model (``importer``), the ONNX pre-pass that
folds shape subgraphs (``simplify``), converters for operators TVM's importer lacks
(``converters``), ``zoo:`` models (``zoo``) and ``tvmforge inspect`` (``analysis``)."""

from __future__ import annotations

from tvmforge.frontend.importer import OnnxModel, load, resolve_inputs, to_relax
from tvmforge.runtime.tensors import TensorInfo

__all__ = ["OnnxModel", "TensorInfo", "load", "resolve_inputs", "to_relax"]
