"""3D-IRCADb-01 -> nnU-Net v2 (3D), and optionally a 2D slice dataset for text-conditioned 2D models.

Soler et al., "3D image reconstruction for comparison of algorithm database: a patient specific anatomical and medical
image database", IRCAD, 2010 (https://www.ircad.fr/research/data-sets/liver-segmentation-3d-ircadb-01/). Each patient
folder ``3Dircadb1.N`` holds ``PATIENT_DICOM.zip`` (``PATIENT_DICOM/image_K``: the CT, one DICOM file per slice) and
``MASKS_DICOM.zip`` (``MASKS_DICOM/<structure>/image_K``: 0/255 masks on the same grid, e.g. ``liver``,
``livertumor01``, ``livertumor02``, ``portalvein``). Archives are extracted into the staging folder after every member
path was checked (absolute paths and ``..`` - "zip slip" - are refused). Already-extracted folders work as well.

Labels: 0 background, 1 liver, 2 tumour (every ``livertumor*`` mask merged). Case ``3Dircadb{S}.{N}`` becomes
``ircadb{S}_{N:03d}``. Texts (``nnunet_ext`` metadata ``cases.<id>.text``) come from ``texts`` (CSV ``case,text`` or
JSON ``{case: text}``) or from :func:`nnunet_ext.conversion.describe.describe_lesions`. The 2D dataset holds every
slice that contains liver as a single-slice NIfTI (``(z, y, x)`` = ``(1, Y, X)``; nnU-Net reads it as 2D), case id
``{case}_z{K:03d}``; its texts are per slice (a case-level text from ``texts`` applies to all its slices).
"""

from __future__ import annotations

import csv
import json
import re
import zipfile
from pathlib import Path, PurePosixPath

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
    with_geometry_of,
)

LABELS = {"background": 0, "liver": 1, "tumor": 2}
_PATIENT = re.compile(r"^3Dircadb(\d+)\.(\d+)$", re.IGNORECASE)
_PARTS = ("PATIENT_DICOM", "MASKS_DICOM")


def ircadb_case_id(folder_name: str) -> str | None:
    """``3Dircadb1.7`` -> ``ircadb1_007`` (None for other names)."""
    m = _PATIENT.match(folder_name)
    return f"ircadb{int(m.group(1))}_{int(m.group(2)):03d}" if m else None


def find_ircadb_patients(source: Path) -> dict[str, Path]:
    """``{case id: patient folder}`` for every ``3Dircadb{S}.{N}`` folder at or below ``source`` (3 levels)."""
    found = []
    for p in [source, *source.glob("*"), *source.glob("*/*"), *source.glob("*/*/*")]:
        if p.is_dir() and (case := ircadb_case_id(p.name)):
            found.append((case, p))
    check_unique_cases(((c, str(p)) for c, p in found), "keep one folder per patient (e.g. 3Dircadb1.1 and "
                                                        "3Dircadb1.01 are the same patient).")
    return dict(sorted(found))


def safe_extract(archive: Path, dest: Path, case: str) -> None:
    """Extract ``archive`` into ``dest`` after checking every member; refuse absolute paths, ``..`` and symlinks."""
    try:
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                name = info.filename.replace("\\", "/")
                parts = PurePosixPath(name).parts
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts or is_link:
                    raise ConversionError(
                        f"case {case!r}: {archive.name} contains the unsafe member {info.filename!r} (an absolute "
                        "path, '..' or a symlink could write outside the extraction folder: a zip-slip archive). "
                        "Nothing was extracted. Fix: re-download the archive from the official source.")
            root = dest.resolve()
            for info in z.infolist():
                target = (dest / info.filename).resolve()
                if root not in target.parents and target != root:  # defence in depth
                    raise ConversionError(f"case {case!r}: {archive.name} member {info.filename!r} resolves outside "
                                          "the extraction folder. Fix: re-download the archive.")
            z.extractall(dest)
    except zipfile.BadZipFile as e:
        raise ConversionError(f"case {case!r}: {archive} is not a valid zip archive ({e}). Fix: re-download it.") from e


def load_texts(path: str | Path | None) -> dict[str, str]:
    """``{case or slice id: text}`` from a CSV with columns ``case,text`` or a JSON object; keys may also be the
    patient folder names (``3Dircadb1.1``)."""
    if path is None:
        return {}
    path = existing_path(path, "texts", folder=False)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConversionError(f"texts file {path} is not valid JSON ({e}). Fix the file.") from e
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ConversionError(f"texts file {path} must be a JSON object {{case: text}} with string values.")
        pairs = [(str(k), v) for k, v in data.items()]
    else:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"case", "text"} <= set(rows[0]):
            raise ConversionError(f"texts file {path} needs the columns case,text. Fix the header.")
        pairs = [(r["case"].strip(), r["text"]) for r in rows]
    return {ircadb_case_id(k) or k: v for k, v in pairs}  # "3Dircadb1.1" and "ircadb1_001" both work


def _part_folder(patient: Path, part: str, scratch: Path, case: str) -> Path | None:
    extracted = patient / part
    if extracted.is_dir():
        return extracted
    archive = patient / f"{part}.zip"
    if not archive.is_file():
        return None
    dest = scratch / case
    safe_extract(archive, dest, case)
    return dest / part if (dest / part).is_dir() else dest


IRCADB_FIX = ("restore the patient folder from the 3D-IRCADb-01 download (PATIENT_DICOM.zip and MASKS_DICOM.zip with "
              "a liver mask)")


def load_ircadb_case(patient: Path, case: str, scratch: Path) -> tuple[sitk.Image, sitk.Image] | str:
    """``(ct, label)`` on the CT grid, or the reason the case cannot be used (missing archive or liver mask)."""
    from nnunet_ext.conversion.dicom_io import read_series, scan_dicom

    folders = {p: _part_folder(patient, p, scratch, case) for p in _PARTS}
    missing = [p for p, f in folders.items() if f is None]
    if missing:
        return f"no {' or '.join(m + '.zip' for m in missing)} in {patient.name}"
    series = scan_dicom(folders["PATIENT_DICOM"], f"case {case!r} PATIENT_DICOM")
    if len(series) != 1:
        raise ConversionError(f"case {case!r}: PATIENT_DICOM holds {len(series)} image series, expected 1 (empty "
                              "series or mixed data). Fix: re-download the patient archive.")
    ct = read_series(series[0], f"case {case!r} PATIENT_DICOM")
    masks = {p.name.lower(): p for p in sorted(folders["MASKS_DICOM"].iterdir()) if p.is_dir()}
    if "liver" not in masks:
        return f"MASKS_DICOM has no liver mask (found {sorted(masks)})"
    label = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    for name in ["liver"] + [n for n in masks if n.startswith("livertumor")]:
        ctx = f"case {case!r} mask {name}"
        found = scan_dicom(masks[name], ctx)
        if len(found) != 1:
            raise ConversionError(f"{ctx}: expected one mask series, found {len(found)}. Fix: re-download the "
                                  "MASKS_DICOM archive.")
        mask = read_series(found[0], ctx)
        if diff := geometry_mismatch(ct, mask):
            raise ConversionError(f"{ctx}: the mask grid differs from the CT ({diff}). Fix: re-download the "
                                  "archives.")
        label[sitk.GetArrayViewFromImage(mask) > 0] = LABELS["liver" if name == "liver" else "tumor"]
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(ct)
    return ct, lab


def _describe(ct: sitk.Image, label: sitk.Image) -> str:
    from nnunet_ext.conversion.describe import describe_lesions

    ct_lps, lab_lps = sitk.DICOMOrient(ct, "LPS"), sitk.DICOMOrient(label, "LPS")  # the describer's convention
    arr = sitk.GetArrayFromImage(lab_lps)
    return describe_lesions(sitk.GetArrayFromImage(ct_lps)[None].astype(np.float32), arr > 0, arr == 2,
                            tuple(float(s) for s in ct_lps.GetSpacing()[::-1]))


def convert_ircadb(source: str | Path, dataset_id: int, output: str | Path | None = None, name: str = "3DIRCADb",
                   overwrite: bool = False, texts: str | Path | None = None, describe: bool = True,
                   two_d: bool = False, dataset_id_2d: int | None = None, skip_invalid: bool = False,
                   licence: str | None = None
                   ) -> ConversionResult:
    """Convert 3D-IRCADb to ``Dataset{id}_{name}`` (3D) and, with ``two_d``, ``Dataset{id_2d}_{name}2D``.

    Args:
        texts: CSV/JSON of texts per case (or per 2D slice id); cases it lacks are described automatically when
            ``describe`` is True, else have no text.
        describe: generate missing texts with the rule-based describer.
        two_d: also write the 2D slice dataset, under ``dataset_id_2d`` (default ``dataset_id + 1``).

    Returns:
        The 3D result; the 2D result is in ``result.reports["dataset_2d"]`` (its folder) and returned by
        :func:`convert_ircadb_2d` when called directly.
    """
    source = existing_path(source, "3D-IRCADb source", folder=True)
    patients = find_ircadb_patients(source)
    if not patients:
        raise ConversionError(f"no 3Dircadb1.N patient folders under {source}. Fix: pass the extracted 3Dircadb1 "
                              "folder.")
    user_texts = load_texts(texts)
    inputs = _inputs(patients, texts)
    options = {"texts": texts is not None, "describe": describe, "skip_invalid": skip_invalid}
    job = ConversionJob("ircadb", dataset_id, name, output, overwrite, inputs, source, options, skip_invalid,
                        licence)

    def build(stage: Stage) -> None:
        case_texts: dict[str, str] = {}

        def one(case: str, patient: Path) -> None:
            loaded = load_ircadb_case(patient, case, stage.scratch)
            if isinstance(loaded, str):
                stage.incomplete(case, loaded, IRCADB_FIX)
                return
            ct, label = loaded
            text = user_texts.get(case) or (_describe(ct, label) if describe else None)
            if text:
                case_texts[case] = text
            stage.write_case(case, [ct], label)

        stage.for_each(list(patients.items()), one, "3D-IRCADb")
        _write_json(stage, name, case_texts, "3D")

    result = job.run(build)
    if two_d:
        res2d = convert_ircadb_2d(source, dataset_id_2d or dataset_id + 1, output, f"{name}2D", overwrite, texts,
                                  describe, skip_invalid, licence)
        result.reports["dataset_2d"] = res2d.folder
    return result


def convert_ircadb_2d(source: str | Path, dataset_id: int, output: str | Path | None = None,
                      name: str = "3DIRCADb2D", overwrite: bool = False, texts: str | Path | None = None,
                      describe: bool = True, skip_invalid: bool = False,
                      licence: str | None = None) -> ConversionResult:
    """The 2D slice dataset alone: every axial slice containing liver, ``(1, Y, X)`` NIfTI, with a per-slice text."""
    source = existing_path(source, "3D-IRCADb source", folder=True)
    patients = find_ircadb_patients(source)
    user_texts = load_texts(texts)
    options = {"texts": texts is not None, "describe": describe, "skip_invalid": skip_invalid, "slices": "liver"}
    job = ConversionJob("ircadb-2d", dataset_id, name, output, overwrite, _inputs(patients, texts), source, options,
                        skip_invalid, licence)

    def build(stage: Stage) -> None:
        slice_texts: dict[str, str] = {}

        def one(case: str, patient: Path) -> None:
            loaded = load_ircadb_case(patient, case, stage.scratch)
            if isinstance(loaded, str):
                stage.incomplete(case, loaded, IRCADB_FIX)
                return
            ct, label = loaded
            zs = np.flatnonzero(sitk.GetArrayViewFromImage(label).reshape(label.GetSize()[2], -1).max(axis=1) > 0)
            for z in zs.tolist():
                sid = f"{case}_z{z:03d}"
                ct_z, lab_z = ct[:, :, z:z + 1], with_geometry_of(label[:, :, z:z + 1], ct[:, :, z:z + 1])
                text = user_texts.get(sid) or user_texts.get(case) or (_describe(ct_z, lab_z) if describe else None)
                if text:
                    slice_texts[sid] = text
                stage.write_case(sid, [ct_z], lab_z)

        stage.for_each(list(patients.items()), one, "3D-IRCADb 2D slices")
        _write_json(stage, name, slice_texts, "2D slices with liver")

    return job.run(build)


def _inputs(patients: dict[str, Path], texts) -> list[Path]:
    files = [f for p in patients.values() for f in sorted(p.rglob("*"))
             if f.is_file() and (f.name in {"PATIENT_DICOM.zip", "MASKS_DICOM.zip"} or
                                 any(part in f.parts for part in _PARTS))]
    return files + ([Path(texts)] if texts is not None else [])


def _write_json(stage: Stage, name: str, texts: dict[str, str], kind: str) -> None:
    from nnunet_ext.data.metadata import CaseRecord, DatasetMetadata

    metadata = DatasetMetadata(cases={c: CaseRecord(text=t) for c, t in texts.items()}) if texts else None
    stage.write_dataset_json({0: "CT"}, LABELS, metadata, dataset_name=name, converted_by="nnunet-ext convert ircadb",
                             reference="Soler et al., 3D-IRCADb-01, IRCAD 2010", description=f"3D-IRCADb {kind}",
                             license="3D-IRCADb terms of use (research only)")


def add_parser(sub) -> None:
    p = sub.add_parser("ircadb", help="3D-IRCADb-01 (3Dircadb1.N/*.zip) -> nnU-Net v2 (3D, optionally 2D slices)",
                       description="Convert 3D-IRCADb with liver and merged tumour labels and lesion texts.")
    add_common_arguments(p, "3DIRCADb", source_help="folder holding the 3Dircadb1.N patient folders")
    p.add_argument("--texts", help="CSV (case,text) or JSON {case: text}; default: generated by the describer")
    p.add_argument("--no-describe", action="store_true", help="do not generate texts for cases without one")
    p.add_argument("--2d", dest="two_d", action="store_true", help="also write a 2D slice dataset (slices with liver)")
    p.add_argument("--2d-id", dest="dataset_id_2d", type=int, default=None, help="its dataset id (default: -d + 1)")
    p.set_defaults(func=lambda a: convert_ircadb(a.source, a.dataset_id, a.output, a.name, a.overwrite, a.texts,
                                                 not a.no_describe, a.two_d, a.dataset_id_2d, a.skip_invalid,
                                                 a.licence))
