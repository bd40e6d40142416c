"""Medical Segmentation Decathlon (e.g. Task03_Liver) -> nnU-Net v2, through nnU-Net's own MSD converter.

Antonelli et al., "The Medical Segmentation Decathlon", Nature Communications 13, 2022. An MSD task folder holds
``imagesTr/{case}.nii.gz`` (4D ``(c, z, y, x)`` when the task has several modalities, 3D for Task03_Liver),
``labelsTr/{case}.nii.gz``, ``imagesTs`` and a ``dataset.json`` with ``modality`` / ``labels`` / ``training``.
nnU-Net's ``nnunetv2.dataset_conversion.convert_MSD_dataset.convert_msd_dataset`` splits the 4D images into
``{case}_{c:04d}.nii.gz`` and rewrites the ``dataset.json``; this module runs it on a checked view of the source (only
complete, readable cases) inside the staging folder and adds idempotency, overwrite protection and skip reporting.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from nnunet_ext.conversion.common import (
    FILE_ENDING,
    ConversionError,
    ConversionJob,
    ConversionResult,
    Stage,
    add_common_arguments,
    existing_path,
    image_header,
    nnunet_raw_redirected,
)


def _task_name(source: Path) -> str:
    m = re.match(r"^Task\d+_(.+)$", source.name)
    return re.sub(r"[^A-Za-z0-9-]+", "", m.group(1) if m else source.name) or "MSD"


def _nifti_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.name[: -len(FILE_ENDING)]: p for p in sorted(folder.iterdir())
            if p.name.endswith(FILE_ENDING) and not p.name.startswith((".", "_"))}


def _load_msd_json(source: Path) -> dict:
    path = source / "dataset.json"
    try:
        dj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConversionError(f"{source} has no dataset.json; it is not an MSD task folder. Fix: pass the extracted "
                              "TaskXX_Name folder (with imagesTr, labelsTr, dataset.json).") from e
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not valid JSON ({e}). Fix: re-extract the task archive.") from e
    missing = [k for k in ("modality", "labels") if not isinstance(dj.get(k), dict)]
    if missing:
        raise ConversionError(f"{path} lacks {missing}; it is not an MSD dataset.json (for nnU-Net v1 tasks use "
                              "`nnunet-ext convert nnunet-v1`).")
    return dj


def convert_msd(source: str | Path, dataset_id: int, output: str | Path | None = None, name: str | None = None,
                overwrite: bool = False, num_processes: int = 1, skip_invalid: bool = False,
                licence: str | None = None) -> ConversionResult:
    """Convert an MSD task folder to ``<output or $nnUNet_raw>/Dataset{id}_{name}`` (name default: the task name,
    e.g. ``Liver``) with nnU-Net's converter.

    Cases with an image but no label (or a label but no image) are skipped and reported; an unreadable image, or a
    4D image whose number of volumes differs from the ``modality`` count, is an error naming the case (or a skip with
    ``skip_invalid``). macOS ``._*`` files are ignored, as nnU-Net does.
    """
    source = existing_path(source, "MSD task", folder=True)
    dj = _load_msd_json(source)
    if not (source / "imagesTr").is_dir() or not (source / "labelsTr").is_dir():
        raise ConversionError(f"{source} has no imagesTr/labelsTr folder. Fix: pass the extracted TaskXX_Name folder.")
    name = name or _task_name(source)
    images, labels, tests = (_nifti_files(source / s) for s in ("imagesTr", "labelsTr", "imagesTs"))
    inputs = [source / "dataset.json", *images.values(), *labels.values(), *tests.values()]
    job = ConversionJob("msd", dataset_id, name, output, overwrite, inputs, source,
                        {"skip_invalid": skip_invalid}, skip_invalid, licence)
    n_channels = len(dj["modality"])

    def build(stage: Stage) -> None:
        hidden = [p.name for s in ("imagesTr", "labelsTr", "imagesTs") if (source / s).is_dir()
                  for p in (source / s).iterdir() if p.name.startswith("._")]
        if hidden:
            stage.warn(f"ignored {len(hidden)} macOS metadata file(s) such as {hidden[0]} (not images)")
        for case in sorted(set(labels) - set(images)):
            stage.incomplete(case, f"labelsTr/{case}{FILE_ENDING} has no image in imagesTr",
                             f"add imagesTr/{case}{FILE_ENDING} or remove the label")
        checked: dict[str, dict[str, Path]] = {"imagesTr": {}, "imagesTs": {}}

        def check(case: str, item: tuple[str, Path]) -> None:
            sub, path = item
            hdr = image_header(path, case)
            n = hdr.GetSize()[3] if hdr.GetDimension() == 4 else 1
            if hdr.GetDimension() not in (3, 4) or n != n_channels:
                raise ConversionError(f"case {case!r}: {sub}/{path.name} has {n} volume(s) (dimension "
                                      f"{hdr.GetDimension()}) but dataset.json declares {n_channels} modalities. "
                                      "Fix: replace the file or pass --skip-invalid.")
            checked[sub][case] = path

        todo = []
        for case, path in images.items():
            if case in labels:
                todo.append((case, ("imagesTr", path)))
            else:
                stage.incomplete(case, f"imagesTr/{path.name} has no label in labelsTr",
                                 f"add labelsTr/{case}{FILE_ENDING} (unlabeled images belong in imagesTs)")
        stage.for_each(todo, check, "MSD check")
        stage.for_each([(c, ("imagesTs", p)) for c, p in tests.items()], check, "MSD check test")
        if not checked["imagesTr"]:
            return
        shim = _shim_task(stage.scratch / "task", dataset_id, source, dj, checked, labels)
        raw = stage.scratch / "raw"
        from nnunetv2.dataset_conversion.convert_MSD_dataset import convert_msd_dataset

        with nnunet_raw_redirected(raw):
            convert_msd_dataset(str(shim), overwrite_target_id=dataset_id, num_processes=max(1, num_processes))
        stage.adopt(raw / f"Dataset{dataset_id:03d}_converted")
        stage.collect_cases()
        out = json.loads((stage.folder / "dataset.json").read_text(encoding="utf-8"))
        out.update({"name": name, "numTraining": len(stage.cases), "converted_by": "nnunet-ext convert msd"})
        stage.fix_licence(out)
        (stage.folder / "dataset.json").write_text(json.dumps(out, indent=2), encoding="utf-8")

    return job.run(build)


def _shim_task(folder: Path, dataset_id: int, source: Path, dj: dict, checked: dict[str, dict[str, Path]],
               labels: dict[str, Path]) -> Path:
    """A ``TaskNNN_converted`` folder of symlinks to the checked cases (nnU-Net's converter parses the id and name
    from the folder name and copies whole folders)."""
    shim = folder / f"Task{dataset_id:03d}_converted"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (shim / sub).mkdir(parents=True)
    for sub, files in checked.items():
        for case, path in files.items():
            os.symlink(path, shim / sub / path.name)
            if sub == "imagesTr":
                os.symlink(labels[case], shim / "labelsTr" / labels[case].name)
    shim_json = {**dj, "training": dj.get("training", []), "test": dj.get("test", [])}
    (shim / "dataset.json").write_text(json.dumps(shim_json), encoding="utf-8")
    return shim


def add_parser(sub) -> None:
    p = sub.add_parser("msd", help="Medical Segmentation Decathlon task (e.g. Task03_Liver) -> nnU-Net v2",
                       description="Convert an MSD task folder with nnU-Net's MSD converter, plus idempotency, "
                                   "overwrite protection and skipped-case reporting.")
    add_common_arguments(p, "<task name>", source_help="extracted MSD task folder, e.g. Task03_Liver")
    p.add_argument("-np", dest="num_processes", type=int, default=1, help="processes for splitting 4D images")
    p.set_defaults(func=lambda a: convert_msd(a.source, a.dataset_id, a.output,
                                              None if a.name == "<task name>" else a.name, a.overwrite,
                                              a.num_processes, a.skip_invalid, a.licence))
