"""Contrast-phase detection from DICOM tags, for multiphase conversion without a manifest.

Series are grouped into cases first (:func:`group_cases`): series of one PatientID that share a
FrameOfReferenceUID, a StudyInstanceUID, or an AccessionNumber with the StudyDate belong to one exam (some PACS
exports and anonymisers give every series its own StudyInstanceUID; the phases of one exam still share the frame of
reference). The printed mapping says which key grouped each case. Then, per case:

1. SeriesDescription keywords, matched as whole tokens after splitting the description on digits, ``_``, spaces,
   dots and other punctuation (``11_AP_Ax5.00mm`` -> ``ap``, ``ax``, ``mm``; "AP" inside "CAP" does not match):

   - precontrast: pre, precontrast, nc, non (as in "non contrast"), noncontrast, native, nativ, unenhanced, plain
   - arterial: ap, art, arterial, arteriell, hap, lap (and words starting with "arteri")
   - portal venous: pv, pvp, ven, venous, portal, portalvenous
   - delayed / equilibrium / transitional: eq, eqp, equil, equilibrium, delay, delayed, del, late, trans,
     transitional (and words starting with "equilib" or "delay")

   The phases are tried in that order, so "LATE ARTERIAL" is arterial. "trans" is read as transitional; a
   description meaning "transverse" is therefore taken for a delayed phase: review the printed mapping. Several
   matches for one phase: the series with the most slices wins.
2. ContrastBolusAgent: when some remaining series have it and some do not, the earliest series without it is the
   precontrast phase.
3. AcquisitionTime order: the remaining requested phases take the remaining contrast series in time order.

Localisers (ImageType LOCALIZER, or fewer than 3 slices) are ignored. DICOM SEG files under the source become the
case's masks: each belongs to the case whose series it references (segments named like lesions are painted last, so
a tumour inside the liver keeps its label). The mapping is printed for review and can be saved as a manifest CSV
(case, phase, series, series_uid, mask, label) to edit and re-run with.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

from nnunet_ext.conversion.common import ConversionError, safe_case_id
from nnunet_ext.conversion.dicom_io import DicomSeries, SegFile, scan_dicom

# phase -> (whole tokens, token prefixes, phrases of several tokens)
KEYWORDS: dict[str, tuple[frozenset[str], tuple[str, ...], tuple[str, ...]]] = {
    "precontrast": (frozenset({"pre", "precontrast", "nc", "non", "noncontrast", "native", "nativ", "unenhanced",
                               "plain"}), ("precontrast", "noncontrast", "unenhanced"),
                    ("pre contrast", "non contrast", "without contrast")),
    "arterial": (frozenset({"ap", "art", "arterial", "arteriell", "hap", "lap"}), ("arteri",), ()),
    "portal_venous": (frozenset({"pv", "pvp", "ven", "venous", "portal", "portalvenous"}), ("portalven",),
                      ("portal venous",)),
    "delayed": (frozenset({"eq", "eqp", "equil", "equilibrium", "delay", "delayed", "del", "late", "trans",
                           "transitional"}), ("equilib", "delay"), ()),
}
ALIASES = {"pre": "precontrast", "native": "precontrast", "non_contrast": "precontrast", "art": "arterial",
           "pv": "portal_venous", "portal": "portal_venous", "venous": "portal_venous", "portalvenous": "portal_venous",
           "delay": "delayed", "equilibrium": "delayed", "late": "delayed"}


def canonical_phase(name: str) -> str | None:
    key = re.sub(r"[^a-z]+", "_", name.lower()).strip("_")
    return key if key in KEYWORDS else ALIASES.get(key)


def description_tokens(description: str) -> list[str]:
    """Lower-case tokens of a SeriesDescription, split on digits, ``_``, spaces, dots and other punctuation."""
    return [t for t in re.split(r"[^a-z]+", description.lower()) if t]


def phase_from_description(description: str) -> tuple[str, str] | None:
    """``(phase, matched keyword)`` from a SeriesDescription, or None (module docstring)."""
    tokens = description_tokens(description)
    joined = " ".join(tokens)
    for phase, (words, prefixes, phrases) in KEYWORDS.items():
        hit = next((p for p in phrases if f" {p} " in f" {joined} "), None)
        hit = hit or next((t for t in tokens if t in words), None)
        hit = hit or next((t for t in tokens if prefixes and t.startswith(prefixes)), None)
        if hit:
            return phase, hit
    return None


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "?"
    return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{t % 60:04.1f}"


def assign_phases(series: list[DicomSeries], phases: list[str]) -> tuple[dict[str, tuple[DicomSeries, str]],
                                                                         list[tuple[DicomSeries, str]]]:
    """Map the requested ``phases`` to series of one study; returns ``({phase: (series, how)}, ignored)``."""
    ignored = [(s, "localiser") for s in series if s.is_localizer]
    cands = [s for s in series if not s.is_localizer]
    kw = {s.uid: phase_from_description(s.description) for s in cands}
    assigned: dict[str, tuple[DicomSeries, str]] = {}
    for phase in phases:
        canon = canonical_phase(phase)
        matches = [s for s in cands if kw[s.uid] and kw[s.uid][0] == canon]
        if matches:
            best = max(matches, key=lambda s: len(s.files))
            assigned[phase] = (best, f"keyword {kw[best.uid][1]!r}")
            ignored += [(s, f"another {phase} series") for s in matches if s is not best]
    pool = sorted((s for s in cands if kw[s.uid] is None),
                  key=lambda s: (s.acquisition_time is None, s.acquisition_time or 0, s.series_number or 0))
    if any(s.contrast_agent for s in pool) and not all(s.contrast_agent for s in pool):
        plain = [s for s in pool if not s.contrast_agent]
        pre = next((p for p in phases if canonical_phase(p) == "precontrast" and p not in assigned), None)
        if pre:
            assigned[pre] = (plain[0], "no ContrastBolusAgent")
        ignored += [(s, "no contrast agent") for s in plain if not pre or s is not plain[0]]
        pool = [s for s in pool if s.contrast_agent]
    remaining = [p for p in phases if p not in assigned]
    for phase, s in zip(remaining, pool):
        assigned[phase] = (s, f"acquisition-time order ({_fmt_time(s.acquisition_time)})")
    ignored += [(s, "more series than phases") for s in pool[len(remaining):]]
    used = {id(s) for s, _ in assigned.values()} | {id(s) for s, _ in ignored}
    ignored += [(s, f"keyword for {kw[s.uid][0]!r}, which was not requested") for s in cands
                if kw[s.uid] and id(s) not in used]
    return assigned, ignored


GROUP_KEYS = (("frame", "PatientID + FrameOfReferenceUID"), ("study", "PatientID + StudyInstanceUID"),
              ("accession", "PatientID + AccessionNumber + StudyDate"), ("folder", "PatientID + top-level folder"))


def group_cases(series: list[DicomSeries], source: Path) -> list[tuple[str, list[DicomSeries], str]]:
    """Series grouped into exams: ``[(patient, series, how they were grouped)]``, sorted by patient.

    Within one PatientID (the top-level folder name when it is empty), series that share a FrameOfReferenceUID, a
    StudyInstanceUID or an AccessionNumber + StudyDate are one exam (transitively); series with none of these are
    grouped by their top-level folder. ``how`` names the keys that joined the group's series.
    """
    def top(s: DicomSeries) -> str:
        parts = s.files[0].relative_to(source).parts if s.files else ()
        return parts[0] if len(parts) > 1 else source.name

    parent = list(range(len(series)))
    used: dict[int, set[str]] = defaultdict(set)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[tuple, int] = {}
    for i, s in enumerate(series):
        patient = s.patient_id or top(s)
        keys = [("frame", s.frame_of_reference_uid), ("study", s.study_uid),
                ("accession", f"{s.accession_number}|{s.study_date}" if s.accession_number and s.study_date else "")]
        keys = [(k, v) for k, v in keys if v] or [("folder", top(s))]
        for kind, value in keys:
            j = owner.setdefault((patient, kind, value), i)
            a, b = find(i), find(j)
            if a != b:
                parent[b] = a
                used[a] |= used.pop(b, set()) | {kind}
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(series)):
        groups[find(i)].append(i)
    out = []
    for root, members in groups.items():
        items = [series[i] for i in members]
        kinds = used.get(root, set())
        how = " and ".join(name for kind, name in GROUP_KEYS if kind in kinds) or "one series"
        if len({s.study_uid for s in items if s.study_uid}) > 1:
            how += " (their StudyInstanceUIDs differ)"
        patient = items[0].patient_id or top(items[0])
        out.append((patient, items, how))
    return sorted(out, key=lambda g: (g[0], min(s.study_uid for s in g[1]), min(s.uid for s in g[1])))


def phases_from_keywords(groups: list[tuple[str, list[DicomSeries], str]]) -> list[str] | None:
    """The phases to request when the user names none: those the series descriptions name, in contrast order, when
    every non-localiser series of every case is named by a keyword (e.g. an arterial + equilibrium export); else
    None (the default phases, filled by acquisition time)."""
    found = set()
    for _, items, _ in groups:
        for s in items:
            if s.is_localizer:
                continue
            hit = phase_from_description(s.description)
            if hit is None:
                return None
            found.add(hit[0])
    order = ["precontrast", "arterial", "portal_venous", "delayed"]
    return [p for p in order if p in found] or None


def detect_phases(source: Path, phases: list[str] | None, write_manifest: str | Path | None = None,
                  skip_invalid: bool = False, default_phases: tuple[str, ...] = ("arterial", "portal_venous",
                                                                                 "delayed")) -> dict:
    """Scan ``source``, group series into cases (:func:`group_cases`), assign phases and attach DICOM SEG masks;
    print the mapping; return ``{case: CasePlan}``.

    ``phases`` None: the phases the series descriptions name (:func:`phases_from_keywords`), else
    ``default_phases``.

    Case ids are the PatientIDs (the top-level folder name when empty), suffixed ``_2``, ``_3`` for further exams.
    A phase that cannot be found is left out of the case's plan (the conversion then reports it as missing). A file
    that is not a whole DICOM image raises, naming it; with ``skip_invalid`` the cases with a series in its folder
    are skipped instead.
    """
    from nnunet_ext.conversion.dicom_multiphase import CasePlan

    invalid: list[tuple[Path, str]] = []
    segs: list[SegFile] = []
    series = scan_dicom(source, f"DICOM data under {source}", invalid=invalid, segs=segs)
    if invalid and not skip_invalid:
        listing = "; ".join(f"{f} ({why})" for f, why in invalid[:10])
        raise ConversionError(f"{len(invalid)} file(s) under {source} cannot be read as DICOM images: {listing}"
                              f"{' ...' if len(invalid) > 10 else ''}. A series would be converted without them "
                              "(e.g. without its first or last slice). Fix: re-export or re-download them, or pass "
                              "--skip-invalid to leave the cases with these files out.")
    if not series:
        raise ConversionError(f"no DICOM image series found under {source} (empty series). Fix: pass the folder that "
                              "holds the studies, or give a --manifest.")
    groups = group_cases(series, source)
    if phases is None:
        named = phases_from_keywords(groups)
        phases = named or list(default_phases)
        print(f"phases: {', '.join(phases)} ("
              f"{'named by every series description' if named else 'the default; pass --phases to choose'})")
    plans: dict[str, CasePlan] = {}
    rows, grouping = [], []
    case_of_series: dict[str, str] = {}
    for patient, items, how in groups:
        case = safe_case_id(patient or "case")
        k = 2
        while case in plans:
            case, k = f"{safe_case_id(patient)}_{k}", k + 1
        assigned, ignored = assign_phases(items, phases)
        plan = plans[case] = CasePlan(case, grouped_by=how)
        grouping.append((case, len(items), how))
        case_of_series.update({s.uid: case for s in items})
        for phase in phases:
            if phase in assigned:
                s, how_phase = assigned[phase]
                plan.phases[phase] = (s.folder, s.uid)
                rows.append((case, phase, s, how_phase))
            else:
                rows.append((case, phase, None, "NOT FOUND"))
        rows += [(case, "(ignored)", s, why) for s, why in ignored]
        folders = {s.folder for s in items}
        plan.problems += [f"{f} is {why}" for f, why in invalid if f.parent in folders]
    _attach_segs(segs, plans, case_of_series, series)
    _print_mapping(rows, source, grouping, plans)
    if write_manifest:
        _write_manifest(Path(write_manifest), rows, source, plans)
    return plans


def _attach_segs(segs: list[SegFile], plans: dict, case_of_series: dict[str, str], series: list[DicomSeries]) -> None:
    """Each SEG becomes a mask of the case whose series it references (else of the case with its PatientID and
    FrameOfReferenceUID); within a case, SEGs whose segments are named like lesions come last, so that they are
    painted over the organ they lie in."""
    from nnunet_ext.conversion.dicom_masks import LESION_NAMES, MaskSpec

    for seg in sorted(segs, key=lambda g: (any(LESION_NAMES.search(n) for n in g.segments.values()), str(g.path))):
        case = next((case_of_series[r] for r in seg.referenced_series if r in case_of_series), None)
        if case is None and seg.frame_of_reference_uid:
            case = next((case_of_series[s.uid] for s in series
                         if s.frame_of_reference_uid == seg.frame_of_reference_uid
                         and (not seg.patient_id or s.patient_id == seg.patient_id)), None)
        if case is None:
            raise ConversionError(f"DICOM SEG {seg.path} references series {seg.referenced_series or '(none)'}, "
                                  "none of which is among the scanned image series, and shares no frame of reference "
                                  "with them. Fix: put the series it was drawn on under the source folder, or move the "
                                  "SEG away.")
        plans[case].masks.append(MaskSpec(seg.path))


def _rel(path: Path, source: Path) -> str:
    try:
        return path.relative_to(source).as_posix()
    except ValueError:
        return str(path)


def _print_mapping(rows, source: Path, grouping=(), plans=None) -> None:
    print("Detected phase mapping (review it; --write-manifest saves it as an editable manifest):")
    for case, n, how in grouping:
        masks = plans[case].masks if plans else []
        extra = f"; masks {', '.join(_rel(m.path, source) for m in masks)}" if masks else ""
        print(f"  case {case}: {n} series grouped by {how}{extra}")
    print(f"  {'case':<20} {'phase':<15} {'series folder (description)':<60} {'time':<10} {'slices':>6}  by")
    for case, phase, s, how in rows:
        where = f"{_rel(s.folder, source)} ({s.description!r})" if s else "-"
        time = _fmt_time(s.acquisition_time) if s else ""
        print(f"  {case:<20} {phase:<15} {where:<60} {time:<10} {len(s.files) if s else 0:>6}  {how}")


def _write_manifest(path: Path, rows, source: Path, plans=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    written = set()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case", "phase", "series", "series_uid", "mask", "label"])
        for case, phase, s, _ in rows:
            if s is not None and phase != "(ignored)":
                uid = "" if s.uid.startswith("<") else s.uid
                masks = plans[case].masks if plans and case not in written else []
                written.add(case)
                w.writerow([case, phase, _rel(s.folder, source), uid, ";".join(_rel(m.path, source) for m in masks),
                            ""])
    print(f"manifest written to {path}")
