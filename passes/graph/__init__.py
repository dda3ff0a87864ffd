"""Relax graph rewrites, one pass per file: constant folding, BatchNorm folding, layout
(``NCHW{B}c``), weight packing, Winograd, fast math. ``driver/pipeline.py`` orders them."""
