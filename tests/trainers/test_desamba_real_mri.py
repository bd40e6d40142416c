"""DeSamba on real multi-sequence MRI: the ProstateX bi-parametric fixture
(``shared/data/real/mri_prostate_multisequence``: T2W, ADC and high-b DWI of two patients, one with a lesion ROI, one
without) goes through the user's path of
``examples/desamba_mri.py``: a folder + CSV converted by the multi-sequence MRI converter with a case-level label and a
clinical column, planned with ``DeSambaPlannerCPU``, trained with ``DeSambaTrainer_smoke`` and predicted with
``--tabular`` (``classification.csv``).

The fixture has two patients; nnU-Net's 5-fold split needs five cases, so the CSV lists each patient under several
case ids (the same image files). The labels are made up for the test: "positive" for the patient with a lesion,
"negative" for the other."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

DATASET = 861
TRAINER, PLANS = "DeSambaTrainer_smoke", "DeSambaPlansCPU"
PATIENTS = {"ProstateX-0000_07-07-2011": ("positive", 3), "ProstateX-0001_07-08-2011": ("negative", 2)}
SEQUENCES = ("t2w", "adc", "hbv")  # the fixture's _0000, _0001 (mislabelled "CT" in its v1 json), _0002


def user_folder(real_data: Path, folder: Path, fix_roi_headers: bool) -> Path:
    """The fixture as a user's folder (images/, labels/) with ``cases.csv``: case, label, one column per sequence,
    roi, psa (a made-up clinical value). The fixture's label headers say 3.6 mm slices against the images' 3.0 mm
    (the voxel grids match): with ``fix_roi_headers`` each ROI gets its T2W image's header, the fix the converter's
    error names."""
    import SimpleITK as sitk

    fixture = real_data / "mri_prostate_multisequence"
    shutil.copytree(fixture / "imagesTr", folder / "images")
    (folder / "labels").mkdir()
    rows = []
    for patient, (label, copies) in PATIENTS.items():
        roi = sitk.ReadImage(str(fixture / "labelsTr" / f"{patient}.nii.gz"))
        if fix_roi_headers:
            roi.CopyInformation(sitk.ReadImage(str(fixture / "imagesTr" / f"{patient}_0000.nii.gz")))
        sitk.WriteImage(roi, str(folder / "labels" / f"{patient}.nii.gz"))
        for k in range(copies):
            rows.append({"case": f"{patient.split('_')[0]}_{k}", "label": label,
                         **{s: f"images/{patient}_{i:04d}.nii.gz" for i, s in enumerate(SEQUENCES)},
                         "roi": f"labels/{patient}.nii.gz", "psa": f"{4.0 + 2.5 * k + (label == 'positive'):.1f}"})
    with open(folder / "cases.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_real_prostate_mri_converts_plans_trains_and_predicts(real_data, nnunet_dirs, tmp_path):
    from nnunet_ext.conversion.common import ConversionError
    from nnunet_ext.conversion.mri_classification import convert_mri_classification
    from nnunet_ext.inference.predict import predict
    from nnunet_ext.planners.api import plan_and_preprocess
    from nnunet_ext.trainers.run import train

    raw_root = nnunet_dirs["nnUNet_raw"]
    with pytest.raises(ConversionError, match="none is left after resampling it onto the t2w image grid"):
        convert_mri_classification(user_folder(real_data, tmp_path / "as_shipped", False), DATASET, output=raw_root,
                                   name="ProstateMRI")
    res = convert_mri_classification(user_folder(real_data, tmp_path / "user", True), DATASET, output=raw_root,
                                     name="ProstateMRI")
    raw = Path(res.folder)
    dataset_json = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    assert dataset_json["channel_names"] == {"0": "t2w", "1": "adc", "2": "hbv"}
    block = dataset_json["nnunet_ext"]
    assert block["classification"]["class_names"] == ["negative", "positive"]
    assert block["tabular"]["feature_names"] == ["psa"] and len(block["cases"]) == 5

    plans_name = plan_and_preprocess(DATASET, "DeSambaPlannerCPU", ("3d_fullres",), num_processes=1)
    assert plans_name == PLANS
    pre = nnunet_dirs["nnUNet_preprocessed"] / raw.name
    cfg = json.loads((pre / f"{PLANS}.json").read_text(encoding="utf-8"))["configurations"]["3d_fullres"]
    assert cfg["desamba_planning"]["preset"] == "tiny" and cfg["desamba_planning"]["covers_lesion_roi"]

    train(raw.name, "3d_fullres", "0", TRAINER, PLANS, device="cpu")
    model = nnunet_dirs["nnUNet_results"] / raw.name / f"{TRAINER}__{PLANS}__3d_fullres"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    assert (model / "fold_0" / "validation" / "summary_classification.json").is_file()

    inp = tmp_path / "predict_in"
    inp.mkdir()
    case = "ProstateX-0000_0"
    for f in sorted((raw / "imagesTr").glob(f"{case}_*.nii.gz")):
        (inp / f.name).symlink_to(f)
    tabular = tmp_path / "clinical.csv"
    tabular.write_text(f"case_id,psa\n{case},{block['cases'][case]['tabular'][0]}\n", encoding="utf-8")
    out = tmp_path / "pred"
    probs = predict(str(inp), str(out), str(model), folds=[0], device="cpu", disable_tta=True,
                    num_processes_preprocessing=1, num_processes_export=1, tabular=str(tabular))
    assert set(probs) == {case} and probs[case].shape == (2,)
    rows = list(csv.DictReader((out / "classification.csv").open(encoding="utf-8")))
    assert [r["case_id"] for r in rows] == [case] and rows[0]["predicted_class"] in ("negative", "positive")
    assert (out / f"{case}.nii.gz").is_file()
