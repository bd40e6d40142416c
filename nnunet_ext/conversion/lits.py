"""LiTS (Liver Tumor Segmentation Benchmark) -> nnU-Net v2.

Bilic et al., "The Liver Tumor Segmentation Benchmark (LiTS)", Medical Image Analysis 84, 2023. The public release has
``volume-N.nii`` CT volumes with ``segmentation-N.nii`` label maps (0 background, 1 liver, 2 tumour) in one or more
"Training Batch" folders, and unlabeled ``test-volume-N.nii``. Training case ``N`` becomes ``lits_{N:03d}``
(``imagesTr/lits_{N:03d}_0000.nii.gz`` + ``labelsTr``), test volume ``N`` becomes ``imagesTs/lits_test_{N:03d}``.
Arrays are read with SimpleITK, ``(z, y, x)``; the CT keeps its pixel type, labels are written as uint8 on the
volume's exact geometry.
"""

from __future__ import annotations

import re
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
    with_geometry_of,
)

LABELS = {"background": 0, "liver": 1, "tumor": 2}
_VOLUME = re.compile(r"^(test-)?volume-(\d+)\.nii(\.gz)?$")
_SEGMENTATION = re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$")


def find_lits_cases(source: Path) -> tuple[dict[str, tuple[Path, Path | None]], dict[str, Path], list[str]]:
    """Scan ``source`` (recursively) for the LiTS file names.

    Returns:
        ``{case: (volume, segmentation or None)}`` for training volumes, ``{case: volume}`` for test volumes and the
        segmentations without a volume (as file names).
    """
    volumes, tests, segs = [], [], []
    for p in sorted(source.rglob("*.nii*")):
        if p.name.startswith("."):
            continue
        if m := _VOLUME.match(p.name):
            (tests if m.group(1) else volumes).append((int(m.group(2)), p))
        elif m := _SEGMENTATION.match(p.name):
            segs.append((int(m.group(1)), p))
    fix = "keep one file per case number (e.g. remove a second copy in another batch folder)."
    check_unique_cases(((f"lits_{n:03d}", str(p)) for n, p in volumes), fix)
    check_unique_cases(((f"lits_test_{n:03d}", str(p)) for n, p in tests), fix)
    check_unique_cases(((f"segmentation-{n}", str(p)) for n, p in segs), fix)
    seg_by_n = dict(segs)
    train = {f"lits_{n:03d}": (p, seg_by_n.get(n)) for n, p in volumes}
    orphans = sorted(p.name for n, p in segs if n not in dict(volumes))
    return train, {f"lits_test_{n:03d}": p for n, p in tests}, orphans


def convert_lits(source: str | Path, dataset_id: int, output: str | Path | None = None, name: str = "LiTS",
                 overwrite: bool = False, copy_image_geometry: bool = False,
                 skip_invalid: bool = False, licence: str | None = None) -> ConversionResult:
    """Convert a LiTS download to ``<output or $nnUNet_raw>/Dataset{id}_{name}``.

    Args:
        source: the folder holding ``volume-N.nii`` / ``segmentation-N.nii`` (subfolders are searched).
        copy_image_geometry: give a segmentation whose header disagrees with its volume the volume's spacing,
            origin and direction (only when the voxel grids have the same size). Otherwise that is an error.
        skip_invalid: skip (and report) bad cases instead of aborting.

    Raises:
        ConversionError: a volume/segmentation geometry mismatch, unexpected label values, a corrupt file, duplicate
            case numbers, or an existing different dataset under ``dataset_id`` (without ``overwrite``).
    """
    source = existing_path(source, "LiTS source", folder=True)
    train, tests, orphans = find_lits_cases(source)
    inputs = [p for v, s in train.values() for p in (v, s) if p is not None] + list(tests.values())
    job = ConversionJob("lits", dataset_id, name, output, overwrite, inputs, source,
                        {"copy_image_geometry": copy_image_geometry, "skip_invalid": skip_invalid}, skip_invalid,
                        licence)

    def build(stage: Stage) -> None:
        for seg in orphans:
            stage.incomplete(seg, f"{seg} has no matching volume file", "add its volume-N.nii or remove it")
        labeled = []
        for case, (vol, seg) in train.items():
            if seg is None:
                seg_name = f"segmentation-{vol.name.split('-')[-1]}"
                stage.incomplete(case, f"{vol.name} has no {seg_name} beside it",
                                 f"put {seg_name} beside it (test volumes are named test-volume-N.nii)")
            else:
                labeled.append((case, (vol, seg)))
        stage.for_each(labeled, lambda c, vs: _convert_case(stage, c, *vs, copy_image_geometry), "LiTS training")
        stage.for_each(sorted(tests.items()), lambda c, v: stage.write_case(c, [_read_volume(v, c)], None),
                       "LiTS test")
        stage.write_dataset_json(
            {0: "CT"}, LABELS, dataset_name=name, converted_by="nnunet-ext convert lits",
            reference="Bilic et al., The Liver Tumor Segmentation Benchmark (LiTS), Medical Image Analysis 2023",
            license="CC BY-NC-SA 4.0 (LiTS)", description="LiTS liver and liver tumour CT segmentation")

    return job.run(build)


def _read_volume(path: Path, case: str) -> sitk.Image:
    img = read_image(path, case, "volume")
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ConversionError(f"case {case!r}: {path.name} is not a 3D single-channel volume "
                              f"(dimension {img.GetDimension()}). Fix: replace the file or pass --skip-invalid.")
    return img


def _convert_case(stage: Stage, case: str, vol_path: Path, seg_path: Path, copy_image_geometry: bool) -> None:
    vol = _read_volume(vol_path, case)
    seg = read_image(seg_path, case, "segmentation")
    diff = geometry_mismatch(vol, seg)
    if diff is not None:
        if not copy_image_geometry or vol.GetSize() != seg.GetSize():
            fix = ("if the segmentation was drawn on this volume and only its header is wrong, re-run with "
                   "--copy-image-geometry; otherwise replace the files" if vol.GetSize() == seg.GetSize() else
                   "replace the files (their voxel grids differ)")
            raise ConversionError(f"case {case!r}: {seg_path.name} does not match {vol_path.name} ({diff}). "
                                  f"Fix: {fix}, or pass --skip-invalid to leave the case out.")
        stage.warn(f"case {case!r}: {seg_path.name} header differs from {vol_path.name} ({diff}); the volume's "
                   "geometry was copied onto it (--copy-image-geometry).")
    arr = sitk.GetArrayViewFromImage(seg)
    values = np.unique(arr)
    bad = [v for v in values.tolist() if v not in LABELS.values()]
    if bad:
        raise ConversionError(f"case {case!r}: {seg_path.name} contains label values {bad}; LiTS uses 0 background, "
                              "1 liver, 2 tumour. Fix: correct the file or pass --skip-invalid.")
    label = with_geometry_of(sitk.Cast(seg, sitk.sitkUInt8), vol)
    stage.write_case(case, [vol], label)


def add_parser(sub) -> None:
    p = sub.add_parser("lits", help="LiTS (volume-N.nii + segmentation-N.nii) -> nnU-Net v2",
                       description="Convert the LiTS liver tumour CT dataset (Bilic et al. 2023) to nnU-Net v2: "
                                   "channel CT, labels background/liver/tumor.")
    add_common_arguments(p, "LiTS", source_help="folder with volume-N.nii and segmentation-N.nii (searched "
                                                "recursively)")
    p.add_argument("--copy-image-geometry", action="store_true",
                   help="give segmentations whose header disagrees with the volume the volume's geometry")
    p.set_defaults(func=lambda a: convert_lits(a.source, a.dataset_id, a.output, a.name, a.overwrite,
                                               a.copy_image_geometry, a.skip_invalid, a.licence))
