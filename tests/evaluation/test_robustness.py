"""Per-phase rigid perturbations: geometry in mm, rotation about the centre, fill value, noise, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.evaluation.robustness import (
    RigidPerturbation,
    RobustnessError,
    case_rng,
    perturb_image,
    resolve_inputs,
    sample_perturbation,
)


def _image(arr, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing(spacing[::-1])  # arr is (z, y, x), SimpleITK spacing is (x, y, z)
    img.SetOrigin((10.0, -4.0, 3.0))
    return img


def test_translation_in_mm_uses_the_spacing():
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(4, 6, 8))
    img = _image(arr, spacing=(3.0, 2.0, 0.5))
    # a shift of 1.0 mm along x is two voxels at 0.5 mm; resampling maps output p to input p + t
    out = sitk.GetArrayFromImage(perturb_image(img, RigidPerturbation((0.0, 0.0, 0.0), (1.0, 0.0, 0.0))))
    assert np.allclose(out[:, :, :-2], arr[:, :, 2:], atol=1e-5)
    assert np.allclose(out[:, :, -2:], arr.min())  # moved in from outside: the image minimum
    # 3 mm along z is one voxel
    out = sitk.GetArrayFromImage(perturb_image(img, RigidPerturbation((0.0, 0.0, 0.0), (0.0, 0.0, -3.0))))
    assert np.allclose(out[1:], arr[:-1], atol=1e-5)


def test_rotation_is_about_the_image_centre():
    arr = np.zeros((3, 7, 7))
    arr[:, 3, 5] = 1.0  # a bar right of the centre
    out = sitk.GetArrayFromImage(perturb_image(_image(arr), RigidPerturbation((0.0, 0.0, 90.0), (0.0, 0.0, 0.0))))
    assert any(np.allclose(out, np.rot90(arr, k, axes=(1, 2)), atol=1e-5) for k in (1, -1))
    same = sitk.GetArrayFromImage(perturb_image(_image(arr), RigidPerturbation((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))))
    assert np.allclose(same, arr)


def test_noise_and_2d():
    arr = np.zeros((5, 40, 40))
    out = sitk.GetArrayFromImage(perturb_image(_image(arr), RigidPerturbation((0, 0, 0), (0, 0, 0)), 10.0,
                                               np.random.default_rng(1)))
    assert out.std() == pytest.approx(10.0, rel=0.05)
    img2d = sitk.GetImageFromArray(np.arange(30, dtype=np.float32).reshape(5, 6))
    p = sample_perturbation(np.random.default_rng(0), 2.0, 5.0, dim=2)
    assert len(p.rotation_deg) == 1 and len(p.translation_mm) == 2
    assert perturb_image(img2d, p).GetSize() == (6, 5)


def test_sampling_bounds_and_seeding():
    ps = [sample_perturbation(case_rng(7, "case_a", r), 5.0, 7.0) for r in range(200)]
    assert all(abs(a) <= 7.0 for p in ps for a in p.rotation_deg)
    assert all(abs(s) <= 5.0 for p in ps for s in p.translation_mm)
    assert max(abs(s) for p in ps for s in p.translation_mm) > 4.5  # the range is used
    again = sample_perturbation(case_rng(7, "case_a", 0), 5.0, 7.0)
    assert again == ps[0]
    assert sample_perturbation(case_rng(7, "case_b", 0), 5.0, 7.0) != ps[0]


def test_images_folder_needs_labels(tmp_path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(RobustnessError, match="-l LABELS_FOLDER"):
        resolve_inputs(str(tmp_path / "imgs"), None, {"file_ending": ".nii.gz", "channel_names": {"0": "CT"}})
