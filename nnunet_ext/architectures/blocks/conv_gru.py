"""Convolutional GRU over phases: the recurrent temporal modeler of the STD-Net ablation "ConvGRU instead of the
Transformer" ("Spatio-temporal decoupling network for multiphasic liver lesion characterization", npj Digital
Medicine 2025, ablation study; the paper gives no details of its ConvGRU).

Choices made here: the classic ConvGRU (Ballas et al., ICLR 2016) with update/reset gates from one convolution on
``[x, h]`` and the candidate from a second one on ``[x, r * h]``; no normalisation; zero initial state; phases visited
in acquisition order (arterial -> portal venous -> delayed). Dimension-agnostic through ``conv_op``.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvGRUCell(nn.Module):
    """One ConvGRU step. x (B, C_in, *spatial), h (B, H, *spatial) or None -> new h (B, H, *spatial)."""

    def __init__(self, conv_op: type[nn.Module], in_channels: int, hidden_channels: int, kernel_size=3):
        super().__init__()
        ks = [kernel_size] if isinstance(kernel_size, int) else list(kernel_size)
        padding = [k // 2 for k in ks] if len(ks) > 1 else ks[0] // 2
        self.hidden_channels = hidden_channels
        self.gates = conv_op(in_channels + hidden_channels, 2 * hidden_channels, kernel_size, padding=padding)
        self.candidate = conv_op(in_channels + hidden_channels, hidden_channels, kernel_size, padding=padding)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        if h is None:
            h = x.new_zeros((x.shape[0], self.hidden_channels, *x.shape[2:]))
        update, reset = torch.sigmoid(self.gates(torch.cat((x, h), dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate(torch.cat((x, reset * h), dim=1)))
        return h + update * (candidate - h)

    def init_weights(self) -> None:
        """Xavier-uniform gate/candidate convolutions, zero biases (the usual recurrent-cell init)."""
        for conv in (self.gates, self.candidate):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)


class ConvGRU(nn.Module):
    """Runs a :class:`ConvGRUCell` over the phase axis.

    ``forward(x)``: x (B, N, C_in, *spatial) -> final hidden state (B, H, *spatial). The recurrence is inherently
    sequential: one cell call per phase (N is small, 1-6).
    """

    def __init__(self, conv_op: type[nn.Module], in_channels: int, hidden_channels: int, kernel_size=3):
        super().__init__()
        self.cell = ConvGRUCell(conv_op, in_channels, hidden_channels, kernel_size)
        self.init_weights()

    def init_weights(self) -> None:
        self.cell.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = None
        for n in range(x.shape[1]):
            h = self.cell(x[:, n], h)
        return h

    def activation_elements(self, num_phases: int, num_voxels: int) -> int:
        """Elements kept for backward per sample over ``num_voxels`` locations (memory model): per step both
        concatenations, the gate activations, ``r * h``, the candidate and the blend -> (2 C_in + 7 H) per voxel."""
        c_in = self.cell.gates.in_channels - self.cell.hidden_channels
        return int(num_phases * num_voxels * (2 * c_in + 7 * self.cell.hidden_channels))
