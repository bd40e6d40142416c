"""Label maps as DICOM SEG objects (highdicom), referencing the DICOM series they were drawn or predicted on.

:func:`write_dicom_seg` writes one segment per foreground label present: a ``(z, y, x)`` label map on the voxel grid
of a DICOM series (SimpleITK's read of that series: slice ``k`` is the ``k``-th file along the slice normal) becomes a
BINARY Segmentation whose frames reference the series' SOP instances, with the series' patient, study and frame of
reference. Labels are coded with SNOMED CT where the name says what they are (liver, lesion/tumour, ...), else as
tissue; the label name is the SegmentLabel. :func:`label_map_on_series` puts a label image (e.g. nnU-Net's
segmentation of the series converted to NIfTI) onto the series' grid first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_ext.conversion.common import ConversionError, error_summary, geometry_mismatch

_CODES = (  # (name pattern, SNOMED CT category attribute, type attribute) of pydicom's codes.SCT
    (re.compile(r"liver", re.I), "Organ", "Liver"),
    (re.compile(r"spleen", re.I), "Organ", "Spleen"),
    (re.compile(r"kidney", re.I), "Organ", "Kidney"),
    (re.compile(r"lesion|tumou?r|hcc|cancer|mass|nodule|metasta|neoplas|cyst", re.I),
     "MorphologicallyAbnormalStructure", "Neoplasm"),
)


def _codes(name: str):
    from pydicom.sr.codedict import codes

    for pattern, category, kind in _CODES:
        if pattern.search(name):
            return getattr(codes.SCT, category), getattr(codes.SCT, kind)
    return codes.SCT.Tissue, codes.SCT.Tissue


def series_datasets(files: Sequence[str | Path], notes: list[str] | None = None) -> list:
    """The headers of a series' slice files, in the given order (pixel data not read). Identifiers an anonymiser
    blanked are completed so that a SEG can reference the slices: SOPClassUID / SOPInstanceUID from the file meta
    information, a missing StudyInstanceUID / SeriesInstanceUID by a UID derived from the files (the same for
    every run); each completion is appended to ``notes``."""
    import pydicom
    from pydicom.uid import generate_uid

    out = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    derived: dict[str, str] = {}
    for f, ds in zip(files, out):
        meta = getattr(ds, "file_meta", None)
        for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"),
                              ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(key, "") or "").strip() and meta is not None and meta.get(meta_key):
                setattr(ds, key, meta.get(meta_key))
        for key in ("StudyInstanceUID", "SeriesInstanceUID"):
            if not str(ds.get(key, "") or "").strip():
                if key not in derived:
                    derived[key] = generate_uid(entropy_srcs=[key, *(str(Path(x).resolve()) for x in files)])
                    if notes is not None:
                        notes.append(f"the series ({Path(f).parent}) has no {key}; the DICOM SEG references the "
                                     f"derived {derived[key]} (viewers link it to the slices by SOPInstanceUID)")
                setattr(ds, key, derived[key])
    return out


def label_map_on_series(label: sitk.Image, series_image: sitk.Image, context: str) -> np.ndarray:
    """``label``'s voxels on the grid of ``series_image`` (``(z, y, x)`` uint8): the same array when the grids
    agree, else resampled (nearest neighbour, physical space) onto the series' grid."""
    if geometry_mismatch(series_image, label) is None:
        arr = sitk.GetArrayFromImage(label)
    else:
        moved = sitk.Resample(label, series_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              label.GetPixelID())
        arr = sitk.GetArrayFromImage(moved)
    if arr.min() < 0 or arr.max() > 255:
        raise ConversionError(f"{context}: label values {int(arr.min())}..{int(arr.max())} do not fit a DICOM SEG "
                              "(0-255).")
    return arr.astype(np.uint8)


def write_dicom_seg(label_zyx: np.ndarray, source_files: Sequence[str | Path], segments: Mapping[int, str],
                    path: str | Path, *, series_description: str = "Segmentation", series_number: int = 900,
                    algorithm: str | None = None, algorithm_version: str = "", manufacturer: str = "nnunet-ext",
                    context: str = "DICOM SEG", notes: list[str] | None = None) -> list[int]:
    """Write ``label_zyx`` (values = label values, slice ``k`` = ``source_files[k]``) as a DICOM SEG at ``path``.

    Args:
        segments: ``{label value: name}`` of the foreground labels; labels without voxels are left out.
        algorithm: the model that made the labels (AUTOMATIC segments; None: MANUAL, e.g. test data).
        notes: receives what :func:`series_datasets` had to complete.

    Returns:
        the label values written as segments (segment numbers 1.. in that order).

    Raises:
        ConversionError: the label map does not match the series (slice count, rows, columns), or highdicom refuses
            the series (named).
    """
    import highdicom as hd

    sources = series_datasets(source_files, notes)
    arr = np.asarray(label_zyx)
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if arr.shape != (len(sources), rows, cols):
        raise ConversionError(f"{context}: the label map has shape {arr.shape} (z, y, x) but the series has "
                              f"{len(sources)} slices of {rows}x{cols}. Fix: give the series the labels were made on.")
    present = [v for v in sorted(segments) if v > 0 and np.any(arr == v)]
    if not present:
        return []
    if algorithm is not None:
        from pydicom.sr.codedict import codes

        ident = hd.AlgorithmIdentificationSequence(name=algorithm, version=algorithm_version or "0",
                                                   family=codes.cid7162.ArtificialIntelligence)
        kind, extra = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, {"algorithm_identification": ident}
    else:
        kind, extra = hd.seg.SegmentAlgorithmTypeValues.MANUAL, {}
    descriptions, masks = [], []
    for number, value in enumerate(present, start=1):
        category, prop = _codes(segments[value])
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=str(segments[value])[:64], segmented_property_category=category,
            segmented_property_type=prop, algorithm_type=kind, **extra))
        masks.append(arr == value)
    pixels = np.stack(masks, axis=-1).astype(np.uint8)  # (frames, rows, columns, segments)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=manufacturer,
            manufacturer_model_name=algorithm or "manual", software_versions=algorithm_version or "0",
            device_serial_number="0", series_description=series_description[:64], omit_empty_frames=True)
    except Exception as e:  # noqa: BLE001 - highdicom raises many types for unsuitable source images
        raise ConversionError(f"{context}: highdicom cannot build a DICOM SEG on this series ({error_summary(e)}). "
                              "Fix: give an image series with complete geometry (ImagePositionPatient, "
                              "ImageOrientationPatient, PixelSpacing, FrameOfReferenceUID).") from e
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(path))
    return present


__all__ = ["label_map_on_series", "series_datasets", "write_dicom_seg"]
