"""Multi-task trainer base: nnU-Net segmentation + a case-level head + case inputs + named loss terms.

The trainer overrides nnU-Net hooks; it does not copy nnU-Net's training loop:

* **Network.** ``build_network_architecture`` builds the registered architecture :attr:`MultiTaskTrainer.architecture`
  (optionally a registered ``variant`` and ``network_overrides``) through
  :func:`~nnunet_ext.architectures.contract.build_network_from_plans`, the same code path the predictor and the
  contract tests use. The case-level settings (classes, phases, tabular features, lesion labels, text encoder) are
  written into ``plans["nnunet_ext"]`` when the trainer starts (:mod:`nnunet_ext.planners.case_settings`).
* **Case inputs.** The inputs the network consumes (tabular features, text embeddings) are looked up per batch from
  ``batch["keys"]`` (:class:`~nnunet_ext.data.case_inputs.CaseInputs`): tabular features from the metadata,
  standardised inside the network with the training fold's statistics (set when training starts, saved as buffers
  with every checkpoint and written to ``tabular_statistics.json``); text embeddings computed once by
  ``plan-and-preprocess`` (no text encoder runs in training). Every case must have what the network needs before
  the first step, or an error names the cases.
* **Loss terms.** :meth:`MultiTaskTrainer.loss_terms` returns named terms: ``seg`` (nnU-Net's Dice + CE with deep
  supervision), ``cls`` (CE over labeled samples whose patch shows the lesion; ``cls_loss_on_lesion_patches_only``)
  and each auxiliary loss of the network by its name. :attr:`MultiTaskTrainer.loss_weights` combines them; a term
  without a weight is an error. Each term is logged per epoch (train and validation) and plotted in
  ``progress_terms.png``.
* **Primary task.** ``primary_task = "classification"`` chooses ``checkpoint_best`` by the exponential moving
  average (0.9 / 0.1, as nnU-Net's pseudo-Dice) of the validation macro AUC instead of the pseudo-Dice.
* **Network call.** ``train_step``/``validation_step`` run nnU-Net's own implementation (AMP, grad scaler, clipping,
  DDP) with ``self.network`` replaced, for the step, by a callable that calls the real network (the DDP/compile
  wrapper) with ``return_heads=True`` and the batch's case inputs and hands nnU-Net the segmentation logits, and
  ``self.loss`` by the weighted sum of the terms. The heads therefore go through DDP's gradient synchronisation.
* **Final validation** runs nnU-Net's with the network bound to each validation case
  (:class:`~nnunet_ext.architectures.case_binding.CaseBoundNetwork`): case inputs reach the network, and the same
  network calls give the case-level class (the aggregation of ``nnunet-ext predict``), written to
  ``validation/classification.csv`` and ``validation/summary_classification.json`` beside nnU-Net's ``summary.json``.
* **Optimizer.** The U-Net (encoder, decoder) trains with nnU-Net's SGD and poly schedule, unchanged. The modules a
  network lists in ``auxiliary_modules`` (temporal modeler, skip fusion, class head) train with AdamW (``head_lr``
  3e-4, ``head_weight_decay`` 1e-4, chosen here; the STD-Net paper trains everything with AdamW lr 1e-4, weight decay
  1e-5) after a linear warm-up over ``head_warmup_iterations`` (default 5% of all iterations, at most 2500), then
  nnU-Net's poly decay: :mod:`nnunet_ext.trainers.optim`. ``head_optimizer = "sgd"`` trains every parameter with
  nnU-Net's SGD. On CUDA the hybrid optimizer uses PyTorch's fused SGD / AdamW kernels (``optimizer_fused``).
* **Head pooling in training.** Heads pool their features weighted by the lesion
  (:func:`~nnunet_ext.architectures.blocks.heads.lesion_weighted_pool`): at inference and in validation by the
  network's own predicted lesion probability; in training steps, with ``head_pool_in_training = "truth"`` (default),
  by the patch's ground-truth lesion voxels (the STD-Net paper trains its head on lesion-centred inputs; early in
  training the predicted lesion map is noise). ``"prediction"`` pools with the prediction in training too.
* **Checkpoints** are written atomically every ``save_every`` epochs (default 1), so ``--c`` resumes from the last
  complete epoch with every head, the optimizer, the logs and (seeded runs) the generator states.
* **DDP** also works on CPU with the gloo backend (tests), where stock nnU-Net assumes CUDA.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_ext.architectures.case_binding import CaseBoundNetwork, unwrap
from nnunet_ext.architectures.contract import PLANS_KEY, HeadsOutput, build_network_from_plans, get_architecture
from nnunet_ext.data.case_inputs import CaseInputs
from nnunet_ext.data.classification_results import write_classification_outputs
from nnunet_ext.data.metadata import UNLABELED, DatasetMetadata, save_json_atomic
from nnunet_ext.data.splits import write_stratified_splits_if_missing
from nnunet_ext.metrics.classification import COLLAPSE_SPREAD, classification_summary, head_collapse, prior_entropy
from nnunet_ext.planners.case_settings import make_case_settings
from nnunet_ext.trainers.logging import CLS_METRIC_KEYS, ensure_log_key, plot_progress, term_key
from nnunet_ext.trainers.optim import (
    auxiliary_parameters,
    default_warmup_iterations,
    make_hybrid_optimizer,
)
from nnunet_ext.trainers.seeding import EnvSeededTrainer

HEAD_POOLS = ("truth", "prediction")
PRIMARY_TASKS = ("segmentation", "classification")
TABULAR_STATISTICS_FILE = "tabular_statistics.json"
EMA = 0.9  # nnU-Net's smoothing of the pseudo-Dice, reused for the classification-primary checkpoint choice


class _StepNetwork:
    """Stands in for ``trainer.network`` during one nnU-Net step: calls the real network with ``return_heads=True``
    and the case inputs and returns only the segmentation logits (nnU-Net's step calls ``self.network(data)``)."""

    def __init__(self, network, inputs: dict[str, torch.Tensor]):
        self.network = network
        self.inputs = inputs
        self.heads: HeadsOutput | None = None

    def __call__(self, x):
        self.heads = self.network(x, return_heads=True, **self.inputs)
        return self.heads.seg

    def __getattr__(self, name):  # parameters(), train(), ... of the real network
        return getattr(self.network, name)


def _observed_dataset(dataset_class: type, on_load) -> type:
    """A subclass of nnU-Net's dataset class whose ``load_case`` first calls ``on_load(case id)``: nnU-Net's final
    validation loads one case, then predicts it, so the network can be bound to that case in between."""

    class Observed(dataset_class):
        def load_case(self, identifier):
            on_load(identifier)
            return super().load_case(identifier)

    return Observed


class MultiTaskTrainer(EnvSeededTrainer, nnUNetTrainer):
    """Base class of every nnunet-ext trainer. Subclasses name a registered :attr:`architecture`; variants change
    the class attributes below (one attribute per change, nnU-Net style)."""

    architecture: ClassVar[str] = ""  # a name in nnunet_ext.architectures.contract.ARCHITECTURES
    variant: ClassVar[str | None] = None  # a registered variant (ablation) of the architecture
    network_overrides: ClassVar[dict[str, Any]] = {}  # constructor arguments that win over the plans
    loss_weights: ClassVar[dict[str, float]] = {"seg": 1.0, "cls": 1.0}  # one weight per named loss term
    primary_task: ClassVar[str] = "segmentation"  # "classification": checkpoint_best by validation AUC
    cls_loss_on_lesion_patches_only: ClassVar[bool] = True
    requires_classification: ClassVar[bool] = True
    head_optimizer: ClassVar[str] = "adamw"  # "adamw": AdamW + warm-up for the auxiliary modules; "sgd": nnU-Net's
    head_lr: ClassVar[float] = 3e-4
    head_weight_decay: ClassVar[float] = 1e-4
    head_warmup_iterations: ClassVar[int | None] = None  # None: 5% of all training iterations, at most 2500
    head_pool_in_training: ClassVar[str] = "truth"  # "truth": the ground-truth lesion; "prediction"
    optimizer_fused: ClassVar[bool | None] = None  # None: PyTorch's fused kernels on CUDA, _foreach elsewhere

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp and device.type == "cpu":  # nnU-Net forces CUDA under DDP; keep CPU for gloo runs
            self.device = device
            self.grad_scaler = None
        name = self.__class__.__name__
        if self.head_pool_in_training not in HEAD_POOLS:
            raise ValueError(f"{name}.head_pool_in_training={self.head_pool_in_training!r}; choose one of "
                             f"{HEAD_POOLS}")
        if self.primary_task not in PRIMARY_TASKS:
            raise ValueError(f"{name}.primary_task={self.primary_task!r}; choose one of {PRIMARY_TASKS}")
        self.metadata = DatasetMetadata.from_dataset_json(dataset_json)
        dataset = self.plans_manager.dataset_name
        if self.requires_classification and (self.metadata is None or not self.metadata.has_classification):
            raise RuntimeError(
                f"{name} trains a classification head, but dataset.json of {dataset} declares no classes. Fix: add "
                'a "nnunet_ext": {"classification": {"class_names": [...]}, "cases": {...}} block (docs/metadata.md), '
                "re-run plan-and-preprocess, or train a segmentation-only trainer.")
        if self.requires_classification:  # classes declared but no case labeled: fail now, not in sklearn at the end
            self.metadata.check_trainable(f"dataset.json of {dataset}")
        network_class = get_architecture(self.architecture).network_class
        self.text_encoder_info = self._text_encoder_info(network_class) if "text" in network_class.case_inputs \
            else None
        self.plans_manager.plans[PLANS_KEY] = make_case_settings(
            dataset_json, self.metadata, self.text_encoder_info.to_json() if self.text_encoder_info else None)
        self.save_every = 1
        self.case_inputs: CaseInputs | None = None
        self.case_uses: tuple[str, ...] = ()
        self._iteration_in_epoch = 0
        self._best_primary: float | None = None
        self._prior_ce: float | None = None
        for key in CLS_METRIC_KEYS:
            ensure_log_key(self.logger, key, 0)

    def _text_encoder_info(self, network_class):
        """The encoder of the text embeddings ``plan-and-preprocess`` stored for this dataset (None when the network
        can do without text and there is none)."""
        from nnunet_ext.data.text_embeddings import active_text_encoder

        info = active_text_encoder(self.preprocessed_dataset_folder_base)
        if info is None and "text" not in network_class.optional_case_inputs:
            raise RuntimeError(
                f"{self.__class__.__name__} consumes per-case texts, but {self.preprocessed_dataset_folder_base} holds "
                'no text embeddings. Fix: give every case a "text" in dataset.json["nnunet_ext"]["cases"] and rerun '
                "`nnunet-ext plan-and-preprocess` (it embeds the texts; --text-encoder picks the encoder).")
        return info

    @property
    def settings(self) -> dict[str, Any]:
        return self.plans_manager.plans[PLANS_KEY]

    # ------------------------------------------------------------------ network
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        """The registered architecture from the plans (a classmethod: nnU-Net calls it on the class and on the
        instance with the same arguments)."""
        return build_network_from_plans(cls.architecture, plans_manager, configuration_manager, num_input_channels,
                                        num_output_channels, enable_deep_supervision, variant=cls.variant,
                                        **cls.network_overrides)

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
        net = unwrap(self.network)
        self.case_uses = tuple(net.consumed_case_inputs())
        if getattr(net, "cls_pool_channels", None):
            self.print_to_log_file(f"head pooling in training steps: {self.head_pool_in_training} "
                                   "(validation and inference: the predicted lesion)")
        s = self.settings
        self.print_to_log_file(f"lesion labels: {s['lesion_labels']} ({s['lesion_labels_source']}); case inputs of "
                               f"the network: {list(self.case_uses) or 'none'}; loss weights: {self.loss_weights}; "
                               f"primary task: {self.primary_task}")
        if s["num_tabular"] and "tabular" not in self.case_uses:
            self.print_to_log_file(
                f"note: dataset.json declares the tabular features {s['tabular_features']}; {self.__class__.__name__} "
                "does not feed them to its network")

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

    def load_case_inputs(self, case_ids: list[str]) -> CaseInputs:
        """The case inputs of ``case_ids``, checked to hold what the network needs (an error names the cases)."""
        from nnunet_ext.data.text_embeddings import TextEmbeddingStore, TextEncoderInfo

        text = None
        if "text" in self.case_uses and self.text_encoder_info is not None:
            store = TextEmbeddingStore(self.preprocessed_dataset_folder_base,
                                       TextEncoderInfo.from_json(self.settings["text_encoder"]))
            have = [k for k in case_ids if self.metadata is not None and k in self.metadata.cases
                    and self.metadata.cases[k].text]
            text = store.load(have)
        inputs = CaseInputs.from_metadata(self.metadata, case_ids, text)
        optional = unwrap(self.network).optional_case_inputs
        inputs.check(case_ids, self.case_uses, f'dataset.json["nnunet_ext"]["cases"] of '
                                               f"{self.plans_manager.dataset_name}, then rerun plan-and-preprocess",
                     optional)
        return inputs

    def get_dataloaders(self):
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        ids = [str(k) for k in self.dataset_class.get_identifiers(self.preprocessed_dataset_folder)]
        missing = sorted(set(self.metadata.cases) - set(ids)) if self.metadata is not None else []
        if missing:  # the metadata describes cases the preprocessed folder lacks: preprocessing is incomplete
            from nnunet_ext.data.metadata import MetadataError, _fmt_ids

            raise MetadataError(
                f"{len(missing)} case(s) of dataset.json's metadata have no preprocessed data in "
                f"{self.preprocessed_dataset_folder}: {_fmt_ids(missing)}. Preprocessing was interrupted or ran on "
                "another set of cases. Fix: rerun `nnunet-ext plan-and-preprocess` for this dataset.")
        DatasetMetadata.from_dataset_json(self.dataset_json, ids)  # every case valid before hours of training
        self.case_inputs = self.load_case_inputs(ids)
        return super().get_dataloaders()

    def on_train_start(self):
        super().on_train_start()
        if "tabular" in self.case_uses:
            tr_keys, _ = self.do_split()
            mean, std = self.case_inputs.tabular_statistics(tr_keys)
            unwrap(self.network).set_tabular_statistics(mean, std)
            if self.local_rank == 0:
                save_json_atomic({"features": self.settings["tabular_features"], "mean": mean.tolist(),
                                  "std": std.tolist(), "n_training_cases": len(tr_keys),
                                  "note": "from the training cases of this fold; the network holds the same values "
                                          "as buffers"},
                                 os.path.join(self.output_folder, TABULAR_STATISTICS_FILE))

    def on_train_epoch_start(self):
        self._iteration_in_epoch = 0
        super().on_train_epoch_start()

    def prior_ce(self) -> float:
        """Cross-entropy of predicting the training fold's class frequencies for every case (nats): the level a head
        that has collapsed to the prior sits at."""
        if self._prior_ce is None:
            if self.metadata is None or not self.metadata.has_classification:
                self._prior_ce = math.nan
            else:
                tr_keys, _ = self.do_split()
                self._prior_ce = prior_entropy(self.metadata.class_targets([str(k) for k in tr_keys]),
                                               self.metadata.num_classes)
        return self._prior_ce

    # ------------------------------------------------------------------ loss terms
    def _lesion_voxels(self, target, labels) -> torch.Tensor:
        """Bool mask (B, 1, *S) of the full-resolution target voxels whose label is in ``labels``."""
        t = target[0] if isinstance(target, list) else target
        lesion = torch.zeros_like(t, dtype=torch.bool)
        for lab in labels:
            lesion |= t == lab
        return lesion

    def _lesion_present(self, target) -> torch.Tensor:
        """(B,) bool: does the full-resolution target of each sample contain a lesion voxel?"""
        labels = self.settings["lesion_labels"]
        if labels is None:  # region-based: any foreground region
            t = target[0] if isinstance(target, list) else target
            return t.flatten(1).amax(1) > 0
        return self._lesion_voxels(target, labels).flatten(1).any(1)

    def _training_pool_mask(self, batch: dict) -> torch.Tensor | None:
        """The ground-truth lesion mask the head pools with in a training step (``head_pool_in_training``), on the
        device; None to pool with the prediction (the setting, region-based labels, or no lesion pooling)."""
        channels = getattr(unwrap(self.network), "cls_pool_channels", None)
        if self.head_pool_in_training != "truth" or not channels or self.label_manager.has_regions:
            return None
        return self._lesion_voxels(batch["target"], channels).to(self.device, non_blocking=True)

    def classification_loss(self, cls_logits: torch.Tensor, cls_target: torch.Tensor,
                            lesion_present: torch.Tensor) -> torch.Tensor:
        """Mean CE over labeled samples (and lesion patches); 0 (still attached to the graph) if none qualify."""
        valid = cls_target != UNLABELED
        if self.cls_loss_on_lesion_patches_only:
            valid = valid & lesion_present
        ce = F.cross_entropy(cls_logits.float(), cls_target.clamp_min(0), reduction="none")
        return (ce * valid.float()).sum() / valid.sum().clamp_min(1)

    def loss_terms(self, heads: HeadsOutput, target, cls_target: torch.Tensor | None, seg_loss) -> dict:
        """The named, unweighted loss terms of one step: ``seg``, ``cls`` (networks with a head, datasets with
        classes) and the network's auxiliary losses by name."""
        terms = {"seg": seg_loss(heads.seg, target)}
        if heads.cls is not None and cls_target is not None:
            terms["cls"] = self.classification_loss(heads.cls, cls_target, self._lesion_present(target))
        for name, value in heads.aux_losses.items():
            if name in terms:
                raise RuntimeError(f"the network's auxiliary loss {name!r} clashes with a built-in loss term")
            terms[name] = value
        return terms

    def combine_loss_terms(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = sorted(set(terms) - set(self.loss_weights))
        if missing:
            raise RuntimeError(f"{self.__class__.__name__}.loss_weights {self.loss_weights} has no weight for the loss "
                               f"term(s) {missing}. Fix: add them to loss_weights (0 to log a term without training "
                               "on it).")
        return sum(self.loss_weights[k] * v for k, v in terms.items())

    @contextmanager
    def _multitask_step(self, batch: dict, record: dict, training: bool = False):
        """Swap ``self.network``/``self.loss`` for the duration of one nnU-Net step (see module docstring)."""
        network, seg_loss = self.network, self.loss
        keys = [str(k) for k in batch["keys"]]
        inputs = self.case_inputs.batch(keys, self.case_uses, self.device)
        mask = self._training_pool_mask(batch) if training else None
        if mask is not None:
            inputs["lesion_mask"] = mask
        step = _StepNetwork(network, inputs)
        cls_target = self.case_inputs.class_targets(keys).to(self.device) if self.case_inputs.class_index else None

        def total_loss(seg_output, target):
            terms = self.loss_terms(step.heads, target, cls_target, seg_loss)
            record["terms"] = {k: float(v.detach()) for k, v in terms.items()}
            record["heads"], record["cls_target"] = step.heads, cls_target
            record["lesion_present"] = self._lesion_present(target)
            return self.combine_loss_terms(terms)

        self.network, self.loss = step, total_loss
        try:
            yield
        finally:
            self.network, self.loss = network, seg_loss

    def train_step(self, batch: dict) -> dict:
        if hasattr(self.lr_scheduler, "step_iteration"):  # per-iteration warm-up (HybridLRScheduler, cosine)
            self.lr_scheduler.step_iteration(self.current_epoch * self.num_iterations_per_epoch
                                             + self._iteration_in_epoch)
        self._iteration_in_epoch += 1
        record: dict = {}
        with self._multitask_step(batch, record, training=True):
            out = super().train_step(batch)
        out["terms"] = record.get("terms", {})
        return out

    def validation_step(self, batch: dict) -> dict:
        record: dict = {}
        with self._multitask_step(batch, record):
            out = super().validation_step(batch)
        out["terms"] = record.get("terms", {})
        cls = record["heads"].cls
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

    def _log_terms(self, outputs: list[dict], split: str) -> None:
        names = sorted({k for o in outputs for k in o.get("terms", {})})
        names = self._gather([names])
        for name in sorted({n for part in names for n in part}):
            values = self._gather([o["terms"][name] for o in outputs if name in o.get("terms", {})])
            key = term_key(name, split)
            ensure_log_key(self.logger, key, self.current_epoch)
            self.logger.log(key, float(np.mean(values)) if values else float("nan"), self.current_epoch)

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end([{"loss": o["loss"]} for o in train_outputs])
        self._log_terms(train_outputs, "train")

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        self._log_terms(val_outputs, "val")
        logits = self._gather([v for o in val_outputs for v in o.get("cls_logits", [])])
        targets = self._gather([t for o in val_outputs for t in o.get("cls_target", [])])
        lesion = self._gather([p for o in val_outputs for p in o.get("lesion_present", [])])
        keep = [i for i, (t, p) in enumerate(zip(targets, lesion))
                if t != UNLABELED and (p or not self.cls_loss_on_lesion_patches_only)]
        metrics = {"loss": float("nan"), "accuracy": float("nan"), "auc": float("nan"), "spread": float("nan"),
                   "collapsed": float("nan")}
        if keep:
            lg = torch.from_numpy(np.stack([logits[i] for i in keep]))
            y = np.array([targets[i] for i in keep])
            metrics["loss"] = float(F.cross_entropy(lg, torch.from_numpy(y)))
            probs = torch.softmax(lg, 1).numpy()
            s = classification_summary(y, probs, self.metadata.class_names)
            metrics["accuracy"], metrics["auc"] = s["accuracy"], s["auc_ovr_macro"]
            collapse = head_collapse(probs, metrics["loss"], self.prior_ce())
            metrics["spread"] = collapse["probability_spread"]
            if collapse["collapsed"] is not None:
                metrics["collapsed"] = float(collapse["collapsed"])
        for name in ("loss", "accuracy", "auc", "spread", "collapsed"):
            key = f"cls_val_{name}"
            ensure_log_key(self.logger, key, self.current_epoch)
            self.logger.log(key, metrics[name], self.current_epoch)
        stripped = [{k: o[k] for k in ("loss", "tp_hard", "fp_hard", "fn_hard")} for o in val_outputs]
        super().on_validation_epoch_end(stripped)

    def on_epoch_end(self):
        e = self.current_epoch
        store = self.logger.local_logger.my_fantastic_logging

        def get(key, step):
            # NaN for a metric this epoch did not log (a checkpoint written before the key existed, resumed with --c)
            values = store.get(key, [])
            return values[step] if step < len(values) else math.nan

        terms = [k[len("loss_"):-len("_train")] for k in store if k.startswith("loss_") and k.endswith("_train")]
        parts = [f"{t} {get(term_key(t, 'train'), e):.4f}/{get(term_key(t, 'val'), e):.4f}"
                 for t in terms]
        self.print_to_log_file("loss terms (train/val, unweighted): " + ", ".join(parts))
        if self.settings["num_cls_classes"] and unwrap(self.network).produces_classes():
            auc = get("cls_val_auc", e)
            if math.isfinite(auc):
                self.print_to_log_file(f"classification (labeled lesion patches): val_accuracy "
                                       f"{get('cls_val_accuracy', e):.4f}, val_AUC {auc:.4f}, probability spread "
                                       f"{get('cls_val_spread', e):.4f}{self._head_lr_note()}")
            else:
                self.print_to_log_file("classification: no validation patch with a labeled lesion of two classes this "
                                       "epoch (accuracy and AUC undefined)")
            if get("cls_val_collapsed", e) == 1.0:
                self.print_to_log_file(
                    f"WARNING: the classification head has collapsed: it gives nearly the same probabilities for every "
                    f"validation patch (spread {get('cls_val_spread', e):.4f} < {COLLAPSE_SPREAD}; CE "
                    f"{get('cls_val_loss', e):.4f} against {self.prior_ce():.4f} for the class prior). Its class "
                    "probabilities carry no information about the case (docs/trainers.md, 'collapsed head').")
        if self.primary_task == "classification":
            self._choose_best_by_classification()
        super().on_epoch_end()
        if self.local_rank == 0:
            plot_progress(self.logger, self.output_folder,
                          bool(self.settings["num_cls_classes"]) and unwrap(self.network).produces_classes())

    def _choose_best_by_classification(self) -> None:
        """``checkpoint_best`` by the EMA of the validation macro AUC; nnU-Net's pseudo-Dice rule is switched off by
        a best value it can never beat."""
        auc = self.logger.get_value("cls_val_auc", self.current_epoch)
        self._best_ema = math.inf
        ensure_log_key(self.logger, "ema_cls_val_auc", self.current_epoch)
        previous = self.logger.get_value("ema_cls_val_auc", self.current_epoch - 1) if self.current_epoch else math.nan
        ema = auc if not math.isfinite(previous) else (previous if not math.isfinite(auc)
                                                       else EMA * previous + (1 - EMA) * auc)
        self.logger.log("ema_cls_val_auc", ema, self.current_epoch)
        if math.isfinite(ema) and (self._best_primary is None or ema > self._best_primary):
            self._best_primary = ema
            self.print_to_log_file(f"New best EMA validation macro AUC: {ema:.4f}")
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_best.pth"))

    def _head_lr_note(self) -> str:
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        lrs = [g["lr"] for g in groups if g.get("algorithm") == "adamw"]
        return f", auxiliary-module AdamW lr {lrs[0]:.2e} (end of epoch)" if lrs else ""

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dict(self) -> dict:
        return {**super().checkpoint_dict(), "nnunet_ext_best_primary": self._best_primary}

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        from nnunet_ext.data.checkpoints import load_checkpoint as safe_load

        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):  # weights_only: a checkpoint from a stranger runs no code (data/checkpoints)
            checkpoint = safe_load(checkpoint, map_location=self.device)
        super().load_checkpoint(checkpoint)
        self._best_primary = checkpoint.get("nnunet_ext_best_primary")

    # ------------------------------------------------------------------ final validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation with the network bound to each validation case (case inputs in, class votes
        recorded); then ``classification.csv`` and ``summary_classification.json`` for networks with a head."""
        has_head = bool(self.settings["num_cls_classes"]) and unwrap(self.network).produces_classes()
        binding = CaseBoundNetwork(self.network, self.settings["lesion_labels"], record_classes=has_head)
        probs: dict[str, np.ndarray] = {}

        def finish() -> None:
            p = binding.case_probabilities()
            if binding.case is not None and p is not None:
                probs[binding.case] = p

        def on_load(case: str) -> None:
            finish()
            binding.bind(case, self.case_inputs.batch([case], self.case_uses, self.device))

        if self.dataset_class is None:
            from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        if self.case_inputs is None:  # --val without training in this process
            self.case_inputs = self.load_case_inputs([str(k) for k in self.do_split()[1]])
        network, dataset_class = self.network, self.dataset_class
        self.network, self.dataset_class = binding, _observed_dataset(dataset_class, on_load)
        try:
            super().perform_actual_validation(save_probabilities)
            finish()
        finally:
            self.network, self.dataset_class = network, dataset_class
        if has_head:
            probs = dict(self._gather(list(probs.items())))
            if probs:
                self._write_validation_classification(probs)

    def _write_validation_classification(self, probs: dict[str, np.ndarray]) -> None:
        if self.local_rank != 0:
            return
        ids = sorted(probs)
        folder = os.path.join(self.output_folder, "validation")
        summary = write_classification_outputs(folder, ids, np.stack([probs[k] for k in ids]),
                                               self.metadata.class_names, targets=self.metadata.class_targets(ids),
                                               prior_ce=self.prior_ce())
        if (summary.get("head_collapse") or {}).get("collapsed"):
            self.print_to_log_file(
                f"WARNING: the classification head has collapsed on the validation cases (probability spread "
                f"{summary['head_collapse']['probability_spread']:.4f}): recorded in "
                "validation/summary_classification.json; nnunet-ext predict warns with this model.")
        if summary.get("n_labeled", 1):
            notes = "; ".join(summary.get("notes", []))
            self.print_to_log_file(f"Case-level classification on {len(ids)} validation cases "
                                   f"({summary.get('n_labeled', len(ids))} labeled): accuracy "
                                   f"{summary['accuracy']:.4f}, macro AUC {summary['auc_ovr_macro']:.4f}"
                                   + (f" ({notes})" if notes else ""))
        else:
            self.print_to_log_file(f"Case-level classification: none of the {len(ids)} validation cases has a class "
                                   "label: no metrics (the probabilities are in validation/classification.csv)")

