"""``nnunet-ext predict`` on DICOM: a real CT series (512x512x20, JPEG2000, anonymised: no Study/Series UIDs) in, the
segmentation out as a DICOM SEG that highdicom reads back onto the same voxels as nnU-Net's segmentation; and the
errors for DICOM input or output that cannot work."""

from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_ext.inference.checks import InputError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ARCH = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                        "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory):
    """A one-channel CT model folder as nnU-Net writes it (plans, dataset.json, fold_0/checkpoint_final.pth of
    nnU-Net's trainer), with seeded random weights: its labels vary over the image, which is what the geometry test
    needs. 4 mm spacing keeps the CPU prediction of the real 512x512x20 series short."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model = tmp_path_factory.mktemp("ct_model") / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    cfg = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
           "patch_size": [16, 32, 32], "median_image_size_in_voxels": [10, 128, 128], "spacing": [4.0, 4.0, 4.0],
           "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
           "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
           "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
           "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
           "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
           "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
           "batch_dice": False, "architecture": ARCH}
    plans = {"dataset_name": "Dataset908_RealCT", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": [2.0, 0.98, 0.98],
             "original_median_shape_after_transp": [20, 512, 512], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": cfg},
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": {
                 "max": 1500.0, "mean": 60.0, "median": 55.0, "min": -1024.0, "percentile_00_5": -150.0,
                 "percentile_99_5": 400.0, "std": 90.0}}}
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "lesion": 2},
                    "numTraining": 1, "file_ending": ".nii.gz", "licence": "unknown"}
    (model / "plans.json").write_text(json.dumps(plans), encoding="utf-8")
    (model / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    torch.manual_seed(3)
    if "plans_manager" in inspect.signature(nnUNetTrainer.build_network_architecture).parameters:
        net = nnUNetTrainer.build_network_architecture(pm, cm, 1, 3, enable_deep_supervision=False)
    else:
        net = nnUNetTrainer.build_network_architecture(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                                       cm.network_arch_init_kwargs_req_import, 1, 3, False)
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               model / "fold_0" / "checkpoint_final.pth")
    return model


def _voxelwise(seg_file, labels: np.ndarray, series_image: sitk.Image) -> None:
    """Every voxel of the SEG, read back with highdicom, lands on the series voxel with the same label."""
    import highdicom as hd

    volume = hd.seg.segread(str(seg_file)).get_volume(combine_segments=True, relabel=False)
    assert volume.array.size == labels.size
    idx = np.argwhere(np.ones(volume.array.shape, bool))
    points = (volume.affine @ np.c_[idx, np.ones(len(idx))].T).T[:, :3]
    origin, spacing = np.array(series_image.GetOrigin()), np.array(series_image.GetSpacing())
    direction = np.array(series_image.GetDirection()).reshape(3, 3)
    ijk = np.rint(np.linalg.solve(direction * spacing, (points - origin).T).T).astype(int)
    np.testing.assert_array_equal(labels[ijk[:, 2], ijk[:, 1], ijk[:, 0]], volume.array.reshape(-1))


def test_real_ct_series_in_dicom_seg_out(ct_model, real_data, tmp_path, capsys):
    from nnunet_ext.cli import main
    from nnunet_ext.conversion.dicom_io import read_series, scan_dicom

    series_folder = real_data / "ct_abdomen" / "dicom_series"
    out = tmp_path / "pred"
    rc = main(["predict", "-i", str(series_folder), "-o", str(out), "-m", str(ct_model), "-f", "0", "-device", "cpu",
               "--disable_tta", "-npp", "1", "-nps", "1", "--dicom-seg"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "case dicom_series" in printed.out and "has no StudyInstanceUID" in printed.out
    [series] = scan_dicom(series_folder, "t")
    series_image = read_series(series, "t")
    prediction = sitk.ReadImage(str(out / "dicom_series.nii.gz"))
    assert prediction.GetSize() == series_image.GetSize()
    labels = sitk.GetArrayFromImage(prediction)
    assert len(np.unique(labels)) >= 2  # a map that varies, so a flipped or shifted SEG would not pass
    _voxelwise(out / "dicom_series_seg.dcm", labels, series_image)
    import highdicom as hd

    seg = hd.seg.segread(str(out / "dicom_series_seg.dcm"))
    refs = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    import pydicom

    assert refs == {str(pydicom.dcmread(str(f), stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
                    for f in series.files}
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    assert set(names.values()) <= {"liver", "lesion"} and names
    assert str(seg.SegmentSequence[0].SegmentAlgorithmType) == "AUTOMATIC"
    # the same prediction from NIfTI input with --dicom-reference writes the same SEG voxels
    nifti_in = tmp_path / "nifti"
    nifti_in.mkdir()
    sitk.WriteImage(series_image, str(nifti_in / "ct_0000.nii.gz"))
    out2 = tmp_path / "pred2"
    assert main(["predict", "-i", str(nifti_in), "-o", str(out2), "-m", str(ct_model), "-f", "0", "-device", "cpu",
                 "--disable_tta", "-npp", "1", "-nps", "1", "--dicom-seg", "--dicom-reference",
                 str(series_folder)]) == 0, capsys.readouterr().err
    _voxelwise(out2 / "ct_seg.dcm", sitk.GetArrayFromImage(sitk.ReadImage(str(out2 / "ct.nii.gz"))), series_image)


def test_dicom_inputs_and_outputs_that_cannot_work_are_refused(ct_model, real_data, tmp_path):
    from nnunet_ext.inference.dicom_output import dicom_input_cases, reference_series
    from nnunet_ext.inference.predict import predict

    nifti_in = tmp_path / "nifti"
    nifti_in.mkdir()
    shutil.copy(real_data / "ct_abdomen" / "example_ct_sm.nii.gz", nifti_in / "ct_0000.nii.gz")
    with pytest.raises(InputError, match=r"--dicom-seg needs the DICOM series each case was made from"):
        predict(str(nifti_in), str(tmp_path / "o"), str(ct_model), ["0"], dicom_seg=True, device="cpu")
    with pytest.raises(InputError, match=r"--dicom-reference is only used with --dicom-seg"):
        predict(str(nifti_in), str(tmp_path / "o"), str(ct_model), ["0"], dicom_reference=str(tmp_path),
                device="cpu")
    three = {"channel_names": {"0": "CT", "1": "CT", "2": "CT"}, "file_ending": ".nii.gz"}
    with pytest.raises(InputError, match=r"holds DICOM files, but this model takes 3 channels .*Fix: convert the "
                                         r"studies with `nnunet-ext convert dicom-multiphase`"):
        dicom_input_cases(str(real_data / "ct_abdomen" / "dicom_series"), three, str(tmp_path / "w"))
    with pytest.raises(InputError, match=r"is one series folder, but 2 cases are predicted\. Fix: give a CSV"):
        reference_series(str(real_data / "ct_abdomen" / "dicom_series"), ["a", "b"])
    with pytest.raises(InputError, match=r"holds 4 image series\. Fix: give the folder of the one series"):
        reference_series(str(real_data / "mri_prostate_dce"), ["a"])
    assert not (tmp_path / "o").exists()
