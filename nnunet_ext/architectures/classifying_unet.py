"""nnU-Net's default U-Net with a case-level classification head: the early-fusion ("joint 4D") baseline.

All phases enter as input channels of one encoder (early fusion), exactly as vanilla nnU-Net treats a multi-channel
dataset; the head pools the bottleneck (weighted by the predicted lesion probability when lesion labels are known,
else uniformly, as STD-Net pools its CLS tokens) and applies the same MLP as the STD-Net characterization head.
This is the "vanilla nnU-Net with a head" every classification result is compared against.
"""

from __future__ import annotations

import pydoc

import torch
from torch import nn

from nnunet_ext.architectures.blocks.heads import ClassificationHead, lesion_pool_channels, lesion_weighted_pool
from nnunet_ext.architectures.contract import ContractNetwork, HeadsOutput, register_architecture


class ClassifyingUNet(ContractNetwork):
    """Any dynamic-network-architectures U-Net (``PlainConvUNet``, ``ResidualEncoderUNet``) plus a class head.

    Args:
        input_channels: image channels (all phases).
        num_classes: segmentation heads.
        unet_class_name: dotted path of the U-Net class, as in nnU-Net plans.
        num_cls_classes: case-level classes; 0 builds no head.
        cls_hidden, cls_dropout, cls_activation: head MLP (``ClassificationHead``).
        num_tabular: tabular features concatenated to the pooled bottleneck (0: none), standardised with the training
            fold's statistics (buffers of the head).
        cls_pool_channels: segmentation channels of the lesion labels: the bottleneck is pooled weighted by their
            predicted probability (:func:`~nnunet_ext.architectures.blocks.heads.lesion_weighted_pool`); None:
            global average pooling.
        deep_supervision: nnU-Net's deep supervision switch.
        **unet_kwargs: the plans' ``arch_kwargs`` (ops already resolved to classes).

    ``forward(x)``: x (B, C, *spatial) -> segmentation logits. ``forward(x, return_heads=True, tabular=None,
    lesion_mask=None)`` -> :class:`~nnunet_ext.architectures.contract.HeadsOutput` with ``seg`` and ``cls``
    (B, num_cls_classes) or None; ``tabular`` (B, num_tabular) raw values, required when ``num_tabular`` > 0;
    ``lesion_mask`` (B, 1, *spatial) pools with the given (ground-truth) lesion mask instead of the prediction
    (training).
    ``auxiliary_modules``: the head (trained with AdamW by the trainers, the U-Net with nnU-Net's SGD).
    """

    auxiliary_modules = ("cls_head",)
    case_inputs = ("tabular",)

    @classmethod
    def from_plans(cls, network_class_name: str, arch_kwargs: dict, settings, input_channels: int, num_classes: int,
                   deep_supervision: bool, **overrides) -> ClassifyingUNet:
        """The plans' U-Net (``network_class_name``, e.g. PlainConvUNet or ResidualEncoderUNet) plus the head. With
        the override ``use_tabular=True`` (the registered variant ``"tabular"``) the tabular features the dataset
        declares feed the head as well; by default the head sees the images only, as STD-Net's does."""
        use_tabular = bool(overrides.pop("use_tabular", False))
        if use_tabular and not settings["num_tabular"]:
            raise ValueError("the head was asked to consume tabular features, but dataset.json declares none. Fix: "
                             'add a "tabular" block and per-case "tabular" values to dataset.json["nnunet_ext"] '
                             "(docs/metadata.md) and rerun plan-and-preprocess, or train EarlyFusionTrainer.")
        kwargs = dict(num_cls_classes=settings["num_cls_classes"],
                      num_tabular=settings["num_tabular"] if use_tabular else 0,
                      cls_activation=settings["cls_activation"],
                      cls_pool_channels=lesion_pool_channels(settings["lesion_labels"], num_classes),
                      deep_supervision=deep_supervision, **arch_kwargs)
        kwargs.update(overrides)
        net = cls(input_channels, num_classes, unet_class_name=network_class_name, **kwargs)
        net.apply(net.initialize)
        return net

    def consumed_case_inputs(self) -> tuple[str, ...]:
        return ("tabular",) if self.cls_head is not None and self.cls_head.tabular_features else ()

    def __init__(self, input_channels: int, num_classes: int, unet_class_name: str, num_cls_classes: int,
                 cls_hidden: int = 512, cls_dropout: float = 0.3, num_tabular: int = 0,
                 deep_supervision: bool = True, cls_pool_channels: list[int] | None = None,
                 cls_activation: str = "leaky_relu", **unet_kwargs):
        super().__init__()
        unet_cls = pydoc.locate(unet_class_name)
        if unet_cls is None:
            raise ValueError(f"cannot import U-Net class {unet_class_name!r}")
        unet = unet_cls(input_channels=input_channels, num_classes=num_classes, deep_supervision=deep_supervision,
                        **unet_kwargs)
        self._unet_initialize = getattr(unet_cls, "initialize", None)
        self.encoder = unet.encoder
        self.cls_pool_channels = list(cls_pool_channels) if cls_pool_channels else None
        self.decoder = unet.decoder
        bottleneck = self.encoder.output_channels[-1]
        self.cls_head = ClassificationHead(bottleneck, num_cls_classes, cls_hidden, cls_dropout, num_tabular,
                                           cls_activation) if num_cls_classes > 0 else None

    def forward(self, x: torch.Tensor, return_heads: bool = False, tabular: torch.Tensor | None = None,
                lesion_mask: torch.Tensor | None = None):
        skips = self.encoder(x)
        seg = self.decoder(skips)
        if not return_heads:
            return seg
        self.check_case_inputs({"tabular": tabular})
        cls = None
        if self.cls_head is not None:
            cls = self.cls_head(lesion_weighted_pool(skips[-1], seg, self.cls_pool_channels, lesion_mask), tabular)
        return HeadsOutput(seg, cls, {}, {})

    def compute_conv_feature_map_size(self, input_size) -> int:
        return int(self.encoder.compute_conv_feature_map_size(input_size)
                   + self.decoder.compute_conv_feature_map_size(input_size))

    def initialize(self, module: nn.Module) -> None:
        """nnU-Net calls ``network.initialize(network)`` after construction: reuse the U-Net's own scheme."""
        if self._unet_initialize is not None:
            self._unet_initialize(module)


register_architecture(
    "early_fusion", ClassifyingUNet, dims=(2, 3), variants={"tabular": {"use_tabular": True}},
    description="nnU-Net's U-Net with all phases as channels plus a lesion-pooled classification head (the "
                "early-fusion / joint 4D CNN baseline); the 'tabular' variant also feeds the dataset's tabular "
                "features to the head")
