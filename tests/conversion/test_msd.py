"""MSD converter (wrapping nnU-Net's convert_msd_dataset) on look-alikes of Task03_Liver (3D) and of a 4D
two-modality task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from lookalikes import make_msd_task, tiny_liver, write

from nnunet_ext.conversion.common import ConversionError
from nnunet_ext.conversion.msd import convert_msd


def test_task03_liver_layout_idempotent_and_skips(tmp_path, capsys):
    src = make_msd_task(tmp_path, "Task03_Liver", n_train=3, n_test=1)
    (src / "labelsTr" / "liver_2.nii.gz").unlink()  # an image without label
    (src / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    out = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"'liver_2'.*no label in labelsTr.*Fix: add labelsTr/liver_2.nii.gz"):
        convert_msd(src, 930, output=out)
    assert not (out / "Dataset930_Liver").exists()
    res = convert_msd(src, 930, output=out, skip_invalid=True)
    assert res.folder.name == "Dataset930_Liver"
    assert res.cases == ["liver_0", "liver_1"] and res.test_cases == ["liver_3"]
    assert [s.case for s in res.skipped] == ["liver_2"] and "no label" in res.skipped[0].reason
    assert any("._liver_0" in w for w in res.warnings)
    dj = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["channel_names"] == {"0": "CT"} and dj["labels"] == {"background": 0, "liver": 1, "cancer": 2}
    assert dj["numTraining"] == 2 and "training" not in dj and "modality" not in dj
    assert sorted(p.name for p in (res.folder / "imagesTr").iterdir()) == ["liver_0_0000.nii.gz",
                                                                          "liver_1_0000.nii.gz"]
    img = sitk.ReadImage(str(res.folder / "imagesTr" / "liver_1_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), tiny_liver(seed=1)[0])
    assert "skipped case 'liver_2'" in capsys.readouterr().out
    again = convert_msd(src, 930, output=out, skip_invalid=True)
    assert again.already_converted and [s.case for s in again.skipped] == ["liver_2"]
    assert "skipped" in capsys.readouterr().out  # skipped cases are reported again


def test_4d_split_and_bad_channel_count(tmp_path):
    src = make_msd_task(tmp_path, "Task05_Prostate", n_train=2, n_test=0, modalities=("T2", "ADC"),
                        labels=("background", "PZ", "TZ"), prefix="prostate")
    out = tmp_path / "raw"
    res = convert_msd(src, 931, output=out, num_processes=1)
    files = sorted(p.name for p in (res.folder / "imagesTr").iterdir())
    assert files == [f"prostate_{i}_{c:04d}.nii.gz" for i in range(2) for c in range(2)]
    second = sitk.GetArrayFromImage(sitk.ReadImage(str(res.folder / "imagesTr" / "prostate_1_0001.nii.gz")))
    np.testing.assert_allclose(second, tiny_liver(seed=1)[0] + 10)
    written = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))
    assert written["channel_names"] == {"0": "T2", "1": "ADC"}
    # a 3D image in a 2-modality task names the case; nothing is written
    write(tiny_liver(seed=0)[0], src / "imagesTr" / "prostate_0.nii.gz")
    with pytest.raises(ConversionError, match=r"case 'prostate_0'.*1 volume\(s\).*2 modalities"):
        convert_msd(src, 932, output=out)
    assert not (out / "Dataset932_Prostate").exists()


def test_not_an_msd_folder(tmp_path):
    (tmp_path / "Task09_Spleen").mkdir()
    with pytest.raises(ConversionError, match="no dataset.json"):
        convert_msd(tmp_path / "Task09_Spleen", 933, output=tmp_path / "raw")
