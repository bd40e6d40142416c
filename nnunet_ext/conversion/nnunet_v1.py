"""nnU-Net v1 raw task (``TaskXXX_Name``) -> nnU-Net v2, through nnU-Net's own converter, plus sanity checks.

Isensee et al., "nnU-Net", Nature Methods 18, 2021: v1 raw tasks hold ``imagesTr/{case}_{c:04d}.nii.gz``,
``labelsTr/{case}.nii.gz`` and a ``dataset.json`` with ``modality`` (channel names), string-keyed ``labels`` and a
``training`` list. nnU-Net's ``nnunetv2.dataset_conversion.convert_raw_dataset_from_old_nnunet_format.convert`` copies
the folders and rewrites the json; this module first checks every case of the source (an incomplete case, a truncated
or NaN-holding file, or label values the json does not declare is an error unless ``skip_invalid``), runs it on the
checked cases inside the staging folder and then checks what nnU-Net does not:

* a channel named ``"CT"`` whose data do not look like CT (no negative values where CT in HU has air at -1000; MRI
  sequence names on the other channels or in the description; MRI hints in file names). nnU-Net would apply CT
  normalisation to it. Real example: the ProstateX bi-parametric MRI task of picai_prep calls its ADC channel "CT".
  ``rename_channels={1: "ADC"}`` (CLI ``--rename-channel 1=ADC``) fixes the name.
* label headers that disagree with the images (the same ProstateX labels say 3.6 mm slices for 3.0 mm images) - a
  warning, or ``copy_image_geometry=True`` to give the labels the images' geometry; different grid sizes are an error.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_ext.conversion.common import (
    FILE_ENDING,
    ConversionError,
    ConversionJob,
    ConversionResult,
    Stage,
    add_common_arguments,
    check_file,
    existing_path,
    header_mismatch,
    image_header,
    nnunet_raw_redirected,
    parse_mapping,
    read_image,
    with_geometry_of,
    write_image,
)

_MRI_TOKENS = re.compile(r"(^|[^a-z])(t1\w*|t2\w*|flair|adc|dwi|hbv|b\d{3,4}|pd\w*|dce|mri?|bpmri|mpmri|swi|"
                         r"diffusion|perfusion)($|[^a-z])", re.IGNORECASE)
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(FILE_ENDING) + "$")
_CT_AIR_HU = -200.0  # a CT in HU nearly always has voxels below this (air, lungs, the table's surroundings)


def _load_v1_json(source: Path) -> dict:
    path = source / "dataset.json"
    try:
        dj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConversionError(f"{source} has no dataset.json; it is not an nnU-Net v1 task. Fix: pass the TaskXXX_Name "
                              "folder that holds imagesTr, labelsTr and dataset.json.") from e
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not valid JSON ({e}). Fix the file and retry.") from e
    if not isinstance(dj.get("modality"), dict) or not isinstance(dj.get("labels"), dict):
        raise ConversionError(f"{path} has no v1 'modality'/'labels' objects (a v2 dataset.json has 'channel_names'; "
                              "those need no conversion).")
    return dj


def convert_nnunet_v1(source: str | Path, dataset_id: int, output: str | Path | None = None, name: str | None = None,
                      overwrite: bool = False, rename_channels: dict[int, str] | None = None,
                      copy_image_geometry: bool = False, skip_invalid: bool = False,
                      licence: str | None = None) -> ConversionResult:
    """Convert a v1 raw task to ``<output or $nnUNet_raw>/Dataset{id}_{name}`` (name default: from ``TaskXXX_Name``).

    Args:
        rename_channels: ``{channel index: new name}`` applied to ``channel_names`` (e.g. ``{1: "ADC"}``).
        copy_image_geometry: rewrite labels whose header disagrees with their images (same grid size) with the
            images' spacing/origin/direction; otherwise that is reported as a warning.

    Raises:
        ConversionError: a case with a missing channel or label file (or a label without images), a truncated or
            NaN-holding image, or label values the v1 dataset.json does not declare; with ``skip_invalid`` such
            cases are skipped and reported instead.
    """
    source = existing_path(source, "nnU-Net v1 task", folder=True)
    dj = _load_v1_json(source)
    if not (source / "imagesTr").is_dir() or not (source / "labelsTr").is_dir():
        raise ConversionError(f"{source} has no imagesTr/labelsTr folder. Fix: pass the TaskXXX_Name folder.")
    m = re.match(r"^Task\d+_(.+)$", source.name)
    name = name or re.sub(r"[^A-Za-z0-9_-]+", "", m.group(1) if m else str(dj.get("name", "v1"))) or "v1"
    channels = sorted(int(k) for k in dj["modality"])
    rename = {int(k): str(v) for k, v in (rename_channels or {}).items()}
    bad = sorted(set(rename) - set(channels))
    if bad:
        raise ConversionError(f"--rename-channel {bad}: the task has channels {channels} ({dj['modality']}). Fix: use "
                              "one of those indices.")
    train, tests = _scan_channels(source / "imagesTr"), _scan_channels(source / "imagesTs")
    labels = {p.name[: -len(FILE_ENDING)]: p for p in sorted((source / "labelsTr").glob(f"*{FILE_ENDING}"))
              if not p.name.startswith(".")}
    inputs = [source / "dataset.json", *labels.values()] + [p for d in (train, tests) for c in d.values()
                                                             for p in c.values()]
    options = {"rename_channels": {str(k): v for k, v in sorted(rename.items())},
               "copy_image_geometry": copy_image_geometry, "skip_invalid": skip_invalid}
    declared = _declared_label_values(source, dj)
    job = ConversionJob("nnunet-v1", dataset_id, name, output, overwrite, inputs, source, options, skip_invalid,
                        licence)

    def build(stage: Stage) -> None:
        complete: dict[str, dict[int, Path]] = {}
        test_ok: dict[str, dict[int, Path]] = {}

        def check_train(case: str, files: dict[int, Path]) -> None:
            _check_case(source, case, files, channels, labels.get(case), declared)
            complete[case] = files

        def check_test(case: str, files: dict[int, Path]) -> None:
            _check_case(source, case, files, channels, None, declared, test=True)
            test_ok[case] = files

        orphans = [(case, {}) for case in sorted(set(labels) - set(train))]
        stage.for_each(sorted(train.items()) + orphans, check_train, "v1 check")
        stage.for_each(sorted(tests.items()), check_test, "v1 check test")
        if not complete:
            return
        shim = _shim_task(stage.scratch / "task", source, dj, complete, labels, test_ok)
        raw = stage.scratch / "raw"
        from nnunetv2.dataset_conversion.convert_raw_dataset_from_old_nnunet_format import convert

        with nnunet_raw_redirected(raw):
            convert(str(shim), f"Dataset{dataset_id:03d}_converted")
        stage.adopt(raw / f"Dataset{dataset_id:03d}_converted")
        stage.collect_cases()
        stage.for_each([(c, None) for c in stage.cases],
                       lambda c, _: _check_geometry(stage, c, channels, copy_image_geometry), "v1 geometry check")
        out = json.loads((stage.folder / "dataset.json").read_text(encoding="utf-8"))
        for idx, new in rename.items():
            out["channel_names"][str(idx)] = new
        for idx, reasons, suggestion in suspicious_ct_channels(stage.folder, out, dj, stage.cases):
            stage.warn(f"channel {idx} is named 'CT' in {source.name}/dataset.json but does not look like CT: "
                       f"{'; '.join(reasons)}. nnU-Net applies CT normalisation (clipping to the dataset's foreground "
                       "intensity percentiles, then one global z-score) to 'CT' channels, which is wrong for MRI/ADC. "
                       f"Fix: re-run with --rename-channel {idx}={suggestion} (any non-CT name selects per-image "
                       "z-score normalisation).")
        out.update({"name": name, "numTraining": len(stage.cases), "converted_by": "nnunet-ext convert nnunet-v1"})
        stage.fix_licence(out)
        (stage.folder / "dataset.json").write_text(json.dumps(out, indent=2), encoding="utf-8")

    return job.run(build)


def _declared_label_values(source: Path, dj: dict) -> dict[int, str]:
    """``{value: name}`` of the v1 json's ``labels`` (string keys such as ``"1"``)."""
    out = {}
    for key, label_name in dj["labels"].items():
        try:
            out[int(str(key).strip())] = str(label_name)
        except ValueError:
            raise ConversionError(f"{source.name}/dataset.json: label key {key!r} is not an integer (v1 labels are "
                                  "{\"0\": \"background\", \"1\": ...}). Fix: correct the labels object.") from None
    return out


def _check_case(source: Path, case: str, files: dict[int, Path], channels: list[int], label: Path | None,
                declared: dict[int, str], test: bool = False) -> None:
    """Raise a :class:`ConversionError` for an incomplete case (missing channel or label file), a truncated or
    NaN-holding file, or label values the dataset.json does not declare."""
    sub = "imagesTs" if test else "imagesTr"
    if not files:
        raise ConversionError(f"case {case!r}: labelsTr/{case}{FILE_ENDING} has no images (no {sub}/{case}_XXXX"
                              f"{FILE_ENDING} in {source}). Fix: add the image files or remove the label, or pass "
                              "--skip-invalid to leave the case out.")
    missing = [c for c in channels if c not in files]
    if missing:
        names = ", ".join(f"{sub}/{case}_{c:04d}{FILE_ENDING}" for c in missing)
        raise ConversionError(f"case {case!r}: missing channel file(s) {names} in {source} (the dataset.json declares "
                              f"channels {channels}). Fix: add the file(s), or pass --skip-invalid to leave the case "
                              "out.")
    if not test and label is None:
        raise ConversionError(f"case {case!r}: no label labelsTr/{case}{FILE_ENDING} in {source}. Fix: add the label, "
                              "or pass --skip-invalid to leave the case out.")
    for c in channels:
        check_file(files[c], case, f"channel {c} image")
    if label is None:
        return
    label_image = read_image(label, case, "label")  # keep a reference: the array view does not own the voxels
    values = np.unique(sitk.GetArrayViewFromImage(label_image))
    unexpected = [v for v in values.tolist() if v not in declared]
    if unexpected:
        raise ConversionError(f"case {case!r}: label {label.name} contains value(s) {unexpected} that "
                              f"{source.name}/dataset.json does not declare (its labels are "
                              f"{', '.join(f'{v} {n}' for v, n in sorted(declared.items()))}). Fix: correct the label "
                              "file or add the values to the dataset.json labels, or pass --skip-invalid to leave the "
                              "case out.")


def _scan_channels(folder: Path) -> dict[str, dict[int, Path]]:
    out: dict[str, dict[int, Path]] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if (m := _CHANNEL.match(p.name)) and not p.name.startswith("."):
                out.setdefault(m.group("case"), {})[int(m.group("ch"))] = p
    return out


def _shim_task(folder: Path, source: Path, dj: dict, complete: dict, labels: dict, tests: dict) -> Path:
    """A folder of symlinks to the complete cases with a ``dataset.json`` that has every key nnU-Net's converter
    deletes (it raises a KeyError on v1 jsons that lack e.g. ``numTest``)."""
    shim = folder / source.name
    for sub in ("imagesTr", "labelsTr"):
        (shim / sub).mkdir(parents=True)
    for case, files in complete.items():
        for p in files.values():
            os.symlink(p, shim / "imagesTr" / p.name)
        os.symlink(labels[case], shim / "labelsTr" / labels[case].name)
    if tests:
        (shim / "imagesTs").mkdir()
        for files in tests.values():
            for p in files.values():
                os.symlink(p, shim / "imagesTs" / p.name)
    fixed = {"tensorImageSize": "4D", "numTest": len(tests), "training": [], "test": [], **dj}
    (shim / "dataset.json").write_text(json.dumps(fixed), encoding="utf-8")
    return shim


def _check_geometry(stage: Stage, case: str, channels: list[int], copy_image_geometry: bool) -> None:
    paths = [stage.image_path(case, c) for c in channels]
    headers = [image_header(p, case) for p in paths]
    for p, h in zip(paths[1:], headers[1:]):
        if diff := header_mismatch(headers[0], h):
            raise ConversionError(f"case {case!r}: channel file {p.name} does not match {paths[0].name} ({diff}). "
                                  "Fix: resample the channels onto one grid, or pass --skip-invalid.")
    label_path = stage.label_path(case)
    diff = header_mismatch(headers[0], image_header(label_path, case, "label"))
    if diff is None:
        return
    if headers[0].GetSize() != image_header(label_path, case, "label").GetSize():
        raise ConversionError(f"case {case!r}: label {label_path.name} is on another voxel grid than the images "
                              f"({diff}). Fix: resample the label onto the images, or pass --skip-invalid.")
    if copy_image_geometry:
        write_image(with_geometry_of(read_image(label_path, case, "label"), read_image(paths[0], case)), label_path)
        stage.warn(f"case {case!r}: label header differed from the images ({diff}); the images' geometry was copied "
                   "onto it (--copy-image-geometry).")
    else:
        stage.warn(f"case {case!r}: label header differs from the images ({diff}) although the voxel grids have the "
                   "same size; nnU-Net's verify_dataset_integrity rejects this. Fix: if the label was drawn on these "
                   "images, re-run with --copy-image-geometry.")


def suspicious_ct_channels(folder: Path, v2_json: dict, v1_json: dict, cases: list[str],
                           n_sample: int = 3) -> list[tuple[int, list[str], str]]:
    """Channels named "CT" that do not look like CT: ``[(index, reasons, suggested name)]``.

    Looks at up to ``n_sample`` cases' images of the channel (``(z, y, x)`` intensities), the other channel names,
    the v1 json's name/description and the file names.
    """
    names = {int(k): str(v) for k, v in v2_json["channel_names"].items()}
    others = [n for i, n in names.items() if n.upper() != "CT"]
    mri_others = [n for n in others if _MRI_TOKENS.search(n)]
    text = " ".join(str(v1_json.get(k, "")) for k in ("name", "description", "task"))
    out = []
    for idx, channel_name in sorted(names.items()):
        if channel_name.upper() != "CT":
            continue
        reasons = []
        arrays = [sitk.GetArrayViewFromImage(sitk.ReadImage(str(folder / "imagesTr" / f"{c}_{idx:04d}{FILE_ENDING}")))
                  for c in cases[:n_sample]]
        lowest = min((float(np.min(a)) for a in arrays), default=None)
        if lowest is not None and lowest > _CT_AIR_HU:
            integer = all(np.issubdtype(a.dtype, np.integer) for a in arrays)
            reasons.append(f"its lowest value is {lowest:g} in {len(arrays)} sampled case(s) "
                           f"({'integers, ' if integer else ''}no negative HU; CT has air at about -1000 HU)")
        if mri_others:
            reasons.append(f"the other channels are MRI sequences ({', '.join(mri_others)})")
        if m := _MRI_TOKENS.search(text):
            reasons.append(f"the dataset description mentions {m.group(2)!r}")
        hinted = [c for c in cases if _MRI_TOKENS.search(c.replace("_", " "))]
        if hinted:
            reasons.append(f"file names such as {hinted[0]!r} suggest MRI")
        if reasons:
            upper = {n.upper() for n in others}
            bpmri = any(n.startswith("T2") for n in upper) and upper & {"HBV", "DWI", "B800", "B1000", "B1400"}
            out.append((idx, reasons, "ADC" if bpmri and "ADC" not in upper else "MR"))
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("nnunet-v1", help="nnU-Net v1 raw task (TaskXXX_Name) -> nnU-Net v2",
                       description="Convert a v1 raw task with nnU-Net's converter, then check channel names and "
                                   "label geometry.")
    add_common_arguments(p, "<task name>", source_help="v1 task folder TaskXXX_Name (imagesTr, labelsTr, "
                                                       "dataset.json)")
    p.add_argument("--rename-channel", action="append", metavar="INDEX=NAME", default=[],
                   help="rename a channel, e.g. --rename-channel 1=ADC (repeatable)")
    p.add_argument("--copy-image-geometry", action="store_true",
                   help="give labels whose header disagrees with the images the images' geometry")
    p.set_defaults(func=lambda a: convert_nnunet_v1(
        a.source, a.dataset_id, a.output, None if a.name == "<task name>" else a.name, a.overwrite,
        parse_mapping(a.rename_channel, "--rename-channel"), a.copy_image_geometry, a.skip_invalid, a.licence))
