"""Multi-sequence MRI classification converter (DeSamba-style folder + CSV): channels, classes, clinical features,
NaN / non-numeric values, median imputation, resampling, duplicates."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from lookalikes import make_mri_classification, tiny_liver, write

from nnunet_ext.conversion.common import ConversionError
from nnunet_ext.conversion.mri_classification import convert_mri_classification
from nnunet_ext.data.metadata import validate_raw_dataset


def _edit(csv_path, case, column, value):
    with open(csv_path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r["case"] == case:
            r[column] = value
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_channels_classes_and_clinical_features(tmp_path):
    table = make_mri_classification(tmp_path / "desamba", n=4)
    res = convert_mri_classification(tmp_path / "desamba", 928, output=tmp_path / "raw", name="DeSamba")
    assert res.cases == [f"pat{i:03d}" for i in range(4)]
    dj = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["channel_names"] == {"0": "t1", "1": "t2", "2": "t2fs"} and dj["labels"] == {"background": 0,
                                                                                          "lesion": 1}
    block = dj["nnunet_ext"]
    assert block["classification"] == {"class_names": ["benign", "malignant"], "lesion_labels": [1]}
    assert block["tabular"] == {"feature_names": ["age", "size_mm"]}
    assert block["cases"]["pat001"] == {"class": "malignant", "tabular": [53.0, 21.5]}
    md = validate_raw_dataset(str(res.folder))
    assert md.tabular_matrix(["pat002"]).tolist() == [[56.0, 22.5]]
    t2 = sitk.GetArrayFromImage(sitk.ReadImage(str(res.folder / "imagesTr" / "pat000_0001.nii.gz")))
    assert t2.min() >= 0 and (t2 > 0).any()
    roi = sitk.GetArrayFromImage(sitk.ReadImage(str(res.folder / "labelsTr" / "pat000.nii.gz")))
    np.testing.assert_array_equal(roi, (tiny_liver(seed=0)[1] == 2).astype(np.uint8))
    assert table.name == "labels.csv"


def test_nan_and_text_clinical_values(tmp_path):
    table = make_mri_classification(tmp_path / "d", n=4)
    _edit(table, "pat002", "age", "NaN")
    out = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"missing \(NaN/empty\) clinical values: 'pat002'/'age'.*--impute "
                                              r"median"):
        convert_mri_classification(tmp_path / "d", 929, output=out)
    assert not out.exists()
    res = convert_mri_classification(tmp_path / "d", 929, output=out, impute="median")
    ages = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))["nnunet_ext"]["cases"]
    assert ages["pat002"]["tabular"][0] == 53.0  # median of 50, 53, 59
    assert any("imputed 1 missing value(s) of 'age'" in w for w in res.warnings)
    _edit(table, "pat001", "size_mm", "large")
    with pytest.raises(ConversionError, match=r"non-numeric clinical values: 'pat001'/'size_mm' \('large'\).*Fix"):
        convert_mri_classification(tmp_path / "d", 930, output=out, impute="median")
    res = convert_mri_classification(tmp_path / "d", 930, output=out, clinical=["age"], impute="median",
                                     sequences=["t2", "t1"])
    dj = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["channel_names"] == {"0": "t2", "1": "t1"} and dj["nnunet_ext"]["tabular"]["feature_names"] == ["age"]


def test_duplicates_unlabeled_and_resampled_sequence(tmp_path):
    table = make_mri_classification(tmp_path / "d", n=3, clinical={})
    _edit(table, "pat002", "label", "")
    write(np.zeros((4, 12, 12), np.uint16), tmp_path / "d" / "images" / "pat001" / "t2fs.nii.gz",
          spacing=(3.0, 3.0, 6.0))
    res = convert_mri_classification(tmp_path / "d", 931, output=tmp_path / "raw")
    block = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))["nnunet_ext"]
    assert block["cases"]["pat002"] == {"class": None} and "tabular" not in block
    assert any("pat001" in w and "t2fs was resampled" in w for w in res.warnings)
    img = sitk.ReadImage(str(res.folder / "imagesTr" / "pat001_0002.nii.gz"))
    assert img.GetSize() == (24, 24, 8)
    with open(table, encoding="utf-8") as f:
        rows = f.read().splitlines()
    (tmp_path / "d" / "labels.csv").write_text("\n".join(rows + [rows[1]]) + "\n", encoding="utf-8")
    with pytest.raises(ConversionError, match=r"duplicate case id.*'pat000' from row 2, row 5"):
        convert_mri_classification(tmp_path / "d", 932, output=tmp_path / "raw")
