"""Rigid inter-phase registration for multiphase conversion (SimpleITK / ITKv4 registration framework).

Each phase is registered to the reference phase (portal venous by default) with a 6-parameter
``Euler3DTransform`` (three rotations, three translations), Mattes mutual information (Mattes et al., IEEE TMI 22,
2003; robust to the intensity changes between contrast phases), regular-step gradient descent with physical-shift
scaling, a multi-resolution pyramid (shrink factors / Gaussian smoothing per level, in voxels) and a geometry-centred
initialisation. The phase is then resampled onto the reference grid.

Conventions: the transform maps points of the reference (fixed) image to the phase (moving) image, as in SimpleITK;
it is therefore the displacement of the phase's anatomy relative to the reference. ``translation_mm`` is the
displacement of the rotation centre (the centre of the reference volume), ``rotation_deg`` the Euler angles about x,
y, z (SimpleITK's ZXY composition). Images are SimpleITK images, arrays ``(z, y, x)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

MIN_LEVEL_VOXELS = 4  # a pyramid level must keep at least this many voxels along every axis


@dataclass
class RigidRegistration:
    """Result of :func:`register_rigid`."""

    transform: sitk.Euler3DTransform
    metric: float  # final Mattes mutual information (negative; lower = better aligned)
    iterations: int
    stop_condition: str
    levels: tuple[int, ...]

    @property
    def translation_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.transform.GetTranslation())

    @property
    def rotation_deg(self) -> tuple[float, float, float]:
        t = self.transform
        return tuple(math.degrees(a) for a in (t.GetAngleX(), t.GetAngleY(), t.GetAngleZ()))

    @property
    def center_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.transform.GetCenter())

    @property
    def rotation_angle_deg(self) -> float:
        """Total rotation angle (axis-angle magnitude) in degrees."""
        r = np.asarray(self.transform.GetMatrix()).reshape(3, 3)
        return math.degrees(math.acos(float(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))

    def to_dict(self) -> dict:
        return {"metric": round(self.metric, 6), "translation_mm": [round(v, 4) for v in self.translation_mm],
                "rotation_deg": [round(v, 4) for v in self.rotation_deg],
                "translation_norm_mm": round(float(np.linalg.norm(self.translation_mm)), 4),
                "rotation_angle_deg": round(self.rotation_angle_deg, 4), "center_mm": [round(v, 3) for v in
                                                                                         self.center_mm],
                "iterations": self.iterations, "shrink_factors": list(self.levels),
                "stop_condition": self.stop_condition}


def pyramid_levels(image: sitk.Image, shrink_factors: Sequence[int], smoothing_sigmas: Sequence[float]
                   ) -> tuple[list[int], list[float]]:
    """Drop the coarse levels that would shrink an axis below :data:`MIN_LEVEL_VOXELS` voxels."""
    if len(shrink_factors) != len(smoothing_sigmas):
        raise ValueError(f"{len(shrink_factors)} shrink factors but {len(smoothing_sigmas)} smoothing sigmas")
    keep = [(int(f), float(s)) for f, s in zip(shrink_factors, smoothing_sigmas)
            if min(image.GetSize()) / max(1, int(f)) >= MIN_LEVEL_VOXELS]
    if not keep:
        keep = [(1, 0.0)]
    return [k[0] for k in keep], [k[1] for k in keep]


def register_rigid(fixed: sitk.Image, moving: sitk.Image, *, shrink_factors: Sequence[int] = (4, 2, 1),
                   smoothing_sigmas: Sequence[float] = (2.0, 1.0, 0.0), iterations: int = 200,
                   sampling: float = 0.25, bins: int = 32, learning_rate: float = 2.0, min_step: float = 1e-3,
                   seed: int = 20230101) -> RigidRegistration:
    """Rigidly register ``moving`` to ``fixed`` (3D images, any pixel type).

    Args:
        shrink_factors, smoothing_sigmas: the multi-resolution pyramid, coarse to fine (sigmas in voxels). Levels
            that would leave fewer than 4 voxels along an axis are dropped.
        iterations: maximum optimiser iterations per level.
        sampling: fraction of fixed-image voxels sampled (randomly, with the fixed ``seed``, so results repeat).
        bins: histogram bins of Mattes mutual information.

    Returns:
        :class:`RigidRegistration` whose ``transform`` maps fixed points to moving points.
    """
    if fixed.GetDimension() != 3 or moving.GetDimension() != 3:
        raise ValueError("register_rigid needs 3D images")
    f = sitk.Cast(fixed, sitk.sitkFloat32)
    m = sitk.Cast(moving, sitk.sitkFloat32)
    shrink, sigmas = pyramid_levels(f, shrink_factors, smoothing_sigmas)
    initial = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(float(sampling), int(seed))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=learning_rate, minStep=min_step,
                                                 numberOfIterations=int(iterations), relaxationFactor=0.5,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel(sigmas)
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(initial, inPlace=False)
    out = reg.Execute(f, m)
    if out.GetName() == "CompositeTransform":
        out = sitk.CompositeTransform(out).GetBackTransform()
    return RigidRegistration(sitk.Euler3DTransform(out), float(reg.GetMetricValue()),
                             int(reg.GetOptimizerIteration()), reg.GetOptimizerStopConditionDescription(),
                             tuple(shrink))


def resample_onto(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
                  interpolator: int = sitk.sitkLinear, default_value: float | None = None) -> sitk.Image:
    """``moving`` on ``reference``'s voxel grid through ``transform`` (reference -> moving points; identity when
    None), keeping ``moving``'s pixel type. Outside ``moving`` the value is ``default_value`` (default: its minimum).
    """
    if default_value is None:
        default_value = float(np.min(sitk.GetArrayViewFromImage(moving)))
    return sitk.Resample(moving, reference, transform or sitk.Transform(3, sitk.sitkIdentity), interpolator,
                         float(default_value), moving.GetPixelID())


def displace(image: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Move the anatomy of ``image`` by ``transform`` (a point p appears at ``transform(p)``), same grid. The
    registration of the result to ``image`` recovers ``transform``; for tests and simulations."""
    return resample_onto(image, image, transform.GetInverse())
