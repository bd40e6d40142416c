"""The contract every nnunet-ext network keeps, and the plan entries its heads are built from.

* ``forward(x)`` returns segmentation logits only (a list, highest resolution first, under deep supervision), so
  nnU-Net's predictor, its mirroring and ``perform_actual_validation`` work unchanged.
* ``forward(x, return_heads=True)`` returns a dict: ``"seg"`` (as above), ``"cls"`` (B, K) class logits or None,
  ``"aux_losses"`` {name: scalar tensor} (e.g. reconstruction losses) and, where supported, ``"attention"``.
  The trainer calls it through the DDP/compile wrapper, so every head's gradients are synchronised.
* All heads live in the module, so ``state_dict`` (checkpoints, inference) holds them.
* ``self.decoder.deep_supervision`` toggles deep supervision; ``compute_conv_feature_map_size(patch)`` serves
  nnU-Net's planner.

Case-level settings (number of classes, phases, ...) are not part of nnU-Net's architecture plans, because the
vanilla plans are reused. The trainer writes them under ``plans["nnunet_ext"]``; nnU-Net saves that plans dict into
every results folder, so ``build_network_architecture`` finds them again at inference.
"""

from __future__ import annotations

from typing import Any

PLANS_KEY = "nnunet_ext"
# non-linearity of the classification heads built by this version (see blocks.heads.ClassificationHead)
HEAD_ACTIVATION = "leaky_relu"


def head_settings(plans: dict) -> dict[str, Any]:
    """The ``plans["nnunet_ext"]`` block: ``num_cls_classes``, ``class_names``, ``phases``,
    ``reference_phase_index``, ``num_tabular``, ``lesion_labels``, ``cls_activation``."""
    try:
        return plans[PLANS_KEY]
    except KeyError:
        raise RuntimeError(
            'These plans carry no "nnunet_ext" block, so the classification head cannot be built. nnunet-ext '
            "trainers add it at the start of training; for a results folder, check that its plans.json came from "
            "an nnunet-ext trainer.") from None


def make_head_settings(metadata, channel_names: list[str]) -> dict[str, Any]:
    """Build the ``plans["nnunet_ext"]`` block from validated dataset metadata (or ``None``).

    Without a ``phases`` block every channel is a phase, and the reference phase is the first channel whose name
    reads as portal venous (:data:`~nnunet_ext.data.metadata.DEFAULT_REFERENCE_PHASES`), else channel 0.
    """
    from nnunet_ext.data.metadata import DEFAULT_REFERENCE_PHASES

    if metadata is not None and metadata.phases:
        phases, reference = list(metadata.phases), metadata.reference_phase_index
    else:
        phases = list(channel_names)
        reference = next((i for i, p in enumerate(phases) if p.lower() in DEFAULT_REFERENCE_PHASES), 0)
    has_cls = metadata is not None and metadata.has_classification
    return {
        "num_cls_classes": metadata.num_classes if has_cls else 0,
        "class_names": list(metadata.class_names) if has_cls else [],
        "phases": phases,
        "num_phases": len(phases),
        "reference_phase_index": reference,
        "num_tabular": metadata.num_tabular if metadata is not None else 0,
        "lesion_labels": list(metadata.lesion_labels) if has_cls and metadata.lesion_labels else None,
        "cls_activation": HEAD_ACTIVATION,
    }


def head_activation(settings: dict) -> str:
    """The head MLP's non-linearity recorded in the plans; results folders written before it was recorded were
    trained with ReLU."""
    return settings.get("cls_activation", "relu")


def head_network_kwargs(settings: dict, num_seg_outputs: int) -> dict[str, Any]:
    """The head arguments every nnunet-ext network takes, from the plans block: ``num_cls_classes``,
    ``cls_pool_channels`` (segmentation channels of the lesion labels) and ``cls_activation``."""
    from nnunet_ext.architectures.blocks.heads import lesion_pool_channels

    return {"num_cls_classes": settings["num_cls_classes"],
            "cls_pool_channels": lesion_pool_channels(settings.get("lesion_labels"), num_seg_outputs),
            "cls_activation": head_activation(settings)}


def resolved_arch_kwargs(configuration_manager) -> dict[str, Any]:
    """The plans' ``arch_kwargs`` with the dotted-path entries (``conv_op``, ``norm_op``, ...) imported."""
    import pydoc

    kwargs = dict(configuration_manager.network_arch_init_kwargs)
    for name in configuration_manager.network_arch_init_kwargs_req_import:
        if kwargs.get(name) is not None:
            kwargs[name] = pydoc.locate(kwargs[name])
    return kwargs
