"""SAMB: DeSamba's spectral adaptive modulation block, for 2D and 3D feature maps.

Paper: DeSamba, "Decoupled Spectral Adaptive Network and Mamba-Based Model" for 3D multi-sequence MRI lesion
classification (arXiv 2507.15487; no public code). The SAMB opens the frequency branch of every SAMBlock.

What follows the paper (X = FFT of the features x, per channel):

* the real part R, the imaginary part I and the magnitude phi = |X|;
* a frequency enhancement module on [R, I] and phi gives ``f_e``; a modulator on the normalised input gives ``f_m``;
* ``R' = R * (1 + a * (f_m - 1)) + b * f_e * phi``, ``I' = I * (1 + a * (f_m - 1))`` with learnable a and b;
* the inverse FFT of ``R' + i I'`` back to the spatial domain.

What is chosen here (the paper leaves it open):

* **Transform**: real FFT over all spatial axes (``rfftn``, ``norm="ortho"``, so Parseval holds without factors),
  computed with autocast off in float32 (cuFFT has no bfloat16 and only power-of-two float16); the inverse gets
  explicit sizes ``s=`` (odd last axes) and the output has the input's dtype.
* **a, b**: one value per channel (C each), zero-initialised: then ``R' = R``, ``I' = I`` and the block is the
  identity, so a deep SAMNet starts from its spatial path. The block computes ``x + iFFT(R' + i I' - X)`` (the same
  by linearity of the transform), so at a = b = 0 the output is exactly x, in every dtype. The sub-modules keep
  PyTorch's default init (not zero), so ``a`` and ``b`` receive gradients from the first step.
* **Normalised input**: the features scaled to unit RMS per sample and channel. By Parseval that is the spectrum
  divided by ``rms = sqrt(mean |x|^2)``, so no second FFT is needed. Both sub-modules see only normalised
  quantities and are therefore invariant to the scale of x.
* **Frequency enhancement** ``f_e`` (per rfft bin, Fast-Fourier-Convolution style, Chi et al. 2020): the normalised
  R, I and phi are compressed with ``asinh`` (spectra are heavy-tailed: the DC bin of a 128^3 map can be 10^3 times
  the rest; ``asinh`` is smooth at 0 and logarithmic beyond 1), concatenated (3C), then a pointwise conv 3C -> C,
  GELU, pointwise conv C -> C, ``tanh``. ``f_e`` is in (-1, 1), so ``b * f_e * phi`` changes each bin by at most
  ``|b|`` times its magnitude.
* **Modulator** ``f_m``: the notes put it on the normalised input without saying in which domain, while R and I live
  on the rfft grid, whose bins are frequencies, not positions: a spatial map resized onto that grid would have no
  meaning. Here ``f_m`` is a per-channel **frequency response** chosen from the content: every rfft bin gets its radial
  frequency ``rho = min(2 * |f|, 1)`` (``f`` in cycles per voxel, so 1 = Nyquist along an axis); K = ``num_bands``
  triangular bands centred at ``rho = 0, 1/(K-1), ..., 1`` partition [0, 1]. The modulator reads the band-energy
  profile of the normalised input (mean power per band relative to the mean power, Hermitian-weighted, ``log``),
  (B, C, K), and an MLP C*K -> h -> C*K (h = ``modulator_hidden``, default max(8, C // 4)) gives band gains
  ``g = 2 * sigmoid(.)`` in (0, 2). ``f_m`` interpolates the gains over the bands (the triangles sum to 1), so it is
  a smooth, input-adaptive low/band/high-pass per channel that works for every grid size, 2D and 3D, odd or even.
"""

from __future__ import annotations

import math

import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn

from nnunet_ext.architectures.blocks.temporal_transformer import autocast_off


def band_weights(spatial: tuple[int, ...], num_bands: int, device: torch.device | None = None) -> torch.Tensor:
    """Triangular radial-frequency bands on the rfft grid of ``spatial``: (K, *grid) float32, summing to 1 per bin.

    ``grid = (*spatial[:-1], spatial[-1] // 2 + 1)``; a bin's radial frequency is ``rho = min(2 * |f|, 1)`` with
    ``f`` its frequency vector in cycles per voxel; band k is the hat of half-width 1 / (K - 1) centred at
    ``k / (K - 1)``.
    """
    if num_bands < 2:
        raise ValueError(f"num_bands must be at least 2, got {num_bands}")
    freqs = [torch.fft.fftfreq(n, device=device) for n in spatial[:-1]] + [torch.fft.rfftfreq(spatial[-1],
                                                                                             device=device)]
    rho2 = sum(f.view([-1 if a == i else 1 for a in range(len(spatial))]) ** 2 for i, f in enumerate(freqs))
    rho = torch.clamp(2.0 * torch.sqrt(rho2), max=1.0)
    centres = torch.linspace(0.0, 1.0, num_bands, device=device).view(-1, *([1] * len(spatial)))
    return torch.clamp(1.0 - (rho.unsqueeze(0) - centres).abs() * (num_bands - 1), min=0.0)


def hermitian_multiplicity(spatial: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
    """How many bins of the full FFT grid each rfft bin stands for (1 or 2), shaped to broadcast over the grid."""
    n = spatial[-1]
    m = torch.full((n // 2 + 1,), 2.0, device=device)
    m[0] = 1.0
    if n % 2 == 0:
        m[-1] = 1.0
    return m.view(*([1] * (len(spatial) - 1)), -1)


class SpectralAdaptiveModulation(nn.Module):
    """SAMB (see the module docstring): x (B, C, *spatial) -> (B, C, *spatial), same dtype; any spatial size.

    Args:
        channels: C.
        conv_op: nn.Conv2d / nn.Conv3d (the pointwise convs of the enhancement module run on the rfft grid).
        num_bands: K radial bands of the modulator's frequency response (>= 2).
        modulator_hidden: hidden width of the modulator MLP (default max(8, C // 4)).
        eps: floor of the powers the normalisation divides by.
    """

    def __init__(self, channels: int, conv_op: type[nn.Module], *, num_bands: int = 4,
                 modulator_hidden: int | None = None, eps: float = 1e-12):
        super().__init__()
        if num_bands < 2:
            raise ValueError(f"num_bands must be at least 2, got {num_bands}")
        self.dims = convert_conv_op_to_dim(conv_op)
        self.channels, self.num_bands, self.eps = channels, num_bands, eps
        self.enhance = nn.Sequential(conv_op(3 * channels, channels, 1), nn.GELU(), conv_op(channels, channels, 1),
                                     nn.Tanh())
        hidden = modulator_hidden or max(8, channels // 4)
        self.modulator = nn.Sequential(nn.Linear(channels * num_bands, hidden), nn.GELU(),
                                       nn.Linear(hidden, channels * num_bands))
        self.a = nn.Parameter(torch.zeros(channels))
        self.b = nn.Parameter(torch.zeros(channels))

    def init_weights(self) -> None:
        """``a = b = 0`` (the identity); the sub-modules keep their default init."""
        nn.init.zeros_(self.a)
        nn.init.zeros_(self.b)

    def band_gains(self, power: torch.Tensor, mean_power: torch.Tensor, weights: torch.Tensor,
                   multiplicity: torch.Tensor) -> torch.Tensor:
        """Band gains (B, C, K) in (0, 2) from the power spectrum (B, C, *grid) and its mean (B, C, 1, ...)."""
        band_w = weights * multiplicity
        band_power = torch.einsum("bc...,k...->bck", power, band_w) / (band_w.flatten(1).sum(1) + 1e-6)
        profile = torch.log(band_power / mean_power.flatten(2) + 1e-4)
        logits = self.modulator(profile.flatten(1)).view(-1, self.channels, self.num_bands)
        return 2.0 * torch.sigmoid(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]}")
        if x.ndim - 2 != self.dims:
            raise ValueError(f"expected {self.dims} spatial axes, got input of shape {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        axes = tuple(range(2, x.ndim))
        bshape = (1, self.channels) + (1,) * self.dims
        with autocast_off(x.device.type):
            spec = torch.fft.rfftn(x.float(), dim=axes, norm="ortho")
            real, imag = spec.real, spec.imag
            phi = spec.abs()
            power = real * real + imag * imag
            multiplicity = hermitian_multiplicity(spatial, x.device)
            mean_power = (power * multiplicity).sum(dim=axes, keepdim=True) / math.prod(spatial) + self.eps
            inv_rms = torch.rsqrt(mean_power)
            f_e = self.enhance(torch.asinh(torch.cat((real * inv_rms, imag * inv_rms, phi * inv_rms), dim=1)))
            weights = band_weights(spatial, self.num_bands, x.device)
            f_m = torch.einsum("bck,k...->bc...", self.band_gains(power, mean_power, weights, multiplicity), weights)
            # R' + i I' - (R + i I) = (R + i I) * a * (f_m - 1) + b * f_e * phi (a real addend changes R only);
            # the inverse FFT is linear, so only this change goes back to space and x is added there: with
            # a = b = 0 the output is x bit for bit, and the identity path never sees FFT round-off
            delta = spec * (self.a.float().view(bshape) * (f_m - 1.0)) + self.b.float().view(bshape) * (f_e * phi)
            out = x.float() + torch.fft.irfftn(delta, s=spatial, dim=axes, norm="ortho")
        return out.to(x.dtype)

    def activation_elements(self, spatial_numel: int) -> int:
        """Elements kept for backward by one forward pass, per sample (the input, owned by the caller, is not
        counted; complex values count as two). Everything lives on the rfft grid, ``r * spatial_numel`` bins with
        ``r = 1/2 + 1/n_last`` (taking the last axis as ``spatial_numel ** (1 / dims)``): the spectrum (2C), phi (C),
        the concatenation of the normalised maps and its ``asinh`` (6C), the enhancement module's hidden map and GELU
        output (2C), ``f_e`` (C), ``f_m - 1`` (C), ``a * (f_m - 1)`` (C) and ``f_e * phi`` (C) -> 15 C per bin. The band
        weights (2K per bin) are shared by the batch and not counted."""
        last = max(1.0, spatial_numel ** (1.0 / self.dims))
        bins = spatial_numel * (0.5 + 1.0 / last)
        return int(math.ceil(15 * self.channels * bins))
