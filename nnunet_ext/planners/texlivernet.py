"""TexLiverNet planner: nnU-Net's planning of the ``2d`` configuration with TexLiverNet's network and memory model.

* Topology, spacing and patch size come from nnU-Net's default planner; the VRAM estimate is TexLiverNet's own
  (:meth:`~nnunet_ext.architectures.texlivernet.TexLiverNet.compute_conv_feature_map_size`: the U-Net convolutions
  plus the DOR-MLP, SFPM-s, SFPM-f and text-attention activations, in nnU-Net's unit), so the batch size reflects what
  the network needs.
* Patch sides are multiples of 16 (the paper's four x2 upsamplings; also of the plans' total stride).
* The 2d configuration names TexLiverNet (``network_class_name``) and records the input size (the SFPM-f filters are
  stored on its frequency grid) and the text-attention settings; the 3D configurations keep nnU-Net's U-Net
  (TexLiverNet is a 2D network, as in the paper).
* Own plans identifier ``TexLiverNetPlans``; preprocessing identical to vanilla nnU-Net's reuses ``nnUNetPlans_2d``.
"""

from __future__ import annotations

import math
from typing import Any

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from nnunet_ext.architectures.texlivernet import TEXLIVERNET_CLASS_NAME
from nnunet_ext.planners import register_planner
from nnunet_ext.planners.sharing import SharesVanillaPreprocessing

PATCH_MULTIPLE = 16
ESTIMATE_TEXT_DIM = 768  # text width assumed by the memory estimate (BERT-base size; MiniLM is 384)


@register_planner
class TexLiverNetPlanner(SharesVanillaPreprocessing, ExperimentPlanner):
    """TexLiverNet on nnU-Net's default 2d topology, plans ``TexLiverNetPlans`` (8 GB target, as nnU-Net's)."""

    default_plans_name = "TexLiverNetPlans"
    texlivernet_settings: dict[str, Any] = {"use_text": True, "text_heads": 4, "agents": 7, "text_dropout": 0.2,
                                            "max_text_tokens": 64, "rolling_stages": 2}

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or self.default_plans_name, overwrite_target_spacing, suppress_transpose)

    def texlivernet_arch_kwargs(self, unet_arch_kwargs: dict, patch_size) -> dict:
        return {**unet_arch_kwargs, **self.texlivernet_settings, "input_size": [int(s) for s in patch_size]}

    def static_estimate_VRAM_usage(self, patch_size, input_channels: int, output_channels: int, arch_class_name: str,
                                   arch_kwargs: dict, arch_kwargs_req_import):
        """TexLiverNet's estimate for 2D patches (built on the meta device: no memory, no init); nnU-Net's for 3D.
        An instance method shadowing nnU-Net's staticmethod: nnU-Net calls it through ``self``."""
        if len(patch_size) != 2:
            return super().static_estimate_VRAM_usage(patch_size, input_channels, output_channels, arch_class_name,
                                                      arch_kwargs, arch_kwargs_req_import)
        import torch
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        kwargs = {**self.texlivernet_arch_kwargs(arch_kwargs, patch_size), "text_dim": ESTIMATE_TEXT_DIM}
        with torch.device("meta"):
            net = get_network_from_plans(TEXLIVERNET_CLASS_NAME, kwargs, arch_kwargs_req_import, input_channels,
                                         output_channels, allow_init=False)
        return net.compute_conv_feature_map_size(patch_size)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if len(plan["patch_size"]) != 2:
            return plan
        arch = plan["architecture"]
        strides = arch["arch_kwargs"]["strides"]
        patch = []
        for axis, side in enumerate(plan["patch_size"]):
            total = math.prod(int(s[axis]) for s in strides)
            multiple = PATCH_MULTIPLE * total // math.gcd(PATCH_MULTIPLE, total)
            patch.append(int(math.ceil(side / multiple) * multiple))
        plan["patch_size"] = patch
        arch["network_class_name"] = TEXLIVERNET_CLASS_NAME
        arch["arch_kwargs"] = self.texlivernet_arch_kwargs(arch["arch_kwargs"], patch)
        return plan
