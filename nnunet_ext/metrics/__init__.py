"""Metrics as pure functions of arrays (classification, segmentation, statistics); no nnU-Net, no files."""
