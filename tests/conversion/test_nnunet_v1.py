"""nnU-Net v1 -> v2 on the real ProstateX v1 task (ADC channel mislabelled "CT", label headers with 3.6 mm slices)
and on a look-alike (missing channel, CT channel that really is CT, bad rename)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from lookalikes import make_v1_task

from nnunet_ext.cli import main
from nnunet_ext.conversion.common import ConversionError
from nnunet_ext.conversion.nnunet_v1 import convert_nnunet_v1

PROSTATE = "mri_prostate_multisequence"


def test_real_prostate_adc_named_ct_is_warned(real_data, tmp_path, capsys):
    res = convert_nnunet_v1(real_data / PROSTATE, 934, output=tmp_path / "raw", name="ProstateX")
    assert res.cases == ["ProstateX-0000_07-07-2011", "ProstateX-0001_07-08-2011"]
    ct_warning = [w for w in res.warnings if "channel 1 is named 'CT'" in w]
    assert len(ct_warning) == 1
    assert "--rename-channel 1=ADC" in ct_warning[0] and "T2W" in ct_warning[0] and "no negative HU" in ct_warning[0]
    geometry = [w for w in res.warnings if "label header differs" in w]
    assert len(geometry) == 2 and "--copy-image-geometry" in geometry[0] and "3.6" in geometry[0]
    assert "WARNING: channel 1 is named 'CT'" in capsys.readouterr().out
    dj = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["channel_names"] == {"0": "T2W", "1": "CT", "2": "HBV"}
    assert dj["labels"] == {"background": 0, "lesion": 1} and dj["numTraining"] == 2


def test_real_prostate_fixed_passes_integrity_check(real_data, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    res = convert_nnunet_v1(real_data / PROSTATE, 935, output=tmp_path / "raw", name="ProstateX",
                            rename_channels={1: "ADC"}, copy_image_geometry=True)
    assert not [w for w in res.warnings if "named 'CT'" in w]
    dj = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["channel_names"] == {"0": "T2W", "1": "ADC", "2": "HBV"}
    img = sitk.ReadImage(str(res.folder / "imagesTr" / "ProstateX-0000_07-07-2011_0000.nii.gz"))
    lab = sitk.ReadImage(str(res.folder / "labelsTr" / "ProstateX-0000_07-07-2011.nii.gz"))
    assert np.allclose(lab.GetSpacing(), img.GetSpacing()) and np.allclose(lab.GetOrigin(), img.GetOrigin())
    assert int(sitk.GetArrayFromImage(lab).sum()) == 512  # the lesion survives the header fix
    verify_dataset_integrity(str(res.folder), num_processes=1)


def test_incomplete_cases_raise_unless_skip_invalid_and_real_ct_is_accepted(tmp_path):
    src = make_v1_task(tmp_path, "Task101_Liver", modalities={"0": "CT", "1": "CT"}, n=3, mri=False)
    out = tmp_path / "raw"
    (src / "labelsTr" / "case02.nii.gz").unlink()
    with pytest.raises(ConversionError, match=r"case 'case02': no label labelsTr/case02.nii.gz .*Fix: add the label, "
                                              r"or pass --skip-invalid"):
        convert_nnunet_v1(src, 936, output=out)
    (src / "imagesTr" / "case01_0001.nii.gz").unlink()
    with pytest.raises(ConversionError, match=r"case 'case01': missing channel file\(s\) imagesTr/case01_0001.nii.gz"
                                              r".*Fix: add the file\(s\), or pass --skip-invalid"):
        convert_nnunet_v1(src, 936, output=out)
    assert not out.exists() or not any(out.iterdir())  # nothing written, not even a partial dataset
    shutil.copy(src / "labelsTr" / "case00.nii.gz", src / "labelsTr" / "case07.nii.gz")
    res = convert_nnunet_v1(src, 936, output=out, skip_invalid=True)
    assert res.folder.name == "Dataset936_Liver" and res.cases == ["case00"]
    reasons = {s.case: s.reason for s in res.skipped}
    assert "missing channel file(s) imagesTr/case01_0001.nii.gz" in reasons["case01"]
    assert "no label" in reasons["case02"] and "labelsTr/case07.nii.gz has no images" in reasons["case07"]
    assert not res.warnings  # a real CT channel is not flagged


def test_undeclared_label_values_raise(tmp_path):
    src = make_v1_task(tmp_path, "Task103_Pros", n=2)
    ref = sitk.ReadImage(str(src / "labelsTr" / "case01.nii.gz"))
    arr = sitk.GetArrayFromImage(ref)
    arr[0, 0, :3] = (7, 255, 7)
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(ref)
    sitk.WriteImage(bad, str(src / "labelsTr" / "case01.nii.gz"))
    out = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"case 'case01': label case01.nii.gz contains value\(s\) \[7, 255\] "
                                              r"that Task103_Pros/dataset.json does not declare \(its labels are "
                                              r"0 background, 1 lesion\)\. Fix"):
        convert_nnunet_v1(src, 939, output=out)
    assert not out.exists() or not any(out.iterdir())
    res = convert_nnunet_v1(src, 939, output=out, skip_invalid=True)
    assert res.cases == ["case00"] and "[7, 255]" in res.skipped[0].reason


def test_truncated_source_file_raises(real_data, copy_of, tmp_path):
    src = copy_of(real_data / PROSTATE)
    adc = src / "imagesTr" / "ProstateX-0001_07-08-2011_0001.nii.gz"
    data = adc.read_bytes()
    adc.write_bytes(data[: len(data) // 2])  # `head -c`: SimpleITK reads this without an error, as zeros
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(adc))).shape == (20, 160, 160)
    out = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"case 'ProstateX-0001_07-08-2011': channel 1 image .*"
                                              r"ProstateX-0001_07-08-2011_0001.nii.gz is truncated or corrupt.*Fix"):
        convert_nnunet_v1(src, 940, output=out, name="ProstateX")
    assert not out.exists() or not any(out.iterdir())
    label = src / "labelsTr" / "ProstateX-0000_07-07-2011.nii.gz"
    adc.write_bytes(data)
    label.write_bytes(label.read_bytes()[:-40])
    with pytest.raises(ConversionError, match=r"case 'ProstateX-0000_07-07-2011': label .* is truncated"):
        convert_nnunet_v1(src, 940, output=out, name="ProstateX")
    res = convert_nnunet_v1(src, 940, output=out, name="ProstateX", skip_invalid=True)
    assert res.cases == ["ProstateX-0001_07-08-2011"] and res.skipped[0].case == "ProstateX-0000_07-07-2011"


def test_rename_via_cli_and_bad_index(tmp_path, capsys):
    src = make_v1_task(tmp_path, "Task102_Pros", n=1)
    out = tmp_path / "raw"
    assert main(["convert", "nnunet-v1", "-i", str(src), "-d", "937", "-o", str(out),
                 "--rename-channel", "1=ADC"]) == 0
    dj = json.loads((out / "Dataset937_Pros" / "dataset.json").read_text(encoding="utf-8"))
    assert dj["channel_names"]["1"] == "ADC"
    capsys.readouterr()
    with pytest.raises(ConversionError, match=r"--rename-channel \[5\].*channels \[0, 1, 2\]"):
        convert_nnunet_v1(src, 938, output=out, rename_channels={5: "X"})
    assert main(["convert", "nnunet-v1", "-i", str(src), "-d", "938", "-o", str(out),
                 "--rename-channel", "ADC"]) == 2
    assert "INDEX=NAME" in capsys.readouterr().err
