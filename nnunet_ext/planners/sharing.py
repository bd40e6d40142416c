"""Plugin plans that reuse vanilla nnU-Net's preprocessed data when their preprocessing is identical.

A plugin planner that changes only the network (STD-Net, TexLiverNet) plans the same target spacing, normalisation,
resampling and transpose as nnU-Net's default planner. Its configurations then point their ``data_identifier`` at
``nnUNetPlans_<cfg>`` and ``nnunet-ext plan-and-preprocess`` reuses that folder instead of writing a copy; a
configuration whose preprocessing differs gets its own folder.
"""

from __future__ import annotations

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

VANILLA_PLANS = "nnUNetPlans"
# configuration entries that define the preprocessed data (besides plans-level transpose / intensity properties)
PREPROCESSING_KEYS = ("preprocessor_name", "normalization_schemes", "use_mask_for_norm", "resampling_fn_data",
                      "resampling_fn_data_kwargs", "resampling_fn_seg", "resampling_fn_seg_kwargs")
PLANS_PREPROCESSING_KEYS = ("transpose_forward", "foreground_intensity_properties_per_channel")


def same_preprocessing(cfg_a: dict, cfg_b: dict, plans_a: dict, plans_b: dict) -> bool:
    """Would two plan configurations produce identical preprocessed data?"""
    if not np.allclose(np.asarray(cfg_a["spacing"], float), np.asarray(cfg_b["spacing"], float), rtol=0, atol=1e-8):
        return False
    return all(cfg_a.get(k) == cfg_b.get(k) for k in PREPROCESSING_KEYS) and \
        all(plans_a.get(k) == plans_b.get(k) for k in PLANS_PREPROCESSING_KEYS)


class SharesVanillaPreprocessing:
    """Mixin put before an nnU-Net planner class (see the module docstring)."""

    _vanilla_match: bool | None = None

    def _preprocessing_matches_default_planner(self) -> bool:
        """Do this planner's fullres/2d preprocessing choices equal those of a default nnU-Net planner?"""
        if self._vanilla_match is None:
            vanilla = ExperimentPlanner(self.dataset_name, plans_name=VANILLA_PLANS)
            spacing_a, spacing_b = self.determine_fullres_target_spacing(), vanilla.determine_fullres_target_spacing()
            self._vanilla_match = bool(
                self.preprocessor_name == vanilla.preprocessor_name
                and np.allclose(spacing_a, spacing_b, rtol=0, atol=1e-8)
                and [list(t) for t in self.determine_transpose()] == [list(t) for t in vanilla.determine_transpose()]
                and self.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
                == vanilla.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
                and self.determine_resampling() == vanilla.determine_resampling())
        return self._vanilla_match

    def generate_data_identifier(self, configuration_name: str) -> str:
        """``nnUNetPlans_<cfg>`` for 2d/3d_fullres when preprocessing equals vanilla's (3d_lowres depends on the
        planned patch size; :meth:`plan_experiment` checks it against existing vanilla plans afterwards)."""
        if configuration_name in ("2d", "3d_fullres") and self._preprocessing_matches_default_planner():
            return f"{VANILLA_PLANS}_{configuration_name}"
        return f"{self.plans_identifier}_{configuration_name}"

    def plan_experiment(self):
        """nnU-Net's planning, then each configuration's ``data_identifier`` is checked against existing vanilla
        plans: borrowed when the preprocessing is identical, own when it differs."""
        from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json
        from nnunetv2.paths import nnUNet_preprocessed

        plans = super().plan_experiment()
        vanilla_file = join(nnUNet_preprocessed, self.dataset_name, VANILLA_PLANS + ".json")
        if self.plans_identifier == VANILLA_PLANS or not isfile(vanilla_file):
            return plans
        vanilla = load_json(vanilla_file)
        changed = False
        for name in ("2d", "3d_fullres", "3d_lowres"):  # the planned ones; custom configurations stay untouched
            cfg, other = plans["configurations"].get(name), vanilla["configurations"].get(name, {})
            if cfg is None or "data_identifier" not in cfg or "data_identifier" not in other:
                continue
            wanted = other["data_identifier"] if same_preprocessing(cfg, other, plans, vanilla) \
                else f"{self.plans_identifier}_{name}"
            if cfg["data_identifier"] != wanted:
                cfg["data_identifier"], changed = wanted, True
        if changed:
            self.save_plans(plans)
        return plans
