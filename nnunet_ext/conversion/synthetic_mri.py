"""``nnunet-ext convert synthetic-mri``: multi-sequence MRI of a spine-like region with one vertebral lesion per case,
for lesion classification in the style of DeSamba (decoupled spectral adaptive network, arXiv 2507.15487).

DeSamba claims two things: its spectral (FFT) blocks pick up lesion *texture frequency content*, and its decoupling
module (unique vs shared representations per sequence) picks up the *cross-sequence signal pattern*. The generator
therefore makes the class depend on both, and on neither alone:

* **Signal pattern.** A lesion's contrast to the surrounding marrow in sequence ``s`` (log of the lesion / marrow
  signal ratio) is ``x_s = base_s + t_k * delta * w_s + sum_j a_j * n_js + noise``: ``t_k`` in {-1, 0, 1} is the class,
  ``n_j`` are nuisance directions shared by every class (water/edema: darker T1, brighter T2 and T2-FS; fat: brighter
  T1 and T2, darker T2-FS) with wide random weights ``a_j``, and ``w`` is the unit direction orthogonal to all of them.
  In one sequence the class shift ``delta * w_s`` drowns in the nuisance spread; with all sequences the nuisances can
  be projected out. With S sequences there are S - 1 nuisance directions, so 2 or 3 sequences both work.
* **Texture and margins.** Internal texture scale (voxels), boundary irregularity and margin blur have class-dependent
  but overlapping distributions ("lytic": fine, high-frequency texture and irregular margins; "sclerotic": smooth
  texture, smooth sharp margins; "inflammatory": smooth texture, blurred ill-defined margins).

``tests/conversion/test_synthetic_mri.py`` checks this with a logistic regression on per-sequence lesion features
(log contrast to the surrounding marrow, high-frequency texture, ROI irregularity): all three sequences ~0.84-0.91
accuracy, any single sequence <= ~0.63 (two sequences: ~0.81-0.95 against <= ~0.69 for either alone).

Images are in arbitrary MRI units with a per-sequence gain, a smooth bias field and Rician noise, so nnU-Net's z-score
normalisation (channel names are the sequence names) is appropriate. Arrays are ``(z, y, x)``; z runs along the spine.
Labels: lesion ROI (1). Tabular: age, a CRP-like and an ALP-like marker, weakly associated with the class.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtr

from nnunet_ext.conversion.synthetic import (
    SyntheticDataError,
    base_dataset_json,
    case_rngs,
    check_geometry,
    smooth_field,
    write_dataset,
    write_nifti,
)

GENERATOR_VERSION = 1
SEQUENCES = ("T1", "T2", "T2FS")
DEFAULT_CLASSES = ("lytic", "sclerotic", "inflammatory")
TABULAR_FEATURES = ("age", "crp", "alp")
MIN_SHAPE = (16, 32, 32)
# tissue signal per sequence (T1, T2, T2FS), arbitrary units
_TISSUE = {"air": (0.0, 0.0, 0.0), "fat": (900.0, 700.0, 100.0), "muscle": (350.0, 250.0, 220.0),
           "marrow": (650.0, 450.0, 180.0), "cortex": (60.0, 50.0, 50.0), "disc": (300.0, 650.0, 600.0),
           "csf": (150.0, 1000.0, 950.0), "cord": (420.0, 450.0, 420.0)}
_TISSUE_NAMES = tuple(_TISSUE)
# lesion contrast model (log of the lesion / marrow signal ratio): generic lesion, nuisance loadings, class spacing
_BASE = np.array([-0.5, 0.35, 0.7])
_NUISANCE = np.array([[-0.5, 1.0, 1.0],   # water / edema
                      [1.0, 0.6, -0.8]])  # fat
NUISANCE_RANGE = (0.5, 0.35)  # half-widths of the uniform nuisance weights
CLASS_DELTA = 0.3
CONTRAST_NOISE = 0.05
# (texture cell in voxels: log-uniform range, boundary irregularity range, margin blur range in mm) per class
_TEXTURE = ((1.0, 2.4), (1.8, 4.5), (2.2, 5.0))
_IRREGULARITY = ((0.12, 0.35), (0.0, 0.2), (0.05, 0.25))
_MARGIN_MM = ((0.3, 1.2), (0.3, 1.0), (0.9, 2.5))


@dataclass
class MRICase:
    """One case: ``image`` ``(S, Z, Y, X)`` float32, ``seg`` ``(Z, Y, X)`` uint8 lesion mask, the class index and
    name, the lesion's contrast per sequence (log lesion / marrow ratio), texture and shape parameters, tabular
    values."""

    image: np.ndarray
    seg: np.ndarray
    class_index: int
    class_name: str
    contrast: list[float]
    lesion: dict
    tabular: list[float]
    text: str


def _check(sequences, shape, spacing, class_names):
    seqs = tuple(sequences)
    if not 2 <= len(seqs) <= 3 or any(s not in SEQUENCES for s in seqs) or len(set(seqs)) != len(seqs):
        raise SyntheticDataError(f"sequences {list(seqs)}: synthetic-mri needs 2 or 3 distinct sequences from "
                                 f"{SEQUENCES}. Fix: e.g. sequences=('T1', 'T2', 'T2FS') or ('T1', 'T2').")
    shape, spacing = check_geometry(shape, spacing, MIN_SHAPE, "a vertebra with a lesion")
    names = tuple(class_names)
    if len(names) != 3 or len(set(names)) != 3 or not all(isinstance(n, str) and n for n in names):
        raise SyntheticDataError(f"class_names must be 3 distinct names (for the patterns {DEFAULT_CLASSES}), got "
                                 f"{names!r}.")
    return seqs, shape, spacing, names


def contrast_model(sequences: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(base (S,), nuisance (S-1, S), half_ranges (S-1,), class_axis (S,))`` for the chosen sequences.

    Three sequences: both nuisance directions (water, fat) and the unit vector orthogonal to them. Two sequences:
    the one nuisance direction (water or fat, restricted to those sequences) whose orthogonal class axis is most
    balanced between the two, so that neither sequence alone carries the class.
    """
    idx = [SEQUENCES.index(s) for s in sequences]
    options = [(_NUISANCE[[0, 1]][:, idx], np.array(NUISANCE_RANGE))] if len(idx) == 3 else [
        (_NUISANCE[[j]][:, idx], np.array([0.4])) for j in range(len(_NUISANCE))]
    best = None
    for nuisance, ranges in options:
        axis = np.linalg.svd(nuisance)[2][-1]  # null space of the nuisance rows
        axis = axis * np.sign(axis[np.argmax(np.abs(axis))])
        if best is None or np.abs(axis).min() > np.abs(best[3]).min():
            best = (_BASE[idx], nuisance, ranges, axis)
    return best


def synthesize_mri_case(rng: np.random.Generator, shape: Sequence[int] = (32, 64, 64),
                        spacing: Sequence[float] = (3.0, 1.0, 1.0), sequences: Sequence[str] = SEQUENCES,
                        class_index: int | None = None, class_names: Sequence[str] = DEFAULT_CLASSES) -> MRICase:
    """Generate one case in memory (see the module docstring)."""
    seqs, shape, spacing, names = _check(sequences, shape, spacing, class_names)
    k = int(rng.integers(3)) if class_index is None else int(class_index)
    tissue, vert_centres, body_axes = _spine(rng, shape, spacing)
    base, nuisance, ranges, axis = contrast_model(seqs)
    weights = np.array([rng.uniform(-h, h) for h in ranges])
    contrast = base + (k - 1) * CLASS_DELTA * axis + weights @ nuisance + rng.normal(0, CONTRAST_NOISE, len(seqs))

    # the lesion: a deformed ellipsoid inside one vertebral body
    zc = vert_centres[rng.integers(len(vert_centres))] + rng.uniform(-0.1, 0.1) * body_axes[0]
    centre = np.array([zc, rng.uniform(-0.15, 0.15) * body_axes[1], rng.uniform(-0.15, 0.15) * body_axes[2]])
    radius = rng.uniform(0.3, 0.55) * min(body_axes[1:])
    radii = radius * rng.uniform(0.8, 1.25, 3)
    radii[0] = min(radii[0], 0.8 * body_axes[0])
    cell = float(np.exp(rng.uniform(*np.log(_TEXTURE[k]))))
    irregular = rng.uniform(*_IRREGULARITY[k])
    margin = rng.uniform(*_MARGIN_MM[k])
    grid = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    q = [(g - c) / r for g, c, r in zip(grid, centre, radii)]
    q = (q[0][:, None, None], q[1][None, :, None], q[2][None, None, :])
    rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    freq = rng.standard_normal((4, 3)) * 3.5  # high-frequency bumps: irregular boundary
    bumps = sum(np.cos(f[0] * q[0] + f[1] * q[1] + f[2] * q[2] + rng.uniform(0, 2 * np.pi)) for f in freq) / 2.0
    rho = rho * (1.0 + irregular * bumps)
    weight = ndtr(-(rho - 1.0) * radius / margin) * (tissue == _TISSUE_NAMES.index("marrow"))
    seg = ((rho <= 1.0) & (tissue == _TISSUE_NAMES.index("marrow"))).astype(np.uint8)
    texture = smooth_field(rng, shape, cell) if cell >= 3 else _fine_texture(rng, shape, cell, rho <= 1.6)
    inside = rho <= 1.0
    if inside.any():  # zero mean and unit std inside the lesion: texture does not move the lesion's mean signal
        texture = (texture - texture[inside].mean()) / max(float(texture[inside].std()), 1e-6)
    tex_amp = rng.uniform(0.1, 0.25)

    gain = rng.uniform(0.7, 1.3, len(seqs))
    bias = 1.0 + 0.12 * smooth_field(rng, shape, 24.0)
    noise_frac = rng.uniform(0.02, 0.04)
    images = []
    for i, s in enumerate(seqs):
        col = SEQUENCES.index(s)
        lut = np.array([_TISSUE[t][col] for t in _TISSUE_NAMES], np.float32) * rng.uniform(0.92, 1.08, len(_TISSUE))
        img = lut[tissue] * (1.0 + 0.05 * texture * (tissue == _TISSUE_NAMES.index("marrow")))
        marrow = lut[_TISSUE_NAMES.index("marrow")]
        lesion = marrow * np.exp(contrast[i]) * (1.0 + tex_amp * texture)
        img = img + weight * (lesion - img)
        img = ndi.gaussian_filter(img, 0.5) * bias * gain[i]
        sigma = noise_frac * marrow * gain[i]
        img = np.hypot(img + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))  # Rician magnitude
        images.append(img.astype(np.float32))
    size_mm = 2.0 * float(np.max(radii))
    lesion_info = {"center_mm": centre.tolist(), "radii_mm": radii.tolist(), "texture_cell_vox": cell,
                   "irregularity": float(irregular), "margin_mm": float(margin), "texture_amp": float(tex_amp)}
    return MRICase(image=np.stack(images), seg=seg, class_index=k, class_name=names[k],
                   contrast=[float(c) for c in contrast], lesion=lesion_info, tabular=_tabular(rng, k),
                   text=_describe(seqs, contrast, size_mm, irregular, margin, cell))


def _fine_texture(rng, shape, cell, where) -> np.ndarray:
    """High-frequency texture (cell < 3 voxels) computed only in the bounding box of ``where``."""
    out = np.zeros(shape, np.float32)
    idx = np.argwhere(where)
    if len(idx) == 0:
        return out
    lo, hi = idx.min(0), idx.max(0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    field = rng.standard_normal(tuple(hi - lo)).astype(np.float32)
    field = ndi.gaussian_filter(field, cell / 2.0)
    out[box] = (field - field.mean()) / max(float(field.std()), 1e-6)
    return out


def _spine(rng, shape, spacing) -> tuple[np.ndarray, list[float], tuple[float, float, float]]:
    """Tissue indices ``(Z, Y, X)`` of vertebral bodies stacked along z with discs, a spinal canal (CSF and cord)
    behind them (+y), paraspinal muscles and subcutaneous fat; returns the vertebra centres (mm, z) and the
    vertebral-body half axes (mm, z, y, x)."""
    T = {n: i for i, n in enumerate(_TISSUE_NAMES)}
    z, y, x = ((np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing))
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    hy, hx = shape[1] * spacing[1] / 2.0, shape[2] * spacing[2] / 2.0
    tissue = np.zeros(shape, np.uint8)
    body = ((y / (0.95 * hy)) ** 2 + (x / (0.95 * hx)) ** 2) <= 1.0
    tissue[np.broadcast_to(body, shape)] = T["fat"]
    tissue[np.broadcast_to(((y / (0.8 * hy)) ** 2 + (x / (0.85 * hx)) ** 2) <= 1.0, shape)] = T["muscle"]
    period = rng.uniform(0.55, 0.75) * shape[0] * spacing[0] / 2.0
    phase = rng.uniform(0, period)
    disc_h = rng.uniform(0.18, 0.25) * period
    pos = np.mod(z + phase, period)
    in_disc = np.abs(pos - period / 2.0) < disc_h / 2.0
    vb = (0.45 * period, 0.42 * hy, 0.42 * hx)  # vertebral body half axes
    cy = -0.15 * hy
    column = ((y - cy) / vb[1]) ** 2 + (x / vb[2]) ** 2
    tissue[np.broadcast_to(column <= 1.0, shape)] = T["cortex"]
    tissue[np.broadcast_to(column <= 0.8, shape) & ~in_disc] = T["marrow"]
    tissue[np.broadcast_to(column <= 1.0, shape) & in_disc] = T["disc"]
    edge = np.abs(np.abs(pos - period / 2.0) - disc_h / 2.0) < 0.6 * spacing[0]
    tissue[np.broadcast_to(column <= 0.8, shape) & edge] = T["cortex"]  # endplates
    canal = ((y - (cy + vb[1] + 0.12 * hy)) / (0.09 * hy)) ** 2 + (x / (0.12 * hx)) ** 2
    tissue[np.broadcast_to(canal <= 1.0, shape)] = T["csf"]
    tissue[np.broadcast_to(canal <= 0.35, shape)] = T["cord"]
    centres = [c for c in (np.arange(-3, 4) * period + period - phase) if abs(c) < shape[0] * spacing[0] / 2.0 - 0.3
               * period]
    centres = centres or [0.0]
    return tissue, centres, (0.5 * vb[0], 0.8 * vb[1], 0.8 * vb[2])


def _tabular(rng, k: int) -> list[float]:
    age = rng.normal((64, 66, 55)[k], 11)
    crp = 10 ** rng.normal((0.8, 0.7, 1.3)[k], 0.45)
    alp = 10 ** rng.normal((2.0, 2.3, 2.0)[k], 0.2)
    return [float(np.round(np.clip(age, 18, 95), 1)), float(np.round(crp, 2)), float(np.round(alp, 1))]


def _describe(seqs, contrast, size_mm, irregular, margin, cell) -> str:
    def word(c: float) -> str:
        return "isointense" if abs(c) < 0.12 else ("hyperintense" if c > 0 else "hypointense")

    signal = ", ".join(f"{word(c)} on {s}" for s, c in zip(seqs, contrast))
    texture = "heterogeneous fine-grained" if cell < 2.0 else "homogeneous"
    edge = "ill-defined" if margin > 1.5 else ("irregular" if irregular > 0.2 else "smooth")
    return f"A {size_mm:.0f} mm vertebral body lesion, {signal}, with {texture} internal texture and {edge} margins."


def convert_synthetic_mri(dataset_id: int, n_cases: int = 30, shape: Sequence[int] = (32, 64, 64),
                          sequences: Sequence[str] = SEQUENCES, seed: int = 0, output_root: str | None = None,
                          spacing: Sequence[float] = (3.0, 1.0, 1.0), class_names: Sequence[str] = DEFAULT_CLASSES,
                          name: str = "SyntheticMRI", overwrite: bool = False, progress: bool = True) -> str:
    """Write ``DatasetXXX_SyntheticMRI`` (nnU-Net v2 raw format) and return its folder.

    ``imagesTr/mri_XXX_000S.nii.gz`` (float32, one channel per sequence, channel names = sequence names),
    ``labelsTr/mri_XXX.nii.gz`` (lesion 1), ``dataset.json`` with the ``"nnunet_ext"`` block (classes cycling through
    ``class_names`` so all are present, tabular ``age``/``crp``/``alp``, a short text per case) and
    ``synthetic_truth.json``. Deterministic for a given seed; ``overwrite`` replaces a different existing dataset.
    """
    seqs, shape, spacing, names = _check(sequences, shape, spacing, class_names)
    if int(n_cases) < 1:
        raise SyntheticDataError(f"n_cases must be >= 1, got {n_cases}.")
    fingerprint = {"generator": "synthetic-mri", "version": GENERATOR_VERSION, "n_cases": int(n_cases),
                   "shape": shape, "spacing": spacing, "sequences": list(seqs), "seed": int(seed),
                   "class_names": list(names)}

    def write_cases(folder: str) -> tuple[dict, dict]:
        from tqdm import tqdm

        cases, truth = {}, {}
        rngs = case_rngs(seed, n_cases)
        for i in tqdm(range(int(n_cases)), desc="synthetic-mri", disable=not progress):
            case_id = f"mri_{i:03d}"
            case = synthesize_mri_case(rngs[i], shape, spacing, seqs, i % 3, names)
            for s in range(len(seqs)):
                write_nifti(case.image[s], os.path.join(folder, "imagesTr", f"{case_id}_{s:04d}.nii.gz"), spacing)
            write_nifti(case.seg, os.path.join(folder, "labelsTr", f"{case_id}.nii.gz"), spacing)
            cases[case_id] = {"class": case.class_name, "text": case.text, "tabular": case.tabular}
            truth[case_id] = {"class": case.class_name, "contrast": dict(zip(seqs, case.contrast)), **case.lesion}
        block = {"format_version": 1, "classification": {"class_names": list(names), "lesion_labels": [1]},
                 "tabular": {"feature_names": list(TABULAR_FEATURES)}, "cases": cases}
        description = ("Synthetic multi-sequence MRI (nnunet-ext synthetic-mri): vertebral lesion classes defined by "
                       "the cross-sequence signal pattern and lesion texture.")
        return base_dataset_json(list(seqs), {"background": 0, "lesion": 1}, n_cases, name, description, block), truth

    return write_dataset(dataset_id, name, output_root, fingerprint, overwrite, write_cases)
