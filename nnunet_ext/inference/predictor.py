"""nnU-Net's sliding-window predictor, extended with a case-level class from the same network passes.

Aggregation over sliding-window patches (one network pass per patch and mirror, shared with segmentation):

1. For each patch ``p`` the network returns segmentation logits and class logits; both are averaged over the test-
   time mirrors. ``q_p = softmax(class logits)``.
2. The patch weight is its predicted lesion mass under nnU-Net's Gaussian importance map:
   ``w_p = sum_v g(v) * P_lesion(v)``, with ``P_lesion`` the softmax probability of the lesion labels
   (``classification.lesion_labels`` of the metadata, default every foreground label; sigmoid max for regions).
3. The case probability is ``sum_p w_p q_p / sum_p w_p``. Patches without lesion get (almost) no weight, so they
   cannot dilute the vote. If the whole case holds less than ``min_lesion_voxels`` of predicted lesion
   (``sum_p sum_v P_lesion``), the lesion was missed and the plain mean of ``q_p`` over all patches is used instead.
4. A multi-fold ensemble averages the case probabilities of the folds.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian

from nnunet_ext.architectures.base import PLANS_KEY, head_settings


class ClassifyingPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` that also returns case-level class probabilities (see module docstring).

    After ``predict_from_files``/``predict_from_data_iterator``, ``case_probabilities`` maps each case id (the
    output file name) to a (K,) probability vector. ``class_names`` comes from the model's plans.
    """

    min_lesion_voxels: float = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.case_probabilities: dict[str, np.ndarray] = {}
        self._patches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._fold_probs: list[np.ndarray] = []
        self._current_case: str | None = None

    # ------------------------------------------------------------------ properties
    @property
    def class_names(self) -> list[str]:
        return list(head_settings(self.plans_manager.plans)["class_names"])

    @property
    def has_classification(self) -> bool:
        """False for models without a head (e.g. vanilla nnU-Net): then this is nnU-Net's predictor unchanged."""
        plans = self.plans_manager.plans if self.plans_manager is not None else {}
        return bool(plans.get(PLANS_KEY, {}).get("num_cls_classes"))

    def _lesion_probability(self, seg_logits: torch.Tensor) -> torch.Tensor:
        """(C, *spatial) logits -> (*spatial) probability of lesion."""
        if self.label_manager.has_regions:
            return torch.sigmoid(seg_logits.float()).amax(0)
        labels = head_settings(self.plans_manager.plans).get("lesion_labels") or self.label_manager.foreground_labels
        probs = torch.softmax(seg_logits.float(), 0)
        return probs[list(labels)].sum(0)

    # ------------------------------------------------------------------ network passes
    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if not self.has_classification:
            return super()._internal_maybe_mirror_and_predict(x)
        mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
        out = self.network(x, return_heads=True)
        seg, cls = out["seg"], torch.softmax(out["cls"].float(), 1)
        combos = []
        if mirror_axes is not None:
            assert max(mirror_axes) <= x.ndim - 3, "mirror_axes does not match the dimension of the input!"
            axes = [m + 2 for m in mirror_axes]
            combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        for flip in combos:
            o = self.network(torch.flip(x, flip), return_heads=True)
            seg = seg + torch.flip(o["seg"], flip)
            cls = cls + torch.softmax(o["cls"].float(), 1)
        seg = seg / (len(combos) + 1)
        cls = cls / (len(combos) + 1)
        lesion = self._lesion_probability(seg[0])
        gaussian = self._gaussian(lesion.shape, lesion.device)
        self._patches.append(((lesion * gaussian).sum(), lesion.sum(), cls[0]))
        return seg

    def _gaussian(self, shape, device) -> torch.Tensor:
        if not self.use_gaussian:
            return torch.ones(shape, device=device)
        return compute_gaussian(tuple(shape), sigma_scale=1. / 8, value_scaling_factor=10, device=device).float()

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
        self._patches = []
        logits = super().predict_sliding_window_return_logits(input_image)
        if self.has_classification:
            self._fold_probs.append(self._aggregate())
        return logits

    def _aggregate(self) -> np.ndarray:
        weights = torch.stack([p[0] for p in self._patches]).float().cpu()
        mass = float(torch.stack([p[1] for p in self._patches]).sum())
        probs = torch.stack([p[2] for p in self._patches]).float().cpu()
        if mass < self.min_lesion_voxels or float(weights.sum()) <= 0:
            agg = probs.mean(0)
        else:
            agg = (weights[:, None] * probs).sum(0) / weights.sum()
        self._patches = []
        return agg.numpy()

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        from nnunet_ext.inference.predict import require_finite

        require_finite(data, self._current_case or "(in memory)")
        self._fold_probs = []
        logits = super().predict_logits_from_preprocessed_data(data)
        if self.has_classification and self._current_case is not None:
            self.case_probabilities[self._current_case] = np.mean(self._fold_probs, axis=0)
        return logits

    def classify_preprocessed(self, data: torch.Tensor) -> np.ndarray:
        """Case probabilities (K,) for one preprocessed case (C, *spatial), with the network as it is."""
        self._fold_probs = []
        self.predict_sliding_window_return_logits(data)
        return self._fold_probs[-1]

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 1):
        def tracked():
            for item in data_iterator:
                ofile = item.get("ofile")
                self._current_case = os.path.basename(ofile) if ofile is not None else None
                yield item

        try:
            return super().predict_from_data_iterator(tracked(), save_probabilities,
                                                      num_processes_segmentation_export)
        finally:
            self._current_case = None
            if hasattr(data_iterator, "_finish"):
                data_iterator._finish()
