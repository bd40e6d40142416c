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


def test_perturbed_cases_fixed_reference_phase_and_missing_labels(tmp_path):
    from nnunet_ext.evaluation.robustness import write_perturbed_cases

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for case in ("a", "b"):
        for c in range(2):
            sitk.WriteImage(_image(rng.normal(size=(5, 8, 8)), (2.0, 1.0, 1.0)), str(images / f"{case}_{c:04d}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 8, 8), np.uint8)), str(labels / f"{case}.nii.gz"))
    dj = {"file_ending": ".nii.gz", "channel_names": {"0": "CT", "1": "CT"}}
    inputs = resolve_inputs(str(images), str(labels), dj)
    assert inputs.cases == ["a", "b"] and inputs.n_channels == 2
    out = tmp_path / "out"
    out.mkdir()
    items, rows = write_perturbed_cases(inputs, str(out), 2, 0, 5.0, 7.0, 0.0, fixed_phase=1)
    assert [n for n, _ in items] == ["a__unperturbed", "a__r0", "a__r1", "b__unperturbed", "b__r0", "b__r1"]
    fixed = [r for r in rows if r["channel"] == 1]
    moved = [r for r in rows if r["channel"] == 0]
    assert len(fixed) == len(moved) == 4
    assert all(v == 0.0 for r in fixed for k, v in r.items() if k.startswith(("rot_", "shift_")))
    assert all(any(v != 0.0 for k, v in r.items() if k.startswith("shift_")) for r in moved)
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(images / "a_0001.nii.gz")))
    assert np.allclose(sitk.GetArrayFromImage(sitk.ReadImage(items[1][1][1])), original, atol=1e-5)
    # the unfixed draws do not depend on whether the reference phase is fixed
    _, free_rows = write_perturbed_cases(inputs, str(out), 2, 0, 5.0, 7.0, 0.0, fixed_phase=None)
    assert [r for r in free_rows if r["channel"] == 0] == moved
    (labels / "b.nii.gz").unlink()
    with pytest.raises(RobustnessError, match=r"no reference segmentation .*\['b'\]"):
        resolve_inputs(str(images), str(labels), dj)
