"""Early-fusion baseline: nnU-Net's default U-Net and default plans, all phases as channels, plus a class head.

This is the "vanilla nnU-Net with a head" (the "joint 4D CNN" comparator of the STD-Net ablations).
"""

from __future__ import annotations

import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_ext.architectures.base import head_network_kwargs, head_settings, resolved_arch_kwargs
from nnunet_ext.architectures.classifying_unet import ClassifyingUNet
from nnunet_ext.trainers.multitask import MultiTaskTrainer


class EarlyFusionTrainer(MultiTaskTrainer):
    """``nnUNetTrainer`` + lesion-weighted pooled bottleneck -> MLP(512, dropout 0.3) -> classes."""

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> torch.nn.Module:
        settings = head_settings(plans_manager.plans)
        net = ClassifyingUNet(num_input_channels, num_output_channels,
                              unet_class_name=configuration_manager.network_arch_class_name,
                              **head_network_kwargs(settings, num_output_channels),
                              deep_supervision=enable_deep_supervision,
                              **resolved_arch_kwargs(configuration_manager))
        net.apply(net.initialize)
        return net


class EarlyFusionTrainer_nnUNetSGD(EarlyFusionTrainer):
    """Early fusion with nnU-Net's SGD for every parameter, the head included (control; see
    :class:`~nnunet_ext.trainers.stdnet.STDNetTrainer_nnUNetSGD`)."""

    head_optimizer = "sgd"


class EarlyFusionTrainer_predictionPool(EarlyFusionTrainer):
    """Early fusion whose head pools with the predicted lesion probability in training steps too (control; see
    :class:`~nnunet_ext.trainers.stdnet.STDNetTrainer_predictionPool`)."""

    head_pool_in_training = "prediction"
