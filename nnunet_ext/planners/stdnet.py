"""STD-Net experiment planners: nnU-Net's planning with the STD-Net architecture and its memory model.

* Topology, patch size and batch size come from nnU-Net's own planners (:class:`ExperimentPlanner` for the plain
  encoder, :class:`ResEncUNetPlanner` for the residual presets); only the VRAM estimate changes: it is
  :meth:`STDNet.compute_conv_feature_map_size` (N encoder passes, decoder, token activations), in the same unit as
  nnU-Net's reference values, so those calibrated values are reused unchanged. STD-Net therefore gets smaller
  patches / batches than the U-Net for the same memory target, as N phases go through the encoder.
* The plans name the STD-Net class directly (``network_class_name`` + JSON ``arch_kwargs`` with the temporal
  settings and the phase layout read from the dataset metadata), so ``get_network_from_plans`` builds it.
* Own plans identifiers (``STDNetPlans``, ``STDNetPlansM/L/XL``) keep vanilla ``nnUNetPlans`` usable beside them.
* Preprocessed data is shared with vanilla nnU-Net when a configuration's preprocessing (target spacing,
  normalisation, resampling, transpose, intensity properties) equals vanilla's: ``data_identifier`` is then
  ``nnUNetPlans_<cfg>`` and ``nnunet-ext plan-and-preprocess`` reuses that folder instead of writing a copy.

Presets, like nnU-Net's ResEnc M/L/XL, differ only in constants: ``STDNetPlanner`` (plain encoder, 8 GB, nnU-Net's
default reference values), ``STDNetPlannerM/L/XL`` (residual encoder, 8/24/40 GB, ResEnc reference values).
"""

from __future__ import annotations

import os
from typing import Any

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    ResEncUNetPlanner,
)

from nnunet_ext.architectures.stdnet import STDNET_CLASS_NAME
from nnunet_ext.planners import register_planner
from nnunet_ext.planners.sharing import SharesVanillaPreprocessing


class _STDNetPlanning(SharesVanillaPreprocessing):
    """Mixin put before an nnU-Net planner class. Subclasses set the constants below."""

    default_plans_name: str = "STDNetPlans"
    default_gpu_memory_gb: float = 8
    encoder: str = "plain"
    reference_val_3d: float = 560_000_000  # nnU-Net units at batch 2 that fill reference_val_gb (ExperimentPlanner)
    reference_val_2d: float = 85_000_000
    reference_val_gb: float = 8
    max_dataset_covered: float = 0.05
    # temporal settings written into the plans (paper defaults)
    stdnet_settings: dict[str, Any] = {"temporal": "transformer", "temporal_depth": 6, "temporal_heads": 8,
                                       "temporal_dim": 768, "skip_fusion": "none", "share_weights": True}

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float | None = None,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, self.default_gpu_memory_gb if gpu_memory_target_in_gb is None
                         else gpu_memory_target_in_gb, preprocessor_name, plans_name or self.default_plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self.UNet_reference_val_3d = self.reference_val_3d
        self.UNet_reference_val_2d = self.reference_val_2d
        self.UNet_reference_val_corresp_GB = self.reference_val_gb
        self.max_dataset_covered = self.max_dataset_covered

    # ------------------------------------------------------------------ architecture
    def phase_layout(self) -> dict[str, int]:
        """``num_phases``, ``reference_phase``, ``num_cls_classes`` from the dataset metadata (as the trainer's
        ``plans["nnunet_ext"]`` block will say)."""
        from nnunet_ext.planners.case_settings import make_case_settings

        s = make_case_settings(self.dataset_json)
        return {"num_phases": s["num_phases"], "reference_phase": s["reference_phase_index"],
                "num_cls_classes": s["num_cls_classes"]}

    def stdnet_arch_kwargs(self, unet_arch_kwargs: dict) -> dict:
        """The U-Net arch_kwargs nnU-Net planned, plus STD-Net's encoder kind, phase layout and temporal settings."""
        return {**unet_arch_kwargs, "encoder": self.encoder, **self.phase_layout(), **self.stdnet_settings}

    def static_estimate_VRAM_usage(self, patch_size, input_channels: int, output_channels: int, arch_class_name: str,
                                   arch_kwargs: dict, arch_kwargs_req_import):
        """nnU-Net's estimate (it instantiates the network and asks ``compute_conv_feature_map_size``), for STD-Net
        built from the candidate U-Net topology. The network is built on the meta device (no memory, no init: the
        paper-size transformer alone has 40M parameters). An instance method shadowing nnU-Net's staticmethod:
        nnU-Net calls it through ``self``."""
        import torch
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        with torch.device("meta"):
            net = get_network_from_plans(STDNET_CLASS_NAME, self.stdnet_arch_kwargs(arch_kwargs),
                                         arch_kwargs_req_import, input_channels, output_channels, allow_init=False)
        return net.compute_conv_feature_map_size(patch_size)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        arch = plan["architecture"]
        arch["network_class_name"] = STDNET_CLASS_NAME
        arch["arch_kwargs"] = self.stdnet_arch_kwargs(arch["arch_kwargs"])
        return plan

    # ------------------------------------------------------------------ memory model
    @classmethod
    def implied_vram_gb(cls, estimate: float, batch_size: int, dim: int = 3) -> float:
        """The memory the planner budgets for ``batch_size`` samples of ``estimate`` units: nnU-Net's reference
        value ``reference_val_*d`` units at batch 2 (3D; 12 in 2D) corresponds to ``reference_val_gb`` GB."""
        ref_val, ref_bs = (cls.reference_val_3d, 2) if dim == 3 else (cls.reference_val_2d, 12)
        return float(estimate) * batch_size / ref_bs * cls.reference_val_gb / ref_val


@register_planner
class STDNetPlanner(_STDNetPlanning, ExperimentPlanner):
    """STD-Net on nnU-Net's default topology (plain encoder), 8 GB target, plans ``STDNetPlans``."""


@register_planner
class STDNetPlannerCPU(STDNetPlanner):
    """Plain encoder with a reduced temporal modeler (D=64, L=2, h=4), plans ``STDNetPlansCPU``: for runs on a CPU
    (``make demo``, smoke tests), where the paper-size transformer (D=768, L=6, h=8; 40M parameters, 390 MB
    checkpoints) dominates the run time. Not the paper's configuration: report results of it as such."""

    default_plans_name = "STDNetPlansCPU"
    stdnet_settings = {**_STDNetPlanning.stdnet_settings, "temporal_depth": 2, "temporal_heads": 4, "temporal_dim": 64}


@register_planner
class STDNetPlannerM(_STDNetPlanning, ResEncUNetPlanner):
    """Residual encoder, ~9-11 GB target (as nnU-Net ResEnc M), plans ``STDNetPlansM``."""

    default_plans_name = "STDNetPlansM"
    default_gpu_memory_gb = 8
    encoder = "residual"
    reference_val_3d, reference_val_2d, reference_val_gb = 680_000_000, 135_000_000, 8
    max_dataset_covered = 1


@register_planner
class STDNetPlannerL(_STDNetPlanning, ResEncUNetPlanner):
    """Residual encoder, ~24 GB target (as nnU-Net ResEnc L), plans ``STDNetPlansL``."""

    default_plans_name = "STDNetPlansL"
    default_gpu_memory_gb = 24
    encoder = "residual"
    reference_val_3d, reference_val_2d, reference_val_gb = 2_100_000_000, 380_000_000, 24
    max_dataset_covered = 1


@register_planner
class STDNetPlannerXL(_STDNetPlanning, ResEncUNetPlanner):
    """Residual encoder, ~40 GB target (as nnU-Net ResEnc XL), plans ``STDNetPlansXL``."""

    default_plans_name = "STDNetPlansXL"
    default_gpu_memory_gb = 40
    encoder = "residual"
    reference_val_3d, reference_val_2d, reference_val_gb = 3_600_000_000, 560_000_000, 40
    max_dataset_covered = 1


def planned_network(plans_file: str, configuration: str = "3d_fullres", deep_supervision: bool = True):
    """Build the network a plans file describes (any nnU-Net plans), with the input/output channels of its dataset.
    Returns ``(network, configuration_manager)``."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans_file)
    cm = pm.get_configuration(configuration)
    dj = load_json(os.path.join(os.path.dirname(plans_file), "dataset.json"))
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, len(dj["channel_names"]),
                                 len(dj["labels"]), deep_supervision=deep_supervision)
    return net, cm
