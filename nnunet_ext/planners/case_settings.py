"""The ``plans["nnunet_ext"]`` block: the case-level settings an nnunet-ext network is built from.

nnU-Net's architecture plans do not know case-level settings (classes, phases, tabular features, text encoder), and
the vanilla plans are reused by our trainers. The trainer therefore writes this block into its plans when it starts
(:func:`make_case_settings`, from the dataset metadata); nnU-Net saves the plans into every results folder, so the
predictor rebuilds the same network from ``plans.json`` alone. The planners read the same function for their memory
estimates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nnunet_ext.data.lesion import lesion_labels
from nnunet_ext.data.metadata import DatasetMetadata, phase_layout

# non-linearity of the classification heads (see architectures.blocks.heads.ClassificationHead)
HEAD_ACTIVATION = "leaky_relu"


def make_case_settings(dataset_json: Mapping, metadata: DatasetMetadata | None = None,
                       text_encoder: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The block, from ``dataset.json`` and its validated metadata (parsed here when not given).

    Keys: ``num_cls_classes``, ``class_names``, ``phases``, ``num_phases``, ``reference_phase_index`` (without a
    ``phases`` block every channel is a phase and the reference is the first channel named like portal venous, else
    channel 0), ``num_tabular`` and ``tabular_features``, ``lesion_labels`` and ``lesion_labels_source``
    (:func:`nnunet_ext.data.lesion.lesion_labels`), ``cls_activation``, and ``text_encoder`` (the
    :class:`~nnunet_ext.data.text_embeddings.TextEncoderInfo` record of the embeddings the network was trained on,
    or None).
    """
    if metadata is None:
        metadata = DatasetMetadata.from_dataset_json(dataset_json)
    phases, reference = phase_layout(dataset_json, metadata)
    has_cls = metadata is not None and metadata.has_classification
    lesion = lesion_labels(dataset_json["labels"], metadata.lesion_labels if metadata is not None else None)
    return {
        "num_cls_classes": metadata.num_classes if has_cls else 0,
        "class_names": list(metadata.class_names) if has_cls else [],
        "phases": phases,
        "num_phases": len(phases),
        "reference_phase_index": reference,
        "num_tabular": metadata.num_tabular if metadata is not None else 0,
        "tabular_features": list(metadata.tabular_features or []) if metadata is not None else [],
        "lesion_labels": list(lesion.labels) if lesion.labels is not None else None,
        "lesion_labels_source": lesion.source,
        "cls_activation": HEAD_ACTIVATION,
        "text_encoder": dict(text_encoder) if text_encoder else None,
    }
