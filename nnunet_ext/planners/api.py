"""``nnunet-ext plan-and-preprocess``: nnU-Net's fingerprint / plan / preprocess API with plugin planners.

Adds, around nnU-Net's own functions: metadata validation before anything is computed, reuse of already
preprocessed data when a plugin plan's preprocessing equals an existing data folder, and the stratified split.
"""

from __future__ import annotations

import os

from nnunet_ext.data.metadata import raw_case_ids, validate_raw_dataset
from nnunet_ext.data.splits import write_stratified_splits_if_missing
from nnunet_ext.errors import NnunetExtError
from nnunet_ext.planners import find_planner


class DataError(NnunetExtError, ValueError):
    """Image or label content nnU-Net cannot use (e.g. NaN); the message names the files and the fix."""


def nonfinite_files(raw_folder: str) -> list[str]:
    """Training images and labels of a raw dataset that contain NaN or infinite values (relative paths)."""
    import numpy as np
    import SimpleITK as sitk
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from nnunet_ext.data.metadata import load_dataset_json

    dj = load_dataset_json(os.path.join(raw_folder, "dataset.json"))
    bad = []
    for case in get_filenames_of_train_images_and_targets(raw_folder, dj).values():
        for f in [*case["images"], case["label"]]:
            if not np.isfinite(sitk.GetArrayViewFromImage(sitk.ReadImage(f))).all():
                bad.append(os.path.relpath(f, raw_folder))
    return bad


def _data_folder_complete(folder: str, case_ids: list[str]) -> bool:
    if not os.path.isdir(folder):
        return False
    have = {f.split(".")[0] for f in os.listdir(folder) if f.endswith(".pkl")}
    return set(case_ids) <= have


def plan_and_preprocess(dataset_id: int, planner: str = "ExperimentPlanner",
                        configurations: tuple[str, ...] = ("2d", "3d_fullres", "3d_lowres"),
                        num_processes: int = 2, verify_dataset_integrity: bool = False,
                        gpu_memory_target_in_gb: float | None = None, plans_name: str | None = None,
                        clean: bool = False, verbose: bool = False) -> str:
    """Validate metadata, fingerprint, plan with ``planner`` and preprocess ``configurations``.

    Returns the plans identifier. A configuration whose ``data_identifier`` belongs to other plans (plugin planners
    point at the vanilla folder when their preprocessing is identical) is not preprocessed again when that folder
    already holds every case; ``clean`` forces preprocessing.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if nnUNet_raw.get() is None or nnUNet_preprocessed.get() is None:
        raise RuntimeError("nnUNet_raw and nnUNet_preprocessed must be set (see nnU-Net's set_environment_variables).")
    dataset_name = convert_id_to_dataset_name(dataset_id)
    raw_folder = os.path.join(nnUNet_raw.get(), dataset_name)
    metadata = validate_raw_dataset(raw_folder)
    case_ids = raw_case_ids(raw_folder)

    try:
        extract_fingerprint_dataset(dataset_id, check_dataset_integrity=verify_dataset_integrity, clean=clean,
                                    num_processes=num_processes, verbose=verbose)
    except AssertionError as e:  # nnU-Net asserts "... contains NaN values" without saying which case
        if "nan" not in str(e).lower():
            raise
        bad = nonfinite_files(raw_folder)
        raise DataError(f"{len(bad)} file(s) of {dataset_name} contain NaN or infinite values: "
                        f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}. Fix: replace them (e.g. with the "
                        "image minimum, or 0 in a label map) and re-run.") from None
    planner_cls = find_planner(planner)
    # nnU-Net's VRAM estimate calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0 (in-process DA)
    saved = os.environ.get("nnUNet_n_proc_DA")
    if saved is not None and int(saved) < 1:
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        _, plans_identifier = plan_experiment_dataset(dataset_id, planner_cls, gpu_memory_target_in_gb,
                                                      overwrite_plans_name=plans_name)
    finally:
        if saved is not None:
            os.environ["nnUNet_n_proc_DA"] = saved
    pre_folder = os.path.join(nnUNet_preprocessed.get(), dataset_name)
    plans = PlansManager(os.path.join(pre_folder, plans_identifier + ".json"))
    todo = []
    for c in configurations:
        if c not in plans.available_configurations:
            continue
        data_identifier = plans.get_configuration(c).data_identifier
        data_folder = os.path.join(pre_folder, data_identifier)
        borrowed = not data_identifier.startswith(plans_identifier + "_")
        if borrowed and not clean and _data_folder_complete(data_folder, case_ids):
            print(f"{c}: reusing preprocessed data in {data_folder} (identical preprocessing)")
        else:
            todo.append(c)
    if todo:
        preprocess_dataset(dataset_id, plans_identifier, tuple(todo), [num_processes] * len(todo), verbose=verbose)
    written = write_stratified_splits_if_missing(pre_folder, case_ids, metadata)
    if written:
        print(f"Wrote a stratified 5-fold split: {written}")
    return plans_identifier
