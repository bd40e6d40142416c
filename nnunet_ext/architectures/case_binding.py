"""A network bound to the case it is predicting: case inputs in, segmentation logits out, class votes recorded.

nnU-Net's sliding-window predictor (used by ``nnunet-ext predict`` and by the trainers' final validation) calls
``network(patch)`` and expects segmentation logits. :class:`CaseBoundNetwork` stands in for the network there: it
calls ``network(patch, return_heads=True, **inputs of the current case)``, returns the segmentation logits, and
records, per call, the class probabilities and the patch's lesion weight. The same object therefore serves the
trainer's validation and inference, so both aggregate the case-level class one way:

1. For each network call ``p`` (a patch, or one of its test-time mirrors): ``q_p = softmax(class logits)`` and the
   weight ``w_p = sum_v g(v) * P_lesion(v)``, with ``g`` nnU-Net's Gaussian importance map (symmetric, so a mirrored
   call gets the weight of its patch) and ``P_lesion`` the softmax probability of the lesion labels
   (:mod:`nnunet_ext.data.lesion`; for region-based labels the largest region sigmoid).
2. One pass over a case (one fold's weights): ``sum_p w_p q_p / sum_p w_p``; if the pass saw less than
   ``min_lesion_voxels`` of predicted lesion over all its calls (``sum_p sum_v P_lesion``), the lesion was missed
   and the plain mean of ``q_p`` is used instead.
3. A case predicted with several folds averages its passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_ext.architectures.contract import HeadsOutput


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside DDP (``.module``), ``torch.compile`` (``._orig_mod``) and :class:`CaseBoundNetwork`
    wrappers."""
    while True:
        if isinstance(network, CaseBoundNetwork):
            network = network.network
            continue
        inner = getattr(network, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(network, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return network
        network = inner


class CaseBoundNetwork(nn.Module):
    """See the module docstring.

    Args:
        network: a contract network (possibly wrapped in DDP / ``torch.compile``).
        lesion_labels: segmentation channels of the lesion (label values); None for region-based outputs.
        record_classes: record class votes (networks with a classification head).
        use_gaussian: weight patches by nnU-Net's Gaussian (as the predictor weights the logits).
        min_lesion_voxels: below this predicted lesion mass a pass falls back to the plain mean.
    """

    def __init__(self, network: nn.Module, lesion_labels: Sequence[int] | None, record_classes: bool,
                 use_gaussian: bool = True, min_lesion_voxels: float = 1.0):
        super().__init__()
        self.network = network
        self.lesion_labels = list(lesion_labels) if lesion_labels is not None else None
        self.record_classes = record_classes
        self.use_gaussian = use_gaussian
        self.min_lesion_voxels = min_lesion_voxels
        self.case: str | None = None
        self._inputs: dict[str, torch.Tensor] = {}
        self._passes: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []

    # ------------------------------------------------------------------ case and passes
    def bind(self, case: str | None, inputs: Mapping[str, torch.Tensor]) -> None:
        """Start predicting ``case`` with its case inputs (batch dimension 1)."""
        self.case, self._inputs, self._passes = case, dict(inputs), []

    def begin_pass(self) -> None:
        """A new pass over the current case (the next fold's weights)."""
        self._passes.append([])

    def restart_pass(self) -> None:
        """Forget the votes of the current pass (nnU-Net retries a pass on the CPU after running out of memory)."""
        if self._passes:
            self._passes[-1] = []

    def case_probabilities(self) -> np.ndarray | None:
        """(K,) class probabilities of the current case (None when no votes were recorded)."""
        passes = [p for p in self._passes if p]
        if not passes:
            return None
        return np.mean([self._aggregate(p) for p in passes], axis=0)

    def _aggregate(self, votes) -> np.ndarray:
        weights = torch.stack([v[0] for v in votes]).float().cpu()
        mass = float(torch.stack([v[1] for v in votes]).sum())
        probs = torch.stack([v[2] for v in votes]).float().cpu()
        if mass < self.min_lesion_voxels or float(weights.sum()) <= 0:
            return probs.mean(0).numpy()
        return ((weights[:, None] * probs).sum(0) / weights.sum()).numpy()

    # ------------------------------------------------------------------ nnU-Net's view
    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        inputs = {k: (v if v.shape[0] == x.shape[0] else v.expand(x.shape[0], *v.shape[1:]))
                  for k, v in self._inputs.items()}
        out: HeadsOutput = self.network(x, return_heads=True, **inputs)
        if self.record_classes and out.cls is not None:
            self._record(out)
        return out.seg

    def _record(self, out: HeadsOutput) -> None:
        seg = out.seg[0] if isinstance(out.seg, (list, tuple)) else out.seg
        with torch.no_grad():
            for b in range(seg.shape[0]):
                lesion = self.lesion_probability(seg[b])
                w = (lesion * self._gaussian(lesion.shape, lesion.device)).sum()
                if not self._passes:
                    self.begin_pass()
                self._passes[-1].append((w, lesion.sum(), torch.softmax(out.cls[b].float(), 0)))

    def lesion_probability(self, seg_logits: torch.Tensor) -> torch.Tensor:
        """(C, *spatial) logits -> (*spatial) probability of lesion."""
        if self.lesion_labels is None:
            return torch.sigmoid(seg_logits.float()).amax(0)
        return torch.softmax(seg_logits.float(), 0)[self.lesion_labels].sum(0)

    def _gaussian(self, shape, device) -> torch.Tensor:
        if not self.use_gaussian:
            return torch.ones(shape, device=device)
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        return compute_gaussian(tuple(shape), sigma_scale=1. / 8, value_scaling_factor=10, device=device).float()

    # nnU-Net's predictor loads each fold's weights into its ``network``: they belong to the bound network
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return unwrap(self).load_state_dict(state_dict, strict=strict, assign=assign)

    def state_dict(self, *args, **kwargs):
        return unwrap(self).state_dict(*args, **kwargs)

    @property
    def decoder(self) -> nn.Module:  # nnU-Net's set_deep_supervision_enabled reaches for network.decoder
        return unwrap(self).decoder

    @property
    def module(self) -> nn.Module:  # ... and, under DDP, for network.module.decoder
        return unwrap(self)
