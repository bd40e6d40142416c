"""Per-case segmentation metrics in physical units: Dice, HD95 and ASSD (mm), with explicit empty-mask conventions.

Definitions (masks ``pred``, ``ref`` are boolean arrays of shape (*spatial), 2D or 3D; ``spacing`` is the voxel size
in mm in the same axis order, e.g. (z, y, x) for arrays read with SimpleITK):

* **Dice** ``2|P & R| / (|P| + |R|)`` (Dice 1945).
* **Surface** of a mask: its border voxels, ``mask & ~erode(mask)`` with the face-connected structuring element
  (6-neighbourhood in 3D, 4 in 2D) and everything outside the array counted as background. This is the voxel
  surface of MONAI's ``get_mask_edges`` (without sub-voxel edges) and of the classic HD/ASD literature.
* **Directed surface distances** ``d(P->R)``: for every surface voxel of ``P`` the exact Euclidean distance, in mm,
  from its centre to the nearest surface-voxel centre of ``R`` (exact EDT with anisotropic sampling; Maurer et al.,
  IEEE TPAMI 25:265, 2003, as implemented by ``scipy.ndimage.distance_transform_edt``).
* **HD95** ``max(P95(d(P->R)), P95(d(R->P)))``: the larger of the two directed 95th percentiles (linear
  interpolation between order statistics, numpy's default). This is the robust Hausdorff distance of Huttenlocher et
  al. (IEEE TPAMI 15:850, 1993) as used by MONAI's ``compute_hausdorff_distance(percentile=95)`` and DeepMind's
  ``surface-distance`` package (there with surfel-area weights). Note that some tools (e.g. MedPy's ``hd95``) instead
  take the 95th percentile of the pooled distances; that gives slightly different numbers.
* **ASSD** ``(sum d(P->R) + sum d(R->P)) / (|dP| + |dR|)``: the mean over both directions' distances pooled
  (Heimann et al., IEEE TMI 28:1251, 2009; MONAI ``compute_average_surface_distance(symmetric=True)``).
* **VOE** (volumetric overlap error) ``1 - |P & R| / |P | R|``, and **RAVD** (relative absolute volume difference)
  ``| |P| - |R| | / |R|``, the volume metrics of the liver-tumour literature (Heimann et al. 2009; the LiTS
  benchmark, Bilic et al., Medical Image Analysis 84:102680, 2023; TexLiverNet, arXiv 2411.04595, reports them).
* **Dice Global** ``2 sum_cases |P & R| / sum_cases (|P| + |R|)``: one Dice over all cases pooled (LiTS' "Dice
  global"), which weighs cases by their lesion size, unlike the mean of per-case Dice: :func:`dice_global`.

Empty-mask conventions (one rule for every structure, so per-case scores are always finite and paired tests use
every case):

=====================  ======  ========================  ========================  =====  ===================
case                   Dice    HD95                      ASSD                      VOE    RAVD
=====================  ======  ========================  ========================  =====  ===================
both empty             1.0     0 mm                      0 mm                      0      0
reference empty only   0.0     the image diagonal (mm)   the image diagonal (mm)   1      NaN (undefined)
prediction empty only  0.0     the image diagonal (mm)   the image diagonal (mm)   1      1
=====================  ======  ========================  ========================  =====  ===================

"Both empty" is a correct negative (nothing to find, nothing found). "One empty" is a complete miss or a pure false
positive; its distance is undefined, so it gets the largest distance possible inside the image
(``sqrt(sum(((shape - 1) * spacing)**2))``), the convention of the BraTS challenges (which use the diagonal of their
fixed volume, 373.13 mm). Reports state how many cases fell under each rule (columns ``ref_empty``/``pred_empty``).
RAVD divides by the reference volume, so it is undefined for a case without reference lesion: its mean is taken
over the cases with one, and the count is reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

EMPTY_BOTH_DICE = 1.0
EMPTY_ONE_DICE = 0.0
EMPTY_BOTH_DISTANCE = 0.0


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of one structure in one case. Distances in mm, volumes in mm^3."""

    dice: float
    hd95: float
    assd: float
    voe: float
    ravd: float
    intersection_voxels: int
    ref_voxels: int
    pred_voxels: int
    ref_volume_mm3: float
    pred_volume_mm3: float
    ref_empty: bool
    pred_empty: bool

    def as_dict(self) -> dict:
        return asdict(self)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Distance in mm between the centres of two opposite corner voxels of an array of ``shape``."""
    return float(math.sqrt(sum(((s - 1) * sp) ** 2 for s, sp in zip(shape, spacing))))


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two boolean masks of equal shape; 1.0 when both are empty (see module docstring)."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    _check_shapes(p, r)
    denom = int(p.sum()) + int(r.sum())
    if denom == 0:
        return EMPTY_BOTH_DICE
    return 2.0 * int(np.logical_and(p, r).sum()) / denom


def voe(pred: np.ndarray, ref: np.ndarray) -> float:
    """Volumetric overlap error ``1 - |P & R| / |P | R|`` of two boolean masks; 0 when both are empty."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    _check_shapes(p, r)
    union = int(np.logical_or(p, r).sum())
    return 0.0 if union == 0 else 1.0 - int(np.logical_and(p, r).sum()) / union


def ravd(pred: np.ndarray, ref: np.ndarray) -> float:
    """Relative absolute volume difference ``| |P| - |R| | / |R|``; 0 when both are empty, NaN when only the
    reference is (undefined)."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    _check_shapes(p, r)
    n_p, n_r = int(p.sum()), int(r.sum())
    if n_r == 0:
        return 0.0 if n_p == 0 else math.nan
    return abs(n_p - n_r) / n_r


def dice_global(intersections: Sequence[int], pred_sizes: Sequence[int], ref_sizes: Sequence[int]) -> float:
    """Dice over all cases pooled, ``2 sum |P & R| / sum (|P| + |R|)``, from per-case voxel counts; 1.0 when every
    case is empty in both."""
    denom = float(np.sum(pred_sizes, dtype=np.float64) + np.sum(ref_sizes, dtype=np.float64))
    return EMPTY_BOTH_DICE if denom == 0 else 2.0 * float(np.sum(intersections, dtype=np.float64)) / denom


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean (*spatial) array of the border voxels of ``mask`` (face-connected erosion, outside = background)."""
    m = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=structure, border_value=0)


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus a one-voxel margin of background (padding where the
    box touches the array edge), which leaves every surface voxel and every distance between them unchanged."""
    coords = np.argwhere(pred | ref)
    lo, hi = coords.min(0), coords.max(0) + 1
    slices = tuple(slice(a, b) for a, b in zip(lo, hi))
    pad = [(1, 1)] * pred.ndim
    return np.pad(pred[slices], pad), np.pad(ref[slices], pad)


def directed_surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm (float64) from each surface voxel of ``pred`` to the surface of ``ref`` and vice versa.

    Both masks must be non-empty; returns ``(d_pred_to_ref (|dP|,), d_ref_to_pred (|dR|,))``.
    """
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    _check_shapes(p, r)
    if not p.any() or not r.any():
        raise ValueError("surface distances need two non-empty masks; use segmentation_scores for empty ones")
    p, r = _crop_to_union(p, r)
    sp = np.asarray(spacing, dtype=float)
    if sp.shape != (p.ndim,):
        raise ValueError(f"spacing {tuple(spacing)} does not match a {p.ndim}D mask")
    surf_p, surf_r = surface_voxels(p), surface_voxels(r)
    dist_to_r = ndimage.distance_transform_edt(~surf_r, sampling=sp)
    dist_to_p = ndimage.distance_transform_edt(~surf_p, sampling=sp)
    return dist_to_r[surf_p], dist_to_p[surf_r]


def hd95_assd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], percentile: float = 95.0
              ) -> tuple[float, float]:
    """``(HD<percentile>, ASSD)`` in mm of two boolean masks, with the empty-mask conventions of this module."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    _check_shapes(p, r)
    p_any, r_any = bool(p.any()), bool(r.any())
    if not p_any and not r_any:
        return EMPTY_BOTH_DISTANCE, EMPTY_BOTH_DISTANCE
    if not p_any or not r_any:
        worst = image_diagonal_mm(p.shape, spacing)
        return worst, worst
    d_pr, d_rp = directed_surface_distances(p, r, spacing)
    hd = max(float(np.percentile(d_pr, percentile)), float(np.percentile(d_rp, percentile)))
    assd = float((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size))
    return hd, assd


def segmentation_scores(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> SegmentationScores:
    """Dice, HD95, ASSD, VOE, RAVD and volumes of one structure: boolean masks (*spatial), voxel spacing in mm."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    _check_shapes(p, r)
    voxel_mm3 = float(np.prod(np.asarray(spacing, dtype=float)))
    hd, assd = hd95_assd(p, r, spacing)
    n_p, n_r = int(p.sum()), int(r.sum())
    return SegmentationScores(dice=dice(p, r), hd95=hd, assd=assd, voe=voe(p, r), ravd=ravd(p, r),
                              intersection_voxels=int(np.logical_and(p, r).sum()), ref_voxels=n_r, pred_voxels=n_p,
                              ref_volume_mm3=n_r * voxel_mm3, pred_volume_mm3=n_p * voxel_mm3,
                              ref_empty=n_r == 0, pred_empty=n_p == 0)


Structure = tuple[int, ...]


def structure_mask(seg: np.ndarray, labels: Structure) -> np.ndarray:
    """Boolean mask of the voxels of the label map ``seg`` whose label is in ``labels`` (a label or a region)."""
    return np.isin(seg, np.asarray(labels))


def case_scores(pred_seg: np.ndarray, ref_seg: np.ndarray, spacing: Sequence[float],
                structures: dict[str, Structure]) -> dict[str, SegmentationScores]:
    """Scores of every structure of one case: integer label maps of equal shape (*spatial), spacing in mm, and
    ``{name: labels}`` (each structure is the union of its labels, e.g. ``{"liver": (1, 2), "lesion": (2,)}``)."""
    _check_shapes(pred_seg, ref_seg)
    return {name: segmentation_scores(structure_mask(pred_seg, lab), structure_mask(ref_seg, lab), spacing)
            for name, lab in structures.items()}


def lesion_size_stratum(ref_volume: float, threshold: float) -> str:
    """``"no lesion"`` (0), ``"small"`` (0 < volume < threshold) or ``"large"`` (volume >= threshold); volume and
    threshold in the same unit (mm^3 or voxels)."""
    if ref_volume <= 0:
        return "no lesion"
    return "small" if ref_volume < threshold else "large"


def _check_shapes(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} differs from reference shape {b.shape}")
