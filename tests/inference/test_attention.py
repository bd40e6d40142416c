"""Per-lesion attention over phases: the sliding-window maps, lesion rows, coordinates and the model checks.

The end-to-end run (trained STD-Net model folder -> ``nnunet-ext attention``) is in
``tests/trainers/test_stdnet_trainers.py``, next to the training it needs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ext.architectures.stdnet import STDNet
from nnunet_ext.inference.attention import (
    AttentionError,
    attention_network,
    earlier_rows,
    lesion_rows,
    original_voxel,
    sliding_window_attention,
    write_tables,
)

PATCH = (4, 8, 8)
TOPOLOGY = dict(n_stages=3, features_per_stage=(4, 8, 16), conv_op=nn.Conv3d, kernel_sizes=3,
                strides=(1, 2, (1, 2, 2)), n_conv_per_stage=1, n_conv_per_stage_decoder=1, conv_bias=True,
                norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                nonlin_kwargs={"inplace": True})


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def make_net(temporal: str = "transformer") -> STDNet:
    torch.manual_seed(0)
    net = STDNet(3, 3, **TOPOLOGY, deep_supervision=False, num_cls_classes=3, temporal=temporal, temporal_dim=16,
                 temporal_depth=2, temporal_heads=2)
    net.apply(net.initialize)
    return net.eval()


def make_predictor(step: float = 0.5, gaussian: bool = True):
    from nnunet_ext.inference.predictor import ClassifyingPredictor

    p = ClassifyingPredictor(tile_step_size=step, use_gaussian=gaussian, use_mirroring=False,
                             perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    p.configuration_manager = SimpleNamespace(patch_size=list(PATCH))
    return p


def test_one_patch_gives_the_networks_own_maps_and_logits():
    net = make_net()
    x = torch.randn(3, *PATCH)
    logits, att = sliding_window_attention(make_predictor(), net, x)
    with torch.no_grad():
        out = net(x[None], return_heads=True, return_attention=True)
        expected = F.interpolate(net.cls_attention_maps(out.extras["attention"], PATCH), size=PATCH, mode="trilinear",
                                 align_corners=False)[0]
    torch.testing.assert_close(logits, out.seg[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(att, expected, rtol=1e-4, atol=1e-6)
    # the maps are the layer's CLS-to-phase weights: per location at most 1, the rest stays on CLS
    assert att.shape == (3, *PATCH) and (att >= 0).all() and (att.sum(0) <= 1 + 1e-5).all()
    torch.testing.assert_close(net.cls_attention_maps(out.extras["attention"], PATCH),
                               net.phase_attention_maps(x[None]), rtol=1e-4, atol=1e-6)


def test_overlapping_patches_are_weighted_and_padding_is_removed():
    net = make_net()
    x = torch.randn(3, 3, 12, 8)  # smaller than the patch along z (padded), two overlapping patches along y
    logits, att = sliding_window_attention(make_predictor(gaussian=False), net, x)
    assert logits.shape == (3, 3, 12, 8) and att.shape == (3, 3, 12, 8)
    padded = F.pad(x, (0, 0, 0, 0, 0, 1))  # nnU-Net pads z 3 -> 4 (pad_nd_image centres: 0 before, 1 after)
    with torch.no_grad():
        first = net(padded[None, :, :, :8], return_heads=True, return_attention=True)
        second = net(padded[None, :, :, 4:], return_heads=True, return_attention=True)
        m1 = F.interpolate(net.cls_attention_maps(first.extras["attention"], PATCH), size=PATCH, mode="trilinear")[0]
        m2 = F.interpolate(net.cls_attention_maps(second.extras["attention"], PATCH), size=PATCH, mode="trilinear")[0]
    # without Gaussian weights: rows seen by one patch keep its map, the overlap (y 4..7) is the mean of both
    torch.testing.assert_close(att[:, :, :4], m1[:, :3, :4], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(att[:, :, 8:], m2[:, :3, 4:], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(att[:, :, 4:8], (m1[:, :3, 4:] + m2[:, :3, :4]) / 2, rtol=1e-4, atol=1e-6)


def test_layer_choice_uses_that_layers_weights():
    net = make_net()
    x = torch.randn(3, *PATCH)
    _, first = sliding_window_attention(make_predictor(), net, x, layer=0)
    with torch.no_grad():
        expected = F.interpolate(net.phase_attention_maps(x[None], layer=0), size=PATCH, mode="trilinear")[0]
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temporal", ["mean", "convgru"])
def test_models_without_a_transformer_fail_with_the_fix(temporal):
    predictor = SimpleNamespace(network=make_net(temporal), trainer_name=f"STDNetTrainer_{temporal}")
    with pytest.raises(AttentionError, match=f"temporal='{temporal}'.*no attention over phases.*Fix: use a model "
                                             "trained with STDNetTrainer"):
        attention_network(predictor)
    plain = SimpleNamespace(network=nn.Conv3d(3, 3, 1), trainer_name="EarlyFusionTrainer")
    with pytest.raises(AttentionError, match="a Conv3d, not STD-Net"):
        attention_network(plain)


def test_lesion_rows_average_each_component_and_skip_small_ones():
    attention = torch.zeros(3, 6, 6, 6)
    attention[0] = 0.5
    attention[1, :3] = 0.4  # lesion A lies in z < 3
    attention[2, 3:] = 0.2
    lesion = np.zeros((6, 6, 6), dtype=bool)
    lesion[0:2, 0:2, 0:2] = True  # A: 8 voxels
    lesion[4:6, 4:6, 3:6] = True  # B: 12 voxels
    lesion[0, 5, 5] = True  # 1 voxel, below the minimum
    props = {"shape_after_cropping_and_before_resampling": [6, 6, 6], "bbox_used_for_cropping": [[0, 6]] * 3}
    rows, components = lesion_rows("c1", attention, lesion, ["art", "pv", "del"], (2.0, 1.0, 1.0), props,
                                   [0, 1, 2], "prediction", min_lesion_voxels=2)
    assert [(r["lesion"], r["voxels"], r["volume_mm3"]) for r in rows] == [(1, 8, 16.0), (2, 12, 24.0)]
    a, b = rows
    assert (a["attention_art"], a["attention_pv"], a["attention_del"], a["attention_cls"]) == (0.5, 0.4, 0.0, 0.1)
    assert (b["attention_art"], b["attention_pv"], b["attention_del"]) == (0.5, 0.0, 0.2)
    assert b["attention_cls"] == pytest.approx(0.3)
    assert a["centroid_voxel"] == [0.5, 0.5, 0.5] and b["centroid_voxel"] == [4.5, 4.5, 4.0]
    assert set(np.unique(components)) == {0, 1, 2} and components[0, 5, 5] == 0


def test_centroids_map_back_through_resampling_crop_and_transpose():
    # preprocessing: transpose (1, 0, 2) -> crop starting at (2, 3, 4) -> resample 10x20x30 to 5x20x15
    props = {"shape_after_cropping_and_before_resampling": [10, 20, 30],
             "bbox_used_for_cropping": [[2, 12], [3, 23], [4, 34]]}
    # a preprocessed voxel v along a 2x downsampled axis covers cropped voxels 2v, 2v+1 (centre 2v + 0.5); then
    # the crop offset; transposed axis 0 is input axis 1
    assert original_voxel(props, (5, 20, 15), [1, 0, 2], [0, 7, 1]) == [10.0, 2.5, 6.5]


def test_tables_keep_rows_of_cases_not_run_again(tmp_path):
    meta = {"model": "/m", "folds": [0], "layer": 1, "phases": ["art", "pv"], "lesion_source": "prediction"}
    old = [{"case": "a", "lesion": 1, "attention_pv": 0.1, "centroid_voxel": [1, 2, 3]},
           {"case": "b", "lesion": 1, "attention_pv": 0.2, "centroid_voxel": [1, 2, 3]}]
    write_tables(str(tmp_path), old, meta)
    new = [{"case": "b", "lesion": 1, "attention_pv": 0.9, "centroid_voxel": [0, 0, 0]}]
    rows = earlier_rows(str(tmp_path), {**meta, "lesion_source": "reference"}, {"b"}) + new
    assert [(r["case"], r["attention_pv"]) for r in rows] == [("a", 0.1), ("b", 0.9)]
    write_tables(str(tmp_path), rows, meta)
    stored = json.loads((tmp_path / "phase_attention.json").read_text(encoding="utf-8"))
    assert stored["layer"] == 1 and len(stored["lesions"]) == 2
    lines = (tmp_path / "phase_attention.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "case,lesion,attention_pv,centroid_voxel" and lines[2] == "b,1,0.9,0 0 0"
    # rows of another layer (or model, folds, phases) are not mixed in; rerunning every stored case is fine
    with pytest.raises(AttentionError, match=r"holds rows of another run \(layer=1; this run: layer=0\). Fix"):
        earlier_rows(str(tmp_path), {**meta, "layer": 0}, {"b"})
    assert earlier_rows(str(tmp_path), {**meta, "layer": 0}, {"a", "b"}) == []
    (tmp_path / "phase_attention.json").write_text("not json", encoding="utf-8")
    with pytest.raises(AttentionError, match="not written by nnunet-ext attention.*Fix"):
        earlier_rows(str(tmp_path), meta, {"b"})


def test_reference_segmentations_name_the_missing_cases(tmp_path):
    from nnunet_ext.inference.attention import reference_segmentations

    (tmp_path / "case_a.nii.gz").write_bytes(b"")
    assert reference_segmentations(str(tmp_path), ["case_a"], ".nii.gz") == {"case_a": str(tmp_path / "case_a.nii.gz")}
    with pytest.raises(AttentionError, match=r"no reference segmentation for case\(s\) \['case_b'\] \(expected "
                                             r"case_b.nii.gz\). Fix"):
        reference_segmentations(str(tmp_path), ["case_a", "case_b"], ".nii.gz")
    with pytest.raises(AttentionError, match="does not exist. Fix: pass -s with a folder"):
        reference_segmentations(str(tmp_path / "nope"), ["case_a"], ".nii.gz")


def test_predicted_lesions_use_the_lesion_labels_or_any_region():
    from nnunet_ext.inference.attention import lesion_mask_from_logits

    logits = torch.zeros(3, 1, 2, 2)
    logits[1, 0, 0, 0] = 5  # liver
    logits[2, 0, 1, 1] = 5  # lesion
    labels = SimpleNamespace(has_regions=False, foreground_labels=[1, 2])
    with_lesion_labels = SimpleNamespace(label_manager=labels, plans_manager=SimpleNamespace(
        plans={"nnunet_ext": {"lesion_labels": [2]}}))
    assert lesion_mask_from_logits(with_lesion_labels, logits)[0].tolist() == [[False, False], [False, True]]
    every = SimpleNamespace(label_manager=labels, plans_manager=SimpleNamespace(  # a dataset without lesion names
        plans={"nnunet_ext": {"lesion_labels": [1, 2]}}))
    assert lesion_mask_from_logits(every, logits)[0].tolist() == [[True, False], [False, True]]
    regions = SimpleNamespace(label_manager=SimpleNamespace(has_regions=True), plans_manager=SimpleNamespace(
        plans={"nnunet_ext": {"lesion_labels": None}}))
    region_logits = torch.full((2, 1, 2, 2), -5.0)
    region_logits[1, 0, 0, 1] = 5
    assert lesion_mask_from_logits(regions, region_logits)[0].tolist() == [[False, True], [False, False]]


# ---------------------------------------------------------------------------------------------- maps as images
def _input_image(path, array, spacing=(0.8, 0.9, 2.5), origin=(10.0, -5.0, 3.0),
                 direction=(0, 1, 0, -1, 0, 0, 0, 0, 1)):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return image


def _plans(transpose=(0, 2, 1), spacing=(2.0, 1.2, 1.0), reader="SimpleITKIO"):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}
    backward = [int(i) for i in np.argsort(transpose)]
    plans = {"dataset_name": "x", "plans_name": "p", "transpose_forward": list(transpose),
             "transpose_backward": backward, "image_reader_writer": reader,
             "foreground_intensity_properties_per_channel": {"0": {}},
             "configurations": {"3d_fullres": {
                 "data_identifier": "p_3d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
                 "patch_size": [8, 8, 8], "median_image_size_in_voxels": [8, 8, 8], "spacing": list(spacing),
                 "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
                 "architecture": {"network_class_name": "unused", "arch_kwargs": {}, "_kw_requires_import": []},
                 **resampling}}}
    pm = PlansManager(plans)
    return pm, pm.get_configuration("3d_fullres")


def test_maps_go_back_to_the_input_images_grid(tmp_path):
    """The preprocessed image itself, taken back, is the input image (up to the z-score) on the input's voxel grid:
    the input has a zero border (cropped), another spacing (resampled) and the plans transpose two axes."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    from nnunet_ext.inference.attention import to_input_geometry

    z, y, x = np.meshgrid(np.arange(12), np.arange(20), np.arange(16), indexing="ij")
    array = np.zeros((12, 20, 16))
    inner = (slice(2, 10), slice(3, 18), slice(1, 15))
    array[inner] = (100 + 3 * z + 2 * y - x)[inner]
    _input_image(tmp_path / "c_0000.nii.gz", array)
    pm, cm = _plans()
    data, _, props = DefaultPreprocessor(verbose=False).run_case([str(tmp_path / "c_0000.nii.gz")], None, pm, cm, {})
    assert data.shape[1:] != array.shape  # transposed, cropped and resampled
    back = to_input_geometry(data, props, pm, cm)
    assert back.shape == (1, *array.shape)
    outside = np.ones(array.shape, dtype=bool)
    outside[inner] = False
    assert (back[0][outside] == 0).all()
    assert np.corrcoef(back[0][inner].ravel(), array[inner].ravel())[0, 1] > 0.99
    labels = np.zeros((1, *data.shape[1:]), dtype=np.int32)
    labels[0, 1:3, 2:5, 2:6] = 7
    lab_back = to_input_geometry(labels, props, pm, cm, is_seg=True)[0]
    assert set(np.unique(lab_back)) == {0, 7} and (lab_back[outside] == 0).all()


@pytest.mark.parametrize("reader", ["SimpleITKIO", "SimpleITKIOWithReorient", "NibabelIO", "NibabelIOWithReorient"])
def test_float_maps_are_written_in_the_input_images_geometry(tmp_path, reader):
    """What a reader read, written back by write_float_image with that reader's properties, is the input file: same
    voxels, spacing, origin and direction (a non-trivial direction, so that the reorienting readers reorient)."""
    import SimpleITK as sitk
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    from nnunet_ext.inference.attention import write_float_image

    array = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    original = _input_image(tmp_path / "in.nii.gz", array)
    data, props = recursive_find_reader_writer_by_name(reader)().read_images([str(tmp_path / "in.nii.gz")])
    write_float_image(data[0], str(tmp_path / "out.nii.gz"), props)
    out = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert out.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(out), array)
    np.testing.assert_allclose(out.GetSpacing(), original.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(out.GetOrigin(), original.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(out.GetDirection(), original.GetDirection(), atol=1e-5)


def test_save_maps_refuses_readers_without_geometry():
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_ext.inference.attention import check_map_writer

    check_map_writer(SimpleITKIO)
    with pytest.raises(AttentionError, match="reads its images with NaturalImage2DIO. Fix: leave --save_maps out"):
        check_map_writer(NaturalImage2DIO)
