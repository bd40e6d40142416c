"""Write volumes as DICOM series, and a multiphase nnU-Net raw dataset as a TCGA-LIHC-like DICOM tree.

Used by the examples (and tests) to exercise ``nnunet-ext convert dicom-multiphase`` end to end on data with known
truth: the synthetic generator's inter-phase misalignment is exactly what the converter's registration must undo.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_ext.data.metadata import load_dataset_json, validate_raw_dataset

SERIES_DESCRIPTIONS = {"pre_contrast": "NON CONTRAST", "precontrast": "NON CONTRAST", "arterial": "ART PHASE 5mm",
                       "portal_venous": "PORTAL VENOUS", "delayed": "DELAY 3 MIN"}


def dicom_uid(*parts: int) -> str:
    """A syntactically valid UID under a fixed example root."""
    return "1.2.826.0.1.3680043.9.7433." + ".".join(str(int(p)) for p in parts)


def write_dicom_series(img: sitk.Image, folder: Path, tags: Mapping[str, str], pattern: str = "1-{:02d}.dcm",
                       iop: Sequence[float] | None = None) -> list[Path]:
    """One file per slice with SimpleITK's GDCM writer (int16 pixels). ``tags`` (``"gggg|eeee": value``) go into
    every slice; ImageOrientationPatient, ImagePositionPatient, InstanceNumber and SliceThickness are set per slice
    from the image geometry (or ``iop``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    iop = iop if iop is not None else list(d[:, 0]) + list(d[:, 1])
    out = []
    for k in range(img.GetSize()[2]):
        sl = img[:, :, k]
        meta = {"0020|0037": "\\".join(f"{v:.6f}" for v in iop), "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.4f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
                "0018|0050": f"{img.GetSpacing()[2]:.3f}", **tags}
        for key, value in meta.items():
            sl.SetMetaData(key, value)
        path = folder / pattern.format(k + 1 if "-" in pattern else k)
        writer.SetFileName(str(path))
        writer.Execute(sl)
        out.append(path)
    return out


def raw_dataset_to_dicom(raw_folder: str | os.PathLike, out_root: str | os.PathLike,
                         cases: Sequence[str] | None = None) -> Path:
    """Export a multiphase raw dataset (one channel per phase, ``phases`` metadata) as
    ``out_root/{case}/01-01-2000-CT ABDOMEN/{n}.000000-{DESCRIPTION}/1-NN.dcm``, the labels as
    ``out_root/masks/{case}.nii.gz`` (reference-phase grid) and ``out_root/manifest.csv`` with the columns
    ``case, phase, series, mask, label`` that ``convert dicom-multiphase --manifest`` reads. Returns the manifest."""
    raw, out = Path(raw_folder), Path(out_root)
    dj = load_dataset_json(str(raw / "dataset.json"))
    md = validate_raw_dataset(str(raw))
    if md is None or not md.phases:
        raise ValueError(f"{raw} declares no phases; export needs a multiphase dataset with nnunet_ext metadata")
    ending = dj["file_ending"]
    rows = []
    for ci, case in enumerate(sorted(cases or md.cases)):
        for pi, phase in enumerate(md.phases):
            img = sitk.Cast(sitk.ReadImage(str(raw / "imagesTr" / f"{case}_{pi:04d}{ending}")), sitk.sitkInt16)
            desc = SERIES_DESCRIPTIONS.get(phase, phase.upper())
            series = out / case / "01-01-2000-CT ABDOMEN" / f"{pi + 2}.000000-{desc}"
            write_dicom_series(img, series, {"0008|0060": "CT", "0010|0020": case, "0020|000d": dicom_uid(ci),
                                             "0020|000e": dicom_uid(ci, pi + 2), "0008|103e": desc,
                                             "0008|0032": f"1200{10 + 2 * pi:02d}.000", "0020|0011": str(pi + 2)})
            mask = ""
            if phase == md.reference_phase:
                mask = f"masks/{case}.nii.gz"
                (out / "masks").mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(sitk.ReadImage(str(raw / "labelsTr" / f"{case}{ending}")), str(out / mask))
            rec = md.cases.get(case)
            label = md.class_names[rec.class_index] if md.class_names and rec and rec.class_index is not None else ""
            rows.append({"case": case, "phase": phase, "series": str(series.relative_to(out)), "mask": mask,
                         "label": label})
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["case", "phase", "series", "mask", "label"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def displace_dicom_geometry(folder: str | os.PathLike, transform: sitk.Transform) -> None:
    """Rewrite ImagePositionPatient / ImageOrientationPatient of every slice so the series' anatomy is moved by the
    rigid ``transform`` (a point p now lies at ``transform(p)``); pixel data are untouched."""
    import pydicom

    r = np.asarray(transform.GetMatrix()).reshape(3, 3)
    for f in sorted(Path(folder).iterdir()):
        ds = pydicom.dcmread(f)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        ipp = transform.TransformPoint([float(v) for v in ds.ImagePositionPatient])
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([r @ iop[:3], r @ iop[3:]])]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.save_as(f)
