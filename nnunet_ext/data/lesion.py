"""Which segmentation labels are "the lesion": one definition for the trainer, the predictor, the attention command
and the benchmark.

The rule, first match wins:

1. an explicit override (``nnunet-ext benchmark --lesion-label``);
2. the metadata's ``classification.lesion_labels`` (dataset.json, ``"nnunet_ext"`` block);
3. the foreground labels whose name reads as a lesion (a word of the label name, split on ``_``, ``-``, spaces and
   digits, is one of :data:`LESION_WORDS`): LiTS' ``tumor``, MSD Task03's ``cancer``, ``liver_lesion``;
4. every foreground label.

Where it is used: the classification loss is applied to patches that contain the lesion, the heads pool their
features weighted by it, inference weights the patch votes by the predicted lesion probability, the attention
command tabulates its connected components, and the benchmark stratifies by its size. Region-based datasets (label
values given as lists) have no label values to select: every foreground region is the lesion there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

LESION_WORDS = frozenset({"tumor", "tumors", "tumour", "tumours", "lesion", "lesions", "cancer", "carcinoma", "hcc",
                          "metastasis", "metastases", "nodule", "nodules", "mass", "neoplasm", "cyst", "cysts"})
_SPLIT = re.compile(r"[\s_\-\d.]+")


class LesionLabels(NamedTuple):
    labels: tuple[int, ...] | None  # None: region-based dataset, every foreground region
    source: str  # which rule chose them, for logs and reports


def foreground_labels(labels: Mapping[str, int | Sequence[int]]) -> list[int]:
    """The integer foreground label values of dataset.json ``labels`` (background 0 and ``ignore`` left out)."""
    return sorted({int(v) for k, v in labels.items()
                   if k not in ("background", "ignore") and not isinstance(v, (list, tuple)) and int(v) != 0})


def is_region_based(labels: Mapping[str, int | Sequence[int]]) -> bool:
    return any(isinstance(v, (list, tuple)) for k, v in labels.items() if k != "ignore")


def lesion_labels(labels: Mapping[str, int | Sequence[int]], declared: Sequence[int] | None = None,
                  override: Sequence[int] | int | None = None) -> LesionLabels:
    """The lesion labels of a dataset by the module's rule. ``labels``: dataset.json ``labels``; ``declared``: the
    metadata's ``classification.lesion_labels``; ``override``: an explicit choice."""
    if override is not None:
        chosen = (int(override),) if isinstance(override, int) else tuple(sorted(int(v) for v in override))
        return LesionLabels(chosen, "explicit choice")
    if is_region_based(labels):
        return LesionLabels(None, "region-based labels: every foreground region")
    if declared:
        return LesionLabels(tuple(sorted(int(v) for v in declared)), "metadata classification.lesion_labels")
    named = sorted({int(v) for k, v in labels.items() if k not in ("background", "ignore") and int(v) != 0
                    and LESION_WORDS & {w for w in _SPLIT.split(k.lower()) if w}})
    if named:
        return LesionLabels(tuple(named), "label names")
    return LesionLabels(tuple(foreground_labels(labels)), "every foreground label")
