"""Structured channel pruning (``prune_channels``): channel groups tied by residuals,
concats and depthwise convs, importance scores, the least-squares refit, and the report."""
