"""Case-level classification heads and the pooling that feeds them.

The MLP follows the STD-Net characterization head (hidden 512, dropout 0.3; "Spatio-temporal decoupling network for
multiphasic liver lesion characterization", npj Digital Medicine 2025). The same head sits on the early-fusion
baseline so that the two differ only in how they use the phases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ext.architectures.blocks.tabular import TabularStandardize

# per-cell weight added before normalising: a patch with no predicted lesion pools (almost) uniformly
LESION_POOL_FLOOR = 1e-4


HEAD_ACTIVATIONS = {"leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True), "relu": lambda: nn.ReLU(inplace=True),
                    "gelu": nn.GELU}


class ClassificationHead(nn.Module):
    """Linear -> LeakyReLU(0.01) -> Dropout -> Linear on a feature vector (optionally concatenated with tabular
    features).

    The paper's characterisation head is an MLP with hidden width 512 and dropout 0.3; it does not name the
    activation. LeakyReLU with nnU-Net's slope 0.01 is chosen over ReLU because a ReLU head can switch itself off for
    good: the pooled features of whole-organ patches are nearly the same for every case until the segmentation finds
    the lesions, a unit whose pre-activation turns negative for all cases gets no gradient again, and on the synthetic
    GPU comparison STD-Net's ReLU head ended with constant logits (``benchmarks/RESULTS.md``, where a CPU probe showed
    the fraction of dead units growing). A leaky unit always passes a
    gradient, and AdamW (which the trainers use for the head) turns even a small consistent gradient into a full-size
    step, so such a unit can come back (GELU's gradient also vanishes for strongly negative inputs).
    ``activation="relu"`` (or ``"gelu"``) gives the other MLPs. Tabular features are standardised with the
    training fold's statistics (:class:`~nnunet_ext.architectures.blocks.tabular.TabularStandardize`) before they are
    concatenated.

    Shapes: ``features`` (B, C), ``tabular`` (B, T) raw values or None -> logits (B, num_classes). No softmax: the
    loss and the predictor apply it.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.3,
                 tabular_features: int = 0, activation: str = "leaky_relu"):
        super().__init__()
        if activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; choose one of {tuple(HEAD_ACTIVATIONS)}")
        self.tabular_features = tabular_features
        self.tabular_norm = TabularStandardize(tabular_features) if tabular_features else None
        self.mlp = nn.Sequential(
            nn.Linear(in_features + tabular_features, hidden),
            HEAD_ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: torch.Tensor, tabular: torch.Tensor | None = None) -> torch.Tensor:
        if self.tabular_norm is not None:
            if tabular is None:
                raise ValueError(f"this head was built for {self.tabular_features} tabular features; pass tabular=")
            features = torch.cat((features, self.tabular_norm(tabular).to(features.dtype)), dim=1)
        return self.mlp(features)


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C)."""
    return x.flatten(2).mean(-1)


def lesion_pool_channels(lesion_labels, num_seg_outputs: int) -> list[int] | None:
    """Segmentation output channels of the lesion labels (label-based nnU-Net: channel = label value), or None when
    the metadata names no lesion label (the head then pools uniformly)."""
    channels = [int(lab) for lab in (lesion_labels or []) if 0 < int(lab) < num_seg_outputs]
    return channels or None


def lesion_weighted_pool(features: torch.Tensor, seg, channels: list[int] | None,
                         lesion_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pool ``features`` (B, C, *S_f) to (B, C), weighting each cell by the network's own predicted lesion
    probability there (or by a given lesion mask).

    ``seg``: segmentation logits (B, K, *S) or the deep-supervision list (highest resolution first). The weights are
    the softmax probability of ``channels`` summed, averaged over each feature cell (adaptive average pooling to
    S_f), detached (the classification loss does not push the segmentation), plus :data:`LESION_POOL_FLOOR`, and
    normalised per sample. ``channels=None``: global average pooling. ``lesion_mask`` (B, 1, *S) with values in
    [0, 1] (the ground-truth lesion voxels during training, see ``MultiTaskTrainer.head_pool_in_training``) takes
    the place of the predicted probability; everything else is the same.

    Why: with whole-organ patches a lesion covers well under 1% of the bottleneck cells, and a global average
    drowns its enhancement pattern in parenchyma (on the synthetic liver data, heads with global pooling collapsed
    to the class prior). STD-Net's paper classifies lesion-centred inputs; weighting by the lesion is the analogue
    for nnU-Net's patches: by the predicted lesion at inference (no ground truth needed), by the ground truth in the
    trainers' training steps.
    """
    if channels is None:
        return global_average_pool(features)
    with torch.no_grad():
        if lesion_mask is not None:
            prob = lesion_mask.float()
        else:
            logits = seg[0] if isinstance(seg, (list, tuple)) else seg
            prob = torch.softmax(logits.float(), 1)[:, channels].sum(1, keepdim=True)
        pool = F.adaptive_avg_pool3d if prob.ndim == 5 else F.adaptive_avg_pool2d
        w = pool(prob, features.shape[2:]).flatten(2) + LESION_POOL_FLOOR  # (B, 1, L)
        w = w / w.sum(-1, keepdim=True)
    return (features.flatten(2) * w.to(features.dtype)).sum(-1)
