"""Post-training int8 quantization of a Relax graph (``quantize_int8``): calibrated ranges,
the rewrite of convs and matmuls into int8 kernels, and the report."""
