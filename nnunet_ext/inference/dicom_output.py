"""DICOM in and DICOM SEG out for ``nnunet-ext predict``.

* **DICOM input**: ``-i`` may be a folder of DICOM series instead of ``CASE_XXXX.nii.gz`` files (models with one
  input channel). Every image series becomes one case (its PatientID, or folder name, plus the SeriesNumber), read
  as :mod:`nnunet_ext.conversion.dicom_io` reads series (reformatted and duplicate slices dropped, missing slices
  and cut-short files refused) and written to a temporary NIfTI input folder for nnU-Net.
* **DICOM SEG output** (``--dicom-seg``): each case's segmentation, as nnU-Net writes it on the input image's grid,
  becomes ``CASE_seg.dcm`` beside it: one segment per label present, referencing the slices of the source series
  (:func:`nnunet_ext.conversion.dicom_seg.write_dicom_seg`). The source series is the DICOM input's series, or for
  NIfTI input the series named with ``--dicom-reference`` (a series folder for a single case, or a CSV
  ``case,series`` for several; for a multiphase model, the reference phase the case was converted onto).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from nnunet_ext.inference.checks import InputError

SEG_SUFFIX = "_seg.dcm"


def is_dicom_input(input_folder: str, file_ending: str) -> bool:
    """Whether ``input_folder`` holds DICOM files rather than images with the model's file ending."""
    folder = Path(input_folder)
    if not folder.is_dir() or any(p.name.endswith(file_ending) for p in folder.iterdir()):
        return False
    for p in folder.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            try:
                with open(p, "rb") as f:
                    head = f.read(132)
            except OSError:
                continue
            if head[128:132] == b"DICM":
                return True
    return False


def _series_context(folder: Path):
    from nnunet_ext.conversion.common import ConversionError
    from nnunet_ext.conversion.dicom_io import scan_dicom

    try:
        return scan_dicom(folder, f"DICOM input {folder}")
    except ConversionError as e:
        raise InputError(str(e)) from None


def dicom_input_cases(input_folder: str, dataset_json: dict, work_folder: str) -> dict:
    """Write every image series under ``input_folder`` as ``work_folder/CASE_0000<ending>``; returns
    ``{case: DicomSeries}``. Models with more than one channel are refused (convert multiphase studies first)."""
    import SimpleITK as sitk

    from nnunet_ext.conversion.common import ConversionError, safe_case_id
    from nnunet_ext.conversion.dicom_io import read_series

    n_channels = len(dataset_json["channel_names"])
    if n_channels != 1:
        raise InputError(f"{input_folder} holds DICOM files, but this model takes {n_channels} channels "
                         f"({list(dataset_json['channel_names'].values())}). Fix: convert the studies with `nnunet-ext "
                         "convert dicom-multiphase` (phases registered onto the reference phase), predict the "
                         "converted imagesTs, and pass --dicom-reference with the reference phase's series for "
                         "--dicom-seg.")
    series = [s for s in _series_context(Path(input_folder)) if not s.is_localizer]
    if not series:
        raise InputError(f"{input_folder} holds no DICOM image series (localisers and non-image objects are "
                         "ignored). Fix: pass the folder of the series to segment.")
    ending = dataset_json["file_ending"]
    os.makedirs(work_folder, exist_ok=True)
    cases: dict = {}
    for s in sorted(series, key=lambda s: (s.patient_id, s.series_number or 0, str(s.folder))):
        base = safe_case_id(s.patient_id or s.folder.name)
        case = f"{base}_s{s.series_number}" if s.series_number is not None and len(series) > 1 else base
        k = 2
        while case in cases:
            case, k = f"{base}_{k}", k + 1
        try:
            image = read_series(s, f"DICOM input series {s.folder}")
        except ConversionError as e:
            raise InputError(str(e)) from None
        for d in s.dropped:
            print(f"WARNING: DICOM input {s.folder}: dropped slice {d}")
        sitk.WriteImage(image, os.path.join(work_folder, f"{case}_0000{ending}"), True)
        cases[case] = s
        print(f"DICOM input: series {s.folder} ({s.description!r}, {len(s.files)} slices) -> case {case}")
    return cases


def reference_series(reference: str, cases: list[str]) -> dict:
    """``--dicom-reference``: ``{case: DicomSeries}`` from one series folder (a single case) or a CSV
    ``case,series`` (series folders relative to the CSV). Every case must get exactly one series."""
    path = Path(reference)
    if path.is_file() and path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        low = {k.strip().lower(): k for k in (rows[0] if rows else {})}
        if "case" not in low or "series" not in low:
            raise InputError(f"--dicom-reference {path} needs the columns case and series. Fix: one row per case "
                             "with the DICOM series folder its segmentation refers to.")
        folders = {r[low["case"]].strip(): (path.parent / r[low["series"]].strip()) for r in rows}
    elif path.is_dir():
        if len(cases) != 1:
            raise InputError(f"--dicom-reference {path} is one series folder, but {len(cases)} cases are predicted. "
                             "Fix: give a CSV with the columns case and series.")
        folders = {cases[0]: path}
    else:
        raise InputError(f"--dicom-reference {path} is neither a DICOM series folder nor a CSV. Fix: check the path.")
    missing = [c for c in cases if c not in folders]
    if missing:
        raise InputError(f"--dicom-reference {path} names no series for case(s) {', '.join(missing[:10])}. Fix: add "
                         "them.")
    out = {}
    for case in cases:
        folder = folders[case]
        if not folder.is_dir():
            raise InputError(f"--dicom-reference: the series folder {folder} of case {case!r} does not exist.")
        series = [s for s in _series_context(folder) if not s.is_localizer]
        if len(series) != 1:
            raise InputError(f"--dicom-reference: {folder} (case {case!r}) holds {len(series)} image series. Fix: "
                             "give the folder of the one series the case was made from.")
        out[case] = series[0]
    return out


def segment_names(dataset_json: dict) -> dict[int, str]:
    """``{label value: name}`` of the foreground labels (region-based label definitions are refused)."""
    out = {}
    for name, value in dataset_json["labels"].items():
        if isinstance(value, (list, tuple)):
            raise InputError("--dicom-seg: this model predicts overlapping regions (region-based labels), which a "
                             "label-map DICOM SEG cannot hold yet. Fix: predict without --dicom-seg.")
        if int(value) > 0:
            out[int(value)] = str(name)
    return out


def write_case_segs(output_folder: str, sources: dict, dataset_json: dict, model_folder: str) -> list[str]:
    """``CASE_seg.dcm`` for every case of ``sources`` ({case: DicomSeries}) from ``output_folder/CASE<ending>``;
    returns the files written."""
    from importlib.metadata import PackageNotFoundError, version

    import SimpleITK as sitk

    from nnunet_ext.conversion.common import ConversionError
    from nnunet_ext.conversion.dicom_io import read_series
    from nnunet_ext.conversion.dicom_seg import label_map_on_series, write_dicom_seg

    try:
        software = version("nnunet-ext")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree without installation
        software = "unknown"
    names = segment_names(dataset_json)
    ending = dataset_json["file_ending"]
    algorithm = f"nnunet-ext {os.path.basename(os.path.normpath(model_folder))}"
    written = []
    for case, series in sources.items():
        seg_file = os.path.join(output_folder, case + ending)
        out = os.path.join(output_folder, case + SEG_SUFFIX)
        context = f"--dicom-seg, case {case!r}"
        notes: list[str] = []
        try:
            series_image = read_series(series, context)
            label = label_map_on_series(sitk.ReadImage(seg_file), series_image, context)
            values = write_dicom_seg(label, series.files, names, out, series_description=f"{algorithm} segmentation",
                                     algorithm=algorithm, algorithm_version=software, context=context,
                                     notes=notes)
        except ConversionError as e:
            raise InputError(str(e)) from None
        for note in notes:
            print(f"note: {context}: {note}")
        if values:
            written.append(out)
        else:
            print(f"note: {context}: no foreground label was predicted; no DICOM SEG written")
    return written


__all__ = ["SEG_SUFFIX", "dicom_input_cases", "is_dicom_input", "reference_series", "segment_names",
           "write_case_segs"]
