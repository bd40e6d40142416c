"""Segmentation metrics against independent implementations (MONAI, a KD-tree over surface points, hand values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from nnunet_ext.metrics import segmentation as seg

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI deprecation notices


def _blob(shape, rng, n_balls=3) -> np.ndarray:
    """A random union of ellipsoids: non-convex, sometimes touching the array border."""
    grid = np.indices(shape).astype(float)
    out = np.zeros(shape, bool)
    for _ in range(n_balls):
        c = rng.uniform(0, np.array(shape) - 1)
        r = rng.uniform(1.0, np.array(shape) / 3)
        out |= sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1
    return out


def _monai(pred, ref, spacing):
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    p = torch.from_numpy(pred[None, None].astype(np.float32))
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    hd = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=list(spacing))
    asd = compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=list(spacing))
    return float(hd[0, 0]), float(asd[0, 0])


def _kdtree(pred, ref, spacing):
    """Brute force: nearest surface point in physical coordinates (mm) with a KD-tree."""
    sp = np.asarray(spacing)
    pts_p = np.argwhere(seg.surface_voxels(pred)) * sp
    pts_r = np.argwhere(seg.surface_voxels(ref)) * sp
    d_pr = cKDTree(pts_r).query(pts_p)[0]
    d_rp = cKDTree(pts_p).query(pts_r)[0]
    hd = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    return hd, np.concatenate([d_pr, d_rp]).mean()


SPACINGS = [(1.0, 1.0, 1.0), (3.0, 0.7, 0.7), (2.5, 0.8, 1.3)]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("seed", range(4))
def test_hd95_assd_match_monai_and_kdtree_on_random_masks(spacing, seed):
    rng = np.random.default_rng(seed)
    shape = (12, 20, 18)
    pred, ref = _blob(shape, rng), _blob(shape, rng)
    hd, assd = seg.hd95_assd(pred, ref, spacing)
    # same definition as MONAI (voxel edges by face-connected erosion, max of directed 95th percentiles, pooled
    # mean); MONAI computes in float32, hence the tolerance
    m_hd, m_assd = _monai(pred, ref, spacing)
    assert hd == pytest.approx(m_hd, rel=1e-5, abs=1e-5)
    assert assd == pytest.approx(m_assd, rel=1e-5, abs=1e-5)
    # exact EDT distances equal nearest-neighbour distances in physical space
    k_hd, k_assd = _kdtree(pred, ref, spacing)
    assert hd == pytest.approx(k_hd, rel=1e-12, abs=1e-12)
    assert assd == pytest.approx(k_assd, rel=1e-12, abs=1e-12)


def test_anisotropic_spacing_changes_distances_along_the_right_axis():
    ref = np.zeros((9, 9, 9), bool)
    ref[2:5, 2:5, 2:5] = True
    pred = np.roll(ref, 3, axis=0)  # shifted by 3 voxels along z only
    # every surface voxel is 3 voxels away along z at most; with z spacing 2.5 mm that is 7.5 mm
    hd_z, _ = seg.hd95_assd(pred, ref, (2.5, 0.5, 0.5))
    hd_iso, _ = seg.hd95_assd(pred, ref, (1.0, 1.0, 1.0))
    assert hd_z == pytest.approx(7.5)
    assert hd_iso == pytest.approx(3.0)
    # shifting along x instead: only the x spacing matters
    pred_x = np.roll(ref, 3, axis=2)
    assert seg.hd95_assd(pred_x, ref, (2.5, 0.5, 0.5))[0] == pytest.approx(1.5)


def test_hand_computed_cube_shift():
    """A 3x3x3 cube shifted by one voxel along x, spacing 1 mm. Surface: 26 voxels each.

    d(P->R): the 9 voxels of P's far face (x=4) are 1 mm from R's face x=3; the centre of P's near face (x=2) is
    R's interior centre voxel, 1 mm from R's surface; the other 16 lie on R's surface (0 mm). Symmetric, so
    ASSD = 2 * 10 / 52, and the 95th percentile of 16 zeros and 10 ones is 1.
    """
    ref = np.zeros((5, 5, 6), bool)
    ref[1:4, 1:4, 1:4] = True
    pred = np.zeros_like(ref)
    pred[1:4, 1:4, 2:5] = True
    hd, assd = seg.hd95_assd(pred, ref, (1, 1, 1))
    assert hd == 1.0
    assert assd == pytest.approx(20 / 52)
    assert seg.dice(pred, ref) == pytest.approx(2 * 18 / 54)


def test_2d_masks():
    rng = np.random.default_rng(7)
    pred, ref = _blob((25, 30), rng), _blob((25, 30), rng)
    hd, assd = seg.hd95_assd(pred, ref, (0.8, 1.7))
    k_hd, k_assd = _kdtree(pred, ref, (0.8, 1.7))
    assert (hd, assd) == pytest.approx((k_hd, k_assd))


EDGE_CASES = [
    # name, pred, ref, dice, distance (None: image diagonal)
    ("both empty", np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool), 1.0, 0.0),
    ("empty prediction", np.zeros((4, 5, 6), bool), np.ones((4, 5, 6), bool), 0.0, None),
    ("empty reference", np.ones((4, 5, 6), bool), np.zeros((4, 5, 6), bool), 0.0, None),
]


@pytest.mark.parametrize("name,pred,ref,dice,distance", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_empty_mask_conventions(name, pred, ref, dice, distance):
    spacing = (2.0, 1.0, 0.5)
    diagonal = math.sqrt((3 * 2.0) ** 2 + (4 * 1.0) ** 2 + (5 * 0.5) ** 2)
    s = seg.segmentation_scores(pred, ref, spacing)
    assert s.dice == dice
    expected = diagonal if distance is None else distance
    assert s.hd95 == pytest.approx(expected)
    assert s.assd == pytest.approx(expected)
    assert (s.ref_empty, s.pred_empty) == (not ref.any(), not pred.any())
    assert s.voe == (0.0 if name == "both empty" else 1.0)
    if name == "empty reference":
        assert math.isnan(s.ravd)  # undefined: divided by the reference volume
    else:
        assert s.ravd == (0.0 if name == "both empty" else 1.0)


def test_voe_ravd_and_dice_global_by_hand():
    ref = np.zeros((1, 4, 4), bool)
    ref[0, :2, :2] = True  # 4 voxels
    pred = np.zeros((1, 4, 4), bool)
    pred[0, :2, :3] = True  # 6 voxels, 4 of them in the reference
    assert seg.voe(pred, ref) == pytest.approx(1 - 4 / 6)
    assert seg.ravd(pred, ref) == pytest.approx(2 / 4)
    assert seg.dice(pred, ref) == pytest.approx(8 / 10)
    # pooled over cases: a small perfect case and a large half-found one
    assert seg.dice_global([1, 50], [1, 50], [1, 100]) == pytest.approx(2 * 51 / (51 + 101))
    assert seg.dice_global([0], [0], [0]) == 1.0


def test_identical_single_voxel_and_full_border_masks():
    one = np.zeros((3, 3, 3), bool)
    one[1, 1, 1] = True
    assert seg.hd95_assd(one, one, (1, 1, 1)) == (0.0, 0.0)
    full = np.ones((3, 4, 5), bool)  # touches every border: every voxel but the inner ones is surface
    assert seg.surface_voxels(full).sum() == full.size - 1 * 2 * 3
    assert seg.hd95_assd(full, full, (1, 2, 3)) == (0.0, 0.0)


def test_dice_matches_hand_and_monai():
    import torch
    from monai.metrics import compute_dice

    rng = np.random.default_rng(3)
    pred, ref = _blob((10, 12, 14), rng), _blob((10, 12, 14), rng)
    expected = 2 * (pred & ref).sum() / (pred.sum() + ref.sum())
    assert seg.dice(pred, ref) == pytest.approx(expected)
    m = compute_dice(torch.from_numpy(pred[None, None]).float(), torch.from_numpy(ref[None, None]).float())
    assert seg.dice(pred, ref) == pytest.approx(float(m[0, 0]), rel=1e-6)


def test_case_scores_per_structure_and_volumes():
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[:2] = 1
    ref[0, 0, 0] = 2
    pred = ref.copy()
    pred[0, 0, 1] = 2
    scores = seg.case_scores(pred, ref, (2.0, 1.0, 1.0), {"liver": (1, 2), "lesion": (2,)})
    assert scores["liver"].dice == 1.0
    assert scores["lesion"].dice == pytest.approx(2 / 3)
    assert scores["lesion"].ref_volume_mm3 == 2.0 and scores["lesion"].pred_voxels == 2
    assert seg.lesion_size_stratum(0, 10) == "no lesion"
    assert seg.lesion_size_stratum(9.9, 10) == "small" and seg.lesion_size_stratum(10, 10) == "large"


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        seg.case_scores(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1), {"a": (1,)})
