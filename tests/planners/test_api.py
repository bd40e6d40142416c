"""``nnunet-ext plan-and-preprocess``: bad image content is reported by case, before anything is written."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.data.fixtures import make_tiny_multiphase_dataset
from nnunet_ext.planners.api import DataError, plan_and_preprocess


def test_nan_voxels_are_reported_with_the_file(nnunet_dirs):
    # .mha keeps NaN (SimpleITK's NIfTI reader turns NaN into 0 on reading, so NIfTI inputs never carry it)
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
