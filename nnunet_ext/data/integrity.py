"""Is an image file whole, and are its voxels finite? Checks SimpleITK (and so nnU-Net) cannot be relied on for.

SimpleITK 2.5 reads a truncated ``.nii.gz`` / ``.nii`` without an error, filling the missing voxels with zeros, and
returns NaN voxels of a NIfTI file as 0: a corrupt or NaN-holding CT then trains or predicts silently on made-up
intensities. For NIfTI files these checks therefore read the voxels with nibabel (which raises on a short file and
keeps NaN); other formats (``.mha``, ``.nrrd``, ...) are read with SimpleITK, which keeps NaN there.
"""

from __future__ import annotations

import os
import re

import numpy as np

from nnunet_ext.errors import NnunetExtError


class ImageFileError(NnunetExtError, ValueError):
    """A truncated, unreadable or non-finite image file; the message names the case, the file and the fix."""


def _is_nifti(path: str) -> bool:
    return path.endswith((".nii", ".nii.gz"))


def read_voxels(path: str | os.PathLike) -> np.ndarray:
    """All voxels of ``path`` as stored (no scaling for NIfTI), raising whatever the reader raises on a bad file."""
    path = str(path)
    if _is_nifti(path):
        import nibabel as nib

        img = nib.load(path)
        return np.asanyarray(img.dataobj)
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def channel_files(folder: str, ending: str) -> tuple[dict[str, dict[int, str]], list[str]]:
    """nnU-Net's image naming in ``folder``: ``({case: {channel index: path}}, [files with the ending but without the
    _XXXX channel suffix])``."""
    pattern = re.compile(rf"(.+)_(\d{{4}}){re.escape(ending)}")
    cases: dict[str, dict[int, str]] = {}
    strays = []
    for f in sorted(os.listdir(folder)):
        if not f.endswith(ending):
            continue
        m = pattern.fullmatch(f)
        if m is None:
            strays.append(f)
        else:
            cases.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(folder, f)
    return cases, strays


def check_image_file(path: str | os.PathLike, case: str, what: str = "image") -> None:
    """Raise :class:`ImageFileError` if ``path`` is missing, cut short, unreadable, or holds NaN / infinite voxels."""
    path = str(path)
    if not os.path.isfile(path):
        raise ImageFileError(f"case {case!r}: {what} file {path} does not exist. Fix: provide it (one file per "
                             "channel, named CASE_XXXX plus the file ending).")
    try:
        voxels = read_voxels(path)
    except (OSError, EOFError, ValueError, RuntimeError) as e:  # gzip/zlib/mmap/ITK errors of a short or bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageFileError(f"case {case!r}: {what} {path} is truncated or corrupt ({reason[:200]}). Nothing was "
                             "written for this case. Fix: re-export or re-download the file.") from e
    check_voxels(voxels, path, case, what)


def needs_own_read(path: str | os.PathLike) -> bool:
    """Whether an image SimpleITK has already read must be read again to be checked (NIfTI: SimpleITK hides a short
    file and NaN there); for other formats :func:`check_voxels` on SimpleITK's array is enough."""
    return _is_nifti(str(path))


def check_voxels(voxels: np.ndarray, path: str | os.PathLike, case: str, what: str = "image") -> None:
    """Raise :class:`ImageFileError` if ``voxels`` (read from ``path``) hold NaN or infinite values."""
    if np.issubdtype(voxels.dtype, np.floating) or np.issubdtype(voxels.dtype, np.complexfloating):
        bad = int(voxels.size - np.count_nonzero(np.isfinite(voxels)))
        if bad:
            raise ImageFileError(
                f"case {case!r}: {what} {path} holds {bad} NaN or infinite voxel(s) ({100 * bad / voxels.size:.2g}% "
                "of the image). nnU-Net's reader would turn NaN into 0 without a warning. Fix: replace them (e.g. "
                "with the background intensity) or crop them away, then rerun.")


__all__ = ["ImageFileError", "channel_files", "check_image_file", "check_voxels", "needs_own_read", "read_voxels"]
