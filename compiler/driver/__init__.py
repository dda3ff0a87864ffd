"""The driver: the ``tvmforge`` Relax pipeline (``pipeline``), building and exporting a model
(``build``), calibration data and the quantization pass's set-up (``calibration``)."""
