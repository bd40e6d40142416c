"""A toy text-conditioned segmentation network and its trainer, registered only by the tests.

It proves that a new architecture arrives as new files only: the network subclasses the contract, registers itself,
and its trainer names it; the contract test, stock ``nnUNetv2_train`` (this folder on ``nnUNet_extTrainer``) and
``nnunet-ext predict --texts`` then work without an edit to the trainer base, the predictor or the data loading.

``ToyTextUNet``: nnU-Net's PlainConvUNet whose bottleneck is modulated (FiLM: ``f * (1 + gamma) + beta``) by the
masked mean of the case's text-token embeddings; a learned "no text" embedding stands in for cases without text (an
all-False mask), so ``text`` is an optional input. An auxiliary loss, ``film``, keeps the modulation small.

nnU-Net imports this file as a top-level module: absolute imports only.
"""

from __future__ import annotations

import pydoc

import torch
from torch import nn

from nnunet_ext.architectures.contract import ContractNetwork, HeadsOutput, register_architecture
from nnunet_ext.trainers.multitask import MultiTaskTrainer
from nnunet_ext.trainers.schedules import schedule_variants


class ToyTextUNet(ContractNetwork):
    case_inputs = ("text",)
    optional_case_inputs = ("text",)
    auxiliary_modules = ("film", )

    def __init__(self, input_channels: int, num_classes: int, unet_class_name: str, text_dim: int,
                 deep_supervision: bool = True, **unet_kwargs):
        super().__init__()
        unet = pydoc.locate(unet_class_name)(input_channels=input_channels, num_classes=num_classes,
                                             deep_supervision=deep_supervision, **unet_kwargs)
        self.encoder, self.decoder = unet.encoder, unet.decoder
        self.text_dim = text_dim
        width = self.encoder.output_channels[-1]
        self.film = nn.Linear(text_dim, 2 * width)
        self.no_text = nn.Parameter(torch.zeros(text_dim))
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    @classmethod
    def from_plans(cls, network_class_name, arch_kwargs, settings, input_channels, num_classes, deep_supervision,
                   **overrides):
        kwargs = {**arch_kwargs, "text_dim": settings["text_encoder"]["dim"], **overrides}
        return cls(input_channels, num_classes, network_class_name, deep_supervision=deep_supervision, **kwargs)

    def forward(self, x, return_heads: bool = False, text=None, text_mask=None):
        b = x.shape[0]
        no_text = self.no_text.expand(b, -1)
        if text is None:
            pooled = no_text
        else:
            mask = text_mask.to(text.dtype).unsqueeze(-1)
            mean = (text * mask).sum(1) / mask.sum(1).clamp_min(1)
            pooled = torch.where(text_mask.any(1, keepdim=True), mean, no_text)  # no_text stays in the graph
        skips = self.encoder(x)
        gamma, beta = self.film(pooled).chunk(2, dim=1)
        shape = (b, -1) + (1,) * (x.ndim - 2)
        skips = [*skips[:-1], skips[-1] * (1 + gamma.view(shape)) + beta.view(shape)]
        seg = self.decoder(skips)
        if not return_heads:
            return seg
        return HeadsOutput(seg, None, {"film": gamma.square().mean() + beta.square().mean()}, {})

    def compute_conv_feature_map_size(self, input_size) -> int:
        return int(self.encoder.compute_conv_feature_map_size(input_size)
                   + self.decoder.compute_conv_feature_map_size(input_size))


register_architecture("toy_text", ToyTextUNet, dims=(2, 3), description="test-only text-conditioned U-Net")


class ToyTextTrainer(MultiTaskTrainer):
    architecture = "toy_text"
    requires_classification = False
    loss_weights = {"seg": 1.0, "cls": 1.0, "film": 0.01}


globals().update(schedule_variants(ToyTextTrainer, schedules=["smoke"]))
