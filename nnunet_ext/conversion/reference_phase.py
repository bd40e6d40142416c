"""One phase of a multiphase dataset as a single-channel nnU-Net dataset: the data of STD-Net's encoder pre-training.

The STD-Net paper (Methods, "Implementation details") first pre-trains the shared spatial encoder for segmentation
on single-phase CT (LiTS + MSD), then fine-tunes the whole model. Users without such data, or who want the same
domain, pre-train on the reference phase of their own multiphase cases: ``nnunet-ext convert reference-phase -i
nnUNet_raw/Dataset500_X -d 510`` writes ``Dataset510_<name>`` with that phase's images (``_0000``) and the same
labels. LiTS and MSD Task03_Liver come through ``nnunet-ext convert lits`` / ``msd`` as single-phase datasets already.
The workflow that follows (``pretrain-plans``, vanilla training, ``expand-pretrained``) is in ``docs/stdnet.md``.
"""

from __future__ import annotations

from pathlib import Path

from nnunet_ext.conversion.common import (
    ConversionError,
    ConversionJob,
    ConversionResult,
    Stage,
    add_common_arguments,
    existing_path,
    read_image,
)


def _source_cases(source: Path, dataset_json: dict) -> dict[str, dict]:
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    try:
        return get_filenames_of_train_images_and_targets(str(source), dataset_json)
    except Exception as e:  # nnU-Net raises assorted errors for a malformed raw folder
        raise ConversionError(f"{source} is not a readable nnU-Net raw dataset ({e}). Fix: point -i at a folder with "
                              "dataset.json, imagesTr and labelsTr (e.g. nnUNet_raw/Dataset500_X).") from e


def resolve_phase(dataset_json: dict, phase: str | int | None) -> tuple[int, str]:
    """(channel index, phase name) of ``phase`` (a name of the ``phases`` block or channel, or an index); None: the
    dataset's reference phase (the phase STD-Net's labels belong to)."""
    from nnunet_ext.data.metadata import DatasetMetadata, phase_layout

    phases, reference = phase_layout(dataset_json, DatasetMetadata.from_dataset_json(dataset_json))
    if phase is None:
        index = reference
    elif str(phase).isdigit():
        index = int(phase)
    elif phase in phases:
        index = phases.index(phase)
    else:
        raise ConversionError(f"--phase {phase!r} is not a phase of this dataset; phases: {phases}. Fix: pass one of "
                              "these names or a channel index.")
    if not 0 <= index < len(phases):
        raise ConversionError(f"--phase {phase} is out of range: the dataset has {len(phases)} phases {phases}.")
    return index, phases[index]


def convert_reference_phase(source: str | Path, dataset_id: int, name: str | None = None,
                            phase: str | int | None = None, output_root: str | Path | None = None,
                            overwrite: bool = False) -> str:
    """Write ``Dataset{dataset_id}_{name}`` (default name: the source's name + ``Ref``) with one channel, the
    ``phase`` (default: the reference phase) of every training case of the raw dataset ``source``, and its labels.
    Returns the new dataset's folder. The labels and their geometry are the source's (they belong to the reference
    phase; with another ``phase`` the user is told that they may not be aligned)."""
    return str(_convert(source, dataset_id, name, phase, output_root, overwrite).folder)


def _convert(source, dataset_id, name, phase, output_root, overwrite, skip_invalid=False,
             licence=None) -> ConversionResult:
    import json

    source = existing_path(source, "source dataset", folder=True)
    dj_path = source / "dataset.json"
    if not dj_path.is_file():
        raise ConversionError(f"{source} has no dataset.json. Fix: point -i at an nnU-Net raw dataset folder.")
    dataset_json = json.loads(dj_path.read_text(encoding="utf-8"))
    index, phase_name = resolve_phase(dataset_json, phase)
    cases = _source_cases(source, dataset_json)
    if not cases:
        raise ConversionError(f"{source} lists no training cases. Fix: check imagesTr/labelsTr and dataset.json.")
    name = name or f"{source.name.split('_', 1)[-1]}Ref"
    inputs = [entry["images"][index] for entry in cases.values()] + [entry["label"] for entry in cases.values()]
    job = ConversionJob("reference-phase", dataset_id, name, output_root, overwrite, inputs, source,
                        {"phase": index}, skip_invalid, licence)
    reference = index == _reference_index(dataset_json)

    def one(stage: Stage, case: str, entry: dict) -> None:
        if len(entry["images"]) <= index:
            raise ConversionError(f"case {case!r} has {len(entry['images'])} channels, fewer than phase {index} "
                                  f"({phase_name}) needs. Fix: complete the case or pass --skip-invalid.")
        image = read_image(entry["images"][index], case, f"{phase_name} image")
        label = read_image(entry["label"], case, "label")
        stage.write_case(case, [image], label)

    def build(stage: Stage) -> None:
        if not reference:
            stage.warn(f"phase {phase_name!r} is not the reference phase: the labels were drawn on the reference "
                       "phase and are only correct for this phase if the phases are registered.")
        stage.for_each(sorted(cases.items()), lambda c, e: one(stage, c, e), f"phase {phase_name}")
        stage.write_dataset_json(
            {0: dataset_json["channel_names"][str(index)] if "channel_names" in dataset_json else phase_name},
            dataset_json["labels"], dataset_name=name, converted_by="nnunet-ext convert reference-phase",
            description=f"phase {phase_name!r} (channel {index}) of {source.name}, for encoder pre-training",
            license=dataset_json.get("licence") or dataset_json.get("license"))

    return job.run(build)


def _reference_index(dataset_json: dict) -> int:
    from nnunet_ext.data.metadata import DatasetMetadata, phase_layout

    return phase_layout(dataset_json, DatasetMetadata.from_dataset_json(dataset_json))[1]


def add_parser(sub) -> None:
    p = sub.add_parser("reference-phase", help="one phase (default: the reference) of a multiphase raw dataset as a "
                                               "single-channel dataset, for STD-Net's encoder pre-training",
                       description="Write the reference phase (or --phase) of every training case of an nnU-Net raw "
                                   "dataset, with its labels, as a new single-channel dataset. Pre-train a vanilla "
                                   "nnU-Net on it with the STD-Net topology (nnunet-ext pretrain-plans), then "
                                   "nnunet-ext expand-pretrained (docs/stdnet.md).")
    add_common_arguments(p, "", source_help="the multiphase raw dataset folder, e.g. $nnUNet_raw/Dataset500_X")
    p.add_argument("--phase", default=None, help="phase name or channel index (default: the reference phase)")
    p.set_defaults(func=lambda a: _convert(a.source, a.dataset_id, a.name or None, a.phase, a.output, a.overwrite,
                                           a.skip_invalid, a.licence))
