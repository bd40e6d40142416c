"""Voxel-grid geometry of images: compare two grids, copy one onto another, read only a file's header.

Shared by the converters (which resample or refuse phases on other grids) and by prediction (which refuses input
channels on different grids, where nnU-Net would only warn and predict with the channels misaligned).
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from nnunet_ext.data.integrity import ImageFileError


def geometry_mismatch(a: sitk.Image, b: sitk.Image, *, rtol: float = 1e-3, atol_mm: float = 1e-2) -> str | None:
    """A description of how the voxel grids of ``a`` and ``b`` differ (size, spacing, origin, direction), or None."""
    diffs = []
    if a.GetSize() != b.GetSize():
        diffs.append(f"size {a.GetSize()} vs {b.GetSize()}")
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=rtol, atol=0):
        diffs.append(f"spacing {_fmt(a.GetSpacing())} vs {_fmt(b.GetSpacing())}")
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=max(atol_mm, rtol * min(a.GetSpacing()))):
        diffs.append(f"origin {_fmt(a.GetOrigin())} vs {_fmt(b.GetOrigin())}")
    if not np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-3):
        diffs.append(f"direction {_fmt(a.GetDirection())} vs {_fmt(b.GetDirection())}")
    return "; ".join(diffs) or None


def with_geometry_of(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """A copy of ``image`` carrying ``reference``'s spacing, origin and direction (same voxel grid size)."""
    out = sitk.Image(image)
    out.CopyInformation(reference)
    return out


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def error_summary(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    tail = [ln for ln in lines if "error" in ln.lower() or "exception" in ln.lower()]
    return (tail[-1] if tail else lines[-1] if lines else type(e).__name__)[:300]


def image_header(path: str | os.PathLike, case: str, what: str = "image", error: type[Exception] = ImageFileError,
                 fix: str = "re-download or re-export it") -> sitk.ImageFileReader:
    """Read only the header of an image file (size, spacing, origin, direction, dimension); an unreadable file
    raises ``error`` naming the case, the file and ``fix``."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise error(f"case {case!r}: cannot read {what} {path} ({error_summary(e)}). The file is corrupt or not an "
                    f"image. Fix: {fix}.") from e
    return reader


def header_mismatch(a: sitk.ImageFileReader, b: sitk.ImageFileReader, **kw) -> str | None:
    """:func:`geometry_mismatch` on two headers read by :func:`image_header`."""
    return geometry_mismatch(_HeaderView(a), _HeaderView(b), **kw)


class _HeaderView:
    def __init__(self, r: sitk.ImageFileReader):
        self.GetSize, self.GetSpacing = r.GetSize, r.GetSpacing
        self.GetOrigin, self.GetDirection = r.GetOrigin, r.GetDirection
