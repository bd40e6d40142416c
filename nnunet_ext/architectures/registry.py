"""Imports every shipped architecture module, so that :data:`~nnunet_ext.architectures.contract.ARCHITECTURES` is
complete (each module registers its network when imported)."""

from nnunet_ext.architectures import classifying_unet, desamba, stdnet, texlivernet  # noqa: F401
