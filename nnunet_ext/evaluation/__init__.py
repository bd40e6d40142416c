"""Metrics, statistics and the benchmark against vanilla nnU-Net."""
