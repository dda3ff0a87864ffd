"""Default CPU schedules as rules tried from a table (``rules``), one rule per file, with the
block analysis they share (``analysis``), the int8 kernels and their tensor intrinsics per
instruction family (``int8_kernels``, ``intrinsics/``), and the weight prefetch marks
(``weight_prefetch``)."""
