"""Multiphase DICOM converter on a TCGA-LIHC look-alike (manifest and tag-based phase detection, metadata, series
quirks, bad inputs) and on real DICOM: the JPEG2000 CT series, the DICOM SEG liver mask, the DCE phase detection."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from lookalikes import add_reformatted_slice, make_dicom_multiphase, tiny_liver, uid

from nnunet_ext.conversion.common import ConversionError
from nnunet_ext.conversion.dicom_io import read_series, scan_dicom
from nnunet_ext.conversion.dicom_multiphase import convert_dicom_multiphase
from nnunet_ext.conversion.phase_detection import detect_phases, phase_from_description
from nnunet_ext.data.metadata import validate_raw_dataset

CASES = ("TCGA-DD-A001", "TCGA-DD-A002")


def _rows(manifest):
    with open(manifest, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_rows(manifest, rows):
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _nothing_written(out):
    return not out.exists() or not any(out.iterdir())


def test_manifest_conversion_with_masks_and_classes(tmp_path, capsys):
    manifest = make_dicom_multiphase(tmp_path / "lihc")
    out = tmp_path / "raw"
    res = convert_dicom_multiphase(tmp_path / "lihc", 942, manifest, output=out, name="LIHC", register=False)
    assert res.cases == list(CASES) and not res.test_cases
    dj = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["channel_names"] == {"0": "CT", "1": "CT", "2": "CT"}
    assert dj["labels"] == {"background": 0, "label_1": 1, "label_2": 2}
    block = dj["nnunet_ext"]
    assert block["phases"] == {"order": ["arterial", "portal_venous", "delayed"], "reference": "portal_venous"}
    assert block["classification"]["class_names"] == ["HCC", "ICC"]
    assert block["cases"][CASES[1]]["class"] == "ICC"
    md = validate_raw_dataset(str(res.folder))
    assert md.class_targets(CASES).tolist() == [0, 1]
    arterial = sitk.GetArrayFromImage(sitk.ReadImage(str(res.folder / "imagesTr" / f"{CASES[0]}_0000.nii.gz")))
    np.testing.assert_array_equal(arterial, tiny_liver(seed=0, liver_hu=80.0, lesion_hu=150.0)[0])
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(res.folder / "labelsTr" / f"{CASES[0]}.nii.gz")))
    np.testing.assert_array_equal(seg, tiny_liver(seed=0)[1])
    capsys.readouterr()
    again = convert_dicom_multiphase(tmp_path / "lihc", 942, manifest, output=out, name="LIHC", register=False)
    assert again.already_converted and "already converted" in capsys.readouterr().out


def test_classes_labels_and_registration_report(tmp_path):
    manifest = make_dicom_multiphase(tmp_path / "lihc", phases=("arterial", "portal_venous"), labels=("HCC", ""))
    res = convert_dicom_multiphase(tmp_path / "lihc", 943, manifest, output=tmp_path / "raw", classes=["HCC", "FNH"],
                                   labels=["liver", "tumour"])
    block = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))["nnunet_ext"]
    assert block["classification"] == {"class_names": ["HCC", "FNH"], "lesion_labels": [2]}
    assert block["cases"][CASES[1]] == {"class": None}  # no label in the manifest -> explicitly unlabeled
    report = json.loads(res.reports["registration_json"].read_text(encoding="utf-8"))
    assert set(report) == set(CASES) and set(report[CASES[0]]["phases"]) == {"arterial"}
    assert report[CASES[0]]["phases"]["arterial"]["translation_norm_mm"] < 1.0
    with pytest.raises(ConversionError, match=r"not in --classes.*'TCGA-DD-A001' \('HCC'\)"):
        convert_dicom_multiphase(tmp_path / "lihc", 944, manifest, output=tmp_path / "raw", classes=["FNH"])


def test_missing_phase(tmp_path):
    manifest = make_dicom_multiphase(tmp_path / "lihc", with_masks=False)
    _write_rows(manifest, [r for r in _rows(manifest) if not (r["case"] == CASES[1] and r["phase"] == "delayed")])
    out = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"case 'TCGA-DD-A002': missing phase\(s\) \['delayed'\].*Fix"):
        convert_dicom_multiphase(tmp_path / "lihc", 945, manifest, output=out, register=False)
    assert _nothing_written(out)
    res = convert_dicom_multiphase(tmp_path / "lihc", 945, manifest, output=out, register=False, skip_invalid=True)
    assert res.test_cases == [CASES[0]] and res.skipped[0].case == CASES[1]


def test_different_geometry_without_registration(tmp_path):
    manifest = make_dicom_multiphase(tmp_path / "lihc", origin_shift={"arterial": (0.0, 0.0, 4.5)})
    out = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"case 'TCGA-DD-A001': phases with different geometry and no "
                                              r"registration requested .*arterial: origin"):
        convert_dicom_multiphase(tmp_path / "lihc", 946, manifest, output=out, register=False)
    assert _nothing_written(out)


def test_corrupt_empty_and_duplicate_inputs(tmp_path):
    root = tmp_path / "lihc"
    manifest = make_dicom_multiphase(root, with_masks=False)
    out = tmp_path / "raw"
    rows = _rows(manifest)
    # corrupt slice
    bad = root / rows[0]["series"] / "1-03.dcm"
    saved = bad.read_bytes()
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(ConversionError, match=r"case 'TCGA-DD-A001' phase 'arterial': .*1-03.dcm is not a readable "
                                              r"DICOM file.*Fix"):
        convert_dicom_multiphase(root, 947, manifest, output=out, register=False)
    assert _nothing_written(out)
    bad.write_bytes(saved)
    # empty series folder
    (root / "empty").mkdir()
    _write_rows(manifest, [{**r, "series": "empty"} if i == 4 else r for i, r in enumerate(rows)])
    with pytest.raises(ConversionError, match=r"case 'TCGA-DD-A002' phase 'portal_venous': no DICOM image series.*"
                                              r"empty series"):
        convert_dicom_multiphase(root, 947, manifest, output=out, register=False)
    assert _nothing_written(out)
    # duplicate case id / phase rows
    _write_rows(manifest, rows + [rows[0]])
    with pytest.raises(ConversionError, match=r"duplicate case id 'TCGA-DD-A001' with phase 'arterial' on lines 2 "
                                              r"and 8"):
        convert_dicom_multiphase(root, 947, manifest, output=out, register=False)
    assert _nothing_written(out)


def test_reformatted_slice_is_dropped_with_a_warning(tmp_path):
    root = tmp_path / "lihc"
    manifest = make_dicom_multiphase(root, cases=CASES[:1], with_masks=False)
    series = root / _rows(manifest)[1]["series"]
    add_reformatted_slice(series, {"0008|0060": "CT", "0020|000e": uid(0, 3), "0020|000d": uid(0),
                                   "0010|0020": CASES[0], "0008|103e": "PORTAL VENOUS"})
    [scanned] = scan_dicom(series, "test")
    assert len(scanned.files) == 8 and "1-99.dcm" in scanned.dropped[0] and "orientation" in scanned.dropped[0]
    res = convert_dicom_multiphase(root, 948, manifest, output=tmp_path / "raw", register=False)
    assert any("dropped slice 1-99.dcm" in w and "localiser or reformatted" in w for w in res.warnings)
    img = sitk.ReadImage(str(res.folder / "imagesTs" / f"{CASES[0]}_0001.nii.gz"))
    assert img.GetSize() == (24, 24, 8)


def test_phase_detection_from_tags_and_written_manifest(tmp_path, capsys):
    root = tmp_path / "lihc"
    make_dicom_multiphase(root, phases=("precontrast", "arterial", "portal_venous", "delayed"))
    shutil.rmtree(root / "masks")
    (root / "manifest.csv").unlink()
    written = tmp_path / "detected.csv"
    res = convert_dicom_multiphase(root, 949, output=tmp_path / "raw", register=False, write_manifest=written,
                                   phases=["arterial", "portal_venous", "delayed"])
    printed = capsys.readouterr().out
    assert "Detected phase mapping" in printed and "keyword 'art'" in printed and "(ignored)" in printed
    assert res.test_cases == list(CASES)
    rows = _rows(written)
    assert [(r["case"], r["phase"]) for r in rows[:3]] == [(CASES[0], p) for p in ("arterial", "portal_venous",
                                                                                   "delayed")]
    assert rows[1]["series"].endswith("PORTAL VENOUS")
    assert phase_from_description("Abd 5mm PV") == ("portal_venous", "pv")
    assert phase_from_description("LATE ARTERIAL") == ("arterial", "arterial")
    assert phase_from_description("fl3d_vibe_pre_flip_2deg") == ("precontrast", "pre")
    assert phase_from_description("t2_tse_tra") is None


def test_real_dce_phases_detected_by_keyword_and_time(real_data, capsys):
    plans = detect_phases(real_data / "mri_prostate_dce", ["precontrast", "arterial", "portal_venous", "delayed"])
    [(case, plan)] = plans.items()
    assert case == "ProstateX-0218"
    assert {p: path.name for p, (path, _) in plan.phases.items()} == {
        "precontrast": "phase0_precontrast", "arterial": "phase1_8.0s", "portal_venous": "phase2_41.7s",
        "delayed": "phase3_83.9s"}
    assert "acquisition-time order" in capsys.readouterr().out


def test_real_jpeg2000_series(real_data, tmp_path):
    folder = real_data / "ct_abdomen" / "dicom_series"
    [series] = scan_dicom(folder, "jpeg2000")
    img = read_series(series, "jpeg2000")
    assert img.GetSize() == (512, 512, 20) and np.isclose(img.GetSpacing()[2], 2.0)
    arr = sitk.GetArrayViewFromImage(img)
    assert arr.min() == -1024 and arr.max() > 1000  # HU after rescale
    res = convert_dicom_multiphase(folder, 920, output=tmp_path / "raw", phases=["portal_venous"], name="J2K")
    assert res.test_cases == ["dicom_series"]  # empty PatientID -> folder name
    dj = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["channel_names"] == {"0": "CT"}


def test_real_dicom_seg_mask(real_data, tmp_path):
    src = real_data / "ct_liver_dicom_seg"
    manifest = tmp_path / "manifest.csv"
    _write_rows(manifest, [{"case": "liver3", "phase": "portal_venous", "series": str(src),
                            "mask": str(src / "liver.dcm")}])
    res = convert_dicom_multiphase(src, 921, manifest, output=tmp_path / "raw", name="SEG")
    assert res.cases == ["liver3"]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(res.folder / "labelsTr" / "liver3.nii.gz")))
    nrrd = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "liver_seg.nrrd")))
    np.testing.assert_array_equal(seg, nrrd)
    dj = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["labels"] == {"background": 0, "Liver": 1}
    img = sitk.ReadImage(str(res.folder / "imagesTr" / "liver3_0000.nii.gz"))
    assert img.GetSize() == (512, 512, 3)


DCE = ("phase0_precontrast", "phase1_8.0s", "phase2_41.7s", "phase3_83.9s")
DCE_PHASES = ("precontrast", "arterial", "portal_venous", "delayed")


def _dce_manifest(path, folders, uids=None):
    """One case (ProstateX-0218) whose phases precontrast..delayed are ``folders`` (real DCE series by default)."""
    rows = [{"case": "ProstateX-0218", "phase": p, "series": str(f), "series_uid": (uids or {}).get(p, "")}
            for p, f in zip(DCE_PHASES, folders)]
    _write_rows(path, rows)
    return path


def _retag(folder, **tags):
    import pydicom

    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(str(f))
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(str(f))


def test_real_dce_same_series_for_two_phases_raises(real_data, copy_of, tmp_path):
    dce = real_data / "mri_prostate_dce"
    out = tmp_path / "raw"
    manifest = _dce_manifest(tmp_path / "m.csv", [dce / DCE[0], dce / DCE[1], dce / DCE[1], dce / DCE[3]])
    with pytest.raises(ConversionError, match=r"case 'ProstateX-0218': phases 'arterial' and 'portal_venous' both "
                                              r"point at .*phase1_8.0s.*Fix: give each phase its own series"):
        convert_dicom_multiphase(dce, 922, manifest, output=out, register=False)
    # a copy of a series in another folder is still the same series (same SeriesInstanceUID)
    copy = copy_of(dce / DCE[1])
    manifest = _dce_manifest(tmp_path / "m.csv", [dce / DCE[0], dce / DCE[1], copy, dce / DCE[3]])
    with pytest.raises(ConversionError, match=r"case 'ProstateX-0218': phases 'arterial' and 'portal_venous' are the "
                                              r"same DICOM series \(SeriesInstanceUID 1\.3\.6\.1\.4\.1\.14519\.5\.2\.1"
                                              r"\.7310\.5101\.320607021052290186907163164234;"):
        convert_dicom_multiphase(dce, 922, manifest, output=out, register=False)
    assert _nothing_written(out)


def test_real_series_of_another_patient_or_modality_raise(real_data, copy_of, tmp_path):
    dce = real_data / "mri_prostate_dce"
    out = tmp_path / "raw"
    # a CT of another patient and study registered onto the MR case
    manifest = _dce_manifest(tmp_path / "m.csv", [dce / DCE[0], real_data / "ct_liver_dicom_seg", dce / DCE[2],
                                                  dce / DCE[3]])
    with pytest.raises(ConversionError, match=r"case 'ProstateX-0218': the phases are series of different patients "
                                              r"or modalities \(PatientID precontrast='ProstateX-0218', "
                                              r"arterial='99000', .*; Modality "
                                              r"precontrast='MR', arterial='CT', portal_venous='MR', delayed='MR'\)\. "
                                              r"Fix: correct the series"):
        convert_dicom_multiphase(dce, 923, manifest, output=out, register=False)
    # the CT series without PatientID / StudyInstanceUID: only the modality can be compared
    manifest = _dce_manifest(tmp_path / "m.csv", [dce / DCE[0], real_data / "ct_abdomen" / "dicom_series",
                                                  dce / DCE[2], dce / DCE[3]])
    with pytest.raises(ConversionError, match=r"modalities \(Modality precontrast='MR', arterial='CT', "
                                              r"portal_venous='MR', delayed='MR'\)"):
        convert_dicom_multiphase(dce, 923, manifest, output=out, register=False)
    # the same MR series relabelled as another patient
    other = copy_of(dce / DCE[1])
    _retag(other, PatientID="ProstateX-0999")
    manifest = _dce_manifest(tmp_path / "m.csv", [dce / DCE[0], other, dce / DCE[2], dce / DCE[3]])
    with pytest.raises(ConversionError, match=r"modalities \(PatientID precontrast='ProstateX-0218', "
                                              r"arterial='ProstateX-0999', portal_venous='ProstateX-0218', "
                                              r"delayed='ProstateX-0218'\)\. Fix"):
        convert_dicom_multiphase(dce, 923, manifest, output=out, register=False)
    assert _nothing_written(out)
    # --allow-mixed-studies does not override another patient
    with pytest.raises(ConversionError, match=r"PatientID precontrast='ProstateX-0218', arterial='ProstateX-0999'"):
        convert_dicom_multiphase(dce, 923, manifest, output=out, register=False, allow_mixed_studies=True)
    # the same patient in another study: accepted when the frame of reference is shared (one exam exported as
    # several studies), else only when the user says so
    _retag(other, PatientID="ProstateX-0218", StudyInstanceUID="1.2.3.4.5")
    res = convert_dicom_multiphase(dce, 923, manifest, output=out, register=False)
    assert any("different StudyInstanceUIDs" in w and "share the FrameOfReferenceUID" in w for w in res.warnings)
    shutil.rmtree(res.folder)
    _retag(other, FrameOfReferenceUID="1.2.3.4.6", AccessionNumber="999")
    with pytest.raises(ConversionError, match=r"series of different studies \(StudyInstanceUID precontrast=.*"
                                              r"arterial='1\.2\.3\.4\.5'.*\) that share neither a "
                                              r"FrameOfReferenceUID nor an AccessionNumber\. "
                                              r"Fix: .*--allow-mixed-studies"):
        convert_dicom_multiphase(dce, 923, manifest, output=out, register=False)
    res = convert_dicom_multiphase(dce, 923, manifest, output=out, register=False, allow_mixed_studies=True)
    assert any("--allow-mixed-studies was given" in w for w in res.warnings)
    report = json.loads((res.folder / "conversion_report.json").read_text(encoding="utf-8"))
    assert report["options"]["allow_mixed_studies"] is True
    shutil.rmtree(res.folder)
    # anonymised: blank PatientID and StudyInstanceUID are unknown, not a conflict
    _retag(other, PatientID="", StudyInstanceUID="")
    res = convert_dicom_multiphase(dce, 923, manifest, output=out, register=False)
    assert res.test_cases == ["ProstateX-0218"]
    assert not [w for w in res.warnings if "backwards" in w]  # the real acquisition times follow the phase order


def test_real_acquisition_times_against_phase_order_warn(real_data, tmp_path):
    dce = real_data / "mri_prostate_dce"
    manifest = _dce_manifest(tmp_path / "m.csv", [dce / DCE[0], dce / DCE[2], dce / DCE[1], dce / DCE[3]])
    res = convert_dicom_multiphase(dce, 924, manifest, output=tmp_path / "raw", register=False)
    [warning] = [w for w in res.warnings if "backwards" in w]
    assert ("case 'ProstateX-0218': acquisition times run backwards in the phase order ['precontrast', 'arterial', "
            "'portal_venous', 'delayed']: 'portal_venous' at 12:57:05.3 before 'arterial' at 12:57:43.8") in warning
    # the channels keep the declared order
    arterial = sitk.ReadImage(str(res.folder / "imagesTs" / "ProstateX-0218_0001.nii.gz"))
    [s] = scan_dicom(dce / DCE[2], "t")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(arterial), sitk.GetArrayFromImage(read_series(s, "t")))


def test_real_wrong_series_uid_lists_the_series_present(real_data, tmp_path):
    dce = real_data / "mri_prostate_dce"
    out = tmp_path / "raw"
    manifest = _dce_manifest(tmp_path / "m.csv", [dce / d for d in DCE], uids={"arterial": "1.2.3.4"})
    with pytest.raises(ConversionError, match=r"case 'ProstateX-0218' phase 'arterial': series_uid 1\.2\.3\.4 is not "
                                              r"in .*phase1_8\.0s; the SeriesInstanceUID\(s\) there: 1\.3\.6\.1\.4\.1"
                                              r"\.14519\.5\.2\.1\.7310\.5101\.320607021052290186907163164234 "
                                              r"\('Twist_dynamic_Wip576_TT=8\.0s', 20 files\)\. Fix: correct the "
                                              r"series_uid column"):
        convert_dicom_multiphase(dce, 925, manifest, output=out, register=False)
    assert _nothing_written(out)
