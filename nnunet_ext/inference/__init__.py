"""Inference: nnU-Net's predictor extended with case-level classification."""
