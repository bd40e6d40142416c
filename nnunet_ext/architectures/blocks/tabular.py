"""Standardisation of case-level tabular (clinical) features inside the network.

The mean and standard deviation come from the cases of the training fold (the trainer computes them when training
starts, :meth:`~nnunet_ext.architectures.contract.ContractNetwork.set_tabular_statistics`) and are buffers: they
travel in every checkpoint of that fold, so inference, and a fold ensemble, standardise each case with the
statistics of the fold whose weights are applied, and a validation case never contributes to them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TabularStandardize(nn.Module):
    """``(x - mean) / std`` per feature. x (B, F) -> (B, F) float32. A constant feature (std 0) is centred only."""

    def __init__(self, num_features: int, eps: float = 1e-6):
        super().__init__()
        self.num_features, self.eps = int(num_features), eps
        self.register_buffer("mean", torch.zeros(self.num_features))
        self.register_buffer("std", torch.ones(self.num_features))

    def set_statistics(self, mean, std) -> None:
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(-1)
        std = torch.as_tensor(np.asarray(std, dtype=np.float32)).reshape(-1)
        if mean.numel() != self.num_features or std.numel() != self.num_features:
            raise ValueError(f"tabular statistics for {mean.numel()} features; the network was built for "
                             f"{self.num_features}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("tabular statistics must be finite")
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > self.eps, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"tabular features of shape {tuple(x.shape)}; expected (B, {self.num_features})")
        return (x.float() - self.mean) / self.std
