"""Case-level classification heads.

The MLP follows the STD-Net characterization head (hidden 512, dropout 0.3; "Spatio-temporal decoupling network for
multiphasic liver lesion characterization", npj Digital Medicine 2025). The same head sits on the early-fusion
baseline so that the two differ only in how they use the phases.
"""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear on a feature vector, optionally concatenated with tabular features.

    Shapes: ``features`` (B, C), ``tabular`` (B, T) or None -> logits (B, num_classes). No softmax: the loss and
    the predictor apply it.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.3,
                 tabular_features: int = 0):
        super().__init__()
        self.tabular_features = tabular_features
        self.mlp = nn.Sequential(
            nn.Linear(in_features + tabular_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: torch.Tensor, tabular: torch.Tensor | None = None) -> torch.Tensor:
        if self.tabular_features:
            if tabular is None:
                raise ValueError(f"this head was built for {self.tabular_features} tabular features; pass tabular=")
            features = torch.cat((features, tabular.to(features.dtype)), dim=1)
        return self.mlp(features)


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C)."""
    return x.flatten(2).mean(-1)
