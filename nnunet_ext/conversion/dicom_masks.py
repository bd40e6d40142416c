"""The masks of a multiphase case (NIfTI/NRRD/MHA label maps or DICOM SEG files) merged into one label map.

A case may have several masks, e.g. liver and tumour drawn as two DICOM SEG files. Each mask is read (a SEG as one
binary image per segment, overlapping segments kept apart), resampled (nearest neighbour) onto the reference grid
through the registration of the phase it was drawn on (a SEG: the phase whose series it references; else its
``mask_phase``, the case's, or the reference), and painted in the declared order: later labels win where masks
overlap, so a tumour inside the liver keeps its label when it comes second.

Label values (:meth:`CaseMasks.value`): a number given as the mask's label; else the label name's position in
``--labels``; else one value per distinct name (SEG segment labels, ``mask_label``) in order of first appearance
over the dataset. A plain label map without a label keeps its own values (named ``label_k``, or ``lesion`` when 1
is the only value, unless ``--labels`` names them). A SEG that references none of the case's series was drawn on
another series and is an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_ext.conversion.common import ConversionError, Stage, read_image

LESION_NAMES = re.compile(r"lesion|tumou?r|hcc|cancer|mass|nodule|metasta|neoplas", re.IGNORECASE)


@dataclass
class MaskSpec:
    """One mask file of a case: ``label`` names its label (a name, or a value written as digits) for the whole
    mask (None: a SEG's segment labels, or a label map's own values); ``phase`` is the phase it was drawn on."""

    path: Path
    label: str | None = None
    phase: str | None = None


class CaseMasks:
    """The dataset's label names and values while cases are converted, and the merge of one case's masks."""

    def __init__(self, stage: Stage, phases: list[str], reference: str, labels: Sequence[str] | None):
        self.stage, self.phases, self.reference = stage, phases, reference
        self.label_names: dict[int, str] = {i + 1: n for i, n in enumerate(labels or [])}
        self.fixed_labels = bool(labels)
        self.max_label = 0

    def merge(self, case: str, masks: Sequence[MaskSpec], default_phase: str | None, ref: sitk.Image, uids: dict,
              transforms: dict) -> sitk.Image:
        """Every mask of the case on the reference grid ``ref``, merged in the declared order (later labels win).
        ``uids``: {phase: SeriesInstanceUID}; ``transforms``: {phase: registration transform onto ``ref``}."""
        from nnunet_ext.conversion.registration import resample_onto

        out = np.zeros(sitk.GetArrayViewFromImage(ref).shape, np.uint16)
        for spec in masks:
            for value, image, phase in self._read(case, spec, default_phase, uids):
                moved = resample_onto(image, ref, transforms.get(phase), sitk.sitkNearestNeighbor, 0)
                arr = sitk.GetArrayViewFromImage(moved)
                if value is None:  # a label map keeps its own values
                    out = np.where(arr > 0, arr, out)
                else:
                    out[arr > 0] = value
        top = int(out.max())
        if self.fixed_labels and top > len(self.label_names):
            raise ConversionError(f"case {case!r}: mask value {top} but only {len(self.label_names)} label names were "
                                  f"given ({list(self.label_names.values())}). Fix: extend --labels.")
        if top == 0:
            self.stage.warn(f"case {case!r}: the mask is empty on the reference grid (wrong mask_phase or frame of "
                            "reference?).")
        self.max_label = max(self.max_label, top)
        label = sitk.GetImageFromArray(out.astype(np.uint8))
        label.CopyInformation(ref)
        return label

    def _read(self, case: str, spec: MaskSpec, default_phase: str | None, uids: dict
              ) -> list[tuple[int | None, sitk.Image, str]]:
        """``[(label value or None for a label map's own values, image, phase drawn on)]`` of one mask file."""
        from nnunet_ext.conversion.dicom_io import is_dicom_seg, read_dicom_seg

        phase = spec.phase or default_phase
        name = spec.path.name
        if is_dicom_seg(spec.path):
            segments, refs = read_dicom_seg(spec.path, f"case {case!r} mask")
            by_uid = {u: p for p, u in uids.items() if u}
            drawn_on = next((by_uid[r] for r in refs if r in by_uid), None)
            if refs and by_uid and drawn_on is None:
                listing = ", ".join(f"{p}: {u}" for u, p in by_uid.items())
                raise ConversionError(f"case {case!r}: DICOM SEG {spec.path} references series {', '.join(refs)}, "
                                      f"none of which is a phase of this case ({listing}); it was drawn on another "
                                      "series and would be placed wrongly. Fix: add the series it references as a "
                                      "phase, or give this case its own SEG.")
            phase = phase or drawn_on or self.reference
            self._check_phase(case, phase, name)
            if spec.label is not None and len(segments) > 1:
                raise ConversionError(f"case {case!r}: mask_label {spec.label!r} is given for {name}, which holds "
                                      f"{len(segments)} segments ({', '.join(n for _, n, _ in segments)}). Fix: leave "
                                      "mask_label empty to use the segment labels, or export one segment per file.")
            return [(self.value(case, spec.label or seg_name), image, phase) for _, seg_name, image in segments]
        mask = read_image(spec.path, case, "mask")
        phase = phase or self.reference
        self._check_phase(case, phase, name)
        if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
            raise ConversionError(f"case {case!r}: mask {name} is not a 3D label image. Fix: export it as one 3D "
                                  "label map.")
        arr = sitk.GetArrayViewFromImage(mask)
        if not np.all(np.equal(np.mod(arr, 1), 0)) or arr.min() < 0:
            raise ConversionError(f"case {case!r}: mask {name} has non-integer or negative values. Fix: export a "
                                  "label map with 0 = background and 1..K = structures.")
        if arr.max() > 255:
            raise ConversionError(f"case {case!r}: mask {name} has label value {int(arr.max())}. Fix: use values up "
                                  "to 255.")
        image = sitk.Cast(mask, sitk.sitkUInt8)
        if spec.label is None:
            return [(None, image, phase)]
        return [(self.value(case, spec.label), sitk.Cast(image > 0, sitk.sitkUInt8), phase)]

    def _check_phase(self, case: str, phase: str, name: str) -> None:
        if phase not in self.phases:
            raise ConversionError(f"case {case!r}: mask_phase {phase!r} of {name} is not one of {self.phases}. Fix "
                                  "the manifest.")

    def value(self, case: str, label: str) -> int:
        """The label value of a mask label: a number as given, else the name's position in ``--labels``, else the
        value this dataset gave the name (a new one for a new name)."""
        if label.isdigit():
            value = int(label)
            if not 0 < value < 256:
                raise ConversionError(f"case {case!r}: mask_label {label} is not a label value 1-255. Fix the "
                                      "manifest.")
            return value
        for value, known in self.label_names.items():
            if known.casefold() == label.casefold():
                return value
        if self.fixed_labels:
            raise ConversionError(f"case {case!r}: mask label {label!r} is not one of --labels "
                                  f"{list(self.label_names.values())}. Fix: add it to --labels, or set mask_label.")
        value = max([*self.label_names, self.max_label, 0]) + 1
        self.label_names[value] = label
        return value

    def dataset_labels(self) -> tuple[dict[str, int], list[int]]:
        """``dataset.json`` ``labels`` ({name: value}, background 0) and the values named like lesions."""
        for value in range(1, self.max_label + 1):
            self.label_names.setdefault(value, "lesion" if self.max_label == 1 else f"label_{value}")
        labels = {"background": 0, **{n: v for v, n in sorted(self.label_names.items())}}
        return labels, [v for v, n in self.label_names.items() if LESION_NAMES.search(n)]


__all__ = ["LESION_NAMES", "CaseMasks", "MaskSpec"]
