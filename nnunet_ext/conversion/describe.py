"""Rule-based English descriptions of focal liver lesions from an image, a liver mask and a lesion mask.

Used by the synthetic liver generator (:mod:`nnunet_ext.conversion.synthetic_liver`) and by the 3D-IRCADb converter
to give every case a lesion-specific text in the style of the texts TexLiverNet (arXiv 2411.04595) conditions on
("a moderately low-density lesion in the upper right lobe of the liver with blurred margins"), extended with the
per-phase density that multiphasic reads rely on (LI-RADS-style arterial hyperenhancement, washout, rim enhancement).

Orientation convention. Arrays are indexed ``(z, y, x)`` as ``SimpleITK.GetArrayFromImage`` returns them for an
image whose direction is the identity in ITK's LPS world, i.e. ``x`` (axis 2) increases toward the patient's
**left**, ``y`` (axis 1) toward **posterior** and ``z`` (axis 0) toward **superior**. Reorient other images first,
e.g. ``sitk.DICOMOrient(image, "LPS")`` (NIfTI files often come with x increasing toward the patient's right).
With that convention the patient's right is at small ``x``, so the right lobe is the low-``x`` part of the liver.

What is measured, per 26-connected lesion component (largest first, at most :data:`MAX_DESCRIBED`):

* **size**: the maximum diameter (mm) of the voxelised lesion, i.e. the largest distance between corners of its
  voxels (exact maximum Feret diameter of the union of voxel boxes; anisotropic spacing is honoured);
* **region**: from the liver bounding box. Right lobe if the lesion centroid lies in the patient-right
  :data:`RIGHT_LOBE_FRACTION` of the box along ``x`` (a crude stand-in for Cantlie's line), else left lobe; upper if
  the centroid lies in the superior half of the box along ``z``, else lower;
* **density per phase**: mean lesion HU minus the median HU of the liver parenchyma (liver mask minus all lesions),
  "isodense" below :data:`ISO_HU`, "slightly" up to 25 HU, "markedly" from 60 HU;
* **peripheral enhancement**: outer lesion shell (skipping the outermost voxel layer, which partial volume mixes with
  the liver) at least :data:`RIM_HU` brighter than the lesion core in some phase;
* **margins**: an estimate of the Gaussian width ``sigma`` (mm) of the lesion-liver edge. Within each slice, mean
  intensities are taken over the lesion's boundary layer and the liver layer just outside it (near bands, at about
  +-h/2 of the edge for in-plane spacing ``h``) and over the layers ``k`` voxels deep on both sides (far bands, at
  +-(k - 1/2) h, ``k`` up to :data:`FAR_BAND_MM`). For a blurred step, (near step) / (far step) =
  ``(2 Phi(h / 2 sigma) - 1) / (2 Phi((k - 1/2) h / sigma) - 1)``, which is solved for ``sigma``: the mean
  gradient across the boundary relative to the lesion-liver contrast, made independent of the voxel size.
  "well-defined" if ``sigma`` < :data:`SHARP_SIGMA_MM`, else "ill-defined"; taken in the phase with the largest
  far contrast; not stated for lesions too small (less than 2 voxels deep in-plane) or too faint (far contrast
  below :data:`ISO_HU`) to judge. Lesions smaller than about three times ``sigma`` read as ill-defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist
from scipy.special import ndtr

from nnunet_ext.errors import NnunetExtError

MAX_DESCRIBED = 3
RIGHT_LOBE_FRACTION = 0.6
ISO_HU = 10.0
RIM_HU = 20.0
SHARP_SIGMA_MM = 2.0
FAR_BAND_MM = 6.0
_ORDINALS = ("Largest", "Second", "Third", "Fourth", "Fifth")


class DescriptionError(NnunetExtError, ValueError):
    """Raised for inconsistent inputs to :func:`describe_lesions` (shapes, spacing, phase names)."""


@dataclass
class LesionMeasurement:
    """What :func:`measure_lesions` finds for one connected lesion component.

    ``density_hu[p]`` is lesion mean minus liver reference in phase ``p``; ``margin_sigma_mm`` is ``None`` when the
    margin could not be judged; ``region`` is ``None`` without a liver mask.
    """

    n_voxels: int
    diameter_mm: float
    centroid_zyx: tuple[float, float, float]
    region: str | None
    lesion_hu: list[float]
    density_hu: list[float]
    rim_minus_core_hu: list[float] | None
    margin_sigma_mm: float | None

    @property
    def margin(self) -> str | None:
        if self.margin_sigma_mm is None:
            return None
        return "well-defined" if self.margin_sigma_mm < SHARP_SIGMA_MM else "ill-defined"


def describe_lesions(image: np.ndarray, liver_mask: np.ndarray, lesion_mask: np.ndarray,
                     spacing_zyx: tuple[float, float, float], phase_names: list[str] | None = None) -> str:
    """Describe the focal liver lesions of one case in English.

    Args:
        image: ``(P, Z, Y, X)`` intensities in HU, one volume per phase, phases registered to each other
            (a ``(Z, Y, X)`` array is taken as ``P = 1``).
        liver_mask: ``(Z, Y, X)`` bool, the liver (with or without the lesions inside it). May be empty: densities
            are then relative to the tissue surrounding each lesion and no region is given.
        lesion_mask: ``(Z, Y, X)`` bool, all lesions.
        spacing_zyx: voxel spacing in mm, in array axis order ``(z, y, x)``.
        phase_names: one name per phase (``"portal_venous"`` is written "portal venous"); default "phase 1", ... for
            ``P > 1`` and no phase wording for ``P = 1``.

    Returns:
        e.g. ``"A 23 mm lesion in the upper right lobe of the liver; relative to the liver it is hyperdense in the
        arterial phase (+48 HU), slightly hypodense in the portal venous phase (-18 HU) and hypodense in the delayed
        phase (-35 HU); well-defined margins."``; ``"No focal liver lesion."`` when ``lesion_mask`` is empty.
        Orientation convention: see the module docstring (x toward patient left, z toward superior).
    """
    image, liver, lesion, spacing, names = _check_inputs(image, liver_mask, lesion_mask, spacing_zyx, phase_names)
    if not lesion.any():
        return "No focal liver lesion." if liver.any() else "No liver segmented; no focal liver lesion."
    measurements, n_total = _measure(image, liver, lesion, spacing)
    sentences = []
    if n_total > 1:
        shown = f"; the {len(measurements)} largest are described" if n_total > len(measurements) else ""
        sentences.append(f"{n_total} focal liver lesions{shown}.")
    for i, m in enumerate(measurements):
        prefix = "" if n_total == 1 else f"{_ORDINALS[i]}: "
        sentences.append(prefix + _sentence(m, names, has_liver=bool(liver.any()), capital=n_total == 1))
    return " ".join(sentences)


def measure_lesions(image: np.ndarray, liver_mask: np.ndarray, lesion_mask: np.ndarray,
                    spacing_zyx: tuple[float, float, float]) -> list[LesionMeasurement]:
    """The measurements behind :func:`describe_lesions` for the (at most :data:`MAX_DESCRIBED`) largest lesions,
    largest first. Same inputs as :func:`describe_lesions`."""
    image, liver, lesion, spacing, _ = _check_inputs(image, liver_mask, lesion_mask, spacing_zyx, None)
    return _measure(image, liver, lesion, spacing)[0] if lesion.any() else []


# --------------------------------------------------------------------------- measuring
def _check_inputs(image, liver_mask, lesion_mask, spacing_zyx, phase_names):
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[None]
    liver, lesion = np.asarray(liver_mask).astype(bool), np.asarray(lesion_mask).astype(bool)
    if image.ndim != 4 or liver.shape != image.shape[1:] or lesion.shape != image.shape[1:]:
        raise DescriptionError(f"image must be (P, Z, Y, X) and both masks (Z, Y, X) of the same grid; got image "
                               f"{image.shape}, liver {liver.shape}, lesion {lesion.shape}. Fix: resample the masks "
                               "onto the image grid (and stack phases on axis 0).")
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise DescriptionError(f"spacing_zyx must be three positive numbers in mm (z, y, x), got {spacing_zyx!r}.")
    if phase_names is not None and len(phase_names) != image.shape[0]:
        raise DescriptionError(f"{len(phase_names)} phase names {list(phase_names)} for {image.shape[0]} phase(s) in "
                               "the image. Fix: give one name per image volume, in order.")
    return image, liver, lesion, spacing, phase_names


def _measure(image, liver, lesion, spacing) -> tuple[list[LesionMeasurement], int]:
    labels, n = ndi.label(lesion, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-sizes, kind="stable")[:MAX_DESCRIBED]
    parenchyma = liver & ~lesion
    has_liver = bool(parenchyma.sum() >= 10)
    liver_ref = np.array([np.median(ph[parenchyma]) for ph in image]) if has_liver else None
    liver_box = _bbox(liver) if liver.any() else None
    slices = ndi.find_objects(labels)
    out = []
    for idx in order:
        out.append(_measure_one(image, labels, idx + 1, slices[idx], lesion, liver, liver_ref, liver_box, spacing))
    return out, n


def _measure_one(image, labels, label, sl, lesion, liver, liver_ref, liver_box, spacing) -> LesionMeasurement:
    pad = max(4, int(np.ceil(FAR_BAND_MM / min(spacing[1:]))) + 2)
    box = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, dim)) for s, dim in zip(sl, labels.shape))
    comp = labels[box] == label
    img = image[(slice(None),) + box]
    others = lesion[box] & ~comp
    idx = np.argwhere(comp)
    offset = np.array([b.start for b in box])
    centroid = tuple(float(c) for c in idx.mean(axis=0) + offset)
    lesion_hu = [float(ph[comp].mean()) for ph in img]
    if liver_ref is None:  # no liver: compare with a 3-voxel shell of surrounding tissue
        shell = ndi.binary_dilation(comp, iterations=3) & ~comp & ~others
        ref = np.array([np.median(ph[shell]) if shell.any() else np.nan for ph in img])
        outside_ok = ~others
    else:
        ref = liver_ref
        outside_ok = liver[box] & ~others & ~comp
    density = [float(a - b) for a, b in zip(lesion_hu, ref)]
    region = _region(np.array(centroid), liver_box) if liver_box is not None else None
    return LesionMeasurement(
        n_voxels=int(comp.sum()), diameter_mm=_max_diameter(idx, spacing), centroid_zyx=centroid, region=region,
        lesion_hu=lesion_hu, density_hu=density, rim_minus_core_hu=_rim_minus_core(img, comp, spacing),
        margin_sigma_mm=_margin_sigma(img, comp, outside_ok, ref, spacing))


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(mask)
    return idx.min(axis=0).astype(float), idx.max(axis=0).astype(float)


def _max_diameter(idx: np.ndarray, spacing) -> float:
    """Largest corner-to-corner distance (mm) of the voxel boxes centred at ``idx`` (n, 3)."""
    sp = np.asarray(spacing)
    corners = np.array(np.meshgrid([-0.5, 0.5], [-0.5, 0.5], [-0.5, 0.5], indexing="ij")).reshape(3, -1).T
    pts = np.unique(((idx[:, None, :] + corners[None]) * sp).reshape(-1, 3), axis=0)
    if len(pts) > 1500:
        try:
            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # degenerate hull (cannot happen for voxel boxes, but stay safe): subsample
            pts = pts[:: max(1, len(pts) // 1500)]
    return float(pdist(pts).max())


def _region(centroid: np.ndarray, liver_box) -> str:
    lo, hi = liver_box
    frac = (centroid - lo) / np.maximum(hi - lo, 1.0)
    if np.any(frac < -0.05) or np.any(frac > 1.05):
        return "adjacent to the liver"
    vertical = "upper" if frac[0] >= 0.5 else "lower"  # z increases toward superior
    lobe = "right" if frac[2] < RIGHT_LOBE_FRACTION else "left"  # x increases toward the patient's left
    return f"{vertical} {lobe} lobe"


def _depth_mm(comp: np.ndarray, spacing) -> np.ndarray:
    return ndi.distance_transform_edt(np.pad(comp, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]


def _rim_minus_core(img, comp, spacing) -> list[float] | None:
    """Mean HU of the lesion shell (between 1 and max(2, 0.4 * max depth) in-plane voxels deep) minus the core
    (deeper than half the maximum depth); ``None`` for lesions less than 3 in-plane voxels deep."""
    h = float(np.mean(spacing[1:]))
    depth = _depth_mm(comp, spacing) / h
    dmax = depth.max()
    if dmax < 3.0:
        return None
    rim = comp & (depth > 1.0) & (depth <= max(2.0, 0.4 * dmax))
    core = depth > 0.5 * dmax
    if not rim.any() or not core.any():
        return None
    return [float(ph[rim].mean() - ph[core].mean()) for ph in img]


def _margin_sigma(img, comp, outside_ok, ref, spacing) -> float | None:
    """Gaussian edge width (mm) of the lesion boundary from in-plane distance layers (see the module docstring)."""
    h = float(np.mean(spacing[1:]))
    inplane = (1e4 * h, spacing[1], spacing[2])  # distances within each slice only
    d_in = ndi.distance_transform_edt(comp, sampling=inplane) / h
    d_out = ndi.distance_transform_edt(~comp, sampling=inplane) / h
    outside = outside_ok & ~comp
    k_max = max(2, int(np.ceil(FAR_BAND_MM / h + 0.5)))
    for k in range(k_max, 1, -1):  # the deepest band (up to FAR_BAND_MM) that still has a few voxels on both sides
        far_in = comp & (d_in > k - 0.5) & (d_in <= k + 0.5)
        far_out = outside & (d_out > k - 0.5) & (d_out <= k + 0.5)
        if far_in.sum() >= 4 and far_out.sum() >= 4:
            break
    else:
        return None
    near_in, near_out = comp & (d_in <= 1.01), outside & (d_out <= 1.01)
    if near_in.sum() < 4 or near_out.sum() < 4:
        return None
    bands = [(np.array([ph[a].mean() for ph in img]), np.array([ph[b].mean() for ph in img]))
             for a, b in ((near_in, far_in), (near_out, far_out))]
    (in_near, in_far), (out_near, out_far) = bands
    far_contrast = in_far - out_far
    p = int(np.argmax(np.abs(far_contrast)))
    if abs(far_contrast[p]) < ISO_HU:
        return None
    ratio = (in_near[p] - out_near[p]) / far_contrast[p]
    return h * _edge_sigma(float(ratio), k)


def _edge_sigma(ratio: float, k: int) -> float:
    """Solve ``(2 Phi(0.5 / s) - 1) / (2 Phi((k - 0.5) / s) - 1) = ratio`` for ``s`` (in voxels) by bisection; the
    left side falls from 1 (s -> 0) to 1 / (2k - 1) (s -> inf), so the result is clipped to [0.05, 20]."""
    lo, hi = np.log(0.05), np.log(20.0)

    def f(log_s: float) -> float:
        s = np.exp(log_s)
        return (2 * ndtr(0.5 / s) - 1) / (2 * ndtr((k - 0.5) / s) - 1) - ratio

    if f(lo) <= 0:
        return float(np.exp(lo))
    if f(hi) >= 0:
        return float(np.exp(hi))
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return float(np.exp(0.5 * (lo + hi)))


# --------------------------------------------------------------------------- wording
def _phase_label(names, p: int, n_phases: int) -> str:
    if names is not None:
        return f"in the {str(names[p]).replace('_', ' ')} phase"
    return "" if n_phases == 1 else f"in phase {p + 1}"


def _phases_words(names, phases: list[int], n_phases: int) -> str:
    """" in the arterial and portal venous phases" / " in phases 1 and 2" / "" (single unnamed phase)."""
    if names is not None:
        words = [str(names[p]).replace("_", " ") for p in phases]
        return f" in the {_join(words)} phase{'s' if len(words) > 1 else ''}"
    if n_phases == 1:
        return ""
    return f" in phase{'s' if len(phases) > 1 else ''} {_join([str(p + 1) for p in phases])}"


def _density_word(d: float) -> str:
    if abs(d) < ISO_HU:
        return "isodense"
    word = "hyperdense" if d > 0 else "hypodense"
    if abs(d) < 25:
        return "slightly " + word
    return "markedly " + word if abs(d) >= 60 else word


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(m: LesionMeasurement, names, has_liver: bool, capital: bool) -> str:
    n_phases = len(m.density_hu)
    size = int(round(m.diameter_mm))
    article = "An" if size in (11, 18) or str(size).startswith("8") else "A"
    article = article if capital else article.lower()
    where = (f" in the {m.region} of the liver" if m.region and m.region != "adjacent to the liver"
             else (" adjacent to the liver" if m.region else ""))
    text = f"{article} {size} mm lesion{where}"
    parts = []
    for p, d in enumerate(m.density_hu):
        phase = _phase_label(names, p, n_phases)
        parts.append(f"{_density_word(d)}{' ' + phase if phase else ''} ({d:+.0f} HU)")
    reference = "the liver" if has_liver else "the surrounding tissue"
    text += f"; relative to {reference} it is {_join(parts)}"
    if all(-10.0 <= h <= 20.0 for h in m.lesion_hu) and np.ptp(m.lesion_hu) < ISO_HU:
        text += f", of fluid attenuation ({np.mean(m.lesion_hu):.0f} HU)"
    if m.rim_minus_core_hu is not None:
        rim_phases = [p for p, v in enumerate(m.rim_minus_core_hu) if v >= RIM_HU]
        if rim_phases:
            text += "; peripheral enhancement" + _phases_words(names, rim_phases, n_phases)
    if m.margin is not None:
        text += f"; {m.margin} margins"
    return text + "."
