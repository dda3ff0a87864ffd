"""Measuring a build: ``tvmforge bench`` (``benchmark``), ONNX Runtime as the reference
(``reference``), and the ONNX test-model runner (``onnx_tests``)."""

from __future__ import annotations

from tvmforge.bench.benchmark import bench

__all__ = ["bench"]
