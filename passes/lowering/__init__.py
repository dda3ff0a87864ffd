"""Passes on the lowered Relax graph, after ``CallTIRRewrite`` made every kernel's output an
explicit allocation: ``inplace_epilogue`` reuses a dead residual's buffer."""
