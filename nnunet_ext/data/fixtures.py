"""A small deterministic generator of tiny multiphasic nnU-Net datasets, for tests and smoke runs.

Each case is a ``(z, y, x)`` volume per phase with a liver-like ellipsoid (label 1) and one lesion (label 2) whose
class is defined by its enhancement over the phases (class 0: arterial wash-in then wash-out; class 1: rim-like
progressive; class 2: no enhancement). The realistic generator lives in :mod:`nnunet_ext.conversion.synthetic`.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from nnunet_ext.data.metadata import METADATA_KEY, save_json_atomic

DEFAULT_PHASES = ("arterial", "portal_venous", "delayed")
CLASS_NAMES = ("washout", "progressive", "nonenhancing")
# lesion-minus-liver contrast (HU) per class and phase (arterial, portal venous, delayed)
_CURVES = np.array([[60.0, -10.0, -40.0], [-30.0, 10.0, 40.0], [-60.0, -70.0, -80.0]])


def _ellipsoid(shape, center, radii) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def make_tiny_multiphase_dataset(raw_root: str, dataset_id: int = 901, n_cases: int = 10,
                                 shape: tuple[int, int, int] = (16, 32, 32),
                                 phases: tuple[str, ...] = DEFAULT_PHASES, seed: int = 0,
                                 with_text: bool = True, with_tabular: bool = True,
                                 n_unlabeled: int = 0, name: str = "TinyMultiphase",
                                 spacing: tuple[float, float, float] = (2.0, 1.5, 1.5),
                                 file_ending: str = ".nii.gz") -> str:
    """Write a raw nnU-Net v2 dataset ``Dataset{id}_{name}`` under ``raw_root``; returns its folder.

    Class labels cycle through :data:`CLASS_NAMES` so every class is present; the last ``n_unlabeled`` cases are
    marked explicitly unlabeled (``"class": null``). Deterministic for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    os.makedirs(os.path.join(folder, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(folder, "labelsTr"), exist_ok=True)
    curves = _CURVES[:, :len(phases)] if len(phases) <= 3 else np.repeat(_CURVES, 2, axis=1)[:, :len(phases)]
    cases = {}
    for i in range(n_cases):
        case = f"case_{i:03d}"
        cls = i % len(CLASS_NAMES)
        zc, yc, xc = (np.array(shape) / 2 + rng.uniform(-1, 1, 3)).tolist()
        liver = _ellipsoid(shape, (zc, yc, xc), (shape[0] * 0.4, shape[1] * 0.35, shape[2] * 0.35))
        lr = rng.uniform(2.0, 3.5)
        lc = (zc + rng.uniform(-1, 1), yc + rng.uniform(-3, 3), xc + rng.uniform(-3, 3))
        lesion = _ellipsoid(shape, lc, (lr * 0.7, lr, lr)) & liver
        seg = liver.astype(np.uint8) + lesion.astype(np.uint8)
        for p in range(len(phases)):
            img = rng.normal(0.0, 8.0, shape) - 50.0
            liver_hu = 60.0 + 30.0 * p
            img[liver] += liver_hu + 50.0
            img[lesion] += curves[cls, p] + rng.normal(0, 5.0)
            itk = sitk.GetImageFromArray(img.astype(np.float32))
            itk.SetSpacing(spacing[::-1])
            sitk.WriteImage(itk, os.path.join(folder, "imagesTr", f"{case}_{p:04d}{file_ending}"))
        lab = sitk.GetImageFromArray(seg)
        lab.SetSpacing(spacing[::-1])
        sitk.WriteImage(lab, os.path.join(folder, "labelsTr", f"{case}{file_ending}"))
        entry: dict = {"class": CLASS_NAMES[cls] if i < n_cases - n_unlabeled else None}
        if with_text:
            entry["text"] = f"a {2 * lr * spacing[1]:.0f} mm {CLASS_NAMES[cls]} lesion in the liver"
        if with_tabular:
            entry["tabular"] = [float(np.round(rng.normal(60, 10), 1)), float(np.round(rng.normal(cls, 1.0), 3))]
        cases[case] = entry
    block = {"format_version": 1,
             "classification": {"class_names": list(CLASS_NAMES), "lesion_labels": [2]},
             "phases": {"order": list(phases),
                        "reference": "portal_venous" if "portal_venous" in phases else phases[0]},
             "cases": cases}
    if with_tabular:
        block["tabular"] = {"feature_names": ["age", "marker"]}
    dataset_json = {
        "channel_names": {str(p): "CT" for p in range(len(phases))},
        "labels": {"background": 0, "liver": 1, "lesion": 2},
        "numTraining": n_cases,
        "file_ending": file_ending,
        "name": name,
        METADATA_KEY: block,
    }
    save_json_atomic(dataset_json, os.path.join(folder, "dataset.json"))
    return folder
