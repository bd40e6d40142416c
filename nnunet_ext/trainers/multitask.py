"""Multi-task trainer base: nnU-Net segmentation + a case-level classification head (+ auxiliary losses).

The trainer overrides nnU-Net hooks; it never copies nnU-Net's training loop:

* **Loss.** ``L = L_seg + cls_loss_weight * CE(cls, y) + sum_k aux_loss_weight * L_aux_k``. ``L_seg`` is nnU-Net's
  Dice+CE with deep supervision (``self.loss``). CE ignores explicitly unlabeled cases (target -1) and, with
  ``cls_loss_on_lesion_patches_only``, patches whose target holds no lesion voxel: nnU-Net trains on random
  patches, and a patch that does not show the lesion cannot tell its type.
* **Network call.** ``train_step``/``validation_step`` run nnU-Net's own implementation (AMP, grad scaler,
  clipping, DDP) with ``self.network`` temporarily replaced by a shim that calls the real network (the DDP/compile
  wrapper) with ``return_heads=True`` and hands nnU-Net the segmentation logits; the class logits are kept for
  the classification loss. The heads therefore go through DDP's gradient synchronisation.
* **Logging.** Per epoch: train classification loss; validation classification loss, accuracy and macro
  one-vs-rest AUC (on labeled patches that contain lesion), in the log and in ``progress_classification.png``.
* **Final validation** additionally writes ``validation/classification.csv`` (per-case probabilities) and
  ``validation/summary_classification.json`` beside nnU-Net's ``summary.json``. The case-level class comes from a
  second sliding-window pass over each validation case with :class:`ClassifyingPredictor` (the same aggregation as
  ``nnunet-ext predict``), because nnU-Net's ``perform_actual_validation`` keeps its predictor to itself; this
  doubles the (one-off) validation inference time.
* **Checkpoints** are written atomically (temporary file + rename) every ``save_every`` epochs (default 1), so
  ``--c`` resumes from the last complete epoch with every head, the optimizer and the logs.
* **Optimizer.** The U-Net (encoder, decoder) trains with nnU-Net's SGD and poly schedule, unchanged. The modules
  nnU-Net's U-Net does not have, which a network lists in ``auxiliary_modules`` (temporal modeler, skip fusion,
  class head), train with AdamW (``head_lr`` 3e-4, ``head_weight_decay`` 1e-4, the STD-Net paper's values) after a
  linear warm-up over ``head_warmup_iterations`` (default 5% of all iterations, at most 2500), then nnU-Net's poly
  decay: :mod:`nnunet_ext.trainers.optim`. ``head_optimizer = "sgd"`` (the ``*_nnUNetSGD`` trainers) trains every
  parameter with nnU-Net's SGD, under which STD-Net's transformer head collapsed to constant logits on the synthetic
  GPU comparison. On CUDA the hybrid optimizer updates with PyTorch's fused SGD / AdamW kernels
  (``optimizer_fused``; ``False`` selects its ``_foreach`` path, the same update to float tolerance).
* **Head pooling in training.** The heads pool their features weighted by the lesion
  (:func:`~nnunet_ext.architectures.blocks.heads.lesion_weighted_pool`). At inference and in the per-epoch
  validation the weights are the network's own predicted lesion probability. In training steps,
  ``head_pool_in_training = "truth"`` (default) uses the patch's ground-truth lesion voxels instead: the STD-Net paper
  trains its characterisation head on lesion-centred inputs, and early in training the predicted lesion map is still
  noise, so a head pooled with it learns from parenchyma and (CPU diagnostic in ``benchmarks/RESULTS.md``) STD-Net's
  Transformer then flattens its CLS output for good. ``"prediction"`` (the ``*_predictionPool`` trainers) pools
  with the prediction in training too. Region-based datasets, and networks without lesion pooling, always use the
  prediction (or the mean).
* **DDP** also works on CPU with the gloo backend (tests), where stock nnU-Net assumes CUDA.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_ext.architectures.base import PLANS_KEY, make_head_settings
from nnunet_ext.data.loading import CaseTargets, case_target_loaders
from nnunet_ext.data.metadata import UNLABELED, DatasetMetadata
from nnunet_ext.data.splits import write_stratified_splits_if_missing
from nnunet_ext.evaluation.classification import classification_summary
from nnunet_ext.trainers.logging import add_log_keys, plot_classification_progress
from nnunet_ext.trainers.optim import (
    HybridLRScheduler,
    auxiliary_parameters,
    default_warmup_iterations,
    make_hybrid_optimizer,
    unwrap,
)
from nnunet_ext.trainers.seeding import EnvSeededTrainer

NETWORK_INPUT_KEYS = ("tabular", "text_embedding")
HEAD_POOLS = ("truth", "prediction")


class _HeadShim:
    """Stands in for ``trainer.network`` during one nnU-Net step: calls the real network with
    ``return_heads=True`` (plus case-level inputs) and returns only the segmentation logits."""

    def __init__(self, network, inputs: dict[str, torch.Tensor]):
        self.network = network
        self.inputs = inputs
        self.heads: dict[str, Any] | None = None

    def __call__(self, x):
        self.heads = self.network(x, return_heads=True, **self.inputs)
        return self.heads["seg"]

    def __getattr__(self, name):  # parameters(), train(), ... of the real network
        return getattr(self.network, name)


class MultiTaskTrainer(EnvSeededTrainer, nnUNetTrainer):
    """Base class of every nnunet-ext trainer with a case-level head. Subclasses implement
    ``build_network_architecture``; variants change the class attributes below."""

    cls_loss_weight: float = 1.0
    aux_loss_weight: float = 1.0
    cls_loss_on_lesion_patches_only: bool = True
    requires_classification: bool = True
    network_uses: tuple[str, ...] = ()  # subset of NETWORK_INPUT_KEYS passed to forward()
    head_optimizer: str = "adamw"  # "adamw": AdamW + warm-up for the network's auxiliary modules; "sgd": nnU-Net's
    head_lr: float = 3e-4
    head_weight_decay: float = 1e-4
    head_warmup_iterations: int | None = None  # None: 5% of all training iterations, at most 2500
    head_pool_in_training: str = "truth"  # "truth": pool the head with the ground-truth lesion; "prediction"
    optimizer_fused: bool | None = None  # hybrid optimizer: None = PyTorch's fused kernels on CUDA, _foreach elsewhere

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp and device.type == "cpu":  # nnU-Net forces CUDA under DDP; keep CPU for gloo runs
            self.device = device
            self.grad_scaler = None
        if self.head_pool_in_training not in HEAD_POOLS:
            raise ValueError(f"{self.__class__.__name__}.head_pool_in_training={self.head_pool_in_training!r}; "
                             f"choose one of {HEAD_POOLS}")
        self.metadata = DatasetMetadata.from_dataset_json(dataset_json)
        if self.requires_classification and (self.metadata is None or not self.metadata.has_classification):
            raise RuntimeError(
                f"{self.__class__.__name__} trains a classification head, but dataset.json of "
                f"{self.plans_manager.dataset_name} declares no classes. Fix: add a "
                '"nnunet_ext": {"classification": {"class_names": [...]}, "cases": {...}} block (see README, '
                '"Case-level metadata"), re-run plan-and-preprocess, or train a segmentation-only trainer.')
        if self.requires_classification:  # classes declared but no case labeled: fail now, not in sklearn at the end
            self.metadata.check_trainable(f"dataset.json of {self.plans_manager.dataset_name}")
        channel_names = [dataset_json["channel_names"][k] for k in sorted(dataset_json["channel_names"], key=int)]
        self.plans_manager.plans[PLANS_KEY] = make_head_settings(self.metadata, channel_names)
        self.save_every = 1
        self.case_targets: CaseTargets | None = None
        self._iteration_in_epoch = 0
        add_log_keys(self.logger)

    # ------------------------------------------------------------------ set-up
    def initialize(self):
        """nnU-Net's initialize, with the DDP wrapper added here so that it also works on CPU (gloo)."""
        is_ddp = self.is_ddp
        self.is_ddp = False
        try:
            super().initialize()
        finally:
            self.is_ddp = is_ddp
        if is_ddp:
            self._set_batch_size_and_oversample()
            if self.device.type == "cuda":
                self.network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network)
                self.network = DDP(self.network, device_ids=[self.local_rank])
            else:
                self.network = DDP(self.network)
            self.loss = self._build_loss()
        if getattr(unwrap(self.network), "cls_pool_channels", None):
            self.print_to_log_file(f"head pooling in training steps: {self.head_pool_in_training} "
                                   "(validation and inference: the predicted lesion)")
        if self.metadata is not None and self.metadata.num_tabular and "tabular" not in self.network_uses:
            self.print_to_log_file(
                f"note: dataset.json declares the tabular features {list(self.metadata.tabular_features)}; "
                f"{self.__class__.__name__} does not feed them to its network (they are validated and carried in "
                "the batches only; see README, 'Limitations')")

    def configure_optimizers(self):
        """nnU-Net's SGD + poly for the U-Net, AdamW + warm-up + poly for ``auxiliary_modules`` (module docstring)."""
        if self.head_optimizer == "sgd" or not auxiliary_parameters(self.network):
            return super().configure_optimizers()
        if self.head_optimizer != "adamw":
            raise ValueError(f"head_optimizer={self.head_optimizer!r}; choose 'adamw' or 'sgd'")
        return make_hybrid_optimizer(self.network, self.initial_lr, self.weight_decay, self.head_lr,
                                     self.head_weight_decay, self.num_epochs, self.warmup_iterations(),
                                     fused=self.optimizer_fused)

    def warmup_iterations(self) -> int:
        if self.head_warmup_iterations is not None:
            return int(self.head_warmup_iterations)
        return default_warmup_iterations(self.num_epochs * self.num_iterations_per_epoch)

    def on_train_epoch_start(self):
        self._iteration_in_epoch = 0
        super().on_train_epoch_start()

    def do_split(self):
        """Write a stratified split when labels exist and no ``splits_final.json`` does, then use nnU-Net's."""
        if self.fold != "all" and self.local_rank == 0 and self.metadata is not None:
            if self.dataset_class is None:
                from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
                self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
            ids = self.dataset_class.get_identifiers(self.preprocessed_dataset_folder)
            written = write_stratified_splits_if_missing(self.preprocessed_dataset_folder_base, list(ids),
                                                         self.metadata)
            if written:
                self.print_to_log_file(f"Wrote a stratified 5-fold split to {written}")
        if self.is_ddp:
            dist.barrier()
        return super().do_split()

    def get_dataloaders(self):
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        ids = list(self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
        # every case must be valid metadata-wise before hours of training start
        DatasetMetadata.from_dataset_json(self.dataset_json, ids)
        self.case_targets = CaseTargets.from_metadata(self.metadata, ids)
        with case_target_loaders(self.case_targets):
            return super().get_dataloaders()

    # ------------------------------------------------------------------ steps
    def _lesion_labels(self) -> list[int]:
        labels = self.plans_manager.plans[PLANS_KEY].get("lesion_labels")
        return list(labels) if labels else list(self.label_manager.foreground_labels)

    def _lesion_voxels(self, target, labels) -> torch.Tensor:
        """Bool mask (B, 1, *S) of the full-resolution target voxels whose label is in ``labels``."""
        t = target[0] if isinstance(target, list) else target
        lesion = torch.zeros_like(t, dtype=torch.bool)
        for lab in labels:
            lesion |= t == lab
        return lesion

    def _lesion_present(self, target) -> torch.Tensor:
        """(B,) bool: does the full-resolution target of each sample contain a lesion voxel?"""
        if self.label_manager.has_regions:
            t = target[0] if isinstance(target, list) else target
            return t.flatten(1).amax(1) > 0
        return self._lesion_voxels(target, self._lesion_labels()).flatten(1).any(1)

    def _training_pool_mask(self, batch: dict) -> torch.Tensor | None:
        """The ground-truth lesion mask the head pools with in a training step (``head_pool_in_training``), on the
        device; None to pool with the prediction (the setting, region-based labels, or no lesion pooling)."""
        channels = getattr(unwrap(self.network), "cls_pool_channels", None)
        if self.head_pool_in_training != "truth" or not channels or self.label_manager.has_regions:
            return None
        return self._lesion_voxels(batch["target"], channels).to(self.device, non_blocking=True)

    def classification_loss(self, cls_logits: torch.Tensor | None, cls_target: torch.Tensor | None,
                            lesion_present: torch.Tensor) -> torch.Tensor | None:
        """Mean CE over labeled samples (and lesion patches); 0 (still attached to the graph) if none qualify."""
        if cls_logits is None or cls_target is None:
            return None
        valid = cls_target != UNLABELED
        if self.cls_loss_on_lesion_patches_only:
            valid = valid & lesion_present
        ce = F.cross_entropy(cls_logits.float(), cls_target.clamp_min(0), reduction="none")
        return (ce * valid.float()).sum() / valid.sum().clamp_min(1)

    def _network_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        return {k: batch[k].to(self.device, non_blocking=True) for k in self.network_uses if k in batch}

    @contextmanager
    def _multitask_step(self, batch: dict, record: dict, training: bool = False):
        """Swap ``self.network``/``self.loss`` for the duration of one nnU-Net step (see module docstring)."""
        network, seg_loss = self.network, self.loss
        inputs = self._network_inputs(batch)
        mask = self._training_pool_mask(batch) if training else None
        if mask is not None:
            inputs["lesion_mask"] = mask
        shim = _HeadShim(network, inputs)
        cls_target = batch.get("class_target")
        cls_target = cls_target.to(self.device, non_blocking=True) if cls_target is not None else None

        def total_loss(seg_output, target):
            l_seg = seg_loss(seg_output, target)
            heads = shim.heads
            lesion = self._lesion_present(target)
            l_cls = self.classification_loss(heads.get("cls"), cls_target, lesion)
            total = l_seg
            if l_cls is not None:
                total = total + self.cls_loss_weight * l_cls
                record["cls_loss"] = l_cls.detach().cpu().numpy()
            for name, value in (heads.get("aux_losses") or {}).items():
                total = total + self.aux_loss_weight * value
                record[f"aux_{name}"] = value.detach().cpu().numpy()
            record["seg_loss"] = l_seg.detach().cpu().numpy()
            record["heads"], record["lesion_present"], record["cls_target"] = heads, lesion, cls_target
            return total

        self.network, self.loss = shim, total_loss
        try:
            yield
        finally:
            self.network, self.loss = network, seg_loss

    def train_step(self, batch: dict) -> dict:
        if isinstance(self.lr_scheduler, HybridLRScheduler):
            self.lr_scheduler.step_iteration(self.current_epoch * self.num_iterations_per_epoch
                                             + self._iteration_in_epoch)
        self._iteration_in_epoch += 1
        record: dict = {}
        with self._multitask_step(batch, record, training=True):
            out = super().train_step(batch)
        out.update({k: v for k, v in record.items() if k in ("seg_loss", "cls_loss") or k.startswith("aux_")})
        return out

    def validation_step(self, batch: dict) -> dict:
        record: dict = {}
        with self._multitask_step(batch, record):
            out = super().validation_step(batch)
        cls = record["heads"].get("cls")
        if cls is not None and record["cls_target"] is not None:
            out["cls_logits"] = list(cls.float().cpu().numpy())
            out["cls_target"] = record["cls_target"].cpu().numpy().tolist()
            out["lesion_present"] = record["lesion_present"].cpu().numpy().tolist()
        return out

    # ------------------------------------------------------------------ epoch ends
    def _gather(self, values: list) -> list:
        if not self.is_ddp:
            return values
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, values)
        return [v for p in parts for v in p]

    def _mean_over_ranks(self, values: list) -> float:
        values = self._gather([float(v) for v in values])
        return float(np.mean(values)) if values else float("nan")

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end([{"loss": o["loss"]} for o in train_outputs])
        self.logger.log("cls_train_losses", self._mean_over_ranks([o["cls_loss"] for o in train_outputs
                                                                   if "cls_loss" in o]), self.current_epoch)

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        logits = self._gather([l for o in val_outputs for l in o.get("cls_logits", [])])
        targets = self._gather([t for o in val_outputs for t in o.get("cls_target", [])])
        lesion = self._gather([p for o in val_outputs for p in o.get("lesion_present", [])])
        keep = [i for i, (t, p) in enumerate(zip(targets, lesion))
                if t != UNLABELED and (p or not self.cls_loss_on_lesion_patches_only)]
        metrics = {"loss": float("nan"), "accuracy": float("nan"), "auc": float("nan")}
        if keep:
            lg = torch.from_numpy(np.stack([logits[i] for i in keep]))
            y = np.array([targets[i] for i in keep])
            metrics["loss"] = float(F.cross_entropy(lg, torch.from_numpy(y)))
            s = classification_summary(y, torch.softmax(lg, 1).numpy(), self.metadata.class_names)
            metrics["accuracy"], metrics["auc"] = s["accuracy"], s["auc_ovr_macro"]
        for name in ("loss", "accuracy", "auc"):
            self.logger.log(f"cls_val_{name}", metrics[name], self.current_epoch)
        stripped = [{k: o[k] for k in ("loss", "tp_hard", "fp_hard", "fn_hard")} for o in val_outputs]
        super().on_validation_epoch_end(stripped)

    def on_epoch_end(self):
        get = self.logger.get_value
        e = self.current_epoch
        self.print_to_log_file(
            f"classification: train_loss {get('cls_train_losses', e):.4f}, val_loss {get('cls_val_loss', e):.4f}, "
            f"val_accuracy {get('cls_val_accuracy', e):.4f}, val_AUC {get('cls_val_auc', e):.4f} "
            "(labeled lesion patches)" + self._head_lr_note())
        super().on_epoch_end()
        if self.local_rank == 0:
            plot_classification_progress(self.logger, self.output_folder)

    def _head_lr_note(self) -> str:
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        lrs = [g["lr"] for g in groups if g.get("algorithm") == "adamw"]
        return f", auxiliary-module AdamW lr {lrs[0]:.2e} (end of epoch)" if lrs else ""

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written to a temporary file and renamed: a kill mid-write keeps the old one."""
        if self.local_rank != 0:
            return
        tmp = f"{filename}.tmp{os.getpid()}"
        try:
            super().save_checkpoint(tmp)
            if os.path.isfile(tmp):
                os.replace(tmp, filename)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        try:
            super().load_checkpoint(filename_or_checkpoint)
        except ValueError as e:
            if "parameter group" not in str(e):
                raise
            where = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "the checkpoint"
            raise RuntimeError(
                f"{where} holds optimizer state for a different parameter-group layout than "
                f"{self.__class__.__name__} uses ({len(self.optimizer.param_groups)} group(s): nnU-Net's SGD for the "
                "U-Net, AdamW for the temporal modeler and head). It was most likely written by nnunet-ext before the "
                "AdamW group existed, when every parameter trained with SGD. Fix: resume it with the matching "
                "*_nnUNetSGD trainer (e.g. STDNetTrainer_nnUNetSGD), or start that fold again without --c.") from e
        add_log_keys(self.logger, fill_to=self.current_epoch)  # checkpoints of older runs lack our keys

    # ------------------------------------------------------------------ final validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        super().perform_actual_validation(save_probabilities)
        if self.plans_manager.plans[PLANS_KEY]["num_cls_classes"]:
            self.validate_classification()

    def validate_classification(self) -> dict | None:
        """Case-level classification of this fold's validation cases with the same sliding-window aggregation as
        ``nnunet-ext predict``; rank 0 writes ``classification.csv`` and ``summary_classification.json``."""
        from nnunet_ext.inference.predictor import ClassifyingPredictor
        from nnunet_ext.inference.writers import write_classification_outputs

        self.set_deep_supervision_enabled(False)
        self.network.eval()
        predictor = ClassifyingPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                         perform_everything_on_device=True, device=self.device, verbose=False,
                                         verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        _, val_keys = self.do_split()
        if self.is_ddp:
            val_keys = val_keys[self.local_rank::dist.get_world_size()]
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                         folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        probs = {}
        for k in dataset_val.identifiers:
            data = torch.from_numpy(np.asarray(dataset_val.load_case(k)[0][:]))
            probs[k] = predictor.classify_preprocessed(data)
        probs = dict(self._gather(list(probs.items())))
        self.set_deep_supervision_enabled(True)
        if self.local_rank != 0:
            return None
        folder = os.path.join(self.output_folder, "validation")
        ids = sorted(probs)
        summary = write_classification_outputs(
            folder, ids, np.stack([probs[k] for k in ids]), self.metadata.class_names,
            targets=self.metadata.class_targets(ids))
        if summary.get("n_labeled", 1):
            self.print_to_log_file(f"Case-level classification on {len(ids)} validation cases: "
                                   f"accuracy {summary['accuracy']:.4f}, macro AUC {summary['auc_ovr_macro']:.4f}")
        else:
            self.print_to_log_file(f"Case-level classification: none of the {len(ids)} validation cases has a class "
                                   "label: no metrics (the probabilities are in validation/classification.csv)")
        return summary

    # ------------------------------------------------------------------ network
    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> torch.nn.Module:
        raise NotImplementedError("subclasses build their network")
