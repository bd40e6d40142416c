"""Synthetic datasets: ``nnunet-ext convert synthetic-liver`` and ``nnunet-ext convert synthetic-mri``.

The generators themselves live in :mod:`nnunet_ext.conversion.synthetic_liver` (multiphasic CT with liver lesions
whose class is defined by their enhancement dynamics, for STD-Net) and :mod:`nnunet_ext.conversion.synthetic_mri`
(multi-sequence MRI lesions whose class is defined by the cross-sequence signal pattern and the lesion texture, for
DeSamba). This module holds what both share: writing a raw nnU-Net dataset atomically (temporary folder, rename at
the end, refusal to replace a different dataset, checked again under the dataset id's lock at the rename; staging
folders of killed runs removed at the next start), smooth random fields, random rigid motion, simple geometry
(ellipsoids, tubes) and NIfTI output, plus the CLI registration.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from nnunet_ext.data.metadata import METADATA_KEY, DatasetMetadata, save_json_atomic
from nnunet_ext.errors import NnunetExtError

GENERATOR_KEY = "synthetic_generator"  # top-level dataset.json key with the generator's name, version and parameters
TRUTH_FILE = "synthetic_truth.json"  # per-case ground truth (lesion types, sizes, motion) next to dataset.json
TMP_PREFIX = ".tmp_"  # staging folders: .tmp_DatasetXXX_Name-<host>-<pid>-*


class SyntheticDataError(NnunetExtError, ValueError):
    """Invalid generator parameters, or an output folder that must not be replaced."""


# --------------------------------------------------------------------------- dataset folders
def dataset_folder(dataset_id: int, name: str, output_root: str | None) -> tuple[str, str]:
    """``(root, root/DatasetXXX_name)``; ``root`` defaults to ``$nnUNet_raw``."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 9999:
        raise SyntheticDataError(f"dataset_id must be an integer in 1..9999, got {dataset_id!r}.")
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise SyntheticDataError(f"dataset name {name!r} must be non-empty letters, digits, '-' or '_'.")
    if output_root is None:
        from nnunetv2.paths import nnUNet_raw

        if not nnUNet_raw.is_set():
            raise SyntheticDataError("nnUNet_raw is not set. Fix: export nnUNet_raw=/path/to/nnUNet_raw or pass "
                                     "output_root (-o).")
        output_root = nnUNet_raw.get()
    return str(output_root), os.path.join(str(output_root), f"Dataset{int(dataset_id):03d}_{name}")


def write_dataset(dataset_id: int, name: str, output_root: str | None, fingerprint: dict, overwrite: bool,
                  write_cases: Callable[[str], tuple[dict, dict]]) -> str:
    """Create ``DatasetXXX_name`` through a temporary folder that is renamed into place at the end.

    Args:
        fingerprint: JSON-able generator name, version and parameters, stored under ``dataset.json[GENERATOR_KEY]``.
            An existing folder with the same fingerprint is kept as it is (generation is deterministic).
        overwrite: replace an existing ``DatasetXXX_name`` that differs. Another folder with the same dataset id but
            a different name is never touched (nnU-Net finds datasets by id, so it must be removed by hand).
        write_cases: ``write_cases(tmp_folder) -> (dataset_json, truth)`` writes ``imagesTr``/``labelsTr`` into
            ``tmp_folder``; the returned ``dataset.json`` content is validated (nnunet_ext metadata) before the rename.

    Returns:
        the dataset folder.
    """
    from nnunet_ext.conversion.staging import conversion_lock, remove_stale_staging, staging_prefix
    from nnunet_ext.data.files import mkdtemp_public

    root, folder = dataset_folder(dataset_id, name, output_root)
    os.makedirs(root, exist_ok=True)
    for path in remove_stale_staging(Path(root), int(dataset_id), TMP_PREFIX):
        print(f"removed {path}, the staging folder of a generation that was killed")
    if _check_target(root, folder, dataset_id, fingerprint, overwrite, after_build=False):
        print(f"{folder} already holds this synthetic dataset (same generator and parameters): kept.")
        return folder
    # mkdtemp_public: the folder is renamed into place, so it gets mkdir's mode (the umask), not mkdtemp's 0700
    tmp = mkdtemp_public(staging_prefix(f"Dataset{int(dataset_id):03d}_{name}", TMP_PREFIX), root)
    try:
        for sub in ("imagesTr", "labelsTr"):
            os.makedirs(os.path.join(tmp, sub))
        dataset_json, truth = write_cases(tmp)
        dataset_json[GENERATOR_KEY] = _jsonable(fingerprint)
        DatasetMetadata.from_dataset_json(dataset_json)  # raises MetadataError on anything inconsistent
        save_json_atomic(dataset_json, os.path.join(tmp, "dataset.json"))
        save_json_atomic(_jsonable(truth), os.path.join(tmp, TRUTH_FILE))
        with conversion_lock(Path(root), int(dataset_id)):  # checked again: another run may have finished since
            if _check_target(root, folder, dataset_id, fingerprint, overwrite, after_build=True):
                shutil.rmtree(tmp, ignore_errors=True)
                print(f"{folder} already holds this synthetic dataset (same generator and parameters): kept.")
                return folder
            if os.path.exists(folder):
                trash = tempfile.mkdtemp(prefix=".trash_", dir=root)
                os.rename(folder, os.path.join(trash, "old"))
                os.rename(tmp, folder)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _check_target(root: str, folder: str, dataset_id: int, fingerprint: dict, overwrite: bool,
                  after_build: bool) -> bool:
    """True when ``folder`` already holds this dataset; an error when the id is used by another folder or
    ``folder`` holds another dataset (without ``overwrite``); False when the new dataset may go into place."""
    meanwhile = " (written by another run while this one ran)" if after_build else ""
    clashes = [p for p in glob.glob(os.path.join(root, f"Dataset{int(dataset_id):03d}_*"))
               if os.path.abspath(p) != os.path.abspath(folder)]
    if clashes:
        raise SyntheticDataError(
            f"dataset id {dataset_id} is already used by {', '.join(sorted(clashes))}{meanwhile}; nnU-Net finds "
            "datasets by id, so two folders with one id are ambiguous. Fix: choose another dataset id (-d) or remove "
            "that folder.")
    if os.path.exists(folder):
        if not overwrite and _fingerprint_of(folder) == _jsonable(fingerprint):
            return True
        if not overwrite:
            raise SyntheticDataError(
                f"{folder} exists{meanwhile} and differs from the requested dataset (other parameters, or not "
                "generated by nnunet-ext). Fix: pass overwrite=True (--overwrite) to replace it, or choose another "
                "dataset id.")
    return False


def _fingerprint_of(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, "dataset.json"), encoding="utf-8") as f:
            return json.load(f).get(GENERATOR_KEY)
    except (OSError, ValueError):
        return None


def _jsonable(obj):
    """Round-trip through JSON so tuples, numpy scalars and arrays compare equal to what is read back."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def base_dataset_json(channel_names: Sequence[str], labels: dict[str, int], n_cases: int, name: str,
                      description: str, metadata_block: dict) -> dict:
    """A ``dataset.json`` for ``.nii.gz`` training cases with the ``"nnunet_ext"`` metadata block."""
    return {"channel_names": {str(i): c for i, c in enumerate(channel_names)}, "labels": dict(labels),
            "numTraining": int(n_cases), "file_ending": ".nii.gz", "name": name, "description": description,
            METADATA_KEY: metadata_block}


def check_geometry(shape: Sequence[int], spacing: Sequence[float], min_shape: Sequence[int], what: str
                   ) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``shape`` as 3 ints >= ``min_shape`` and ``spacing`` as 3 positive floats (z, y, x), else a clear error."""
    shape, spacing = tuple(int(s) for s in shape), tuple(float(s) for s in spacing)
    if len(shape) != 3 or len(spacing) != 3 or any(s <= 0 for s in spacing):
        raise SyntheticDataError(f"shape and spacing must be 3 positive values (z, y, x), got {shape}, {spacing}.")
    if any(s < m for s, m in zip(shape, min_shape)):
        raise SyntheticDataError(f"shape {shape} is too small for {what}: need at least {tuple(min_shape)} voxels "
                                 f"(z, y, x). Fix: pass a larger shape, e.g. {tuple(2 * m for m in min_shape)}.")
    return shape, spacing


def write_nifti(array: np.ndarray, path: str, spacing_zyx: Sequence[float]) -> None:
    """Write a ``(Z, Y, X)`` array with identity direction (LPS) and the given spacing."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    sitk.WriteImage(image, path, useCompression=True)


def case_rngs(seed: int, n_cases: int) -> list[np.random.Generator]:
    """One independent generator per case: case ``i`` does not depend on ``n_cases``."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(int(n_cases))]


# --------------------------------------------------------------------------- random fields and motion
def smooth_field(rng: np.random.Generator, shape: Sequence[int], cell: float) -> np.ndarray:
    """``shape`` float32 random field, smooth on the scale of ``cell`` voxels, zero mean and unit std.

    Gaussian noise on a coarse grid (one node per ``cell`` voxels) interpolated with Gaussian weights, one axis at a
    time (three small matrix products instead of a full-volume filter).
    """
    out = rng.standard_normal(tuple(max(2, int(np.ceil(s / cell)) + 2) for s in shape))
    for axis, size in enumerate(shape):
        nodes = out.shape[axis]
        pos = np.linspace(0.5, nodes - 1.5, int(size))
        weights = np.exp(-0.5 * ((pos[:, None] - np.arange(nodes)[None, :]) / 0.6) ** 2)
        weights /= weights.sum(axis=1, keepdims=True)
        out = np.moveaxis(np.tensordot(weights, out, axes=(1, axis)), 0, axis)
    out = out.astype(np.float32)
    return (out - out.mean()) / max(float(out.std()), 1e-6)


def random_rigid(rng: np.random.Generator, max_shift_mm: float, max_rotation_deg: float
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """A random rigid motion ``(R (3, 3) in z, y, x axes, shift (3,) mm in z, y, x, angle in degrees)``.

    The shift has a uniformly random direction and a length in ``[0.25, 1] * max_shift_mm``; the rotation a random
    axis and an angle in ``[0.25, 1] * max_rotation_deg`` (so a non-zero maximum always gives visible motion).
    """
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    shift = direction * rng.uniform(0.25, 1.0) * float(max_shift_mm)
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(0.25, 1.0) * float(max_rotation_deg)
    rotation = Rotation.from_rotvec(axis * np.deg2rad(angle)).as_matrix()
    return rotation, shift, angle


def apply_rigid(volume: np.ndarray, rotation: np.ndarray, shift_mm: np.ndarray, spacing_zyx: Sequence[float],
                order: int = 1) -> np.ndarray:
    """Move the content of a ``(Z, Y, X)`` volume by ``p -> R p + shift`` about the volume centre (mm, z, y, x).

    Output voxel ``o`` samples the input at ``c + S^-1 R^T (S (o - c) - shift)`` (``S`` = diag(spacing), ``c`` the
    centre index), with linear interpolation and edge values outside the field of view.
    """
    if np.allclose(rotation, np.eye(3)) and not np.any(shift_mm):
        return volume.copy()
    s = np.asarray(spacing_zyx, dtype=float)
    c = (np.asarray(volume.shape, dtype=float) - 1.0) / 2.0
    matrix = (rotation.T * s[None, :]) / s[:, None]  # S^-1 R^T S
    offset = c - matrix @ c - (rotation.T @ np.asarray(shift_mm, dtype=float)) / s
    return ndi.affine_transform(volume, matrix, offset=offset, order=order, mode="nearest").astype(volume.dtype)


def correlated_noise(rng: np.random.Generator, shape: Sequence[int], std: float, sigma_vox: float = 0.7
                     ) -> np.ndarray:
    """Gaussian noise blurred by ``sigma_vox`` (like a CT reconstruction kernel), rescaled to ``std``."""
    noise = ndi.gaussian_filter(rng.standard_normal(tuple(shape), dtype=np.float32), sigma_vox)
    return noise * np.float32(std / max(float(noise.std()), 1e-6))


# --------------------------------------------------------------------------- geometry
def ellipsoid_radius(coords, center, radii) -> np.ndarray:
    """Normalised radius (1 on the surface) of an axis-aligned ellipsoid; ``coords`` are broadcastable (z, y, x)."""
    return np.sqrt(sum(((c - m) / r) ** 2 for c, m, r in zip(coords, center, radii)))


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` scaled to length 1 (unchanged direction; zero stays near zero)."""
    return v / max(float(np.linalg.norm(v)), 1e-9)


def draw_tube(w: np.ndarray, grid, a: np.ndarray, b: np.ndarray, radius: float, h: float) -> None:
    """Max-composite a tube of ``radius`` (mm) from ``a`` to ``b`` (mm) into ``w`` with a one-voxel soft edge."""
    sel = []
    for g, lo_v, hi_v in zip(grid, np.minimum(a, b) - radius - 2 * h, np.maximum(a, b) + radius + 2 * h):
        i0, i1 = np.searchsorted(g, lo_v), np.searchsorted(g, hi_v)
        if i1 <= i0:
            return
        sel.append(slice(i0, i1))
    gz, gy, gx = (g[s] for g, s in zip(grid, sel))
    p = (gz[:, None, None] - a[0], gy[None, :, None] - a[1], gx[None, None, :] - a[2])
    d = b - a
    t = np.clip((p[0] * d[0] + p[1] * d[1] + p[2] * d[2]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    dist = np.sqrt(sum((pi - t * di) ** 2 for pi, di in zip(p, d)))
    region = w[tuple(sel)]
    np.maximum(region, np.clip(0.5 + (radius - dist) / h, 0.0, 1.0), out=region)


# --------------------------------------------------------------------------- CLI
def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(",") if v)
    except ValueError as e:
        raise SyntheticDataError(f"--shape {text!r}: expected integers z,y,x, e.g. 64,96,96.") from e


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v)
    except ValueError as e:
        raise SyntheticDataError(f"--spacing {text!r}: expected numbers z,y,x in mm, e.g. 2,1.5,1.5.") from e


def _liver(args) -> None:
    from nnunet_ext.conversion.synthetic_liver import convert_synthetic_liver

    try:
        class_map = json.loads(args.class_map) if args.class_map else None
    except ValueError as e:
        raise SyntheticDataError(f"--class_map is not valid JSON ({e}); e.g. '{{\"hcc\": \"HCC\", \"cyst\": "
                                 "\"benign\"}'.") from e
    phases = [p.split("=", 1) if "=" in p else p for p in args.phases]
    phases = [(p[0], float(p[1])) if isinstance(p, list) else p for p in phases]
    folder = convert_synthetic_liver(args.d, n_cases=args.n, shape=_ints(args.shape), phases=phases, seed=args.seed,
                                     max_shift_mm=args.max_shift_mm, max_rotation_deg=args.max_rotation_deg,
                                     class_map=class_map, output_root=args.o, spacing=_floats(args.spacing),
                                     reference_phase=args.reference_phase, overwrite=args.overwrite,
                                     progress=not args.quiet)
    print(f"Synthetic liver dataset written to {folder}")


def _mri(args) -> None:
    from nnunet_ext.conversion.synthetic_mri import convert_synthetic_mri

    folder = convert_synthetic_mri(args.d, n_cases=args.n, shape=_ints(args.shape), sequences=tuple(args.sequences),
                                   seed=args.seed, output_root=args.o, spacing=_floats(args.spacing),
                                   overwrite=args.overwrite, progress=not args.quiet)
    print(f"Synthetic MRI dataset written to {folder}")


def _dataset_args(p) -> None:
    p.add_argument("-d", type=int, required=True, help="dataset id")
    p.add_argument("-o", default=None, help="output root (default: $nnUNet_raw)")
    p.add_argument("-n", type=int, default=30, help="number of cases")


def _run_args(p) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing, different dataset folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parser(convert_subparsers) -> None:
    """Register ``nnunet-ext convert synthetic-liver`` and ``nnunet-ext convert synthetic-mri``."""
    p = convert_subparsers.add_parser(
        "synthetic-liver", help="generate a multiphasic CT liver-lesion dataset (classes defined by enhancement "
                                "dynamics; no single phase determines the class)")
    _dataset_args(p)
    p.add_argument("--shape", default="64,96,96", help="z,y,x voxels")
    p.add_argument("--spacing", default="2.0,1.5,1.5", help="z,y,x mm")
    p.add_argument("--phases", nargs="+", default=["arterial", "portal_venous", "delayed"],
                   help="1-6 phase names (known: pre_contrast, early_arterial, arterial, late_arterial, portal_venous,"
                        " delayed, hepatobiliary, ...) or name=seconds after injection")
    p.add_argument("--reference_phase", default=None, help="unmoved phase the labels belong to (default: "
                                                            "portal_venous, else the phase closest to 70 s)")
    p.add_argument("--max_shift_mm", type=float, default=3.0)
    p.add_argument("--max_rotation_deg", type=float, default=3.0)
    p.add_argument("--class_map", default=None,
                   help='JSON lesion type -> case class, e.g. \'{"hcc": "HCC", "metastasis": "metastasis", '
                        '"hemangioma": "benign", "cyst": "benign"}\' (the default)')
    _run_args(p)
    p.set_defaults(func=_liver)

    p = convert_subparsers.add_parser(
        "synthetic-mri", help="generate a multi-sequence MRI lesion classification dataset (classes defined by "
                              "cross-sequence signal and lesion texture)")
    _dataset_args(p)
    p.add_argument("--shape", default="32,64,64", help="z,y,x voxels")
    p.add_argument("--spacing", default="3.0,1.0,1.0", help="z,y,x mm")
    p.add_argument("--sequences", nargs="+", default=["T1", "T2", "T2FS"], help="2-3 of T1, T2, T2FS")
    _run_args(p)
    p.set_defaults(func=_mri)
