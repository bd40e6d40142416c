"""Case-level targets (class index, tabular vector, text embedding) carried in nnU-Net training batches.

nnU-Net's ``nnUNetDataLoader.generate_train_batch`` returns ``{'data', 'target', 'keys'}``. The subclass here adds
entries looked up by ``keys``, so they stay aligned with the samples whether augmentation runs in the main process
(``nnUNet_n_proc_DA=0``) or in background workers (the loader object is pickled into each worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from unittest import mock

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from nnunet_ext.data.metadata import DatasetMetadata


@dataclass
class CaseTargets:
    """Lookup tables from case id to case-level targets; small and picklable."""

    class_index: dict[str, int] = field(default_factory=dict)
    tabular: dict[str, np.ndarray] = field(default_factory=dict)
    text_embedding: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, metadata: DatasetMetadata | None, case_ids: Sequence[str],
                      text_embeddings: dict[str, np.ndarray] | None = None) -> CaseTargets:
        if metadata is None:
            return cls()
        ids = list(case_ids)
        out = cls()
        if metadata.has_classification:
            out.class_index = dict(zip(ids, metadata.class_targets(ids).tolist()))
        if metadata.num_tabular:
            out.tabular = dict(zip(ids, metadata.tabular_matrix(ids)))
        if text_embeddings:
            out.text_embedding = {k: text_embeddings[k] for k in ids}
        return out

    def collate(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """Batch entries for ``keys``: ``class_target`` (B,) int64 with -1 = unlabeled, ``tabular`` (B, T),
        ``text_embedding`` (B, D). Entries without data are omitted."""
        batch: dict[str, torch.Tensor] = {}
        if self.class_index:
            batch["class_target"] = torch.tensor([self.class_index.get(k, -1) for k in keys], dtype=torch.long)
        if self.tabular:
            batch["tabular"] = torch.from_numpy(np.stack([self.tabular[k] for k in keys]).astype(np.float32))
        if self.text_embedding:
            batch["text_embedding"] = torch.from_numpy(
                np.stack([self.text_embedding[k] for k in keys]).astype(np.float32))
        return batch


class CaseTargetDataLoader(nnUNetDataLoader):
    """``nnUNetDataLoader`` whose batches also carry the case-level targets of their ``keys``."""

    def __init__(self, *args, case_targets: CaseTargets, **kwargs):
        super().__init__(*args, **kwargs)
        self.case_targets = case_targets

    def generate_train_batch(self):
        batch = super().generate_train_batch()
        batch.update(self.case_targets.collate(batch["keys"]))
        return batch


@contextmanager
def case_target_loaders(case_targets: CaseTargets):
    """Make ``nnUNetTrainer.get_dataloaders`` build :class:`CaseTargetDataLoader` instead of ``nnUNetDataLoader``.

    ``get_dataloaders`` constructs the loaders by the module-level name ``nnUNetDataLoader``; swapping that name for
    the duration of the call reuses nnU-Net's whole transform and augmenter set-up instead of copying it.
    """
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

    assert trainer_module.nnUNetDataLoader is nnUNetDataLoader, "nnU-Net's data loader was already replaced"
    with mock.patch.object(trainer_module, "nnUNetDataLoader", partial(CaseTargetDataLoader,
                                                                       case_targets=case_targets)):
        yield
