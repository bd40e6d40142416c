"""Rigid inter-phase registration: recovery of known offsets on the real 4-phase DCE MRI (ProstateX-0218) through the
whole DICOM converter, plus unit checks of the registration helpers."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from lookalikes import displace_dicom_geometry, tiny_liver, to_image

from nnunet_ext.conversion.common import ConversionError
from nnunet_ext.conversion.dicom_multiphase import RegistrationOptions, convert_dicom_multiphase
from nnunet_ext.conversion.registration import displace, pyramid_levels, register_rigid, resample_onto

DCE = "mri_prostate_dce"
PHASES = {"pre": "phase0_precontrast", "early": "phase1_8.0s", "mid": "phase2_41.7s", "late": "phase3_83.9s"}
# known rigid displacements (rotation about x, y, z in degrees; translation in mm) applied to two phases
OFFSETS = {"early": ((2.0, -1.5, 3.0), (3.0, -2.0, 4.0)), "late": ((-2.5, 2.0, -1.0), (-4.0, 3.0, -2.5))}
FAST = RegistrationOptions(shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.0), iterations=100, sampling=0.2)


def _read(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _euler(center, angles_deg, translation):
    return sitk.Euler3DTransform(center, *(math.radians(a) for a in angles_deg), translation)


@pytest.fixture(scope="module")
def displaced_dce(real_data, tmp_path_factory):
    """A copy of the DCE study with the geometry of 'early' and 'late' rewritten by known rigid transforms, and the
    manifest (case, phase, series) for it. Returns (root, manifest, expected transforms)."""
    root = tmp_path_factory.mktemp("dce")
    shutil.copytree(real_data / DCE, root / DCE)
    ref = _read(root / DCE / PHASES["mid"])
    center = ref.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ref.GetSize()])
    expected = {}
    for phase, (angles, shift) in OFFSETS.items():
        expected[phase] = _euler(center, angles, shift)
        displace_dicom_geometry(root / DCE / PHASES[phase], expected[phase])
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case", "phase", "series"])
        w.writerows(["ProstateX-0218", p, f"{DCE}/{folder}"] for p, folder in PHASES.items())
    return root, manifest, expected


def test_dce_known_offsets_are_recovered(displaced_dce, real_data, tmp_path):
    root, manifest, expected = displaced_dce
    res = convert_dicom_multiphase(root, 940, manifest, output=tmp_path / "raw", name="DCE",
                                   phases=list(PHASES), reference="mid", registration=FAST)
    report = json.loads(res.reports["registration_json"].read_text(encoding="utf-8"))["ProstateX-0218"]
    assert report["reference"] == "mid" and set(report["phases"]) == {"pre", "early", "late"}
    for phase, truth in expected.items():
        got = report["phases"][phase]
        assert np.allclose(got["center_mm"], truth.GetCenter(), atol=1e-2)
        np.testing.assert_allclose(got["translation_mm"], truth.GetTranslation(), atol=1.0, err_msg=phase)
        truth_deg = [math.degrees(a) for a in (truth.GetAngleX(), truth.GetAngleY(), truth.GetAngleZ())]
        np.testing.assert_allclose(got["rotation_deg"], truth_deg, atol=1.0, err_msg=phase)
        assert got["metric"] < -0.5
    # the undisplaced precontrast phase needs (almost) no correction
    assert report["phases"]["pre"]["translation_norm_mm"] < 1.0 and report["phases"]["pre"]["rotation_angle_deg"] < 1
    with open(res.reports["registration_csv"], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["phase"] for r in rows} == {"pre", "early", "late"} and float(rows[0]["metric"]) < 0
    # report beside dataset.json, not inside imagesTs; all four phases on the reference grid
    assert res.reports["registration_json"].parent == res.folder
    files = sorted(p.name for p in (res.folder / "imagesTs").iterdir())
    assert files == [f"ProstateX-0218_{k:04d}.nii.gz" for k in range(4)]
    ref = _read(root / DCE / PHASES["mid"])
    early = sitk.ReadImage(str(res.folder / "imagesTs" / "ProstateX-0218_0001.nii.gz"))
    assert early.GetSize() == ref.GetSize() and np.allclose(early.GetDirection(), ref.GetDirection(), atol=1e-6)
    # resampling undid the displacement: the registered phase matches the original acquisition
    original = sitk.GetArrayFromImage(_read(real_data / DCE / PHASES["early"])).astype(float)
    diff = np.abs(sitk.GetArrayFromImage(early).astype(float) - original)[3:-3, 20:-20, 20:-20]
    assert diff.mean() < 0.1 * original.mean()
    dj = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["channel_names"] == {"0": "pre", "1": "early", "2": "mid", "3": "late"}
    assert dj["nnunet_ext"]["phases"] == {"order": ["pre", "early", "mid", "late"], "reference": "mid"}
    assert any("imagesTs" in w for w in res.warnings)


def test_dce_without_registration_refuses_different_geometry(displaced_dce, tmp_path):
    root, manifest, _ = displaced_dce
    out = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"case 'ProstateX-0218': phases with different geometry and no "
                                              r"registration requested.*early.*--no-registration"):
        convert_dicom_multiphase(root, 941, manifest, output=out, register=False)
    assert not out.exists() or not any(out.iterdir())


def test_register_rigid_on_a_synthetic_volume():
    ct, _ = tiny_liver((16, 40, 40), seed=3)
    ct[4:12, 6:12, 24:34] = 400  # an off-centre "vertebra" so the in-plane rotation is well defined
    fixed = to_image(ct.astype(np.float32), spacing=(1.0, 1.0, 2.0))
    center = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    truth = _euler(center, (0.0, 0.0, 4.0), (2.0, -1.5, 1.0))
    moving = displace(fixed, truth)
    result = register_rigid(fixed, moving, shrink_factors=(2, 1), smoothing_sigmas=(1, 0), sampling=0.5)
    np.testing.assert_allclose(result.translation_mm, truth.GetTranslation(), atol=0.5)
    assert abs(result.rotation_deg[2] - 4.0) < 1.0 and result.levels == (2, 1)
    back = resample_onto(moving, fixed, result.transform)
    assert back.GetPixelID() == moving.GetPixelID() and back.GetSize() == fixed.GetSize()


def test_pyramid_drops_levels_that_are_too_coarse():
    img = sitk.Image(24, 24, 8, sitk.sitkFloat32)
    assert pyramid_levels(img, (4, 2, 1), (2, 1, 0)) == ([2, 1], [1.0, 0.0])
    with pytest.raises(ValueError):
        pyramid_levels(img, (4, 2), (1,))
