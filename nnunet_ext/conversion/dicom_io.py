"""DICOM reading shared by the DICOM converters: header scan, series grouping and slice checks, SimpleITK series
reading (any transfer syntax GDCM decodes, JPEG2000 included) and DICOM SEG masks through highdicom.

Headers are read with pydicom (``stop_before_pixels``); slices are grouped by SeriesInstanceUID (by folder when it is
empty, as in anonymised exports), slices with another ImageOrientationPatient than the majority (a coronal localiser or
reformatted slice mixed into an axial series) or a duplicate position are dropped and reported, and the rest are
sorted along the slice normal before SimpleITK's ``ImageSeriesReader`` reads them. Images are SimpleITK images
(arrays ``(z, y, x)``) in LPS physical space.

A file that parses as DICOM but is not a whole image (a header cut short: no Rows, or no SOPClassUID / Modality /
SeriesInstanceUID, which every DICOM object has) is an invalid slice, never skipped as a "non-image" file: a series
would otherwise lose its first or last slice without a word. Real non-image objects (SEG, RTSTRUCT, SR, ...) are
recognised by Modality or SOP class; DICOM SEG files are listed (:class:`SegFile`) for the converters' masks.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_ext.conversion.common import ConversionError, error_summary, most_common

NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC",
                                  "OT_REPORT"})
# files that are obviously not DICOM and are ignored silently (anything else that fails to parse is "corrupt")
_NOT_DICOM_SUFFIXES = frozenset({".txt", ".xml", ".json", ".csv", ".zip", ".jpg", ".jpeg", ".png", ".pdf", ".md",
                                 ".html", ".nii", ".gz", ".nrrd", ".mha", ".mhd", ".raw", ".py", ".log", ".ini"})


def _require_pydicom():
    try:
        import pydicom
    except ModuleNotFoundError as e:  # pragma: no cover - the dicom extra is a declared dependency
        raise ConversionError("reading DICOM needs pydicom and highdicom. Fix: pip install 'nnunet-ext[dicom]'.") from e
    return pydicom


@dataclass
class DicomSeries:
    """One image series: slice files sorted along the normal and the header fields the converters use."""

    uid: str
    files: list[Path]
    sop_uids: list[str]
    modality: str = ""
    description: str = ""
    patient_id: str = ""
    study_uid: str = ""
    series_number: int | None = None
    acquisition_time: float | None = None  # seconds after midnight (AcquisitionTime, else SeriesTime)
    contrast_agent: str = ""
    contrast_start_time: float | None = None
    image_type: str = ""
    frame_of_reference_uid: str = ""
    accession_number: str = ""
    study_date: str = ""
    dropped: list[str] = field(default_factory=list)  # "file: reason"
    gaps: list[str] = field(default_factory=list)  # irregular slice spacing (missing slices)

    @property
    def folder(self) -> Path:
        return Path(*_common_parts([f.parent for f in self.files])) if self.files else Path()

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type.upper() or len(self.files) < 3


def _common_parts(paths: list[Path]) -> tuple[str, ...]:
    parts = paths[0].parts
    for p in paths[1:]:
        n = 0
        while n < min(len(parts), len(p.parts)) and parts[n] == p.parts[n]:
            n += 1
        parts = parts[:n]
    return parts


def dicom_time(value) -> float | None:
    """DICOM TM ``HHMMSS.FFFFFF`` -> seconds after midnight (None when absent or malformed)."""
    s = str(value or "").strip()
    if len(s) < 2 or not s[:2].isdigit():
        return None
    try:
        hh, mm = int(s[:2]), int(s[2:4] or 0)
        ss = float(s[4:] or 0)
    except ValueError:
        return None
    return hh * 3600 + mm * 60 + ss


@dataclass
class SegFile:
    """A DICOM SEG object found by :func:`scan_dicom`: its file, the SeriesInstanceUIDs it references and its
    segment labels ``{segment number: SegmentLabel}``."""

    path: Path
    referenced_series: list[str]
    segments: dict[int, str]
    frame_of_reference_uid: str = ""
    patient_id: str = ""


def scan_dicom(paths: Path | list[Path], context: str, invalid: list[tuple[Path, str]] | None = None,
               segs: list[SegFile] | None = None) -> list[DicomSeries]:
    """All image series in ``paths`` (files or folders, searched recursively).

    Non-image objects (SEG, RTSTRUCT, SR, ...) and non-DICOM side files are ignored (DICOM SEG files are appended to
    ``segs`` when given). A file with a DICOM-like name (``.dcm``, ``.ima``, no suffix) that cannot be parsed, or
    that is not a whole image (module docstring), raises a :class:`ConversionError` naming ``context`` and the file,
    or is appended to ``invalid`` as ``(file, reason)`` when that list is given.
    """
    pydicom = _require_pydicom()
    files = []
    for p in [paths] if isinstance(paths, Path) else paths:
        files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    groups: dict[str, list[tuple[Path, object]]] = defaultdict(list)
    for f in files:
        if f.name.startswith(".") or f.suffix.lower() in _NOT_DICOM_SUFFIXES or f.name.upper() == "DICOMDIR":
            continue
        ds = _read_header(pydicom, f)
        problem = "not a readable DICOM file (corrupt or truncated)" if ds is None else _incomplete(ds)
        if problem is not None:
            if invalid is None:
                raise ConversionError(f"{context}: {f} is {problem}. Fix: re-export or re-download the series, or "
                                      "remove the file (or pass --skip-invalid to leave the case out).")
            invalid.append((f, problem))
            continue
        modality = str(ds.get("Modality", "")).upper()
        if modality == "SEG" and segs is not None:
            segs.append(_seg_file(f, ds))
        if modality in NON_IMAGE_MODALITIES or "Rows" not in ds:
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip() or f"<no SeriesInstanceUID>:{f.parent}"
        groups[uid].append((f, ds))
    return [_make_series(uid, items) for uid, items in groups.items()]


def _incomplete(ds) -> str | None:
    """Why a parsed file is not a whole DICOM object (None if it is one, image or not)."""
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in NON_IMAGE_MODALITIES:
        return None
    sop = str(ds.get("SOPClassUID", "") or "")
    try:
        from pydicom.uid import UID

        sop_name = UID(sop).name if sop else ""
    except Exception:  # noqa: BLE001 - an unknown UID
        sop_name = sop
    if "Rows" in ds and "Columns" in ds:
        return None
    if "Image Storage" in sop_name:
        return f"an image ({sop_name}) whose header is cut short (no Rows/Columns)"
    missing = [k for k in ("SOPClassUID", "Modality", "SeriesInstanceUID") if not str(ds.get(k, "") or "").strip()]
    if missing:
        return f"a DICOM file whose header is cut short or incomplete (no {', '.join(missing)})"
    return None  # a whole non-image object (e.g. a report of an unlisted modality)


def _seg_file(f: Path, ds) -> SegFile:
    refs = [str(r.get("SeriesInstanceUID", "")) for r in ds.get("ReferencedSeriesSequence", [])]
    segments = {int(s.get("SegmentNumber", i + 1)): str(s.get("SegmentLabel", "") or f"segment {i + 1}")
                for i, s in enumerate(ds.get("SegmentSequence", []))}
    return SegFile(f, [r for r in refs if r], segments, str(ds.get("FrameOfReferenceUID", "") or "").strip(),
                   str(ds.get("PatientID", "") or "").strip())


def _read_header(pydicom, f: Path):
    try:
        return pydicom.dcmread(str(f), stop_before_pixels=True)
    except pydicom.errors.InvalidDicomError:
        pass
    except Exception:  # noqa: BLE001 - any parser failure means a broken file
        return None
    try:
        ds = pydicom.dcmread(str(f), stop_before_pixels=True, force=True)
        return ds if "SOPClassUID" in ds or "ImagePositionPatient" in ds else None
    except Exception:  # noqa: BLE001
        return None


def _make_series(uid: str, items: list[tuple[Path, object]]) -> DicomSeries:
    first = items[0][1]
    series = DicomSeries(
        uid=uid, files=[], sop_uids=[], modality=str(first.get("Modality", "")).upper(),
        description=str(first.get("SeriesDescription", "") or "").strip(),
        patient_id=str(first.get("PatientID", "") or "").strip(),
        study_uid=str(first.get("StudyInstanceUID", "") or "").strip(),
        series_number=int(first.SeriesNumber) if str(first.get("SeriesNumber", "")).strip().lstrip("-").isdigit()
        else None,
        acquisition_time=min((t for _, d in items if (t := dicom_time(d.get("AcquisitionTime"))) is not None),
                             default=dicom_time(first.get("SeriesTime"))),
        contrast_agent=str(first.get("ContrastBolusAgent", "") or "").strip(),
        contrast_start_time=dicom_time(first.get("ContrastBolusStartTime")),
        image_type="\\".join(str(v) for v in (first.get("ImageType") or [])),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or "").strip(),
        accession_number=str(first.get("AccessionNumber", "") or "").strip(),
        study_date=str(first.get("StudyDate", "") or "").strip())
    if len(items) == 1:
        series.files, series.sop_uids = [items[0][0]], [str(first.get("SOPInstanceUID", ""))]
        return series
    geo = []
    for f, ds in items:
        iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
        if iop is None or ipp is None or len(iop) != 6 or len(ipp) != 3:
            series.dropped.append(f"{f.name}: no ImageOrientationPatient/ImagePositionPatient")
            continue
        geo.append((f, ds, tuple(round(float(v), 3) for v in iop), np.asarray(ipp, dtype=float)))
    if not geo:
        return series
    main = most_common(g[2] for g in geo)
    normal = np.cross(main[:3], main[3:])
    kept = []
    for f, ds, iop, ipp in geo:
        if iop != main:
            series.dropped.append(f"{f.name}: orientation {list(iop)} differs from the series' {list(main)} "
                                  "(a localiser or reformatted slice)")
        else:
            kept.append((float(ipp @ normal), _instance(ds), f, ds))
    kept.sort(key=lambda k: (k[0], k[1]))
    positions = []
    for pos, _, f, ds in kept:
        if positions and abs(pos - positions[-1]) < 1e-3:
            series.dropped.append(f"{f.name}: duplicate slice position {pos:.2f} mm")
            continue
        positions.append(pos)
        series.files.append(f)
        series.sop_uids.append(str(ds.get("SOPInstanceUID", "")))
    steps = np.diff(positions)
    if len(steps) > 1 and steps.max() > 1.5 * np.median(steps):
        k = int(np.argmax(steps))
        series.gaps.append(f"{steps[k]:.2f} mm between {series.files[k].name} and {series.files[k + 1].name} where "
                           f"the series' slice spacing is {np.median(steps):.2f} mm")
    return series


def _instance(ds) -> int:
    try:
        return int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def read_series(series: DicomSeries, context: str) -> sitk.Image:
    """Read a scanned series with SimpleITK (``(z, y, x)`` array, LPS geometry).

    Raises:
        ConversionError: an empty series, missing slices, or a file GDCM cannot decode (named).
    """
    if not series.files:
        raise ConversionError(f"{context}: the series has no readable image slices (empty series"
                              f"{'; dropped: ' + '; '.join(series.dropped) if series.dropped else ''}). Fix: point "
                              "the manifest at a folder that holds the image files.")
    if series.gaps:
        raise ConversionError(f"{context}: slices are missing in series {series.description or series.uid} "
                              f"({series.gaps[0]}). Fix: re-export the complete series.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as e:
        bad = _find_unreadable(series.files)
        raise ConversionError(f"{context}: cannot read {bad or 'the series'} ({error_summary(e)}). The file is corrupt "
                              "or uses an unsupported compression. Fix: re-export or re-download the series.") from e
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    return image


def _find_unreadable(files: list[Path]) -> Path | None:
    for f in files:
        try:
            sitk.ReadImage(str(f))
        except RuntimeError:
            return f
    return None


def read_dicom_seg(path: Path, context: str) -> tuple[list[tuple[int, str, sitk.Image]], list[str]]:
    """A DICOM SEG as one binary image per segment ``[(segment number, SegmentLabel, uint8 image)]`` in physical
    space (overlapping segments are kept apart), and the SeriesInstanceUIDs it references."""
    _require_pydicom()
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
        volume = seg.get_volume(combine_segments=False, relabel=False)
        numbers = [int(n) for n in seg.get_segment_numbers()]
    except Exception as e:  # noqa: BLE001 - highdicom raises many types for bad SEGs
        raise ConversionError(f"{context}: cannot read DICOM SEG {path} ({error_summary(e)}). Fix: re-export the "
                              "segmentation.") from e
    arr = np.asarray(volume.array)
    if arr.ndim == 3:
        arr = arr[..., None]
    affine = np.asarray(volume.affine, dtype=float)
    axes = [affine[:3, 2], affine[:3, 1], affine[:3, 0]]  # array (slice, row, col) -> SimpleITK (x=col, y=row, z)
    spacing = [float(np.linalg.norm(a)) for a in axes]
    direction = np.stack([a / s for a, s in zip(axes, spacing)], axis=1)
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    out = []
    for k, number in enumerate(numbers):
        image = sitk.GetImageFromArray((arr[..., k] > 0).astype(np.uint8))
        image.SetSpacing(spacing)
        image.SetOrigin([float(v) for v in affine[:3, 3]])
        image.SetDirection([float(v) for v in direction.ravel()])
        out.append((number, names.get(number, f"segment {number}"), image))
    refs = [str(r.SeriesInstanceUID) for r in seg.get("ReferencedSeriesSequence", [])]
    return out, refs


def is_dicom_seg(path: Path) -> bool:
    if path.is_dir() or path.suffix.lower() not in {".dcm", ""}:
        return False
    pydicom = _require_pydicom()
    try:
        return str(pydicom.dcmread(str(path), stop_before_pixels=True).get("Modality", "")).upper() == "SEG"
    except Exception:  # noqa: BLE001
        return False
