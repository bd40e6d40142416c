"""Real clinical exports in: a GE-like multiphase liver CT export (every series its own StudyInstanceUID, one frame of
reference, AP/EQP descriptions, a reformatted slice, liver and tumour as two DICOM SEG files) converts by
auto-detection alone; phase keywords from several vendors; several masks per case; cut-short slices; the licence."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from lookalikes import make_ge_export, tiny_liver, uid, write_dicom_series, write_seg

from nnunet_ext.conversion.common import ConversionError
from nnunet_ext.conversion.dicom_multiphase import convert_dicom_multiphase
from nnunet_ext.conversion.phase_detection import phase_from_description

PATIENT = "GE0001"


def _dice(a, b) -> float:
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def test_ge_export_converts_by_auto_detection_into_one_case_with_both_phases_and_two_labels(tmp_path, capsys):
    export = make_ge_export(tmp_path / "export")
    res = convert_dicom_multiphase(tmp_path / "export", 930, output=tmp_path / "raw", name="GE")
    printed = capsys.readouterr().out
    assert res.cases == [PATIENT] and not res.test_cases and not res.skipped
    assert f"case {PATIENT}: 2 series grouped by PatientID + FrameOfReferenceUID (their StudyInstanceUIDs differ)" \
        in printed
    assert "keyword 'ap'" in printed and "keyword 'eqp'" in printed
    assert "phases: arterial, delayed (named by every series description)" in printed
    assert any("dropped slice 1-99.dcm" in w and "reformatted" in w for w in res.warnings)
    assert any("different StudyInstanceUIDs" in w and "share the FrameOfReferenceUID" in w for w in res.warnings)
    dj = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["channel_names"] == {"0": "CT", "1": "CT"}
    assert dj["labels"] == {"background": 0, "Liver": 1, "Tumour": 2}
    assert dj["licence"] == "unknown"
    block = dj["nnunet_ext"]
    assert block["phases"] == {"order": ["arterial", "delayed"], "reference": "arterial"}
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(res.folder / "labelsTr" / f"{PATIENT}.nii.gz")))
    truth = export["seg"]
    assert set(np.unique(label)) == {0, 1, 2}
    assert _dice(label == 2, truth == 2) > 0.9  # the tumour inside the liver keeps its label (painted last)
    assert _dice(label >= 1, truth >= 1) > 0.9
    report = json.loads((res.folder / "registration_report.json").read_text(encoding="utf-8"))
    assert report[PATIENT]["phases"]["delayed"]["translation_norm_mm"] < 1.0


@pytest.mark.parametrize("description, phase", [
    # GE
    ("11_AP_Ax5.00mm", "arterial"), ("31_EQP_Ax5.00mm", "delayed"), ("21_PVP_Ax5.00mm", "portal_venous"),
    ("3_NC_Ax5.00mm", "precontrast"), ("DELAY 3 MIN 2.5mm", "delayed"), ("Trans 180s", "delayed"),
    # Siemens
    ("Abdomen 5.0 B30f ART", "arterial"), ("Abdomen PV 3.0 Br40", "portal_venous"), ("Nativ 5.0 B30f", "precontrast"),
    ("LATE ARTERIAL 2.0", "arterial"), ("HAP 1.25mm", "arterial"), ("EQUIL 5mm", "delayed"),
    # Philips / Canon / Toshiba and site conventions
    ("iDose 3 VEN 5mm", "portal_venous"), ("PRE 5.0", "precontrast"), ("Plain CT 5mm", "precontrast"),
    ("LAP_1.0_FC08", "arterial"), ("EQ 3.0 FC08", "delayed"), ("DEL_5mm", "delayed"), ("Late 5min", "delayed"),
    ("PORTAL VENOUS", "portal_venous"), ("NON CONTRAST", "precontrast"), ("Arteriell 3mm", "arterial"),
    # must stay undetected
    ("CAP 5mm", None), ("Thorax 1.25 Lung", None), ("t2_tse_tra", None), ("Dose Report", None),
    ("Sag MPR 3mm", None), ("Ventricles 5mm", None), ("Deltoid 2mm", None), ("PREOP planning", None),
    ("Scout", None), ("Abdomen 5.0 B30f", None),
])
def test_phase_keywords_of_several_vendors(description, phase):
    hit = phase_from_description(description)
    assert (hit[0] if hit else None) == phase, (description, hit)


def _series(root, name, k, phase, ct, study=None):
    tags = {"0008|0060": "CT", "0010|0020": "P1", "0020|000d": study or uid(800, 1), "0020|000e": uid(800, 10 + k),
            "0008|103e": name, "0020|0052": uid(800, 99), "0008|0032": f"1010{10 + k}.000", "0020|0011": str(k)}
    return write_dicom_series(ct, root / "P1" / name, tags)


def _manifest(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def two_phase(tmp_path):
    """Arterial and portal venous series of one patient, liver and tumour SEGs drawn on the portal venous one, and a
    third series the SEGs do not belong to."""
    from lookalikes import to_image

    root = tmp_path / "src"
    ct, seg = tiny_liver(seed=3)
    art = _series(root, "ART", 1, "arterial", to_image(ct))
    pv = _series(root, "PV", 2, "portal_venous", to_image(ct))
    other = _series(root, "OTHER", 3, "portal_venous", to_image(ct))
    write_seg(pv, seg >= 1, "liver", root / "roi" / "liver.dcm")
    write_seg(pv, seg == 2, "tumour", root / "roi" / "tumour.dcm")
    write_seg(other, seg == 2, "tumour", root / "roi" / "other.dcm")
    return root, seg, art, pv


def _label(res, case="P1"):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(res.folder / "labelsTr" / f"{case}.nii.gz")))


def test_manifest_with_several_masks_per_case(two_phase, tmp_path):
    root, seg, _, _ = two_phase
    out = tmp_path / "raw"
    rows = [{"case": "P1", "phase": "arterial", "series": "P1/ART", "mask": "roi/liver.dcm;roi/tumour.dcm",
             "mask_label": ""},
            {"case": "P1", "phase": "portal_venous", "series": "P1/PV", "mask": "", "mask_label": ""}]
    res = convert_dicom_multiphase(root, 931, _manifest(tmp_path / "m.csv", rows), output=out, register=False)
    np.testing.assert_array_equal(_label(res), seg)  # later masks win: the tumour inside the liver stays 2
    assert json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))["labels"] == {
        "background": 0, "liver": 1, "tumour": 2}
    # one row per mask, with label names: the declared order decides what wins where masks overlap
    rows = [{"case": "P1", "phase": "arterial", "series": "P1/ART", "mask": "", "mask_label": ""},
            {"case": "P1", "phase": "portal_venous", "series": "P1/PV", "mask": "", "mask_label": ""},
            {"case": "P1", "phase": "", "series": "", "mask": "roi/tumour.dcm", "mask_label": "lesion"},
            {"case": "P1", "phase": "", "series": "", "mask": "roi/liver.dcm", "mask_label": "liver"}]
    res = convert_dicom_multiphase(root, 932, _manifest(tmp_path / "m2.csv", rows), output=out, register=False,
                                   labels=["liver", "lesion"])
    np.testing.assert_array_equal(_label(res), (seg >= 1).astype(np.uint8))  # the liver, painted last, covers it
    # a label value instead of a name, and a NIfTI mask beside a SEG
    from lookalikes import to_image, write

    write(to_image((seg == 2).astype(np.uint8)), root / "roi" / "tumour.nii.gz")
    rows = [{"case": "P1", "phase": "arterial", "series": "P1/ART", "mask": "roi/liver.dcm;roi/tumour.nii.gz",
             "mask_label": "1;3"},
            {"case": "P1", "phase": "portal_venous", "series": "P1/PV", "mask": "", "mask_label": ""}]
    res = convert_dicom_multiphase(root, 933, _manifest(tmp_path / "m3.csv", rows), output=out, register=False)
    np.testing.assert_array_equal(_label(res), np.where(seg == 2, 3, seg))
    with pytest.raises(ConversionError, match=r"line 2: 2 mask file\(s\) but 1 mask_label value\(s\)"):
        rows[0]["mask_label"] = "liver"
        convert_dicom_multiphase(root, 934, _manifest(tmp_path / "m4.csv", rows), output=out, register=False)


def test_a_seg_of_a_series_outside_the_case_is_an_error(two_phase, tmp_path):
    root, _, _, _ = two_phase
    rows = [{"case": "P1", "phase": "arterial", "series": "P1/ART", "mask": "roi/liver.dcm;roi/other.dcm"},
            {"case": "P1", "phase": "portal_venous", "series": "P1/PV", "mask": ""}]
    with pytest.raises(ConversionError, match=rf"case 'P1': DICOM SEG .*other\.dcm references series "
                                              rf"{uid(800, 13)}, none of which is a phase of this case \(arterial: "
                                              rf".*portal_venous: .*\).*Fix: add the series it references as a phase"):
        convert_dicom_multiphase(root, 935, _manifest(tmp_path / "m.csv", rows), output=tmp_path / "raw",
                                 register=False)
    assert not (tmp_path / "raw" / "Dataset935_Multiphase").exists()


def _cut_header(path):
    """Keep only the first 600 bytes: the preamble and the first elements, no Rows / pixel data."""
    path.write_bytes(path.read_bytes()[:600])


def test_a_cut_short_edge_slice_is_an_error_not_a_dropped_slice(tmp_path, capsys):
    export = make_ge_export(tmp_path / "export", reformatted=False)
    edge = export["files"]["delayed"][-1]
    _cut_header(edge)
    with pytest.raises(ConversionError, match=rf"{edge.name} \(a DICOM file whose header is cut short or incomplete|"
                                              rf"{edge.name} \(an image .* whose header is cut short"):
        convert_dicom_multiphase(tmp_path / "export", 936, output=tmp_path / "raw")
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").glob("Dataset936_*"))
    # with --skip-invalid the case is left out and reported, not converted with 11 of its 12 slices
    capsys.readouterr()
    with pytest.raises(ConversionError, match=r"no case could be converted \(GE0001: case 'GE0001': .*cut short"):
        convert_dicom_multiphase(tmp_path / "export", 936, output=tmp_path / "raw", skip_invalid=True)
    assert "skipped case 'GE0001'" in capsys.readouterr().out
    # the manifest path names the file too
    rows = [{"case": "GE0001", "phase": "arterial", "series": "GE0001/11"},
            {"case": "GE0001", "phase": "delayed", "series": "GE0001/31"}]
    with pytest.raises(ConversionError, match=rf"case 'GE0001' phase 'delayed': .*{edge.name} is .*cut short"):
        convert_dicom_multiphase(tmp_path / "export", 937, _manifest(tmp_path / "m.csv", rows), output=tmp_path / "raw")


def test_licence_is_the_users_or_unknown_never_the_placeholder(tmp_path):
    from lookalikes import make_msd_task, make_v1_task

    from nnunet_ext.conversion.msd import convert_msd
    from nnunet_ext.conversion.nnunet_v1 import convert_nnunet_v1

    make_ge_export(tmp_path / "export", reformatted=False)
    res = convert_dicom_multiphase(tmp_path / "export", 938, output=tmp_path / "raw", register=False,
                                   licence="CC BY 4.0")
    assert json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))["licence"] == "CC BY 4.0"
    v1 = make_v1_task(tmp_path / "v1")  # its dataset.json has an empty licence
    res = convert_nnunet_v1(v1, 939, output=tmp_path / "raw")
    text = (res.folder / "dataset.json").read_text(encoding="utf-8")
    assert json.loads(text)["licence"] == "unknown" and "lazy" not in text
    msd = make_msd_task(tmp_path / "msd")
    res = convert_msd(msd, 940, output=tmp_path / "raw", licence="CC BY-SA 4.0 (MSD)")
    assert json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))["licence"] == "CC BY-SA 4.0 (MSD)"
