"""A synthetic 2D liver-lesion task that only the text can solve: several lesions per slice, one of them labelled.

Each case is one axial slice (a ``(1, Y, X)`` NIfTI, which nnU-Net's ``2d`` configuration reads as 2D): a body, a
liver, and two or three hypodense lesions of the same appearance in different parts of the liver and of clearly
different sizes. Only one of them, drawn at random, is labelled ``lesion`` (label 2); the others are liver
(label 1). The image alone cannot tell which lesion is meant; the case's text names the labelled one's location and
size ("a 14 mm hypodense lesion in the upper right part of the liver"), so a model that reads the text can find it
and one that does not can at best guess (a per-lesion chance of 1/2 or 1/3).

This is the synthetic check of TexLiverNet's text path (arXiv 2411.04595): lesion Dice with the real texts should
beat shuffled texts (another case's text) and no text; if shuffled texts score as well as real ones, the text is not
being used. It is the 2D "referring" option of the synthetic liver generator (:mod:`synthetic_liver` is the 3D
multiphase one); ``nnunet-ext convert synthetic-referring``.
"""

from __future__ import annotations

import os

import numpy as np

from nnunet_ext.conversion.synthetic import (
    SyntheticDataError,
    base_dataset_json,
    case_rngs,
    smooth_field,
    write_dataset,
    write_nifti,
)

GENERATOR_VERSION = 1
SPACING = (5.0, 1.0, 1.0)  # (z, y, x) mm: one 5 mm axial slice, 1 mm pixels
LABELS = {"background": 0, "liver": 1, "lesion": 2}
QUADRANTS = (("upper", "left"), ("upper", "right"), ("lower", "left"), ("lower", "right"))
# lesion radii (mm) by size class; any two lesions of a case differ by at least one class (>= 1.5x in diameter)
SIZE_CLASSES = ((3.0, 4.0), (6.0, 7.0), (9.5, 11.0))
MIN_SIZE = 48


def synthesize_referring_case(rng: np.random.Generator, size: int, n_lesions: int) -> dict:
    """One case: ``image`` (Y, X) HU float32, ``seg`` (Y, X) uint8, ``text``, and the lesions' truth."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    body = ((yy - c) / (0.46 * size)) ** 2 + ((xx - c) / (0.48 * size)) ** 2 <= 1
    ly, lx = c + rng.uniform(-0.04, 0.04) * size, c + rng.uniform(-0.04, 0.04) * size
    ry, rx = rng.uniform(0.30, 0.36) * size, rng.uniform(0.36, 0.42) * size
    liver = ((yy - ly) / ry) ** 2 + ((xx - lx) / rx) ** 2 <= 1
    image = np.full((size, size), -1000.0, np.float32)
    image[body] = 40.0 + 8 * smooth_field(rng, (1, size, size), 6.0)[0][body]
    liver_hu = rng.uniform(95, 115)
    image[liver] = liver_hu + 6 * smooth_field(rng, (1, size, size), 4.0)[0][liver]

    quadrants = rng.permutation(len(QUADRANTS))[:n_lesions]
    size_classes = rng.permutation(len(SIZE_CLASSES))[:n_lesions]
    lesion_hu = liver_hu - rng.uniform(45, 60)
    lesions, masks = [], []
    for q, s in zip(quadrants, size_classes):
        radius = rng.uniform(*SIZE_CLASSES[s])
        vert, horiz = QUADRANTS[q]
        # centre inside the quadrant of the liver, far enough from its border and from the quadrant's edges
        dy = (0.45 * ry) * (-1 if vert == "upper" else 1) * rng.uniform(0.8, 1.1)
        dx = (0.45 * rx) * (-1 if horiz == "left" else 1) * rng.uniform(0.8, 1.1)
        cy, cx = ly + dy, lx + dx
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2) & liver
        masks.append(mask)
        lesions.append({"quadrant": f"{vert} {horiz}", "diameter_mm": round(2 * radius * SPACING[2], 1),
                        "center_yx": [float(cy), float(cx)], "n_pixels": int(mask.sum())})
    for mask in masks:  # every lesion looks the same: only its place and size tell them apart
        image[mask] = lesion_hu + 4 * rng.standard_normal(int(mask.sum())).astype(np.float32)
    image = image + rng.normal(0, 6, image.shape).astype(np.float32) * body
    target = int(rng.integers(n_lesions))
    seg = np.zeros((size, size), np.uint8)
    seg[liver] = 1
    seg[masks[target]] = 2
    t = lesions[target]
    text = f"a {int(round(t['diameter_mm']))} mm hypodense lesion in the {t['quadrant']} part of the liver"
    return {"image": image, "seg": seg, "text": text, "target": target, "lesions": lesions}


def convert_synthetic_referring(dataset_id: int, n_cases: int = 200, size: int = 96, min_lesions: int = 2,
                                max_lesions: int = 3, seed: int = 0, output_root: str | None = None,
                                name: str = "SyntheticReferring", overwrite: bool = False,
                                progress: bool = True) -> str:
    """Write ``DatasetXXX_SyntheticReferring`` (nnU-Net v2 raw, one 2D slice per case) and return its folder.

    Args:
        n_cases: cases ``ref_0000`` ...; ``size``: pixels per side (1 mm); ``min_lesions``/``max_lesions``: 2-3
            lesions per slice, one labelled; everything is deterministic given ``seed`` (case ``i`` does not depend
            on ``n_cases``).

    Writes ``imagesTr/ref_XXXX_0000.nii.gz`` (int16 HU, channel "CT"), ``labelsTr`` (0 background, 1 liver, 2 the
    labelled lesion), ``dataset.json`` with a text per case in the ``"nnunet_ext"`` block, and
    ``synthetic_truth.json`` (every lesion's quadrant, diameter and centre; which one is labelled).
    """
    if int(size) < MIN_SIZE:
        raise SyntheticDataError(f"size {size} is too small for three lesions in a liver: need >= {MIN_SIZE}.")
    if not 2 <= int(min_lesions) <= int(max_lesions) <= 3:
        raise SyntheticDataError(f"need 2 <= min_lesions <= max_lesions <= 3, got {min_lesions}, {max_lesions}: "
                                 "with one lesion the image alone would tell which is labelled.")
    if int(n_cases) < 1:
        raise SyntheticDataError(f"n_cases must be >= 1, got {n_cases}.")
    fingerprint = {"generator": "synthetic-referring", "version": GENERATOR_VERSION, "n_cases": int(n_cases),
                   "size": int(size), "lesions": [int(min_lesions), int(max_lesions)], "seed": int(seed)}

    def write_cases(folder: str) -> tuple[dict, dict]:
        from tqdm import tqdm

        cases, truth = {}, {}
        rngs = case_rngs(seed, n_cases)
        for i in tqdm(range(int(n_cases)), desc="synthetic-referring", disable=not progress):
            case_id = f"ref_{i:04d}"
            n = int(rngs[i].integers(min_lesions, max_lesions + 1))
            case = synthesize_referring_case(rngs[i], int(size), n)
            hu = np.clip(np.round(case["image"]), -1024, 3071).astype(np.int16)[None]
            write_nifti(hu, os.path.join(folder, "imagesTr", f"{case_id}_0000.nii.gz"), SPACING)
            write_nifti(case["seg"][None], os.path.join(folder, "labelsTr", f"{case_id}.nii.gz"), SPACING)
            cases[case_id] = {"text": case["text"]}
            truth[case_id] = {"target": case["target"], "lesions": case["lesions"], "text": case["text"]}
        description = ("Synthetic 2D liver slices with two or three similar lesions, one labelled; the text names the "
                       "labelled one (nnunet-ext synthetic-referring).")
        dj = base_dataset_json(["CT"], LABELS, n_cases, name, description, {"format_version": 1, "cases": cases})
        return dj, truth

    return write_dataset(dataset_id, name, output_root, fingerprint, overwrite, write_cases)


def shuffled_texts(texts: dict[str, str], seed: int = 0) -> dict[str, str]:
    """Every case gets the text of another case whose text differs from its own (any other case's when none does),
    drawn at random (deterministic given ``seed``): the control that tells whether a model uses the text's content.
    Several cases can share a text (same place and rounded size), so a plain permutation would leave some texts
    unchanged."""
    ids = sorted(texts)
    if len(ids) < 2:
        raise SyntheticDataError("shuffling texts needs at least two cases")
    rng = np.random.default_rng(seed)
    out = {}
    for k in ids:
        others = [o for o in ids if o != k and texts[o] != texts[k]] or [o for o in ids if o != k]
        out[k] = texts[others[int(rng.integers(len(others)))]]
    return out


def add_parser(convert_subparsers) -> None:
    p = convert_subparsers.add_parser(
        "synthetic-referring", help="generate 2D liver slices with 2-3 lesions, one labelled, and a text naming it "
                                    "(the task a text-conditioned model must use its text for)")
    p.add_argument("-d", type=int, required=True, help="dataset id")
    p.add_argument("-o", default=None, help="output root (default: $nnUNet_raw)")
    p.add_argument("-n", type=int, default=200, help="number of cases (slices)")
    p.add_argument("--size", type=int, default=96, help="pixels per side (1 mm each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing, different dataset folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args) -> None:
    folder = convert_synthetic_referring(args.d, n_cases=args.n, size=args.size, seed=args.seed, output_root=args.o,
                                         overwrite=args.overwrite, progress=not args.quiet)
    print(f"Synthetic referring dataset written to {folder}")

