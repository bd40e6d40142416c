"""Multiphase DICOM studies (TCGA-LIHC style) -> a multi-channel nnU-Net v2 dataset, one channel per phase.

The Cancer Imaging Archive's TCGA-LIHC collection (Erickson et al., 2016, doi:10.7937/K9/TCIA.2016.IMMQW8UQ) ships
contrast-enhanced liver CT as one DICOM series per phase (``{patient}/{study}/{series}/1-NN.dcm``). The phases of a
case come from a manifest CSV (columns ``case, phase, series`` - a series folder or an image file - and optionally
``series_uid, mask, mask_phase, label``) or are detected from the DICOM tags (:mod:`.phase_detection`, mapping printed
for review). Every phase is rigidly registered to the reference phase (portal venous by default;
:mod:`.registration`) and resampled onto its grid; ``registration_report.json`` / ``.csv`` beside ``dataset.json``
record the final metric and the recovered transform per phase. Masks (NIfTI/NRRD/MHA or DICOM SEG) are resampled
(nearest neighbour) onto the reference grid through the transform of the phase they were drawn on. Cases without a
mask go to ``imagesTs``. Class labels and the phase order go into the ``nnunet_ext`` metadata block.

Before any pixel data of a case is read, its phases are checked: one series (same folder, or same SeriesInstanceUID)
given for two phases, or series whose PatientID, StudyInstanceUID or Modality differ (blank values, as in anonymised
exports, are not compared) are an error; acquisition times that run backwards in the declared phase order are warned
about (the order stays the user's declaration).

Output channels: ``{case}_{k:04d}.nii.gz`` is phase ``k`` of ``phases``; arrays ``(z, y, x)`` on the reference grid.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_ext.conversion.common import (
    ConversionError,
    ConversionJob,
    ConversionResult,
    Stage,
    add_common_arguments,
    existing_path,
    geometry_mismatch,
    read_image,
    safe_case_id,
    with_geometry_of,
)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
DEFAULT_PHASES = ("arterial", "portal_venous", "delayed")
_LESION_NAMES = re.compile(r"lesion|tumou?r|hcc|cancer|mass|nodule|metasta", re.IGNORECASE)
REPORT_JSON, REPORT_CSV = "registration_report.json", "registration_report.csv"


@dataclass
class CasePlan:
    """Where the phases, mask and class label of one case come from."""

    case: str
    phases: dict[str, tuple[Path, str | None]] = field(default_factory=dict)  # phase -> (folder/file, series uid)
    mask: Path | None = None
    mask_phase: str | None = None
    label: str | None = None


@dataclass
class RegistrationOptions:
    """``register_rigid`` settings (see :func:`nnunet_ext.conversion.registration.register_rigid`)."""

    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    iterations: int = 200
    sampling: float = 0.25

    def kwargs(self) -> dict:
        return {"shrink_factors": tuple(self.shrink_factors), "smoothing_sigmas": tuple(self.smoothing_sigmas),
                "iterations": self.iterations, "sampling": self.sampling}


# --------------------------------------------------------------------------- manifest
def _col(header: list[str], *names: str) -> str | None:
    low = {h.strip().lower(): h for h in header}
    return next((low[n] for n in names if n in low), None)


def read_manifest(path: Path, source: Path) -> dict[str, CasePlan]:
    """Parse the manifest CSV; relative paths are relative to ``source``. One row per (case, phase); mask and label
    may be given on any row of the case."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConversionError(f"cannot read the manifest {path} ({e}). Fix: give a CSV with columns case, phase, "
                              "series[, mask, label].") from e
    header = list(rows[0]) if rows else []
    c_case, c_phase = _col(header, "case", "case_id", "patient"), _col(header, "phase")
    c_series = _col(header, "series", "series_folder", "series folder", "folder", "path", "image")
    if not (c_case and c_phase and c_series):
        raise ConversionError(f"manifest {path} needs the columns case, phase and series (found {header}). Fix: add "
                              "them (series = a DICOM series folder or an image file, relative to the source).")
    c_uid, c_mask = _col(header, "series_uid", "seriesinstanceuid"), _col(header, "mask", "mask_path", "seg")
    c_mphase, c_label = _col(header, "mask_phase"), _col(header, "label", "class", "class_label")
    plans: dict[str, CasePlan] = {}
    seen: dict[tuple[str, str], int] = {}
    for i, row in enumerate(rows, start=2):
        raw_case, phase = (row.get(c_case) or "").strip(), (row.get(c_phase) or "").strip()
        if not raw_case or not phase:
            raise ConversionError(f"manifest {path.name} line {i}: empty case or phase. Fix: fill both columns.")
        case = safe_case_id(raw_case)
        if (case, phase) in seen:
            raise ConversionError(f"manifest {path.name}: duplicate case id {case!r} with phase {phase!r} on lines "
                                  f"{seen[(case, phase)]} and {i}. Fix: one row per case and phase (rename one case "
                                  "if these are different patients).")
        seen[(case, phase)] = i
        plan = plans.setdefault(case, CasePlan(case))
        uid = (row.get(c_uid) or "").strip() if c_uid else ""
        plan.phases[phase] = (_resolve(row[c_series].strip(), source), uid or None)
        for attr, col, conv in (("mask", c_mask, lambda v: _resolve(v, source)), ("mask_phase", c_mphase, str),
                                ("label", c_label, str)):
            value = (row.get(col) or "").strip() if col else ""
            if value:
                value = conv(value)
                if getattr(plan, attr) not in (None, value):
                    raise ConversionError(f"manifest {path.name} line {i}: case {case!r} has two different {attr}s "
                                          f"({getattr(plan, attr)} and {value}). Fix: give one per case.")
                setattr(plan, attr, value)
    return plans


def _resolve(value: str, source: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else source / p


def order_phases(plans: dict[str, CasePlan], phases: Sequence[str] | None) -> list[str]:
    """``phases`` if given; else the canonical order (pre, arterial, portal venous, delayed) when every name is
    canonical, else the order of first appearance."""
    if phases:
        return list(phases)
    names = list(dict.fromkeys(p for plan in plans.values() for p in plan.phases))
    canon = ["precontrast", *DEFAULT_PHASES]
    return sorted(names, key=canon.index) if set(names) <= set(canon) else names


# --------------------------------------------------------------------------- conversion
def convert_dicom_multiphase(source: str | Path, dataset_id: int, manifest: str | Path | None = None,
                             output: str | Path | None = None, name: str = "Multiphase",
                             phases: Sequence[str] | None = None, reference: str | None = None,
                             register: bool = True, registration: RegistrationOptions | None = None,
                             classes: Sequence[str] | None = None, labels: Sequence[str] | None = None,
                             write_manifest: str | Path | None = None, overwrite: bool = False,
                             skip_invalid: bool = False) -> ConversionResult:
    """Convert multiphase studies to ``<output or $nnUNet_raw>/Dataset{id}_{name}``.

    Args:
        source: root folder of the DICOM data (manifest paths are relative to it).
        manifest: CSV (case, phase, series[, series_uid, mask, mask_phase, label]); None detects the phases from the
            DICOM tags under ``source`` and prints the mapping (``write_manifest`` saves it as an editable CSV).
        phases: channel order (default: the manifest's phases; for detection ``arterial, portal_venous, delayed``).
        reference: the phase the others are registered and resampled to (default: portal venous, else the first).
        register: False keeps the phases as they are; then every phase must share the reference's geometry.
        classes: class names (default: the sorted distinct manifest labels); cases without a label are unlabeled.
        labels: segmentation label names for mask values 1..K (default: DICOM SEG segment labels, else "lesion").

    Raises:
        ConversionError: missing phase, one series for two phases, phases of different patients / studies /
            modalities, a series_uid not in its folder, different geometry without registration, empty series,
            corrupt file, duplicate case ids, unknown class label, or an existing different dataset under
            ``dataset_id``.
    """
    from nnunet_ext.conversion.phase_detection import detect_phases

    source = existing_path(source, "multiphase source", folder=True)
    registration = registration or RegistrationOptions()
    if manifest is not None:
        mpath = Path(manifest)
        mpath = mpath if mpath.exists() or mpath.is_absolute() else source / mpath
        plans = read_manifest(existing_path(mpath, "manifest", folder=False), source)
        inputs = [mpath] + _plan_files(plans)
    else:
        plans = detect_phases(source, list(phases or DEFAULT_PHASES), write_manifest)
        inputs = [p for p in source.rglob("*") if p.is_file()]
    phase_order = order_phases(plans, phases)
    if reference is None:
        reference = next((p for p in phase_order if p.lower() in ("portal_venous", "portal", "venous", "pv")),
                         phase_order[0])
    if reference not in phase_order:
        raise ConversionError(f"reference phase {reference!r} is not one of the phases {phase_order}. Fix: pass "
                              "--reference with one of them.")
    options = {"phases": phase_order, "reference": reference, "register": register,
               "registration": registration.kwargs() if register else None, "classes": list(classes or []),
               "labels": list(labels or []), "skip_invalid": skip_invalid, "manifest": manifest is not None}
    job = ConversionJob("dicom-multiphase", dataset_id, name, output, overwrite, inputs, source, options,
                        skip_invalid)
    class_names = list(classes) if classes else sorted({p.label for p in plans.values() if p.label})
    unknown = sorted({f"{p.case!r} ({p.label!r})" for p in plans.values() if p.label and p.label not in class_names})
    if unknown:
        raise ConversionError(f"class label(s) not in --classes {class_names}: {', '.join(unknown)}. Fix: add them "
                              "to --classes or correct the manifest.")

    def build(stage: Stage) -> None:
        ctx = _BuildContext(stage, phase_order, reference, register, registration, labels)
        stage.for_each(sorted(plans.items()), ctx.convert_case, "multiphase cases")
        ctx.finish(name, class_names, {c: plans[c].label for c in stage.cases})

    return job.run(build)


def _plan_files(plans: dict[str, CasePlan]) -> list[Path]:
    files = []
    for plan in plans.values():
        for path, _ in plan.phases.values():
            if path.is_dir():
                files += sorted(f for f in path.rglob("*") if f.is_file())
            elif path.is_file():
                files.append(path)
        if plan.mask is not None and plan.mask.is_file():
            files.append(plan.mask)
    return files


class _BuildContext:
    """Per-dataset state while cases are converted: label names, modality, registration report."""

    def __init__(self, stage: Stage, phases: list[str], reference: str, register: bool,
                 registration: RegistrationOptions, labels: Sequence[str] | None):
        self.stage, self.phases, self.reference = stage, phases, reference
        self.register, self.registration = register, registration
        self.label_names: dict[int, str] = {i + 1: n for i, n in enumerate(labels or [])}
        self.fixed_labels = bool(labels)
        self.max_label = 0
        self.modalities: set[str] = set()
        self.report: dict[str, dict] = {}

    def convert_case(self, case: str, plan: CasePlan) -> None:
        missing = [p for p in self.phases if p not in plan.phases]
        if missing:
            raise ConversionError(f"case {case!r}: missing phase(s) {missing} (it has {sorted(plan.phases)}; every "
                                  f"case needs {self.phases}). Fix: add the series to the manifest, or pass "
                                  "--skip-invalid to leave the case out.")
        self._check_distinct_sources(case, plan)
        found = {phase: self._find_phase(case, phase, *plan.phases[phase]) for phase in self.phases}
        series = {p: s for p, s in found.items() if not isinstance(s, Path)}
        self._check_series_belong_together(case, series)
        images, uids = {}, {}
        for phase in self.phases:
            images[phase], uids[phase] = self._read_phase(case, phase, found[phase])
        ref = images[self.reference]
        transforms: dict[str, sitk.Transform] = {}
        if self.register:
            out = self._register(case, images, transforms)
        else:
            diffs = {p: d for p in self.phases if (d := geometry_mismatch(ref, images[p])) is not None}
            if diffs:
                listing = "; ".join(f"{p}: {d}" for p, d in diffs.items())
                raise ConversionError(f"case {case!r}: phases with different geometry and no registration requested "
                                      f"(against reference {self.reference!r}: {listing}). Fix: drop "
                                      "--no-registration so the phases are registered and resampled onto the "
                                      "reference grid, or resample them beforehand.")
            out = [with_geometry_of(images[p], ref) for p in self.phases]
        label = self._load_mask(case, plan, ref, uids, transforms) if plan.mask is not None else None
        self.stage.write_case(case, out, label)

    def _check_distinct_sources(self, case: str, plan: CasePlan) -> None:
        """The same folder/file (with the same or no series_uid) given for two phases is an error."""
        seen: dict[tuple[Path, str | None], str] = {}
        for phase in self.phases:
            path, uid = plan.phases[phase]
            key = (path.resolve(), uid)
            if key in seen:
                raise ConversionError(f"case {case!r}: phases {seen[key]!r} and {phase!r} both point at {path}"
                                      f"{f' (series_uid {uid})' if uid else ''}, so one channel would be a copy of the "
                                      "other. Fix: give each phase its own series in the manifest (a series folder, "
                                      "or the same folder with different series_uid values).")
            seen[key] = phase

    def _find_phase(self, case: str, phase: str, path: Path, uid: str | None):
        """The phase's source: an image file (a :class:`Path`) or the one DICOM series it names (headers only)."""
        from nnunet_ext.conversion.dicom_io import scan_dicom

        ctx = f"case {case!r} phase {phase!r}"
        if path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES):
            return path
        if not path.exists():
            raise ConversionError(f"{ctx}: {path} does not exist. Fix: correct the series path in the manifest.")
        series = scan_dicom(path, ctx)
        if uid and series and not any(s.uid == uid for s in series):
            listing = ", ".join(f"{s.uid} ({s.description!r}, {len(s.files)} files)" for s in series[:20])
            listing += f" and {len(series) - 20} more" if len(series) > 20 else ""
            raise ConversionError(f"{ctx}: series_uid {uid} is not in {path}; the SeriesInstanceUID(s) there: "
                                  f"{listing}. Fix: correct the series_uid column of the manifest to one of these, or "
                                  "leave it empty when the folder holds a single series.")
        if uid:
            series = [s for s in series if s.uid == uid]
        if not series:
            raise ConversionError(f"{ctx}: no DICOM image series in {path} (empty series). Fix: point the manifest at "
                                  "the folder holding the slices.")
        if len(series) > 1:
            listing = ", ".join(f"{s.uid} ({s.description!r}, {len(s.files)} files)" for s in series)
            raise ConversionError(f"{ctx}: {path} holds {len(series)} series: {listing}. Fix: add a series_uid column "
                                  "to the manifest, or give each series its own folder.")
        return series[0]

    def _check_series_belong_together(self, case: str, series: dict) -> None:
        """One series for two phases, or phases of different patients / studies / modalities, raise; acquisition
        times that run backwards in the declared phase order are warned about. Blank IDs (anonymised data) are
        unknown and not compared."""
        by_uid: dict[str, str] = {}
        for phase, s in series.items():
            if s.uid in by_uid:
                first = by_uid[s.uid]
                raise ConversionError(f"case {case!r}: phases {first!r} and {phase!r} are the same DICOM series "
                                      f"(SeriesInstanceUID {s.uid}; {series[first].folder} and {s.folder}), "
                                      "so one channel would be a copy of the other. Fix: give each phase its own "
                                      "series in the manifest.")
            by_uid[s.uid] = phase
        conflicts = []
        for attr, tag in (("patient_id", "PatientID"), ("study_uid", "StudyInstanceUID"), ("modality", "Modality")):
            values = {phase: getattr(s, attr) for phase, s in series.items() if getattr(s, attr)}
            if len(set(values.values())) > 1:
                conflicts.append(f"{tag} " + ", ".join(f"{p}={v!r}" for p, v in values.items()))
        if conflicts:
            raise ConversionError(f"case {case!r}: the phases are series of different patients, studies or "
                                  f"modalities ({'; '.join(conflicts)}). Fix: correct the series (or series_uid) of "
                                  "the wrong phase in the manifest so that every phase of a case comes from the same "
                                  "patient, study and modality; blank IDs (anonymised data) are not compared.")
        timed = [(phase, s.acquisition_time) for phase, s in series.items() if s.acquisition_time is not None]
        backwards = [f"{b!r} at {_clock(tb)} before {a!r} at {_clock(ta)}"
                     for (a, ta), (b, tb) in zip(timed, timed[1:]) if tb < ta]
        if backwards:
            self.stage.warn(f"case {case!r}: acquisition times run backwards in the phase order {self.phases}: "
                            f"{'; '.join(backwards)}. The channels follow the declared order; check that the manifest "
                            "(or --phases) assigns each series to the right phase.")

    def _read_phase(self, case: str, phase: str, found) -> tuple[sitk.Image, str | None]:
        from nnunet_ext.conversion.dicom_io import read_series

        if isinstance(found, Path):
            img = read_image(found, case, f"{phase} image")
            self.modalities.add("")
            return (img if img.GetDimension() == 3 else sitk.JoinSeries(img)), None
        ctx = f"case {case!r} phase {phase!r}"
        for d in found.dropped:
            self.stage.warn(f"{ctx}: dropped slice {d}")
        self.modalities.add(found.modality)
        return read_series(found, ctx), found.uid

    def _register(self, case: str, images: dict[str, sitk.Image], transforms: dict) -> list[sitk.Image]:
        from nnunet_ext.conversion.registration import register_rigid, resample_onto

        ref = images[self.reference]
        if len(self.phases) > 1 and min(ref.GetSize()) < 4:
            raise ConversionError(f"case {case!r}: the reference phase has a {ref.GetSize()} grid, too small to "
                                  "register in 3D. Fix: pass --no-registration (the phases must share one grid).")
        entry = {"reference": self.reference, "phases": {}}
        out = []
        for phase in self.phases:
            if phase == self.reference:
                out.append(ref)
                continue
            result = register_rigid(ref, images[phase], **self.registration.kwargs())
            transforms[phase] = result.transform
            out.append(resample_onto(images[phase], ref, result.transform))
            entry["phases"][phase] = result.to_dict()
            if np.linalg.norm(result.translation_mm) > 20 or result.rotation_angle_deg > 10:
                shift = float(np.linalg.norm(result.translation_mm))
                self.stage.warn(f"case {case!r} phase {phase!r}: large rigid correction ({shift:.1f} mm, "
                                f"{result.rotation_angle_deg:.1f} deg); check the alignment in {REPORT_CSV}.")
        if entry["phases"]:
            self.report[case] = entry
        return out

    def _load_mask(self, case: str, plan: CasePlan, ref: sitk.Image, uids: dict, transforms: dict) -> sitk.Image:
        from nnunet_ext.conversion.dicom_io import is_dicom_seg, read_dicom_seg
        from nnunet_ext.conversion.registration import resample_onto

        mask_phase = plan.mask_phase
        if is_dicom_seg(plan.mask):
            mask, names, refs = read_dicom_seg(plan.mask, f"case {case!r} mask")
            mask_phase = mask_phase or next((p for p, u in uids.items() if u in refs), None)
            if not self.fixed_labels:
                for value, n in names.items():
                    if self.label_names.setdefault(value, n) != n:
                        self.stage.warn(f"case {case!r}: DICOM SEG segment {value} is {n!r}, another case calls it "
                                        f"{self.label_names[value]!r}; the dataset uses the first name.")
        else:
            mask = read_image(plan.mask, case, "mask")
        mask_phase = mask_phase or self.reference
        if mask_phase not in self.phases:
            raise ConversionError(f"case {case!r}: mask_phase {mask_phase!r} is not one of {self.phases}. Fix the "
                                  "manifest.")
        if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
            raise ConversionError(f"case {case!r}: mask {plan.mask.name} is not a 3D label image. Fix: export it as "
                                  "one 3D label map.")
        arr = sitk.GetArrayViewFromImage(mask)
        if not np.all(np.equal(np.mod(arr, 1), 0)) or arr.min() < 0:
            raise ConversionError(f"case {case!r}: mask {plan.mask.name} has non-integer or negative values. Fix: "
                                  "export a label map with 0 = background and 1..K = structures.")
        label = resample_onto(sitk.Cast(mask, sitk.sitkUInt8), ref, transforms.get(mask_phase),
                              sitk.sitkNearestNeighbor, 0)
        top = int(sitk.GetArrayViewFromImage(label).max())
        if self.fixed_labels and top > len(self.label_names):
            raise ConversionError(f"case {case!r}: mask value {top} but only {len(self.label_names)} label names were "
                                  f"given ({list(self.label_names.values())}). Fix: extend --labels.")
        if top == 0:
            self.stage.warn(f"case {case!r}: the mask is empty on the reference grid (wrong mask_phase or frame of "
                            "reference?).")
        self.max_label = max(self.max_label, top)
        return label

    def finish(self, name: str, class_names: list[str], case_labels: dict[str, str | None]) -> None:
        from nnunet_ext.data.metadata import CaseRecord, DatasetMetadata

        for value in range(1, self.max_label + 1):
            self.label_names.setdefault(value, "lesion" if self.max_label == 1 else f"label_{value}")
        labels = {"background": 0, **{n: v for v, n in sorted(self.label_names.items())}}
        ct = self.modalities == {"CT"}
        channel_names = {i: "CT" if ct else p for i, p in enumerate(self.phases)}
        if not self.stage.cases:
            self.stage.warn("no case has a mask: every case was written to imagesTs (inference only). Fix: add a mask "
                            "column to the manifest to get training cases.")
        lesion = [v for v, n in self.label_names.items() if _LESION_NAMES.search(n)]
        cases = {c: CaseRecord(class_index=class_names.index(case_labels[c]) if class_names and case_labels.get(c)
                               else None) for c in self.stage.cases}
        metadata = DatasetMetadata(class_names=class_names or None, lesion_labels=sorted(lesion) or None,
                                   phases=list(self.phases), reference_phase=self.reference, cases=cases)
        self.stage.write_dataset_json(channel_names, labels, metadata, dataset_name=name,
                                      converted_by="nnunet-ext convert dicom-multiphase",
                                      description=f"multiphase study, phases {self.phases}, reference "
                                                  f"{self.reference}, {'registered' if self.register else 'raw'}")
        if self.report:
            self._write_report()

    def _write_report(self) -> None:
        with open(self.stage.add_report("registration_json", REPORT_JSON), "w", encoding="utf-8") as f:
            json.dump(self.report, f, indent=1)
        with open(self.stage.add_report("registration_csv", REPORT_CSV), "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["case", "phase", "reference", "metric", "tx_mm", "ty_mm", "tz_mm", "rx_deg", "ry_deg",
                        "rz_deg", "translation_norm_mm", "rotation_angle_deg", "iterations"])
            for case, entry in sorted(self.report.items()):
                for phase, r in entry["phases"].items():
                    w.writerow([case, phase, entry["reference"], r["metric"], *r["translation_mm"], *r["rotation_deg"],
                                r["translation_norm_mm"], r["rotation_angle_deg"], r["iterations"]])


def _clock(seconds: float) -> str:
    """Seconds after midnight -> ``HH:MM:SS`` (tenths when not whole)."""
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{int(h):02d}:{int(m):02d}:{sec:04.1f}" if sec % 1 else f"{int(h):02d}:{int(m):02d}:{int(sec):02d}"


# --------------------------------------------------------------------------- CLI
def _csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def add_parser(sub) -> None:
    p = sub.add_parser("dicom-multiphase", help="multiphase DICOM studies (TCGA-LIHC style) -> nnU-Net v2",
                       description="One channel per contrast phase, registered to the reference phase; phases from "
                                   "a manifest CSV or detected from DICOM tags.")
    add_common_arguments(p, "Multiphase", source_help="root folder of the DICOM data (manifest paths are relative "
                                                      "to it)")
    p.add_argument("--manifest", help="CSV: case, phase, series[, series_uid, mask, mask_phase, label]; without it "
                                      "the phases are detected from the DICOM tags")
    p.add_argument("--phases", help="comma-separated channel order, e.g. arterial,portal_venous,delayed")
    p.add_argument("--reference", help="reference phase (default: portal venous)")
    p.add_argument("--no-registration", action="store_true", help="do not register the phases (they must then "
                                                                    "share one grid)")
    p.add_argument("--classes", help="comma-separated class names (default: the distinct manifest labels)")
    p.add_argument("--labels", help="comma-separated names of mask values 1..K (default: SEG segment labels)")
    p.add_argument("--write-manifest", help="save the detected phase mapping as a manifest CSV")
    p.add_argument("--reg-shrink", type=int, nargs="+", default=[4, 2, 1], help="pyramid shrink factors")
    p.add_argument("--reg-smoothing", type=float, nargs="+", default=[2.0, 1.0, 0.0], help="pyramid sigmas (voxels)")
    p.add_argument("--reg-iterations", type=int, default=200, help="optimiser iterations per level")
    p.add_argument("--reg-sampling", type=float, default=0.25, help="fraction of voxels sampled by the metric")
    p.set_defaults(func=lambda a: convert_dicom_multiphase(
        a.source, a.dataset_id, a.manifest, a.output, a.name, _csv_list(a.phases), a.reference,
        not a.no_registration, RegistrationOptions(tuple(a.reg_shrink), tuple(a.reg_smoothing), a.reg_iterations,
                                                   a.reg_sampling),
        _csv_list(a.classes), _csv_list(a.labels), a.write_manifest, a.overwrite, a.skip_invalid))
