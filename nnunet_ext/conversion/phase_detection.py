"""Contrast-phase detection from DICOM tags, for multiphase conversion without a manifest.

Rules, in order, per study (one case = one PatientID + StudyInstanceUID):

1. SeriesDescription keywords: precontrast (pre, native, non contrast, unenhanced, plain, nc), arterial (arterial,
   art, hap, lap), portal venous (portal, venous, pv, pvp), delayed (delay, delayed, equilibrium, eq, late).
   Several matches for one phase: the series with the most slices wins.
2. ContrastBolusAgent: when some remaining series have it and some do not, the earliest series without it is the
   precontrast phase.
3. AcquisitionTime order: the remaining requested phases take the remaining contrast series in time order.

Localisers (ImageType LOCALIZER, or fewer than 3 slices) are ignored. The mapping is printed for review and can be
saved as a manifest CSV (case, phase, series, series_uid, mask, label) to edit and re-run with.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

from nnunet_ext.conversion.common import ConversionError, safe_case_id
from nnunet_ext.conversion.dicom_io import DicomSeries, scan_dicom

# phase -> (whole tokens, substrings)
KEYWORDS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "precontrast": (frozenset({"pre", "precontrast", "native", "nativ", "nc", "noncontrast", "unenhanced", "plain"}),
                    ("precontrast", "pre contrast", "non contrast", "noncontrast", "unenhanced", "without contrast")),
    "arterial": (frozenset({"art", "arterial", "arteriell", "hap", "lap"}), ("arterial", "arteriel")),
    "portal_venous": (frozenset({"pv", "pvp", "portal", "venous", "portalvenous"}), ("portal", "venous", "venos")),
    "delayed": (frozenset({"delay", "delayed", "del", "eq", "equilibrium", "late", "transitional"}),
                ("delay", "equilib")),
}
ALIASES = {"pre": "precontrast", "native": "precontrast", "non_contrast": "precontrast", "art": "arterial",
           "pv": "portal_venous", "portal": "portal_venous", "venous": "portal_venous", "portalvenous": "portal_venous",
           "delay": "delayed", "equilibrium": "delayed", "late": "delayed"}


def canonical_phase(name: str) -> str | None:
    key = re.sub(r"[^a-z]+", "_", name.lower()).strip("_")
    return key if key in KEYWORDS else ALIASES.get(key)


def phase_from_description(description: str) -> tuple[str, str] | None:
    """``(phase, matched keyword)`` from a SeriesDescription, or None."""
    low = description.lower()
    spaced = re.sub(r"[^a-z0-9]+", " ", low)
    tokens = set(spaced.split())
    for phase, (words, parts) in KEYWORDS.items():
        hit = next((w for w in sorted(words) if w in tokens), None) or next((p for p in parts if p in spaced), None)
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


def detect_phases(source: Path, phases: list[str], write_manifest: str | Path | None = None) -> dict:
    """Scan ``source``, group series into cases and assign phases; print the mapping; return ``{case: CasePlan}``.

    Case ids are the PatientIDs (the top-level folder name when empty), suffixed ``_2``, ``_3`` for further studies.
    A phase that cannot be found is left out of the case's plan (the conversion then reports it as missing).
    """
    from nnunet_ext.conversion.dicom_multiphase import CasePlan

    series = scan_dicom(source, f"DICOM data under {source}")
    if not series:
        raise ConversionError(f"no DICOM image series found under {source} (empty series). Fix: pass the folder that "
                              "holds the studies, or give a --manifest.")
    studies: dict[tuple[str, str], list[DicomSeries]] = defaultdict(list)
    for s in series:
        parts = s.files[0].relative_to(source).parts if s.files else ()
        top = parts[0] if len(parts) > 1 else source.name
        studies[(s.patient_id or top, s.study_uid or top)].append(s)
    plans: dict[str, CasePlan] = {}
    rows = []
    for (patient, _), items in sorted(studies.items()):
        case = safe_case_id(patient or "case")
        k = 2
        while case in plans:
            case, k = f"{safe_case_id(patient)}_{k}", k + 1
        assigned, ignored = assign_phases(items, phases)
        plan = plans[case] = CasePlan(case)
        for phase in phases:
            if phase in assigned:
                s, how = assigned[phase]
                plan.phases[phase] = (s.folder, s.uid)
                rows.append((case, phase, s, how))
            else:
                rows.append((case, phase, None, "NOT FOUND"))
        rows += [(case, "(ignored)", s, why) for s, why in ignored]
    _print_mapping(rows, source)
    if write_manifest:
        _write_manifest(Path(write_manifest), rows, source)
    return plans


def _rel(path: Path, source: Path) -> str:
    try:
        return path.relative_to(source).as_posix()
    except ValueError:
        return str(path)


def _print_mapping(rows, source: Path) -> None:
    print("Detected phase mapping (review it; --write-manifest saves it as an editable manifest):")
    print(f"  {'case':<20} {'phase':<15} {'series folder (description)':<60} {'time':<10} {'slices':>6}  by")
    for case, phase, s, how in rows:
        where = f"{_rel(s.folder, source)} ({s.description!r})" if s else "-"
        time = _fmt_time(s.acquisition_time) if s else ""
        print(f"  {case:<20} {phase:<15} {where:<60} {time:<10} {len(s.files) if s else 0:>6}  {how}")


def _write_manifest(path: Path, rows, source: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case", "phase", "series", "series_uid", "mask", "label"])
        for case, phase, s, _ in rows:
            if s is not None and phase != "(ignored)":
                uid = "" if s.uid.startswith("<") else s.uid
                w.writerow([case, phase, _rel(s.folder, source), uid, "", ""])
    print(f"manifest written to {path}")
