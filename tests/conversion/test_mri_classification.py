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
    [blank] = [w for w in res.warnings if "blank 'label' cell" in w]
    assert "1 case(s)" in blank and "'pat002'" in blank and "unlabeled" in blank and "labels.csv" in blank
    img = sitk.ReadImage(str(res.folder / "imagesTr" / "pat001_0002.nii.gz"))
    assert img.GetSize() == (24, 24, 8)
    with open(table, encoding="utf-8") as f:
        rows = f.read().splitlines()
    (tmp_path / "d" / "labels.csv").write_text("\n".join(rows + [rows[1]]) + "\n", encoding="utf-8")
    with pytest.raises(ConversionError, match=r"duplicate case id.*'pat000' from row 2, row 5"):
        convert_mri_classification(tmp_path / "d", 932, output=tmp_path / "raw")


def test_label_spelled_like_a_missing_value_raises_unless_named_in_classes(tmp_path):
    table = make_mri_classification(tmp_path / "d", n=3, clinical={})
    _edit(table, "pat001", "label", "NaN")
    with pytest.raises(ConversionError, match=r"missing value.*'pat001' \('NaN'\).*Fix: leave the cell blank"):
        convert_mri_classification(tmp_path / "d", 933, output=tmp_path / "raw")
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())
    with open(table, encoding="utf-8") as f:
        others = sorted({r["label"] for r in csv.DictReader(f)} - {"NaN"})
    res = convert_mri_classification(tmp_path / "d", 933, output=tmp_path / "raw", classes=[*others, "NaN"])
    block = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))["nnunet_ext"]
    assert block["cases"]["pat001"]["class"] == "NaN"


def _real_prostate_table(real_data, folder):
    """A CSV over the real ProstateX images, with the real lesion labels as ROI: their header says 3.6 mm slices and
    another origin than the images, so in physical space they lie beside the images."""
    src = real_data / "mri_prostate_multisequence"
    folder.mkdir()
    with open(folder / "table.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case", "label", "t2w", "adc", "hbv", "roi"])
        for case, cls in (("ProstateX-0000_07-07-2011", "csPCa"), ("ProstateX-0001_07-08-2011", "benign")):
            w.writerow([case, cls, *(src / "imagesTr" / f"{case}_{c:04d}.nii.gz" for c in range(3)),
                        src / "labelsTr" / f"{case}.nii.gz"])
    return folder


def test_real_roi_that_vanishes_on_the_image_grid_raises(real_data, tmp_path):
    folder = _real_prostate_table(real_data, tmp_path / "prostate")
    out = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"case 'ProstateX-0000_07-07-2011': roi mask .*ProstateX-0000_07-07-2011"
                                              r".nii.gz has 512 foreground voxel\(s\) but none is left after "
                                              r"resampling it onto the t2w image grid.*t2w image: size "
                                              r"\(160, 160, 20\), spacing \(0.5, 0.5, 3\) mm.*ROI: size "
                                              r"\(160, 160, 20\), spacing \(0.5, 0.5, 3.6\) mm.*Fix: "
                                              r".*CopyInformation.*--skip-invalid"):
        convert_mri_classification(folder, 933, output=out, clinical=[])
    assert not out.exists() or not any(out.iterdir())
    res = convert_mri_classification(folder, 933, output=out, clinical=[], skip_invalid=True)
    assert res.cases == ["ProstateX-0001_07-08-2011"] and res.skipped[0].case == "ProstateX-0000_07-07-2011"
    # the negative case's (empty) ROI is on the same foreign grid: converted, but not silently
    [warning] = [w for w in res.warnings if "roi mask" in w]
    assert "'ProstateX-0001_07-08-2011'" in warning and "another grid" in warning and "0 -> 0 foreground" in warning


def test_roi_on_another_grid_is_warned_and_far_away_roi_raises(tmp_path):
    table = make_mri_classification(tmp_path / "d", n=2, clinical={})
    roi = sitk.ReadImage(str(tmp_path / "d" / "images" / "pat001" / "roi.nii.gz"))
    fine = sitk.Resample(roi, [48, 48, 8], sitk.Transform(), sitk.sitkNearestNeighbor, roi.GetOrigin(),
                         [0.75, 0.75, 3.0], roi.GetDirection(), 0)
    sitk.WriteImage(fine, str(tmp_path / "d" / "images" / "pat001" / "roi.nii.gz"))
    n_fine = int(sitk.GetArrayFromImage(fine).sum())
    res = convert_mri_classification(tmp_path / "d", 926, output=tmp_path / "raw")
    [warning] = [w for w in res.warnings if "roi mask" in w]
    assert "case 'pat001'" in warning and "spacing (1.5, 1.5, 3) vs (0.75, 0.75, 3)" in warning
    assert f"{n_fine} -> {int(sitk.GetArrayFromImage(roi).sum())} foreground voxel(s)" in warning
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(res.folder / "labelsTr" / "pat001.nii.gz")))
    np.testing.assert_array_equal(label, sitk.GetArrayFromImage(roi))
    far = sitk.Image(roi)
    far.SetOrigin((0.0, 0.0, 500.0))  # same voxels, 50 cm away from the images
    sitk.WriteImage(far, str(tmp_path / "d" / "images" / "pat001" / "roi.nii.gz"))
    with pytest.raises(ConversionError, match=rf"case 'pat001': roi mask .*roi.nii.gz has {int(label.sum())} "
                                              r"foreground voxel\(s\) but none is left.*origin \(0, 0, 500\) mm"):
        convert_mri_classification(tmp_path / "d", 927, output=tmp_path / "raw")
    assert not (tmp_path / "raw" / "Dataset927_MRIClassification").exists()
    assert table.exists()


def test_sequence_outside_the_first_sequence_raises_and_partial_cover_is_warned(tmp_path):
    make_mri_classification(tmp_path / "d", n=2, clinical={})
    path = tmp_path / "d" / "images" / "pat001" / "t2fs.nii.gz"
    seq = sitk.ReadImage(str(path))
    half = sitk.Image(seq)
    size, spacing = seq.GetSize(), seq.GetSpacing()
    half.SetOrigin(tuple(o + (size[0] * spacing[0] * 0.75 if i == 0 else 0) for i, o in enumerate(seq.GetOrigin())))
    sitk.WriteImage(half, str(path))
    res = convert_mri_classification(tmp_path / "d", 928, output=tmp_path / "raw")
    [warning] = [w for w in res.warnings if "t2fs was resampled" in w]
    assert "case 'pat001'" in warning and "covers only 25% of that grid" in warning
    far = sitk.Image(seq)
    far.SetOrigin((0.0, 0.0, 500.0))  # same voxels, 50 cm away
    sitk.WriteImage(far, str(path))
    with pytest.raises(ConversionError, match=r"case 'pat001': the t2fs image .*t2fs.nii.gz lies entirely outside "
                                              r"the .* image in physical space.*empty channel.*Fix"):
        convert_mri_classification(tmp_path / "d", 929, output=tmp_path / "raw")
    assert not (tmp_path / "raw" / "Dataset929_MRIClassification").exists()


def test_truncated_sequence_file_raises(tmp_path):
    make_mri_classification(tmp_path / "d", n=2, clinical={})
    t2 = tmp_path / "d" / "images" / "pat001" / "t2.nii.gz"
    data = t2.read_bytes()
    t2.write_bytes(data[: len(data) * 2 // 3])  # SimpleITK alone reads this without an error
    out = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"case 'pat001': t2 image .*t2.nii.gz is truncated or corrupt.*Fix: "
                                              r"re-export or re-download the file.*--skip-invalid"):
        convert_mri_classification(tmp_path / "d", 925, output=out)
    assert not out.exists() or not any(out.iterdir())
    res = convert_mri_classification(tmp_path / "d", 925, output=out, skip_invalid=True)
    assert res.cases == ["pat000"] and res.skipped[0].case == "pat001"
