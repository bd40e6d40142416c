"""DeSamba planners: nnU-Net's planning with DeSamba's memory model, a size preset picked against the VRAM target and
patches that cover the lesion ROI.

DeSamba (arXiv 2507.15487) classifies lesion ROIs of several MRI sequences; the paper's network has 433.82M
parameters, so its weights, gradients and optimizer state alone take about 7 GB. The planner therefore:

* **measures the lesion ROI**: the bounding box of every connected lesion component in the training labels (the
  lesion labels of the metadata, :func:`nnunet_ext.data.lesion.lesion_labels`; any foreground for region-based
  labels), in mm; the 95th percentile per axis (:attr:`DeSambaPlanner.roi_percentile`) converted to voxels at each
  configuration's target spacing (and transpose), capped at the median image shape;
* **picks a preset** (:data:`~nnunet_ext.architectures.desamba.PRESETS`, largest first): for each, the memory of its
  parameter state (:attr:`DeSambaPlanner.bytes_per_parameter` per parameter: float32 weights, gradients and two
  optimizer moments) is taken off the VRAM target, and nnU-Net's own patch-and-batch search runs with DeSamba's
  activation estimate (:meth:`~nnunet_ext.architectures.desamba.DeSamba.compute_conv_feature_map_size`, built on the
  meta device) against what is left. The first preset whose planned patch covers the ROI on every axis wins; a
  preset whose parameters leave less than :attr:`DeSambaPlanner.min_activation_fraction` of the target is skipped.
  When no preset covers the ROI, the smallest is kept and the planner says so;
* writes ``network_class_name`` = DeSamba, the preset's constructor arguments and the plans' topology into
  ``arch_kwargs`` and a ``desamba_planning`` record (preset, parameters, ROI in voxels, covered or not) into the
  configuration. Own plans identifier ``DeSambaPlans``; preprocessing identical to vanilla nnU-Net's reuses
  ``nnUNetPlans_<cfg>`` (:mod:`nnunet_ext.planners.sharing`).

Training uses lesion-centred patches (:class:`~nnunet_ext.data.sampling.LesionCentredDataLoader` in
``DeSambaTrainer``), so a patch that covers the ROI holds the whole lesion.

``DeSambaPlannerCPU`` (plans ``DeSambaPlansCPU``) always takes the ``tiny`` preset: for CPU runs and smoke tests; not
the paper's configuration.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from nnunet_ext.architectures.desamba import DESAMBA_CLASS_NAME, PRESET_ORDER, preset_kwargs
from nnunet_ext.planners import register_planner
from nnunet_ext.planners.sharing import SharesVanillaPreprocessing

PLANNING_KEY = "desamba_planning"


def lesion_roi_extents_mm(label_files: list[str], lesion_labels, reader) -> np.ndarray:
    """Bounding-box extents (mm, array axis order) of every connected lesion component in ``label_files``: (N, 3).

    ``lesion_labels``: label values that are lesion (None: any foreground). ``reader``: an nnU-Net image
    reader/writer instance (its ``read_seg`` gives the array and the spacing in array axis order)."""
    from scipy import ndimage as ndi

    extents = []
    for f in label_files:
        seg, props = reader.read_seg(f)
        seg = np.asarray(seg[0])
        mask = seg > 0 if lesion_labels is None else np.isin(seg, list(lesion_labels))
        if not mask.any():
            continue
        spacing = np.asarray(props["spacing"], dtype=float)
        components, _ = ndi.label(mask)
        for box in ndi.find_objects(components):
            if box is not None:
                extents.append([(s.stop - s.start) * sp for s, sp in zip(box, spacing)])
    return np.asarray(extents, dtype=float).reshape(-1, 3)


@register_planner
class DeSambaPlanner(SharesVanillaPreprocessing, ExperimentPlanner):
    """DeSamba on nnU-Net's default topology with a preset picked against the VRAM target (8 GB, as nnU-Net's),
    plans ``DeSambaPlans`` (see the module docstring)."""

    default_plans_name = "DeSambaPlans"
    presets: tuple[str, ...] = PRESET_ORDER  # candidates, largest first
    desamba_settings: dict[str, Any] = {}  # further constructor arguments written into the plans
    bytes_per_parameter = 16  # float32 weights + gradients + two optimizer moments (AdamW; SGD keeps one)
    min_activation_fraction = 0.25
    roi_percentile = 95.0
    max_roi_cases = 200  # label files read for the ROI (evenly spaced over the cases beyond that)

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or self.default_plans_name, overwrite_target_spacing, suppress_transpose)
        self._preset = self.presets[-1]
        self._roi_mm: np.ndarray | None = None
        self._parameters: dict[tuple[str, int], int] = {}
        self._estimates: dict[str, dict] = {}  # nnU-Net's estimate cache (patch, strides -> units), one per preset

    # ------------------------------------------------------------------ dataset facts
    def case_layout(self) -> dict[str, Any]:
        """Sequences, classes, tabular features and lesion labels as the trainer's ``plans["nnunet_ext"]`` block
        will say (the memory estimate includes the DRLM, which needs the number of sequences)."""
        from nnunet_ext.planners.case_settings import make_case_settings

        return make_case_settings(self.dataset_json)

    def lesion_roi_mm(self) -> np.ndarray:
        """The :attr:`roi_percentile` of the lesion components' bounding-box extents, mm per array axis (zeros when
        no label holds a lesion)."""
        if self._roi_mm is None:
            keys = sorted(self.dataset)
            if len(keys) > self.max_roi_cases:
                keys = [keys[i] for i in np.linspace(0, len(keys) - 1, self.max_roi_cases).round().astype(int)]
            reader = self.determine_reader_writer()()
            extents = lesion_roi_extents_mm([self.dataset[k]["label"] for k in keys],
                                            self.case_layout()["lesion_labels"], reader)
            self._roi_mm = np.percentile(extents, self.roi_percentile, axis=0) if len(extents) else np.zeros(3)
        return self._roi_mm

    def roi_voxels(self, spacing, median_shape) -> list[int]:
        """The ROI in voxels of a configuration (``spacing`` and ``median_shape`` in its transposed axis order; 2D
        configurations take the last two axes), capped at the median shape."""
        transpose = self.determine_transpose()[0]
        roi = np.asarray(self.lesion_roi_mm())[transpose][-len(spacing):]
        vox = np.ceil(roi / np.asarray(spacing, dtype=float)).astype(int)
        return [int(min(v, s)) for v, s in zip(vox, median_shape[:len(spacing)])]

    # ------------------------------------------------------------------ architecture
    def desamba_arch_kwargs(self, unet_arch_kwargs: dict, preset: str) -> dict:
        return {**unet_arch_kwargs, **preset_kwargs(preset), **self.desamba_settings}

    def _build_meta(self, arch_kwargs: dict, arch_kwargs_req_import, input_channels: int, output_channels: int,
                    preset: str):
        import torch
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        layout = self.case_layout()
        kwargs = {**self.desamba_arch_kwargs(arch_kwargs, preset), "num_sequences": layout["num_phases"],
                  "num_cls_classes": layout["num_cls_classes"], "num_tabular": layout["num_tabular"]}
        with torch.device("meta"):
            return get_network_from_plans(DESAMBA_CLASS_NAME, kwargs, arch_kwargs_req_import, input_channels,
                                          output_channels, allow_init=False)

    def parameter_count(self, preset: str, dims: int) -> int:
        """Parameters of ``preset`` on a nominal six-stage topology (an upper bound for shallower plans: the
        encoders do not depend on the number of stages beyond four)."""
        key = (preset, dims)
        if key not in self._parameters:
            conv = "torch.nn.modules.conv.Conv3d" if dims == 3 else "torch.nn.modules.conv.Conv2d"
            norm = "torch.nn.modules.instancenorm.InstanceNorm3d" if dims == 3 else \
                "torch.nn.modules.instancenorm.InstanceNorm2d"
            topology = {"n_stages": 6, "features_per_stage": [32] * 6, "conv_op": conv,
                        "kernel_sizes": [[3] * dims] * 6, "strides": [[1] * dims] + [[2] * dims] * 5,
                        "conv_bias": True, "norm_op": norm, "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True}}
            n_in = len(self.dataset_json["channel_names"])
            net = self._build_meta(topology, ("conv_op", "norm_op", "dropout_op", "nonlin"), n_in,
                                   len(self.dataset_json["labels"]), preset)
            self._parameters[key] = int(sum(p.numel() for p in net.parameters()))
        return self._parameters[key]

    def static_estimate_VRAM_usage(self, patch_size, input_channels: int, output_channels: int, arch_class_name: str,
                                   arch_kwargs: dict, arch_kwargs_req_import):
        """DeSamba's activation estimate for the preset being planned (built on the meta device: no memory, no
        init). An instance method shadowing nnU-Net's staticmethod: nnU-Net calls it through ``self``."""
        net = self._build_meta(arch_kwargs, arch_kwargs_req_import, input_channels, output_channels, self._preset)
        return net.compute_conv_feature_map_size(patch_size)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        roi = self.roi_voxels(spacing, median_shape)
        target = self.UNet_vram_target_GB
        chosen = fallback = None
        for preset in self.presets:
            params = self.parameter_count(preset, len(spacing))
            budget = target - params * self.bytes_per_parameter / 1e9
            if budget < self.min_activation_fraction * target and preset != self.presets[-1]:
                continue
            self._preset, self.UNet_vram_target_GB = preset, max(budget, 1e-3)
            try:
                plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                           approximate_n_voxels_dataset,
                                                           self._estimates.setdefault(preset, {}))
            finally:
                self.UNet_vram_target_GB = target
            record = {"preset": preset, "parameters": params, "lesion_roi_voxels": roi,
                      "parameter_memory_gb": round(params * self.bytes_per_parameter / 1e9, 3),
                      "covers_lesion_roi": all(p >= r for p, r in zip(plan["patch_size"], roi))}
            fallback = (plan, record)
            if record["covers_lesion_roi"]:
                chosen = fallback
                break
        plan, record = chosen or fallback
        if chosen is None:
            print(f"DeSambaPlanner: no preset's patch {plan['patch_size']} covers the lesion ROI {roi} (voxels) within "
                  f"{target} GB; kept the {record['preset']!r} preset. Raise the VRAM target "
                  "(-gpu_memory_target) for ROI-covering patches.")
        arch = plan["architecture"]
        arch["network_class_name"] = DESAMBA_CLASS_NAME
        arch["arch_kwargs"] = self.desamba_arch_kwargs(arch["arch_kwargs"], record["preset"])
        plan[PLANNING_KEY] = record
        return plan


@register_planner
class DeSambaPlannerCPU(DeSambaPlanner):
    """The ``tiny`` preset whatever the target, plans ``DeSambaPlansCPU``: for CPU runs (smoke tests, demos). Not the
    paper's configuration: report results of it as such."""

    default_plans_name = "DeSambaPlansCPU"
    presets = ("tiny",)


def planned_preset(plans_file: str, configuration: str = "3d_fullres") -> dict | None:
    """The ``desamba_planning`` record of a configuration of a plans file (None for other plans)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    if not os.path.isfile(plans_file):
        raise FileNotFoundError(plans_file)
    return load_json(plans_file)["configurations"].get(configuration, {}).get(PLANNING_KEY)
