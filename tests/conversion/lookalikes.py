"""Builders of tiny synthetic look-alikes of the public dataset layouts the converters read.

Folder and file names follow the originals; the arrays are small (``(z, y, x)`` = 8 x 24 x 24 by default) CT-like
volumes with a liver ellipsoid (about 60-100 HU) in air/soft tissue and one lesion. DICOM is written with SimpleITK's
GDCM writer, zipped where the original is zipped.
"""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_ext.conversion.dicom_seg import write_dicom_seg
from nnunet_ext.conversion.export_dicom import (  # noqa: F401 (re-exported for the tests)
    dicom_uid,
    displace_dicom_geometry,
    write_dicom_series,
)

SHAPE = (8, 24, 24)
SPACING = (1.5, 1.5, 3.0)  # x, y, z (SimpleITK order)
PHASE_HU = {"precontrast": (55.0, 40.0), "arterial": (80.0, 150.0), "portal_venous": (120.0, 90.0),
            "delayed": (100.0, 60.0)}  # (liver, lesion) HU per phase


def _ellipsoid(shape, center, radii) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def tiny_liver(shape=SHAPE, seed: int = 0, liver_hu: float = 100.0, lesion_hu: float = 40.0, lesion: bool = True):
    """``(ct int16, seg uint8)`` arrays ``(z, y, x)``: body -> liver (label 1) -> lesion (label 2)."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    body = _ellipsoid(shape, (z / 2, y / 2, x / 2), (z, y * 0.48, x * 0.48))
    liver = _ellipsoid(shape, (z / 2, y / 2 - 1, x / 2 - 2), (z * 0.4, y * 0.3, x * 0.3))
    les = _ellipsoid(shape, (z / 2, y / 2 - 1 + rng.integers(-1, 2), x / 2 - 3), (1.6, 2.5, 2.5)) & liver
    les = les if lesion else np.zeros_like(les)
    ct = np.full(shape, -1000.0)
    ct[body] = 40.0
    ct[liver] = liver_hu
    ct[les] = lesion_hu
    ct += rng.normal(0, 5, shape)
    seg = liver.astype(np.uint8) + les.astype(np.uint8)
    return ct.astype(np.int16), seg


def to_image(arr: np.ndarray, spacing=SPACING, origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def write(arr_or_img, path: Path, **geometry) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = arr_or_img if isinstance(arr_or_img, sitk.Image) else to_image(arr_or_img, **geometry)
    sitk.WriteImage(img, str(path))
    return path


# --------------------------------------------------------------------------- LiTS
def make_lits(root: Path, n_train: int = 3, n_test: int = 1, shape=SHAPE) -> Path:
    """``LiTS/Training Batch 1/volume-N.nii`` + ``segmentation-N.nii`` and ``LiTS/Test/test-volume-N.nii``."""
    src = root / "LiTS"
    for n in range(n_train):
        ct, seg = tiny_liver(shape, seed=n)
        write(ct, src / "Training Batch 1" / f"volume-{n}.nii")
        write(seg, src / "Training Batch 1" / f"segmentation-{n}.nii")
    for n in range(n_test):
        write(tiny_liver(shape, seed=50 + n)[0], src / "Test" / f"test-volume-{n}.nii")
    return src


# --------------------------------------------------------------------------- MSD / nnU-Net v1
def make_msd_task(root: Path, task: str = "Task03_Liver", n_train: int = 3, n_test: int = 1,
                  modalities: Sequence[str] = ("CT",), labels: Sequence[str] = ("background", "liver", "cancer"),
                  prefix: str = "liver", shape=SHAPE) -> Path:
    """Medical Segmentation Decathlon layout: ``imagesTr/{prefix}_N.nii.gz`` (4D when several modalities),
    ``labelsTr``, ``imagesTs`` and the MSD ``dataset.json``."""
    src = root / task
    for n in range(n_train + n_test):
        ct, seg = tiny_liver(shape, seed=n)
        if len(modalities) > 1:
            img = sitk.JoinSeries([to_image((ct + 10 * c).astype(np.float32)) for c in range(len(modalities))])
        else:
            img = to_image(ct)
        sub = "imagesTr" if n < n_train else "imagesTs"
        write(img, src / sub / f"{prefix}_{n}.nii.gz")
        if n < n_train:
            write(seg, src / "labelsTr" / f"{prefix}_{n}.nii.gz")
    dj = {"name": task.split("_")[1], "description": "look-alike", "tensorImageSize": "4D" if len(modalities) > 1
          else "3D", "modality": {str(i): m for i, m in enumerate(modalities)},
          "labels": {str(i): n for i, n in enumerate(labels)}, "numTraining": n_train, "numTest": n_test,
          "training": [{"image": f"./imagesTr/{prefix}_{n}.nii.gz", "label": f"./labelsTr/{prefix}_{n}.nii.gz"}
                       for n in range(n_train)],
          "test": [f"./imagesTs/{prefix}_{n}.nii.gz" for n in range(n_train, n_train + n_test)]}
    (src / "dataset.json").write_text(json.dumps(dj, indent=2), encoding="utf-8")
    return src


def make_v1_task(root: Path, task: str = "Task100_Prostate", modalities: Mapping[str, str] | None = None,
                 n: int = 2, shape=SHAPE, mri: bool = True) -> Path:
    """nnU-Net v1 raw task: ``imagesTr/{case}_{c:04d}.nii.gz``, ``labelsTr/{case}.nii.gz``, v1 ``dataset.json``
    (``modality``, string label keys, ``training`` list). ``mri=True`` writes non-negative uint16 intensities."""
    modalities = dict(modalities or {"0": "T2W", "1": "CT", "2": "HBV"})
    src = root / task
    for i in range(n):
        ct, seg = tiny_liver(shape, seed=i)
        for c in modalities:
            arr = (np.clip(ct, -200, None) + 200).astype(np.uint16) if mri else ct
            write(arr, src / "imagesTr" / f"case{i:02d}_{int(c):04d}.nii.gz")
        write((seg == 2).astype(np.uint8), src / "labelsTr" / f"case{i:02d}.nii.gz")
    dj = {"name": task.split("_", 1)[1], "description": "look-alike", "tensorImageSize": "4D", "reference": "",
          "licence": "", "release": "0.0", "modality": modalities, "labels": {"0": "background", "1": "lesion"},
          "numTraining": n, "numTest": 0, "test": [],
          "training": [{"image": f"./imagesTr/case{i:02d}.nii.gz", "label": f"./labelsTr/case{i:02d}.nii.gz"}
                       for i in range(n)]}
    (src / "dataset.json").write_text(json.dumps(dj, indent=2), encoding="utf-8")
    return src


# --------------------------------------------------------------------------- DICOM
uid = dicom_uid


def make_dicom_multiphase(root: Path, cases: Sequence[str] = ("TCGA-DD-A001", "TCGA-DD-A002"),
                          phases: Sequence[str] = ("arterial", "portal_venous", "delayed"),
                          labels: Sequence[str | None] = ("HCC", "ICC"), with_masks: bool = True,
                          origin_shift: Mapping[str, tuple[float, float, float]] | None = None,
                          shape=SHAPE) -> Path:
    """TCGA-LIHC-like tree ``root/{case}/{date}-CT ABDOMEN/{series}-{DESCRIPTION}/1-NN.dcm`` plus ``masks/{case}
    .nii.gz`` (on the portal venous grid) and ``manifest.csv`` (case, phase, series, mask, label)."""
    descriptions = {"precontrast": "NON CONTRAST", "arterial": "ART PHASE 5mm", "portal_venous": "PORTAL VENOUS",
                    "delayed": "DELAY 3 MIN"}
    rows = []
    for ci, case in enumerate(cases):
        for pi, phase in enumerate(phases):
            liver_hu, lesion_hu = PHASE_HU[phase]
            ct, seg = tiny_liver(shape, seed=ci, liver_hu=liver_hu, lesion_hu=lesion_hu)
            origin = np.add((0.0, 0.0, 0.0), (origin_shift or {}).get(phase, (0.0, 0.0, 0.0)))
            img = to_image(ct, origin=tuple(origin))
            series = root / case / "01-01-2000-CT ABDOMEN" / f"{pi + 2}.000000-{descriptions[phase]}"
            tags = {"0008|0060": "CT", "0010|0020": case, "0020|000d": uid(ci), "0020|000e": uid(ci, pi + 2),
                    "0008|103e": descriptions[phase], "0008|0032": f"1200{10 + 2 * pi:02d}.000",
                    "0020|0011": str(pi + 2), "0018|0010": "" if phase == "precontrast" else "OMNIPAQUE"}
            write_dicom_series(img, series, tags)
            mask = ""
            if with_masks and phase == "portal_venous":
                mask = f"masks/{case}.nii.gz"
                write(to_image(seg, origin=tuple(origin)), root / mask)
            rows.append({"case": case, "phase": phase, "series": str(series.relative_to(root)), "mask": mask,
                         "label": labels[ci % len(labels)] if labels else ""})
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["case", "phase", "series", "mask", "label"])
        w.writeheader()
        w.writerows(rows)
    return root / "manifest.csv"


# --------------------------------------------------------------------------- 3D-IRCADb
def make_ircadb(root: Path, n: int = 2, shape=SHAPE, tumours: int = 2) -> Path:
    """``3Dircadb1/3Dircadb1.N/PATIENT_DICOM.zip`` (``PATIENT_DICOM/image_K``) and ``MASKS_DICOM.zip``
    (``MASKS_DICOM/{liver,livertumor01,...,portalvein}/image_K``, 0/255 masks), as in Soler et al.'s release."""
    top = root / "3Dircadb1"
    for i in range(1, n + 1):
        ct, seg = tiny_liver(shape, seed=i)
        tmp = root / f"_build{i}"
        series = {"PATIENT_DICOM": ct}
        series["MASKS_DICOM/liver"] = np.where(seg > 0, 255, 0).astype(np.int16)
        lesion = seg == 2
        cut = int(np.argwhere(lesion)[:, 2].mean()) if lesion.any() else 0
        xs = np.arange(shape[2])[None, None, :]
        halves = [lesion & (xs < cut), lesion & (xs >= cut)]
        for t in range(tumours):
            series[f"MASKS_DICOM/livertumor{t + 1:02d}"] = np.where(halves[t % 2], 255, 0).astype(np.int16)
        series["MASKS_DICOM/portalvein"] = np.zeros(shape, np.int16)
        for si, (sub, arr) in enumerate(series.items()):
            tags = {"0008|0060": "CT", "0010|0020": f"ircad{i}", "0020|000d": uid(100 + i),
                    "0020|000e": uid(100 + i, si)}
            write_dicom_series(to_image(arr, spacing=(0.7, 0.7, 2.0), origin=(-8.0, -8.0, 100.0)), tmp / sub, tags,
                               pattern="image_{}")
        case = top / f"3Dircadb1.{i}"
        case.mkdir(parents=True, exist_ok=True)
        for name in ("PATIENT_DICOM", "MASKS_DICOM"):
            with zipfile.ZipFile(case / f"{name}.zip", "w") as z:
                for p in sorted((tmp / name).rglob("*")):
                    z.write(p, p.relative_to(tmp).as_posix())
        _rmtree(tmp)
    return top


def make_zip_slip(path: Path) -> Path:
    """A zip whose member escapes the extraction folder (``../evil.txt``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("PATIENT_DICOM/image_0", b"not really dicom")
        z.writestr("../evil.txt", b"escaped")
    return path


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p)


# --------------------------------------------------------------------------- multi-sequence MRI classification
def make_mri_classification(root: Path, n: int = 4, sequences: Sequence[str] = ("t1", "t2", "t2fs"),
                            clinical: Mapping[str, Sequence] | None = None, shape=SHAPE) -> Path:
    """A DeSamba-style folder: ``images/{case}/{seq}.nii.gz`` + ``roi.nii.gz`` and ``labels.csv`` with columns
    case, label, one per sequence, roi, then clinical variables. Returns the CSV path."""
    clinical = dict(clinical if clinical is not None else {"age": [50 + 3 * i for i in range(n)],
                                                          "size_mm": [20.5 + i for i in range(n)]})
    rows = []
    for i in range(n):
        case = f"pat{i:03d}"
        ct, seg = tiny_liver(shape, seed=i)
        row = {"case": case, "label": ["benign", "malignant"][i % 2]}
        for k, s in enumerate(sequences):
            row[s] = f"images/{case}/{s}.nii.gz"
            write((np.clip(ct, -200, None) + 200 + 30 * k).astype(np.uint16), root / row[s])
        row["roi"] = f"images/{case}/roi.nii.gz"
        write((seg == 2).astype(np.uint8), root / row["roi"])
        row.update({k: v[i] for k, v in clinical.items()})
        rows.append(row)
    path = root / "labels.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def add_reformatted_slice(series_folder: Path, tags: Mapping[str, str]) -> Path:
    """Drop a coronal slice (another ImageOrientationPatient) with the same SeriesInstanceUID into an axial series."""
    img = to_image(np.zeros((1, SHAPE[1], SHAPE[2]), np.int16), origin=(0.0, 30.0, 0.0))
    return write_dicom_series(img, series_folder, tags, pattern="1-99.dcm", iop=[1, 0, 0, 0, 0, -1])[0]


def write_seg(slice_files: Sequence[Path], mask: np.ndarray, label: str, path: Path) -> Path:
    """A manual DICOM SEG (highdicom) of the binary ``mask`` ``(z, y, x)`` drawn on the series of ``slice_files``
    (slice ``k`` = ``slice_files[k]``), one segment named ``label``."""
    write_dicom_seg(mask.astype(np.uint8), slice_files, {1: label}, path, series_description=f"ROI {label}",
                    manufacturer="GE MEDICAL SYSTEMS")
    return path


GE_SERIES = (("arterial", "11_AP_Ax5.00mm", 11, "101500.000"), ("delayed", "31_EQP_Ax5.00mm", 31, "102030.000"))


def make_ge_export(root: Path, patient: str = "GE0001", shape=(12, 32, 32), reformatted: bool = True,
                   study_per_series: bool = True, frame_of_reference: bool = True) -> dict:
    """A GE-like anonymised multiphase liver CT export: ``root/{patient}/{series number}/IM-NN.dcm`` for the
    arterial (``11_AP_Ax5.00mm``) and equilibrium (``31_EQP_Ax5.00mm``) phases, each series with its own
    StudyInstanceUID (as some PACS exports and anonymisers write them) but one FrameOfReferenceUID, AccessionNumber
    and StudyDate; a reformatted (coronal) slice mixed into the arterial series; the liver drawn on the
    equilibrium phase and the tumour on the arterial phase as two DICOM SEG files under ``root/{patient}/ROI``.
    Returns the series folders, the SEG files and the truth ``seg`` (liver 1, tumour 2)."""
    out: dict = {"series": {}, "files": {}}
    seg = None
    for k, (phase, description, number, time) in enumerate(GE_SERIES):
        liver_hu, lesion_hu = PHASE_HU[phase]
        ct, seg = tiny_liver(shape, seed=7, liver_hu=liver_hu, lesion_hu=lesion_hu)
        folder = root / patient / str(number)
        tags = {"0008|0060": "CT", "0010|0020": patient, "0008|0070": "GE MEDICAL SYSTEMS",
                "0020|000d": uid(700, k + 1) if study_per_series else uid(700, 1), "0020|000e": uid(700, 10 + number),
                "0008|103e": description, "0008|0032": time, "0008|0031": time, "0020|0011": str(number),
                "0008|0050": "A2024011501", "0008|0020": "20240115", "0018|0010": "OMNIPAQUE 350"}
        if frame_of_reference:
            tags["0020|0052"] = uid(700, 99)
        files = write_dicom_series(to_image(ct), folder, tags, pattern="IM-{:02d}.dcm")
        if reformatted and phase == "arterial":
            add_reformatted_slice(folder, tags)
        out["series"][phase], out["files"][phase] = folder, files
    roi = root / patient / "ROI"
    out["liver"] = write_seg(out["files"]["delayed"], seg >= 1, "Liver", roi / "liver.dcm")
    out["tumour"] = write_seg(out["files"]["arterial"], seg == 2, "Tumour", roi / "tumour.dcm")
    out["seg"] = seg
    return out
