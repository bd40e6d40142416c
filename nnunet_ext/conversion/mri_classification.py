"""Multi-sequence MRI classification datasets (DeSamba style: one CSV row per case) -> nnU-Net v2 + case metadata.

Layout: a folder and a CSV with a case column, a class label column, one column per MRI sequence (image paths relative
to the folder, e.g. ``t1, t2, t2fs``), a lesion ROI mask column and clinical columns (age, marker values, ...).
Output: one channel per sequence (``{case}_{k:04d}.nii.gz`` in sequence-column order; channel names are the sequence
names, so nnU-Net z-scores each image), the ROI as label 1 (``lesion``; any non-zero ROI value), and the
``nnunet_ext`` metadata block with ``classification`` (class names from the distinct labels or ``classes``,
``lesion_labels`` [1]) and ``tabular`` (the clinical columns as features; NaN or non-numeric values are an error
naming the case and column unless ``impute="median"``). Sequences whose grid differs from the first sequence are
resampled (linear) onto it in physical space; so is an ROI on another grid (nearest neighbour), with a warning giving
the foreground voxel count before and after, and an error when a non-empty ROI has no voxel left (it lies outside the
image). A blank class label cell marks the case unlabeled (``class: null``), which is reported as a warning naming the
cases. Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_ext.conversion.common import (
    ConversionError,
    ConversionJob,
    ConversionResult,
    Stage,
    add_common_arguments,
    check_unique_cases,
    existing_path,
    geometry_mismatch,
    read_image,
    safe_case_id,
    with_geometry_of,
)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_MISSING = {"", "na", "nan", "n/a", "none", "null", "?", "-"}


def _is_image_column(rows: list[dict], col: str) -> bool:
    values = [str(r.get(col) or "").strip() for r in rows]
    return bool(values) and any(values) and all(v.lower().endswith(IMAGE_SUFFIXES) for v in values if v)


# how spreadsheets, pandas and R write an empty cell; never taken as a class name unless --classes names it
MISSING_VALUE_SPELLINGS = frozenset({"nan", "na", "n/a", "none", "null", "#n/a", "<na>", "missing"})


def read_table(csv_path: Path, case_column: str, label_column: str, roi_column: str,
               sequences: Sequence[str] | None, clinical: Sequence[str] | None
               ) -> tuple[list[dict], list[str], list[str]]:
    """Rows, sequence columns and clinical columns of the CSV (sequences: columns whose values are image paths)."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = [{k.strip(): v for k, v in r.items() if k is not None} for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConversionError(f"cannot read {csv_path} ({e}). Fix: give a CSV with a header row.") from e
    if not rows:
        raise ConversionError(f"{csv_path} has no rows. Fix: one row per case.")
    header = list(rows[0])
    missing = [c for c in (case_column, label_column, roi_column) if c not in header]
    if missing:
        raise ConversionError(f"{csv_path.name} lacks the column(s) {missing} (header {header}). Fix: rename the "
                              "columns or pass --case-column / --label-column / --roi-column.")
    reserved = {case_column, label_column, roi_column}
    seqs = list(sequences) if sequences else [c for c in header if c not in reserved and _is_image_column(rows, c)]
    bad = [s for s in seqs if s not in header]
    if bad or not seqs:
        raise ConversionError(f"{csv_path.name}: sequence column(s) {bad or '(none found)'} not in the header "
                              f"{header}. Fix: pass --sequences with column names holding image paths.")
    clin = list(clinical) if clinical is not None else [c for c in header if c not in reserved and c not in seqs]
    bad = [c for c in clin if c not in header]
    if bad:
        raise ConversionError(f"{csv_path.name}: clinical column(s) {bad} not in the header {header}.")
    return rows, seqs, clin


def clinical_matrix(rows: list[dict], cases: list[str], columns: list[str], impute: str | None
                    ) -> tuple[np.ndarray, list[str]]:
    """``(n_cases, n_columns)`` float matrix; NaN / non-numeric -> :class:`ConversionError` naming every case and
    column, or the column median with ``impute="median"`` (non-numeric text is never imputed)."""
    mat = np.full((len(rows), len(columns)), np.nan)
    text, empty = [], []
    for i, (case, row) in enumerate(zip(cases, rows)):
        for j, col in enumerate(columns):
            raw = str(row.get(col) or "").strip()
            if raw.lower() in _MISSING:
                empty.append(f"{case!r}/{col!r}")
                continue
            try:
                value = float(raw)
            except ValueError:
                text.append(f"{case!r}/{col!r} ({raw!r})")
                continue
            if math.isfinite(value):
                mat[i, j] = value
            else:
                empty.append(f"{case!r}/{col!r}")
    if text:
        raise ConversionError(f"non-numeric clinical values: {', '.join(text[:20])}. Fix: encode them as numbers "
                              "(e.g. sex as 0/1), or leave the column out with --clinical.")
    notes = []
    if empty:
        if impute != "median":
            raise ConversionError(f"missing (NaN/empty) clinical values: {', '.join(empty[:20])}"
                                  f"{' ...' if len(empty) > 20 else ''}. Fix: fill them in, or pass --impute median.")
        for j, col in enumerate(columns):
            holes = np.isnan(mat[:, j])
            if holes.all():
                raise ConversionError(f"clinical column {col!r} has no value in any case; it cannot be imputed. "
                                      "Fix: leave it out with --clinical.")
            if holes.any():
                med = float(np.nanmedian(mat[:, j]))
                mat[holes, j] = med
                notes.append(f"imputed {int(holes.sum())} missing value(s) of {col!r} with the median {med:g}")
    return mat, notes


def convert_mri_classification(source: str | Path, dataset_id: int, csv_path: str | Path | None = None,
                               output: str | Path | None = None, name: str = "MRIClassification",
                               sequences: Sequence[str] | None = None, clinical: Sequence[str] | None = None,
                               classes: Sequence[str] | None = None, impute: str | None = None,
                               case_column: str = "case", label_column: str = "label", roi_column: str = "roi",
                               overwrite: bool = False, skip_invalid: bool = False,
                               licence: str | None = None) -> ConversionResult:
    """Convert a folder + CSV to ``Dataset{id}_{name}`` with classification and tabular metadata.

    Args:
        csv_path: the table (default: the only ``*.csv`` in ``source``); relative image paths are relative to
            ``source``.
        sequences: sequence columns in channel order (default: every column whose values are image paths).
        clinical: clinical feature columns (default: all remaining columns; ``[]`` for none).
        classes: class names (default: the sorted distinct labels); an empty label marks a case unlabeled (warned).
        impute: None (missing clinical values are an error) or ``"median"``.
    """
    from nnunet_ext.data.metadata import CaseRecord, DatasetMetadata

    source = existing_path(source, "MRI classification source", folder=True)
    if csv_path is None:
        found = sorted(source.glob("*.csv"))
        if len(found) != 1:
            raise ConversionError(f"{source} holds {len(found)} CSV files; pass the table with --csv.")
        csv_path = found[0]
    csv_path = existing_path(csv_path if Path(csv_path).exists() else source / csv_path, "CSV", folder=False)
    if impute not in (None, "median"):
        raise ConversionError(f"impute={impute!r} is not supported. Fix: use --impute median or leave it out.")
    rows, seqs, clin = read_table(csv_path, case_column, label_column, roi_column, sequences, clinical)
    cases = [safe_case_id(r[case_column]) for r in rows]
    check_unique_cases(((c, f"row {i + 2}") for i, c in enumerate(cases)), f"one row per case in {csv_path.name}.")
    labels = [str(r.get(label_column) or "").strip() or None for r in rows]
    missing_like = sorted({f"{c!r} ({lab!r})" for c, lab in zip(cases, labels)
                           if lab and lab.lower() in MISSING_VALUE_SPELLINGS and lab not in (classes or ())})
    if missing_like:
        raise ConversionError(f"{csv_path.name}: class label cells that read like a missing value exported by a "
                              f"spreadsheet or pandas: {', '.join(missing_like)}. Fix: leave the cell blank for an "
                              "unlabeled case, or name the label in --classes if it really is a class.")
    class_names = list(classes) if classes else sorted({lab for lab in labels if lab})
    unknown = sorted({f"{c!r} ({lab!r})" for c, lab in zip(cases, labels) if lab and lab not in class_names})
    if unknown:
        raise ConversionError(f"labels not in the class list {class_names}: {', '.join(unknown)}. Fix: add them to "
                              "--classes or correct the CSV.")
    features, notes = clinical_matrix(rows, cases, clin, impute) if clin else (np.zeros((len(rows), 0)), [])
    inputs = [csv_path] + [p for r in rows for c in [*seqs, roi_column] if (p := _path(r.get(c), source)).is_file()]
    options = {"sequences": seqs, "clinical": clin, "classes": class_names, "impute": impute,
               "skip_invalid": skip_invalid}
    job = ConversionJob("mri-classification", dataset_id, name, output, overwrite, inputs, source, options,
                        skip_invalid, licence)
    by_case = {c: (r, lab, f) for c, r, lab, f in zip(cases, rows, labels, features)}

    def build(stage: Stage) -> None:
        for note in notes:
            stage.warn(note)

        def one(case: str, item) -> None:
            row = item[0]
            images = []
            for col in seqs:
                path = _path(row.get(col), source)
                img = read_image(path, case, f"{col} image")
                if images and geometry_mismatch(images[0], img):
                    covered = _coverage(img, images[0])
                    if covered == 0:
                        raise ConversionError(
                            f"case {case!r}: the {col} image {path} lies entirely outside the {seqs[0]} image in "
                            f"physical space ({seqs[0]}: {_grid(images[0])}; {col}: {_grid(img)}), so resampling "
                            f"it onto the {seqs[0]} grid would give an empty channel. Fix: if both were acquired "
                            "together and only a header (spacing/origin) is wrong, correct it; otherwise supply the "
                            f"{col} of this case, or pass --skip-invalid to leave the case out.")
                    img = sitk.Resample(img, images[0], sitk.Transform(), sitk.sitkLinear, 0.0, img.GetPixelID())
                    partial = f"; it covers only {covered:.0%} of that grid (zeros elsewhere)" if covered < 0.5 else ""
                    stage.warn(f"case {case!r}: {col} was resampled onto the {seqs[0]} grid{partial}")
                images.append(with_geometry_of(img, images[0]) if images else img)
            roi_path = _path(row.get(roi_column), source)
            label = _roi_on_grid(stage, case, read_image(roi_path, case, "roi mask"), roi_path, images[0], seqs[0])
            stage.write_case(case, images, label)

        stage.for_each(list(by_case.items()), one, "MRI classification")
        unlabeled = [c for c in stage.cases if not by_case[c][1]]
        if class_names and unlabeled:
            stage.warn(f"{len(unlabeled)} case(s) have a blank {label_column!r} cell and are written as unlabeled "
                       "(class None: left out of the classification loss and metrics, still used for segmentation): "
                       f"{_listing(unlabeled)}. Fix: fill in their class in {csv_path.name} unless they are meant to "
                       "be unlabeled.")
        records = {c: CaseRecord(class_index=class_names.index(by_case[c][1]) if by_case[c][1] else None,
                                 tabular=tuple(float(v) for v in by_case[c][2]) if clin else None)
                   for c in stage.cases}
        metadata = DatasetMetadata(class_names=class_names or None, lesion_labels=[1] if class_names else None,
                                   tabular_features=list(clin) or None, cases=records)
        stage.write_dataset_json({k: s for k, s in enumerate(seqs)}, {"background": 0, "lesion": 1}, metadata,
                                 dataset_name=name, converted_by="nnunet-ext convert mri-classification",
                                 description=f"multi-sequence MRI ({', '.join(seqs)}) with case-level classes")

    return job.run(build)


def _coverage(moving: sitk.Image, reference: sitk.Image) -> float:
    """Fraction of ``reference``'s voxels that lie inside ``moving``'s extent in physical space."""
    inside = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(moving)
    on_ref = sitk.Resample(inside, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return float(np.mean(sitk.GetArrayViewFromImage(on_ref)))


def _roi_on_grid(stage: Stage, case: str, roi: sitk.Image, roi_path: Path, image: sitk.Image, image_name: str
                 ) -> sitk.Image:
    """The ROI (any non-zero value) as a uint8 0/1 label on ``image``'s grid. An ROI on another grid is resampled
    (nearest neighbour, in physical space) with a warning; a non-empty ROI left with no voxel raises."""
    if roi.GetDimension() != image.GetDimension() or roi.GetNumberOfComponentsPerPixel() != 1:
        raise ConversionError(f"case {case!r}: roi mask {roi_path} is not a {image.GetDimension()}D single-channel "
                              f"label image like the {image_name} image. Fix: export the ROI as one label map, or "
                              "pass --skip-invalid to leave the case out.")
    diff = geometry_mismatch(image, roi)
    if diff is None:
        mask = (sitk.GetArrayViewFromImage(roi) != 0).astype(np.uint8)
    else:
        before = int(np.count_nonzero(sitk.GetArrayViewFromImage(roi)))
        grids = f"{image_name} image: {_grid(image)}; ROI: {_grid(roi)}"
        resampled = sitk.Resample(roi, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        mask = (sitk.GetArrayViewFromImage(resampled) != 0).astype(np.uint8)
        after = int(np.count_nonzero(mask))
        if before and not after:
            raise ConversionError(
                f"case {case!r}: roi mask {roi_path} has {before} foreground voxel(s) but none is left after "
                f"resampling it onto the {image_name} image grid: its foreground lies outside the image in physical "
                f"space ({grids}). Fix: if the ROI was drawn on this image and only its header (spacing/origin) is "
                "wrong, give it the image's header (e.g. SimpleITK CopyInformation); otherwise supply the ROI of this "
                "image, or pass --skip-invalid to leave the case out.")
        stage.warn(f"case {case!r}: roi mask {roi_path.name} is on another grid than the {image_name} image "
                   f"({diff}) and was resampled onto it in physical space (nearest neighbour): {before} -> {after} "
                   f"foreground voxel(s). Check that the ROI belongs to this image ({grids}).")
    label = sitk.GetImageFromArray(mask)
    label.CopyInformation(image)
    return label


def _grid(image: sitk.Image) -> str:
    """Size, spacing, origin (and a non-identity direction) of ``image``, for messages."""
    def fmt(values) -> str:
        return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

    identity = np.allclose(image.GetDirection(), np.eye(image.GetDimension()).ravel(), atol=1e-3)
    return (f"size {image.GetSize()}, spacing {fmt(image.GetSpacing())} mm, origin {fmt(image.GetOrigin())} mm"
            + ("" if identity else f", direction {fmt(image.GetDirection())}"))


def _listing(names: Sequence[str], n: int = 20) -> str:
    return ", ".join(repr(c) for c in names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _path(value, source: Path) -> Path:
    p = Path(str(value or "").strip()).expanduser()
    return p if p.is_absolute() else source / p


def _csv_list(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def add_parser(sub) -> None:
    p = sub.add_parser("mri-classification", help="multi-sequence MRI + CSV (DeSamba style) -> nnU-Net v2 with "
                                                  "classification and clinical metadata",
                       description="One channel per sequence column, the ROI as label 1, classes and clinical "
                                   "features into the nnunet_ext metadata.")
    add_common_arguments(p, "MRIClassification", source_help="folder with the images (CSV paths are relative to it)")
    p.add_argument("--csv", help="the table (default: the only *.csv in the folder)")
    p.add_argument("--sequences", help="comma-separated sequence columns in channel order (default: image columns)")
    p.add_argument("--clinical", help="comma-separated clinical columns (default: all other columns; '' for none)")
    p.add_argument("--classes", help="comma-separated class names (default: the distinct labels)")
    p.add_argument("--impute", choices=["median"], help="fill missing clinical values with the column median")
    p.add_argument("--case-column", default="case")
    p.add_argument("--label-column", default="label")
    p.add_argument("--roi-column", default="roi")
    p.set_defaults(func=lambda a: convert_mri_classification(
        a.source, a.dataset_id, a.csv, a.output, a.name, _csv_list(a.sequences), _csv_list(a.clinical),
        _csv_list(a.classes), a.impute, a.case_column, a.label_column, a.roi_column, a.overwrite, a.skip_invalid,
        a.licence))
