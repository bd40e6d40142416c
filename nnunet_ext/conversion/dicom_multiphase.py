"""Multiphase DICOM studies (TCGA-LIHC style) -> a multi-channel nnU-Net v2 dataset, one channel per phase.

The Cancer Imaging Archive's TCGA-LIHC collection (Erickson et al., 2016, doi:10.7937/K9/TCIA.2016.IMMQW8UQ) ships
contrast-enhanced liver CT as one DICOM series per phase (``{patient}/{study}/{series}/1-NN.dcm``). The phases of a
case come from a manifest CSV (columns ``case, phase, series`` - a series folder or an image file - and optionally
``series_uid, mask, mask_label, mask_phase, label``) or are detected from the DICOM tags (:mod:`.phase_detection`,
mapping printed for review). Every phase is rigidly registered to the reference phase (portal venous by default;
:mod:`.registration`) and resampled onto its grid; ``registration_report.json`` / ``.csv`` beside ``dataset.json``
record the final metric and the recovered transform per phase. Cases without a mask go to ``imagesTs``. Class labels
and the phase order go into the ``nnunet_ext`` metadata block.

Masks (NIfTI/NRRD/MHA or DICOM SEG): a case may have several, e.g. liver and tumour as two SEG files. The manifest's
``mask`` cell takes several files separated by ``;`` (``liver.dcm;tumour.dcm``), and a case may have rows with only
``case`` and ``mask`` (one row per mask); ``mask_label`` gives each mask's label name or value (``;``-separated like
``mask``). Each mask is resampled (nearest neighbour) onto the reference grid through the transform of the phase it
was drawn on (``mask_phase``; for a SEG the phase whose series it references), and the masks are merged into one
label map in the declared order: later labels win where they overlap (a tumour inside the liver). Label values: a
number given as ``mask_label``; else the position of the label name in ``labels``; else one value per distinct name
(SEG segment labels, ``mask_label``) in order of first appearance; a plain label map without ``mask_label`` keeps its
values. A SEG that references none of the case's series is an error.

Before any pixel data of a case is read, its phases are checked: one series (same folder, or same SeriesInstanceUID)
given for two phases, and series of different patients or modalities are an error. Series of one patient with
different StudyInstanceUIDs (some exports give every series its own) are accepted with a warning when they share the
FrameOfReferenceUID or the AccessionNumber, else only with ``allow_mixed_studies`` (``--allow-mixed-studies``,
recorded in ``conversion_report.json``). Blank values, as in anonymised exports, are not compared. Acquisition times
that run backwards in the declared phase order are warned about (the order stays the user's declaration).

Output channels: ``{case}_{k:04d}.nii.gz`` is phase ``k`` of ``phases``; arrays ``(z, y, x)`` on the reference grid.
"""

from __future__ import annotations

import csv
import json
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
from nnunet_ext.conversion.dicom_masks import CaseMasks, MaskSpec

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
DEFAULT_PHASES = ("arterial", "portal_venous", "delayed")
REPORT_JSON, REPORT_CSV = "registration_report.json", "registration_report.csv"


@dataclass
class CasePlan:
    """Where the phases, masks and class label of one case come from."""

    case: str
    phases: dict[str, tuple[Path, str | None]] = field(default_factory=dict)  # phase -> (folder/file, series uid)
    masks: list[MaskSpec] = field(default_factory=list)  # in the order they are painted (later ones win)
    mask_phase: str | None = None  # default phase of the masks without their own
    label: str | None = None
    grouped_by: str | None = None  # how phase detection grouped the series into this case
    problems: list[str] = field(default_factory=list)  # unreadable files found while scanning


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
    """Parse the manifest CSV; relative paths are relative to ``source``. One row per (case, phase); masks (several
    per cell, ``;``-separated, or rows with only case and mask) and the class label may be given on any row of the
    case."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConversionError(f"cannot read the manifest {path} ({e}). Fix: give a CSV with columns case, phase, "
                              "series[, mask, mask_label, label].") from e
    header = list(rows[0]) if rows else []
    c_case, c_phase = _col(header, "case", "case_id", "patient"), _col(header, "phase")
    c_series = _col(header, "series", "series_folder", "series folder", "folder", "path", "image")
    if not (c_case and c_phase and c_series):
        raise ConversionError(f"manifest {path} needs the columns case, phase and series (found {header}). Fix: add "
                              "them (series = a DICOM series folder or an image file, relative to the source).")
    c_uid, c_mask = _col(header, "series_uid", "seriesinstanceuid"), _col(header, "mask", "mask_path", "seg")
    c_mphase, c_label = _col(header, "mask_phase"), _col(header, "label", "class", "class_label")
    c_mlabel = _col(header, "mask_label", "mask_labels", "label_name", "label_value")
    plans: dict[str, CasePlan] = {}
    seen: dict[tuple[str, str], int] = {}

    def cell(row, col) -> str:
        return (row.get(col) or "").strip() if col else ""

    for i, row in enumerate(rows, start=2):
        raw_case, phase, series = cell(row, c_case), cell(row, c_phase), cell(row, c_series)
        masks = [m.strip() for m in cell(row, c_mask).split(";") if m.strip()]
        if not raw_case or (not phase and not masks):
            raise ConversionError(f"manifest {path.name} line {i}: empty case or phase. Fix: fill both columns (a row "
                                  "with only case and mask adds a mask to the case).")
        if bool(phase) != bool(series):
            raise ConversionError(f"manifest {path.name} line {i}: a phase without a series or a series without a "
                                  "phase. Fix: fill both columns.")
        case = safe_case_id(raw_case)
        plan = plans.setdefault(case, CasePlan(case))
        if phase:
            if (case, phase) in seen:
                raise ConversionError(f"manifest {path.name}: duplicate case id {case!r} with phase {phase!r} on "
                                      f"lines {seen[(case, phase)]} and {i}. Fix: one row per case and phase (rename "
                                      "one case if these are different patients).")
            seen[(case, phase)] = i
            plan.phases[phase] = (_resolve(series, source), cell(row, c_uid) or None)
        labels = [m.strip() for m in cell(row, c_mlabel).split(";")] if cell(row, c_mlabel) else []
        if labels and len(labels) != len(masks):
            raise ConversionError(f"manifest {path.name} line {i}: {len(masks)} mask file(s) but {len(labels)} "
                                  f"mask_label value(s) ({cell(row, c_mlabel)!r}). Fix: give one label name or value "
                                  "per mask, ';'-separated in the same order, or leave mask_label empty.")
        mask_phase = cell(row, c_mphase) or None
        plan.masks += [MaskSpec(_resolve(m, source), (labels[k] or None) if labels else None, mask_phase)
                       for k, m in enumerate(masks)]
        if mask_phase and not masks:
            plan.mask_phase = mask_phase
        value = cell(row, c_label)
        if value:
            if plan.label not in (None, value):
                raise ConversionError(f"manifest {path.name} line {i}: case {case!r} has two different labels "
                                      f"({plan.label} and {value}). Fix: give one per case.")
            plan.label = value
    for plan in plans.values():
        if not plan.phases:
            raise ConversionError(f"manifest {path.name}: case {plan.case!r} has masks but no phase row. Fix: add its "
                                  "rows with case, phase and series.")
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
                             skip_invalid: bool = False, allow_mixed_studies: bool = False,
                             licence: str | None = None) -> ConversionResult:
    """Convert multiphase studies to ``<output or $nnUNet_raw>/Dataset{id}_{name}``.

    Args:
        source: root folder of the DICOM data (manifest paths are relative to it).
        manifest: CSV (case, phase, series[, series_uid, mask, mask_phase, label]); None detects the phases from the
            DICOM tags under ``source`` and prints the mapping (``write_manifest`` saves it as an editable CSV).
        phases: channel order (default: the manifest's phases; for detection the phases every series description
            names, e.g. arterial and delayed for ``11_AP_Ax5.00mm`` and ``31_EQP_Ax5.00mm``, else ``arterial,
            portal_venous, delayed`` by acquisition time).
        reference: the phase the others are registered and resampled to (default: portal venous, else the first).
        register: False keeps the phases as they are; then every phase must share the reference's geometry.
        classes: class names (default: the sorted distinct manifest labels); cases without a label are unlabeled.
        labels: segmentation label names for mask values 1..K (default: DICOM SEG segment labels and mask_label
            names in order of first appearance, else "lesion").
        allow_mixed_studies: accept phases of one patient whose StudyInstanceUIDs differ although they share
            neither FrameOfReferenceUID nor AccessionNumber (the user asserts they belong together; recorded in
            ``conversion_report.json``). A different PatientID still stops the conversion.
        licence: the data's licence for ``dataset.json`` (default "unknown", never nnU-Net's placeholder).

    Raises:
        ConversionError: missing phase, one series for two phases, phases of different patients / modalities
            (or studies, see ``allow_mixed_studies``), a series_uid not in its folder, different geometry without
            registration, empty series, corrupt or cut-short file, a SEG of another series, duplicate case ids,
            unknown class label, or an existing different dataset under ``dataset_id``.
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
        plans = detect_phases(source, list(phases) if phases else None, write_manifest, skip_invalid, DEFAULT_PHASES)
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
               "labels": list(labels or []), "skip_invalid": skip_invalid, "manifest": manifest is not None,
               "allow_mixed_studies": allow_mixed_studies}
    job = ConversionJob("dicom-multiphase", dataset_id, name, output, overwrite, inputs, source, options,
                        skip_invalid, licence)
    class_names = list(classes) if classes else sorted({p.label for p in plans.values() if p.label})
    unknown = sorted({f"{p.case!r} ({p.label!r})" for p in plans.values() if p.label and p.label not in class_names})
    if unknown:
        raise ConversionError(f"class label(s) not in --classes {class_names}: {', '.join(unknown)}. Fix: add them "
                              "to --classes or correct the manifest.")

    def build(stage: Stage) -> None:
        ctx = _BuildContext(stage, phase_order, reference, register, registration, labels, allow_mixed_studies)
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
        files += [m.path for m in plan.masks if m.path.is_file()]
    return files


class _BuildContext:
    """Per-dataset state while cases are converted: label names, modality, registration report."""

    def __init__(self, stage: Stage, phases: list[str], reference: str, register: bool,
                 registration: RegistrationOptions, labels: Sequence[str] | None, allow_mixed_studies: bool = False):
        self.stage, self.phases, self.reference = stage, phases, reference
        self.allow_mixed_studies = allow_mixed_studies
        self.register, self.registration = register, registration
        self.masks = CaseMasks(stage, phases, reference, labels)
        self.modalities: set[str] = set()
        self.report: dict[str, dict] = {}

    def convert_case(self, case: str, plan: CasePlan) -> None:
        if plan.problems:
            raise ConversionError(f"case {case!r}: {'; '.join(plan.problems)}. Fix: re-export or re-download the "
                                  "file(s), or pass --skip-invalid to leave the case out.")
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
        label = self.masks.merge(case, plan.masks, plan.mask_phase, ref, uids, transforms) if plan.masks else None
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
        for attr, tag in (("patient_id", "PatientID"), ("modality", "Modality")):
            values = {phase: getattr(s, attr) for phase, s in series.items() if getattr(s, attr)}
            if len(set(values.values())) > 1:
                conflicts.append(f"{tag} " + ", ".join(f"{p}={v!r}" for p, v in values.items()))
        if conflicts:
            raise ConversionError(f"case {case!r}: the phases are series of different patients or modalities "
                                  f"({'; '.join(conflicts)}). Fix: correct the series (or series_uid) of the wrong "
                                  "phase in the manifest so that every phase of a case comes from the same patient "
                                  "and modality; blank IDs (anonymised data) are not compared.")
        self._check_same_exam(case, series)
        timed = [(phase, s.acquisition_time) for phase, s in series.items() if s.acquisition_time is not None]
        backwards = [f"{b!r} at {_clock(tb)} before {a!r} at {_clock(ta)}"
                     for (a, ta), (b, tb) in zip(timed, timed[1:]) if tb < ta]
        if backwards:
            self.stage.warn(f"case {case!r}: acquisition times run backwards in the phase order {self.phases}: "
                            f"{'; '.join(backwards)}. The channels follow the declared order; check that the manifest "
                            "(or --phases) assigns each series to the right phase.")

    def _check_same_exam(self, case: str, series: dict) -> None:
        """Phases whose StudyInstanceUIDs differ: accepted with a warning when they share a FrameOfReferenceUID or
        an AccessionNumber (one exam exported as several studies), or when the user allows mixed studies; an error
        otherwise."""
        studies = {phase: s.study_uid for phase, s in series.items() if s.study_uid}
        if len(set(studies.values())) <= 1:
            return
        listing = ", ".join(f"{p}={v!r}" for p, v in studies.items())
        for attr, tag in (("frame_of_reference_uid", "FrameOfReferenceUID"), ("accession_number", "AccessionNumber")):
            values = [getattr(s, attr) for s in series.values()]
            if all(values) and len(set(values)) == 1:
                self.stage.warn(f"case {case!r}: the phases have different StudyInstanceUIDs ({listing}) but share "
                                f"the {tag} {values[0]}: converted as one exam.")
                return
        if self.allow_mixed_studies:
            self.stage.warn(f"case {case!r}: the phases have different StudyInstanceUIDs ({listing}) and share no "
                            "FrameOfReferenceUID or AccessionNumber; converted as one case because "
                            "--allow-mixed-studies was given.")
            return
        raise ConversionError(f"case {case!r}: the phases are series of different studies (StudyInstanceUID "
                              f"{listing}) that share neither a FrameOfReferenceUID nor an AccessionNumber. Fix: "
                              "correct the series of the wrong phase in the manifest; if they do belong to one exam "
                              "(some exports give every series its own study), pass --allow-mixed-studies "
                              "(allow_mixed_studies=True).")

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

    def finish(self, name: str, class_names: list[str], case_labels: dict[str, str | None]) -> None:
        from nnunet_ext.data.metadata import CaseRecord, DatasetMetadata

        labels, lesion = self.masks.dataset_labels()
        ct = self.modalities == {"CT"}
        channel_names = {i: "CT" if ct else p for i, p in enumerate(self.phases)}
        if not self.stage.cases:
            self.stage.warn("no case has a mask: every case was written to imagesTs (inference only). Fix: add a mask "
                            "column to the manifest to get training cases.")
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
    p.add_argument("--manifest", help="CSV: case, phase, series[, series_uid, mask, mask_label, mask_phase, label]; "
                                      "without it the phases are detected from the DICOM tags")
    p.add_argument("--phases", help="comma-separated channel order, e.g. arterial,portal_venous,delayed")
    p.add_argument("--reference", help="reference phase (default: portal venous)")
    p.add_argument("--no-registration", action="store_true", help="do not register the phases (they must then "
                                                                    "share one grid)")
    p.add_argument("--classes", help="comma-separated class names (default: the distinct manifest labels)")
    p.add_argument("--labels", help="comma-separated names of mask values 1..K (default: SEG segment labels)")
    p.add_argument("--write-manifest", help="save the detected phase mapping as a manifest CSV")
    p.add_argument("--allow-mixed-studies", action="store_true",
                   help="accept phases of one patient with different StudyInstanceUIDs that share no "
                        "FrameOfReferenceUID or AccessionNumber (recorded in conversion_report.json)")
    p.add_argument("--reg-shrink", type=int, nargs="+", default=[4, 2, 1], help="pyramid shrink factors")
    p.add_argument("--reg-smoothing", type=float, nargs="+", default=[2.0, 1.0, 0.0], help="pyramid sigmas (voxels)")
    p.add_argument("--reg-iterations", type=int, default=200, help="optimiser iterations per level")
    p.add_argument("--reg-sampling", type=float, default=0.25, help="fraction of voxels sampled by the metric")
    p.set_defaults(func=lambda a: convert_dicom_multiphase(
        a.source, a.dataset_id, a.manifest, a.output, a.name, _csv_list(a.phases), a.reference,
        not a.no_registration, RegistrationOptions(tuple(a.reg_shrink), tuple(a.reg_smoothing), a.reg_iterations,
                                                   a.reg_sampling),
        _csv_list(a.classes), _csv_list(a.labels), a.write_manifest, a.overwrite, a.skip_invalid,
        a.allow_mixed_studies, a.licence))
