"""``nnunet-ext plan-and-preprocess``: bad image content is reported by case, before anything is written."""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.data.fixtures import make_tiny_multiphase_dataset
from nnunet_ext.planners.api import DataError, PlanError, plan_and_preprocess


def test_nan_voxels_are_reported_with_the_file(nnunet_dirs):
    # .mha, read by SimpleITK (NIfTI is read with nibabel for this check: SimpleITK returns its NaN voxels as 0)
    raw = make_tiny_multiphase_dataset(str(nnunet_dirs["nnUNet_raw"]), 915, n_cases=5, name="WithNaN",
                                       file_ending=".mha")
    path = os.path.join(raw, "imagesTr", "case_002_0001.mha")
    img = sitk.ReadImage(path)
    arr = sitk.GetArrayFromImage(img)
    arr[3, 4, 5] = np.nan
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    sitk.WriteImage(bad, path)
    with pytest.raises(DataError, match=r"imagesTr/case_002_0001\.mha.*Fix: replace"):
        plan_and_preprocess(915, "ExperimentPlanner", ("3d_fullres",), num_processes=1)
    assert not os.path.exists(os.path.join(nnunet_dirs["nnUNet_preprocessed"], "Dataset915_WithNaN",
                                           "nnUNetPlans.json"))


def _truncate(path: str) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def test_every_bad_training_case_is_reported_before_anything_is_computed(nnunet_dirs):
    raw = make_tiny_multiphase_dataset(str(nnunet_dirs["nnUNet_raw"]), 916, n_cases=7, name="BadCases")
    os.remove(os.path.join(raw, "imagesTr", "case_002_0002.nii.gz"))  # was: IndexError inside nnU-Net
    os.remove(os.path.join(raw, "labelsTr", "case_001.nii.gz"))
    label = nib.load(os.path.join(raw, "labelsTr", "case_003.nii.gz"))
    seg = np.asarray(label.dataobj).copy()
    seg[0, 0, 0] = 5  # labels are 0-2: was "index 5 is out of bounds" late in training
    nib.save(nib.Nifti1Image(seg, label.affine, label.header), os.path.join(raw, "labelsTr", "case_003.nii.gz"))
    _truncate(os.path.join(raw, "imagesTr", "case_004_0000.nii.gz"))  # SimpleITK reads the rest as zeros
    image = nib.load(os.path.join(raw, "imagesTr", "case_005_0001.nii.gz"))
    voxels = np.asarray(image.dataobj).copy()
    voxels[1, 2, 3] = np.nan  # SimpleITK reads NaN in NIfTI as 0
    nib.save(nib.Nifti1Image(voxels, image.affine, image.header), os.path.join(raw, "imagesTr", "case_005_0001.nii.gz"))
    shutil.copy(os.path.join(raw, "imagesTr", "case_006_0000.nii.gz"), os.path.join(raw, "imagesTr",
                                                                                     "case_006_0003.nii.gz"))
    with pytest.raises(DataError) as info:
        plan_and_preprocess(916, "ExperimentPlanner", ("3d_fullres",), num_processes=1)
    msg = str(info.value)
    assert msg.startswith("6 problem(s) in the training cases of Dataset916_BadCases")
    lines = msg.splitlines()[1:]
    assert len(lines) == 6 and all(line.startswith("  - case 'case_00") and "Fix:" in line for line in lines), msg
    expected = {"case_001": ["labelsTr/case_001.nii.gz does not exist", "Fix: provide the segmentation"],
                "case_002": ["channel 2 ('CT') file", "imagesTr/case_002_0002.nii.gz does not exist"],
                "case_003": ["labelsTr/case_003.nii.gz holds value(s) 5", "(declared: 0, 1, 2)",
                             "declare the label in dataset.json"],
                "case_004": ["imagesTr/case_004_0000.nii.gz is truncated or corrupt", "Fix: re-export"],
                "case_005": ["imagesTr/case_005_0001.nii.gz holds 1 NaN or infinite voxel(s)", "Fix: replace"],
                "case_006": ["imagesTr/case_006_0003.nii.gz is channel 3, but dataset.json declares 3 channel(s)"]}
    for case, parts in expected.items():
        line = next(line for line in lines if f"case '{case}'" in line)
        for part in parts:
            assert part in line, f"{part!r} not in {line!r}"
    assert not os.path.exists(os.path.join(nnunet_dirs["nnUNet_preprocessed"], "Dataset916_BadCases"))


def test_unknown_planner_is_refused_before_the_fingerprint(nnunet_dirs):
    make_tiny_multiphase_dataset(str(nnunet_dirs["nnUNet_raw"]), 918, n_cases=3, name="NoSuchPlanner")
    with pytest.raises(PlanError) as info:
        plan_and_preprocess(918, "STDNetPlaner", ("3d_fullres",), num_processes=1)
    msg = str(info.value)
    for part in ("unknown planner 'STDNetPlaner'", "Did you mean STDNetPlanner", "nnunet-ext planners: ",
                 "STDNetPlannerM", "ExperimentPlanner", "nnUNetPlannerResEncM", "Fix: pass -pl"):
        assert part in msg, f"{part!r} not in {msg!r}"
    assert not os.path.exists(os.path.join(nnunet_dirs["nnUNet_preprocessed"], "Dataset918_NoSuchPlanner"))


@pytest.fixture(scope="module")
def planned(nnunet_dirs):
    """Dataset917: 5 tiny cases planned and preprocessed (3d_fullres) for this module only."""
    raw = make_tiny_multiphase_dataset(str(nnunet_dirs["nnUNet_raw"]), 917, n_cases=5, name="Replanned")
    plan_and_preprocess(917, "ExperimentPlanner", ("3d_fullres",), num_processes=1)
    return {"raw": raw, "pre": os.path.join(nnunet_dirs["nnUNet_preprocessed"], os.path.basename(raw))}


def test_failed_rerun_keeps_the_preprocessed_data(planned):
    data = os.path.join(planned["pre"], "nnUNetPlans_3d_fullres")
    before = sorted(os.listdir(data))
    assert "case_001.pkl" in before
    image = os.path.join(planned["raw"], "imagesTr", "case_001_0000.nii.gz")
    backup = open(image, "rb").read()
    _truncate(image)
    try:
        with pytest.raises(DataError, match=r"case 'case_001'.*case_001_0000\.nii\.gz is truncated.*Fix: re-export"):
            plan_and_preprocess(917, "ExperimentPlanner", ("3d_fullres",), num_processes=1)
    finally:
        open(image, "wb").write(backup)
    assert sorted(os.listdir(data)) == before


def test_unknown_configuration_names_the_planned_ones(planned, capsys):
    with pytest.raises(PlanError) as info:
        plan_and_preprocess(917, "ExperimentPlanner", ("3d_fulres",), num_processes=1)
    msg = str(info.value)
    assert "configuration(s) '3d_fulres' are not defined by the plans nnUNetPlans of Dataset917_Replanned" in msg
    assert "which define 2d, 3d_fullres" in msg and "Fix: pass -c" in msg
    # nnU-Net plans 3d_lowres only for large images: the default -c keeps working and says so
    plan_and_preprocess(917, "ExperimentPlanner", ("3d_lowres",), num_processes=1)
    assert "3d_lowres: not planned for Dataset917_Replanned" in capsys.readouterr().out


def test_stale_fingerprint_and_split_are_refused_and_clean_replaces_them(planned):
    raw, pre = planned["raw"], planned["pre"]
    split_before = json.load(open(os.path.join(pre, "splits_final.json"), encoding="utf-8"))
    for f in os.listdir(os.path.join(raw, "imagesTr")):  # a new case: a copy of case_000 as case_005
        if f.startswith("case_000_"):
            shutil.copy(os.path.join(raw, "imagesTr", f), os.path.join(raw, "imagesTr", f.replace("000", "005", 1)))
    shutil.copy(os.path.join(raw, "labelsTr", "case_000.nii.gz"), os.path.join(raw, "labelsTr", "case_005.nii.gz"))
    dj = json.load(open(os.path.join(raw, "dataset.json"), encoding="utf-8"))
    dj["nnunet_ext"]["cases"]["case_005"] = dict(dj["nnunet_ext"]["cases"]["case_000"])
    dj["numTraining"] = 6
    json.dump(dj, open(os.path.join(raw, "dataset.json"), "w", encoding="utf-8"))
    with pytest.raises(PlanError) as info:
        plan_and_preprocess(917, "ExperimentPlanner", ("3d_fullres",), num_processes=1)
    msg = str(info.value)
    assert "dataset_fingerprint.json was computed from 5 cases; the raw dataset now has 6 (1 added)" in msg
    assert "splits_final.json covers 5 cases; the raw dataset has 6: 1 case(s) added since (case_005)" in msg
    assert "Fix: rerun plan-and-preprocess with --clean" in msg
    assert json.load(open(os.path.join(pre, "splits_final.json"), encoding="utf-8")) == split_before

    plan_and_preprocess(917, "ExperimentPlanner", (), num_processes=1, clean=True)  # no preprocessing: faster
    assert json.load(open(os.path.join(pre, "splits_final.json.stale"), encoding="utf-8")) == split_before
    split = json.load(open(os.path.join(pre, "splits_final.json"), encoding="utf-8"))
    assert sorted(k for fold in split for k in fold["val"]) == [f"case_{i:03d}" for i in range(6)]
    fingerprint = json.load(open(os.path.join(pre, "dataset_fingerprint.json"), encoding="utf-8"))
    assert len(fingerprint["spacings"]) == 6


def _rewrite(path: str, **geometry) -> None:
    img = sitk.ReadImage(path)
    for key, value in geometry.items():
        getattr(img, f"Set{key}")(value)
    sitk.WriteImage(img, path)


def test_labels_and_channels_off_the_image_grid_are_named_before_the_fingerprint(nnunet_dirs):
    raw = make_tiny_multiphase_dataset(str(nnunet_dirs["nnUNet_raw"]), 914, n_cases=6, name="OffGrid")
    lab = os.path.join(raw, "labelsTr", "case_{}.nii.gz").format
    img = sitk.ReadImage(lab("001"))
    _rewrite(lab("001"), Spacing=tuple(s * 1.2 for s in img.GetSpacing()))  # same size, other spacing: was silent
    _rewrite(lab("002"), Origin=tuple(o + 6.0 for o in img.GetOrigin()))  # other origin: was silent
    small = sitk.GetImageFromArray(sitk.GetArrayFromImage(img)[:, :16, :])  # other size: was a broadcast traceback
    small.CopyInformation(img[:, :16, :])
    sitk.WriteImage(small, lab("003"))
    channel = os.path.join(raw, "imagesTr", "case_004_0001.nii.gz")  # a shifted phase: was nnU-Net's buried warning
    _rewrite(channel, Origin=tuple(o + 4.5 for o in sitk.ReadImage(channel).GetOrigin()))
    with pytest.raises(DataError) as info:
        plan_and_preprocess(914, "ExperimentPlanner", ("3d_fullres",), num_processes=1)
    msg = str(info.value)
    assert msg.startswith("4 problem(s) in the training cases of Dataset914_OffGrid")
    assert "case 'case_001': label " in msg and "is not on the image's voxel grid (spacing" in msg
    assert "case 'case_002': label " in msg and "(origin" in msg and "train on a misplaced label" in msg
    assert "case 'case_003': label " in msg and "has (32, 16, 16) voxels, the images (32, 32, 16)" in msg
    assert "case 'case_004': channel 1 ('CT'" in msg and "is not on the voxel grid of channel 0 (origin" in msg
    assert msg.count("Fix:") == 4
    assert not os.path.exists(os.path.join(nnunet_dirs["nnUNet_preprocessed"], "Dataset914_OffGrid"))


def test_the_case_check_shows_progress_on_large_datasets(tmp_path, capsys):
    from nnunet_ext.planners.api import check_training_cases

    raw = make_tiny_multiphase_dataset(str(tmp_path), 919, n_cases=50, shape=(4, 8, 8), with_text=False)
    assert check_training_cases(raw) == []
    err = capsys.readouterr().err
    assert "checking training cases" in err and "50/50" in err
    small = make_tiny_multiphase_dataset(str(tmp_path), 918, n_cases=5, shape=(4, 8, 8), with_text=False)
    assert check_training_cases(small) == [] and "checking training cases" not in capsys.readouterr().err
