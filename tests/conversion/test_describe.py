"""Unit tests of the rule-based lesion describer on hand-built volumes (no files, no nnU-Net)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from nnunet_ext.conversion.describe import DescriptionError, describe_lesions, measure_lesions
from nnunet_ext.errors import NnunetExtError

SHAPE = (40, 64, 64)
LIVER_HU, FAT_HU = 100.0, -100.0


def _liver(shape=SHAPE) -> np.ndarray:
    z, y, x = np.ogrid[tuple(slice(0, s) for s in shape)]
    return ((z - 20) / 18) ** 2 + ((y - 32) / 28) ** 2 + ((x - 32) / 30) ** 2 <= 1


def _ball(center, radius_mm, spacing, shape=SHAPE) -> np.ndarray:
    z, y, x = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) * s) ** 2 for g, c, s in zip((z, y, x), center, spacing)) <= radius_mm ** 2


def _image(liver, lesion, lesion_hu, blur_mm=0.0, spacing=(2.0, 1.0, 1.0), noise=0.0, seed=0) -> np.ndarray:
    img = np.where(liver, LIVER_HU, FAT_HU)
    img = np.where(lesion, lesion_hu, img)
    if blur_mm > 0:
        img = ndi.gaussian_filter(img, np.full(3, blur_mm) / np.asarray(spacing))
    return img + np.random.default_rng(seed).normal(0, noise, img.shape)


def test_box_lesion_diameter_with_anisotropic_spacing():
    spacing = (3.0, 0.8, 0.7)
    liver = _liver()
    lesion = np.zeros(SHAPE, bool)
    lesion[18:22, 28:38, 26:46] = True  # 4 x 10 x 20 voxels = 12 x 8 x 14 mm
    m = measure_lesions(_image(liver, lesion, 40.0), liver, lesion, spacing)[0]
    assert m.diameter_mm == pytest.approx(np.sqrt(12.0**2 + 8.0**2 + 14.0**2), rel=1e-6)  # box diagonal
    assert m.n_voxels == 4 * 10 * 20
    text = describe_lesions(_image(liver, lesion, 40.0), liver, lesion, spacing)
    assert text.startswith("A 20 mm lesion")


def test_sphere_diameter_close_to_true_size():
    spacing = (2.0, 0.8, 0.8)
    liver = _liver()
    lesion = _ball((20, 32, 24), 8.0, spacing) & liver
    m = measure_lesions(_image(liver, lesion, 40.0, spacing=spacing), liver, lesion, spacing)[0]
    assert 16.0 <= m.diameter_mm <= 16.0 + 2.0 * np.linalg.norm(spacing) / 2  # at most half a voxel diagonal per side


@pytest.mark.parametrize("center, region", [((30, 32, 14), "upper right lobe"), ((10, 32, 14), "lower right lobe"),
                                            ((30, 32, 52), "upper left lobe"), ((10, 32, 52), "lower left lobe")])
def test_region_from_liver_bounding_box(center, region):
    spacing = (2.0, 1.0, 1.0)
    liver = _liver()
    lesion = _ball(center, 4.0, spacing) & liver
    text = describe_lesions(_image(liver, lesion, 40.0), liver, lesion, spacing)
    assert f"in the {region} of the liver" in text


def test_density_per_phase_with_names_and_hu_difference():
    spacing = (2.0, 1.0, 1.0)
    liver = _liver()
    lesion = _ball((20, 32, 20), 7.0, spacing) & liver
    arterial = _image(liver, lesion, LIVER_HU + 50, noise=5.0, seed=1)  # hyper
    portal = _image(liver, lesion, LIVER_HU - 15, noise=5.0, seed=2)  # slightly hypo
    delayed = _image(liver, lesion, LIVER_HU - 70, noise=5.0, seed=3)  # markedly hypo
    iso = _image(liver, lesion, LIVER_HU + 2, noise=5.0, seed=4)
    text = describe_lesions(np.stack([arterial, portal, delayed, iso]), liver, lesion, spacing,
                            ["arterial", "portal_venous", "delayed", "hepatobiliary"])
    assert "hyperdense in the arterial phase (+5" in text
    assert "slightly hypodense in the portal venous phase (-1" in text
    assert "markedly hypodense in the delayed phase (-7" in text
    assert "isodense in the hepatobiliary phase" in text
    single = describe_lesions(delayed, liver, lesion, spacing)  # (Z, Y, X): one unnamed phase
    assert "markedly hypodense (-7" in single and "phase" not in single


def test_sharp_versus_blurred_margins():
    spacing = (2.0, 1.0, 1.0)
    liver = _liver()
    lesion = _ball((20, 32, 22), 9.0, spacing) & liver
    sharp = describe_lesions(_image(liver, lesion, 30.0, blur_mm=0.5, noise=5.0), liver, lesion, spacing)
    blurred = describe_lesions(_image(liver, lesion, 30.0, blur_mm=3.5, noise=5.0), liver, lesion, spacing)
    assert "well-defined margins" in sharp
    assert "ill-defined margins" in blurred
    m = measure_lesions(_image(liver, lesion, 30.0, blur_mm=2.0), liver, lesion, spacing)[0]
    assert 1.3 < m.margin_sigma_mm < 2.8  # the estimate tracks the blur in mm


def test_rim_enhancement_and_fluid_attenuation():
    spacing = (2.0, 1.0, 1.0)
    liver = _liver()
    lesion = _ball((20, 32, 22), 10.0, spacing) & liver
    depth = ndi.distance_transform_edt(lesion, sampling=spacing)
    rim = _image(liver, lesion, 50.0) + 80.0 * (lesion & (depth <= 3.5))
    text = describe_lesions(np.stack([rim, _image(liver, lesion, 60.0)]), liver, lesion, spacing, ["arterial", "pv"])
    assert "peripheral enhancement in the arterial phase;" in text
    cyst = describe_lesions(_image(liver, lesion, 8.0), liver, lesion, spacing)
    assert "fluid attenuation" in cyst


def test_several_lesions_are_ordered_by_size_and_counted():
    spacing = (2.0, 1.0, 1.0)
    liver = _liver()
    balls = [_ball((20, 32, 14), 3.0, spacing), _ball((20, 32, 48), 8.0, spacing), _ball((28, 20, 30), 5.0, spacing),
             _ball((10, 40, 30), 2.0, spacing)]
    lesion = np.any(balls, axis=0) & liver
    text = describe_lesions(_image(liver, lesion, 40.0), liver, lesion, spacing)
    assert text.startswith("4 focal liver lesions; the 3 largest are described. Largest: an 18 mm lesion in the upper")
    sizes = [m.diameter_mm for m in measure_lesions(_image(liver, lesion, 40.0), liver, lesion, spacing)]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) == 3


def test_no_lesion_and_no_liver():
    spacing = (2.0, 1.0, 1.0)
    liver = _liver()
    empty = np.zeros(SHAPE, bool)
    assert describe_lesions(_image(liver, empty, 0.0), liver, empty, spacing) == "No focal liver lesion."
    assert "no focal liver lesion" in describe_lesions(np.zeros(SHAPE), empty, empty, spacing)
    lesion = _ball((20, 32, 22), 6.0, spacing)
    text = describe_lesions(_image(liver, lesion, 40.0), empty, lesion, spacing)
    assert "relative to the surrounding tissue it is markedly hypodense (-60 HU)" in text and "lobe" not in text


@pytest.mark.parametrize("kwargs, message", [
    ({"image": np.zeros((2, 4, 4, 4))}, "same grid"),
    ({"spacing_zyx": (1.0, 0.0, 1.0)}, "spacing_zyx"),
    ({"phase_names": ["arterial"]}, "phase names"),
])
def test_bad_inputs_raise_a_user_error(kwargs, message):
    args = {"image": np.zeros((2,) + SHAPE), "liver_mask": _liver(), "lesion_mask": np.zeros(SHAPE, bool),
            "spacing_zyx": (2.0, 1.0, 1.0), "phase_names": None, **kwargs}
    with pytest.raises(DescriptionError, match=message) as info:
        describe_lesions(**args)
    assert isinstance(info.value, NnunetExtError)
