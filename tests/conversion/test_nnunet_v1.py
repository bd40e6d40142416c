"""nnU-Net v1 -> v2 on the real ProstateX v1 task (ADC channel mislabelled "CT", label headers with 3.6 mm slices)
and on a look-alike (missing channel, CT channel that really is CT, bad rename)."""

from __future__ import annotations

import json

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


def test_lookalike_skips_incomplete_cases_and_accepts_real_ct(tmp_path):
    src = make_v1_task(tmp_path, "Task101_Liver", modalities={"0": "CT", "1": "CT"}, n=3, mri=False)
    (src / "imagesTr" / "case01_0001.nii.gz").unlink()
    (src / "labelsTr" / "case02.nii.gz").unlink()
    res = convert_nnunet_v1(src, 936, output=tmp_path / "raw")
    assert res.folder.name == "Dataset936_Liver" and res.cases == ["case00"]
    reasons = {s.case: s.reason for s in res.skipped}
    assert "missing channel file(s) case01_0001.nii.gz" in reasons["case01"] and "no label" in reasons["case02"]
    assert not res.warnings  # a real CT channel is not flagged


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
