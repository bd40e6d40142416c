"""Case-level classification heads and the pooling that feeds them.

The MLP follows the STD-Net characterization head (hidden 512, dropout 0.3; "Spatio-temporal decoupling network for
multiphasic liver lesion characterization", npj Digital Medicine 2025). The same head sits on the early-fusion
baseline so that the two differ only in how they use the phases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# per-cell weight added before normalising: a patch with no predicted lesion pools (almost) uniformly
LESION_POOL_FLOOR = 1e-4


HEAD_INPUT_NORMS = ("none", "running")


class RunningStandardize(nn.Module):
    """Standardise each feature with running estimates of its mean and variance across cases, in training and in
    evaluation alike (no batch statistics in the forward pass, so batch sizes of 1-5 are fine).

    Why (a diagnostic option, not the paper's head): a LayerNorm'd CLS output is dominated by a component that is the
    same for every case; in joint training its case-to-case spread is 2-10% of its magnitude
    (``benchmarks/RESULTS.md``, "The stall reproduces on the CPU ..."). An MLP on such inputs sees mostly a
    constant, and AdamW, which scales each weight's step by the gradient's running magnitude, takes small steps in
    the directions that separate cases. Subtracting the running mean and dividing by the running standard deviation
    brings the spread to unit scale, which is what BatchNorm does for a classifier, without its dependence on
    nnU-Net's small batches.

    In training the statistics are updated from the (detached) batch first, then applied; no gradient flows
    through them. The first ``1 / momentum`` batches are averaged cumulatively (momentum ``max(m, 1 / n)``), then
    exponentially. Statistics are float32 buffers (saved in checkpoints, broadcast by DDP).
    """

    def __init__(self, num_features: int, momentum: float = 0.01, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_sq", torch.ones(num_features))  # running E[x^2]
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    @property
    def running_var(self) -> torch.Tensor:
        return (self.running_sq - self.running_mean ** 2).clamp_min(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                xf = x.detach().float()
                self.num_batches_tracked += 1
                m = max(self.momentum, 1.0 / float(self.num_batches_tracked))
                self.running_mean.lerp_(xf.mean(0), m)
                self.running_sq.lerp_(xf.pow(2).mean(0), m)
        mean, std = self.running_mean, (self.running_var + self.eps).sqrt()
        return ((x.float() - mean) / std).to(x.dtype)


HEAD_ACTIVATIONS = {"leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True), "relu": lambda: nn.ReLU(inplace=True),
                    "gelu": nn.GELU}


class ClassificationHead(nn.Module):
    """Linear -> LeakyReLU(0.01) -> Dropout -> Linear on a feature vector (optionally concatenated with tabular
    features).

    The paper's characterisation head is an MLP with hidden width 512 and dropout 0.3; it does not name the
    activation. LeakyReLU with nnU-Net's slope 0.01 is chosen over ReLU because a ReLU head can switch itself off for
    good: the pooled features of whole-organ patches are nearly the same for every case until the segmentation finds
    the lesions, a unit whose pre-activation turns negative for all cases gets no gradient again, and on the synthetic
    GPU comparison STD-Net's ReLU head ended with constant logits (``benchmarks/RESULTS.md``;
    ``benchmarks/head_optimizer_diagnostic.py`` shows the dead fraction growing). A leaky unit always passes a
    gradient, and AdamW (which the trainers use for the head) turns even a small consistent gradient into a full-size
    step, so such a unit can come back (GELU's gradient also vanishes for strongly negative inputs).
    ``activation="relu"`` (or ``"gelu"``) gives the other MLPs. ``input_norm="running"`` puts a
    :class:`RunningStandardize` on the image features before the MLP (tabular features are not touched); the
    default ``"none"`` is the paper's head.

    Shapes: ``features`` (B, C), ``tabular`` (B, T) or None -> logits (B, num_classes). No softmax: the loss and
    the predictor apply it.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.3,
                 tabular_features: int = 0, activation: str = "leaky_relu", input_norm: str = "none"):
        super().__init__()
        if activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; choose one of {tuple(HEAD_ACTIVATIONS)}")
        if input_norm not in HEAD_INPUT_NORMS:
            raise ValueError(f"input_norm={input_norm!r}; choose one of {HEAD_INPUT_NORMS}")
        self.tabular_features = tabular_features
        self.input_norm = RunningStandardize(in_features) if input_norm == "running" else None
        self.mlp = nn.Sequential(
            nn.Linear(in_features + tabular_features, hidden),
            HEAD_ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def _inputs(self, features: torch.Tensor, tabular: torch.Tensor | None) -> torch.Tensor:
        if self.input_norm is not None:
            features = self.input_norm(features)
        if self.tabular_features:
            if tabular is None:
                raise ValueError(f"this head was built for {self.tabular_features} tabular features; pass tabular=")
            features = torch.cat((features, tabular.to(features.dtype)), dim=1)
        return features

    def forward(self, features: torch.Tensor, tabular: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(self._inputs(features, tabular))

    def hidden_activations(self, features: torch.Tensor, tabular: torch.Tensor | None = None) -> torch.Tensor:
        """(B, hidden) activations after the non-linearity (diagnostics)."""
        return self.mlp[1](self.mlp[0](self._inputs(features, tabular)))


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
