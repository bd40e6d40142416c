"""3D-IRCADb converter on a look-alike of the release (zipped DICOM per patient, 0/255 masks, several livertumor
masks): 3D and 2D datasets, texts from the describer or a file, zip slip, duplicates, missing archives."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from lookalikes import make_ircadb, make_zip_slip, tiny_liver

from nnunet_ext.cli import main
from nnunet_ext.conversion.common import ConversionError
from nnunet_ext.conversion.ircadb import convert_ircadb, convert_ircadb_2d
from nnunet_ext.data.metadata import validate_raw_dataset


@pytest.fixture(scope="module")
def ircadb(tmp_path_factory):
    return make_ircadb(tmp_path_factory.mktemp("ircadb"), n=2)


def test_3d_and_2d_datasets_with_generated_texts(ircadb, tmp_path):
    res = convert_ircadb(ircadb, 922, output=tmp_path / "raw", two_d=True)
    assert res.cases == ["ircadb1_001", "ircadb1_002"]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(res.folder / "labelsTr" / "ircadb1_001.nii.gz")))
    np.testing.assert_array_equal(seg, tiny_liver(seed=1)[1])  # liver 1, both livertumor masks merged into 2
    ct = sitk.ReadImage(str(res.folder / "imagesTr" / "ircadb1_001_0000.nii.gz"))
    assert ct.GetSize() == (24, 24, 8) and np.allclose(ct.GetSpacing(), (0.7, 0.7, 2.0))
    dj = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["labels"] == {"background": 0, "liver": 1, "tumor": 2} and dj["channel_names"] == {"0": "CT"}
    md = validate_raw_dataset(str(res.folder))
    text = md.texts(["ircadb1_001"])[0]
    assert "mm" in text and "lesion" in text.lower()
    folder_2d = res.reports["dataset_2d"]
    assert folder_2d.name == "Dataset923_3DIRCADb2D"
    liver_slices = np.flatnonzero(tiny_liver(seed=1)[1].reshape(8, -1).max(axis=1))
    names = sorted(p.name for p in (folder_2d / "labelsTr").iterdir() if p.name.startswith("ircadb1_001"))
    assert names == [f"ircadb1_001_z{z:03d}.nii.gz" for z in liver_slices]
    sl = sitk.ReadImage(str(folder_2d / "imagesTr" / f"ircadb1_001_z{liver_slices[0]:03d}_0000.nii.gz"))
    assert sl.GetSize() == (24, 24, 1)
    md2 = validate_raw_dataset(str(folder_2d))
    assert len(md2.cases) == len(list((folder_2d / "labelsTr").iterdir()))


def test_texts_from_file_and_incomplete_patient(ircadb, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(ircadb, src)
    (src / "3Dircadb1.2" / "MASKS_DICOM.zip").unlink()
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps({"3Dircadb1.1": "two hypodense lesions in the right lobe"}), encoding="utf-8")
    with pytest.raises(ConversionError, match=r"'ircadb1_002': no MASKS_DICOM.zip.*Fix: restore.*--skip-invalid"):
        convert_ircadb(src, 924, output=tmp_path / "raw", texts=texts)
    res = convert_ircadb(src, 924, output=tmp_path / "raw", texts=texts, skip_invalid=True)
    assert res.cases == ["ircadb1_001"] and res.skipped[0].case == "ircadb1_002"
    assert "no MASKS_DICOM.zip" in res.skipped[0].reason and "skipped case 'ircadb1_002'" in capsys.readouterr().out
    block = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))["nnunet_ext"]
    assert block["cases"] == {"ircadb1_001": {"text": "two hypodense lesions in the right lobe"}}
    res2d = convert_ircadb_2d(src, 925, output=tmp_path / "raw", texts=texts, describe=False, skip_invalid=True)
    cases = json.loads((res2d.folder / "dataset.json").read_text(encoding="utf-8"))["nnunet_ext"]["cases"]
    assert cases and all(v == {"text": "two hypodense lesions in the right lobe"} for v in cases.values())


def test_zip_slip_is_refused(ircadb, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ircadb, src)
    make_zip_slip(src / "3Dircadb1.2" / "PATIENT_DICOM.zip")
    out = tmp_path / "out" / "raw"
    with pytest.raises(ConversionError, match=r"case 'ircadb1_002': PATIENT_DICOM.zip contains the unsafe member "
                                              r"'../evil.txt'.*zip-slip.*Fix"):
        convert_ircadb(src, 926, output=out)
    assert not list(tmp_path.rglob("evil.txt"))
    assert not out.exists() or not any(out.iterdir())  # no dataset and no staging folder left


def test_duplicate_patients_and_cli(ircadb, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(ircadb, src)
    shutil.copytree(src / "3Dircadb1.1", src / "3Dircadb1.01")
    with pytest.raises(ConversionError, match=r"duplicate case id.*'ircadb1_001'.*3Dircadb1.01"):
        convert_ircadb(src, 927, output=tmp_path / "raw")
    shutil.rmtree(src / "3Dircadb1.01")
    assert main(["convert", "ircadb", "-i", str(src), "-d", "927", "-o", str(tmp_path / "raw"), "--no-describe"]) == 0
    assert "Dataset927_3DIRCADb: converted (2 training case(s)" in capsys.readouterr().out
