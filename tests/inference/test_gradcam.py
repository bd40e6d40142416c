"""Grad-CAM per sequence (``nnunet_ext.inference.gradcam``): the layers and target it explains, that its maps land where
the class evidence is (the lesion ROI the synthetic MRI generator drew), the sliding-window stitching, and the errors.

The end-to-end run (trained DeSamba model folder -> ``nnunet-ext gradcam``, maps on the input image's grid and
geometry, the PNG) is in ``tests/trainers/test_desamba_trainers.py``, next to the training it needs."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from nnunet_ext.architectures.desamba import TINY_ARCH_KWARGS, DeSamba
from nnunet_ext.inference.gradcam import (
    GradCAMError,
    case_class_logit,
    gradcam_network,
    patch_gradcam,
    require_captum,
    resolve_target,
    sequence_layers,
    sliding_window_gradcam,
)

pytest.importorskip("captum", reason="Grad-CAM needs the gradcam extra (pip install -e '.[gradcam]')")
pytestmark = pytest.mark.usefixtures("single_torch_thread")

SHAPE = (16, 32, 32)


def make_predictor(patch, gaussian: bool = True, step: float = 0.5):
    from nnunet_ext.inference.predictor import ClassifyingPredictor

    p = ClassifyingPredictor(tile_step_size=step, use_gaussian=gaussian, use_mirroring=False,
                             perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    p.configuration_manager = SimpleNamespace(patch_size=list(patch))
    return p


def tiny_desamba(sequences: int = 2, **kwargs) -> DeSamba:
    topology = {"n_stages": 3, "features_per_stage": [32] * 3, "conv_op": nn.Conv3d, "kernel_sizes": [[3] * 3] * 3,
                "strides": [[1] * 3, [2] * 3, [2] * 3], "norm_op": nn.InstanceNorm3d,
                "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "nonlin": nn.LeakyReLU,
                "nonlin_kwargs": {"inplace": True}}
    torch.manual_seed(0)
    net = DeSamba(sequences, 2, **topology, **{**TINY_ARCH_KWARGS, "num_cls_classes": 3, "num_tabular": 2, **kwargs},
                  cls_pool_channels=[1])
    net.apply(net.initialize)
    return net.eval()


class LesionOnlyNet(nn.Module):
    """Three sequences, each with its own two-conv encoder (no biases, ReLU; the last ReLU is the layer Grad-CAM
    explains), that see only the voxels of ``region``: the input is gated by it, so the class logits depend on
    nothing else. The head reads sequences 1 and 2 only (sequence 0's weights are zero)."""

    def __init__(self, region: np.ndarray, width: int = 4):
        super().__init__()
        self.register_buffer("region", torch.from_numpy(region.astype(np.float32))[None, None])
        self.encoders = nn.ModuleList(
            nn.Sequential(nn.Conv3d(1, width, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv3d(width, width, 3, stride=2, padding=1, bias=False), nn.ReLU())
            for _ in range(3))
        self.head = nn.Linear(3 * width, 3)
        with torch.no_grad():
            self.head.weight.abs_()
            self.head.weight[:, :width] = 0.0

    def forward(self, x, return_heads: bool = True, tabular=None):
        x = x * self.region
        feats = [enc(x[:, i:i + 1]) for i, enc in enumerate(self.encoders)]
        return SimpleNamespace(cls=self.head(torch.cat([f.mean((2, 3, 4)) for f in feats], 1)))


def synthetic_case(seed: int = 3):
    from nnunet_ext.conversion.synthetic_mri import synthesize_mri_case

    case = synthesize_mri_case(np.random.default_rng(seed), SHAPE, class_index=0)
    image = case.image
    image = (image - image.mean((1, 2, 3), keepdims=True)) / image.std((1, 2, 3), keepdims=True)
    return torch.from_numpy(image.astype(np.float32)), case.seg.astype(bool)


def test_the_map_lies_on_the_lesion_the_generator_drew_and_only_for_sequences_the_head_reads():
    """A synthetic MRI case whose class evidence is the lesion ROI of the generator, and a network whose class
    logits depend on that region only: each map it reads is on the lesion, the map of the sequence it ignores is 0."""
    torch.manual_seed(0)
    image, roi = synthetic_case()
    assert roi.sum() > 20
    net = LesionOnlyNet(roi).eval()
    maps = sliding_window_gradcam(make_predictor(SHAPE), case_class_logit(net, {}),
                                  [enc[-1] for enc in net.encoders], image, target=0).numpy()
    assert maps.shape == (3, *SHAPE) and np.isfinite(maps).all() and (maps >= 0).all()
    assert maps[0].max() == 0.0  # the head does not read sequence 0: no gradient, no map
    # the gated input reaches the layer through two 3x3x3 convs (one of stride 2) and the upsampling: 6 voxels at most
    reach, near = ndimage.binary_dilation(roi, iterations=6), ndimage.binary_dilation(roi, iterations=3)
    centroid = np.argwhere(roi).mean(0)
    for m in maps[1:]:
        assert m.max() > 0
        assert m[reach].sum() / m.sum() > 0.98
        assert m[roi].mean() > 50 * m[~near].mean()
        com = np.average(np.argwhere(np.ones_like(m, bool)), axis=0, weights=m.ravel())
        assert np.abs(com - centroid).max() < 1.5, (com, centroid)


def test_overlapping_patches_are_averaged_and_padding_removed():
    net = tiny_desamba()
    forward = case_class_logit(net, {"tabular": torch.randn(1, 2)})
    layers = sequence_layers(net)
    x = torch.randn(2, 8, 24, 12)  # two overlapping patches along y, x padded 12 -> 16
    maps = sliding_window_gradcam(make_predictor((8, 16, 16), gaussian=False), forward, layers, x, target=1)
    assert maps.shape == (2, 8, 24, 12) and torch.isfinite(maps).all() and (maps >= 0).all()
    padded = torch.nn.functional.pad(x, (2, 2))  # nnU-Net's pad_nd_image centres the padding
    first = patch_gradcam(forward, layers, padded[None, :, :, :16], 1)[..., 2:14]
    second = patch_gradcam(forward, layers, padded[None, :, :, 8:], 1)[..., 2:14]
    torch.testing.assert_close(maps[:, :, :8], first[:, :, :8], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(maps[:, :, 16:], second[:, :, 8:], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(maps[:, :, 8:16], (first[:, :, 8:] + second[:, :, :8]) / 2, rtol=1e-4, atol=1e-7)


def test_the_layers_are_the_last_stage_of_each_sequence_encoder():
    net = tiny_desamba(sequences=3)
    assert sequence_layers(net) == [enc.fusions[-1] for enc in net.encoders]
    plain = tiny_desamba(sequences=2, mambaout=False)
    assert sequence_layers(plain) == [enc.sam_stages[-1] for enc in plain.encoders]
    # the layer output is what the classifier reads: the class logit has a gradient there
    maps = patch_gradcam(case_class_logit(plain, {"tabular": torch.zeros(1, 2)}), sequence_layers(plain),
                         torch.randn(1, 2, 8, 16, 16), 0)
    assert maps.shape == (2, 8, 16, 16) and torch.isfinite(maps).all()


def test_models_without_sequence_encoders_or_head_fail_with_the_fix():
    plain = SimpleNamespace(network=nn.Conv3d(3, 3, 1), trainer_name="nnUNetTrainer")
    with pytest.raises(GradCAMError, match="a Conv3d, not DeSamba.*Fix: use a model trained with DeSambaTrainer"):
        gradcam_network(plain)
    headless = SimpleNamespace(network=tiny_desamba(num_cls_classes=0), trainer_name="DeSambaTrainer")
    with pytest.raises(GradCAMError, match="no classification head"):
        gradcam_network(headless)


def test_target_class_by_name_index_or_predicted():
    names = ["lytic", "sclerotic", "inflammatory"]
    assert resolve_target(None, names) is None and resolve_target("predicted", names) is None
    assert resolve_target("sclerotic", names) == 1 and resolve_target("2", names) == 2
    with pytest.raises(GradCAMError, match="neither a class of this model"):
        resolve_target("7", names)


def test_missing_captum_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import captum.attr raises ImportError
    with pytest.raises(GradCAMError, match=r"pip install 'nnunet-ext\[gradcam\]'"):
        require_captum()
