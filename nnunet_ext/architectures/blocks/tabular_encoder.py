"""Encoder of case-level clinical (tabular) features for DeSamba's classifier.

Paper: DeSamba (arXiv 2507.15487; no public code) adds the patients' clinical features to the image representation;
its ablation shows they help. The paper does not describe the encoder; this file chooses a small one.

What is chosen here (F = number of features):

* standardisation with the training fold's mean and standard deviation,
  :class:`~nnunet_ext.architectures.blocks.tabular.TabularStandardize` (buffers that travel in the checkpoint;
  :meth:`set_statistics` sets them);
* a two-layer MLP: Linear F -> hidden -> GELU -> dropout -> Linear hidden -> out_features, in float32 on the
  standardised values (under autocast the Linears follow the autocast dtype; the input stays bounded after
  standardisation). PyTorch's default Linear init.
"""

from __future__ import annotations

import torch
from torch import nn

from nnunet_ext.architectures.blocks.tabular import TabularStandardize


class TabularEncoder(nn.Module):
    """Clinical features (B, F) -> embedding (B, out_features).

    Args:
        num_features: F.
        out_features: width of the embedding.
        hidden: hidden width of the MLP.
        dropout: dropout after the hidden activation (training only).
    """

    def __init__(self, num_features: int, out_features: int = 64, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.num_features, self.out_features, self.hidden = num_features, out_features, hidden
        self.standardize = TabularStandardize(num_features)
        self.mlp = nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, out_features))

    def set_statistics(self, mean, std) -> None:
        """Training-fold statistics, F values each (see :meth:`TabularStandardize.set_statistics`)."""
        self.standardize.set_statistics(mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.standardize(x))

    def activation_elements(self) -> int:
        """Elements kept for backward per sample (no spatial size): the standardised input (F), the hidden
        pre-activation, GELU output and dropout output/mask (about 4 * hidden)."""
        return int(self.num_features + 4 * self.hidden)
