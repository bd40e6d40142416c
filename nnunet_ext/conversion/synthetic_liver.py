"""``nnunet-ext convert synthetic-liver``: multiphasic CT of an abdomen with liver lesions whose class is defined by
their enhancement *dynamics*.

Built for the comparison STD-Net makes ("Spatio-temporal decoupling network for multiphasic liver lesion
characterization", npj Digital Medicine 2025): a shared per-phase encoder plus a transformer over phases versus early
fusion of the phases as channels. That comparison only means something if no single phase determines a lesion's
class, so the lesion types follow LI-RADS-style enhancement patterns with wide within-class variation:

* **HCC-like**: arterial phase hyperenhancement (APHE), then washout (hypo to the liver in the portal venous and
  delayed phases); an enhancing capsule in the late phases or central necrosis in some;
* **metastasis-like**: arterial rim enhancement (ring brighter than the centre) up to homogeneous hyperenhancement,
  then peripheral washout with progressive central (target-like) fill;
* **hemangioma-like** (benign): peripheral nodular enhancement at blood-pool density with progressive centripetal
  fill-in (some flash-filling, some with a central scar that never fills);
* **cyst-like** (benign): water density (0-20 HU) in every phase, no enhancement, sharp margins.

Every curve is a function of the phase *time* after injection (:data:`PHASE_TIMES_S`, monotone interpolation of knot
values in log time), so any 1 to 6 phases work. Per case the circulation time, contrast dose, liver density
(steatosis: 20-75 HU unenhanced) and liver enhancement vary; per lesion the enhancement amplitude and timing vary, and
two *static* offsets (identical in every phase) are drawn wide: the lesion's overall density and the density of its
centre against its periphery. The static offsets shift a lesion's lesion-minus-liver and rim-minus-core contrasts in
every phase alike, so within one phase the types overlap, while the changes across phases (wash-in, washout, rim
washout, fill-in, no change) separate them. ``tests/conversion/test_synthetic_liver.py`` checks this with a logistic
regression on per-phase features: all phases together ~0.85-0.93 case-class accuracy, any single phase <= ~0.70.

Geometry: arrays are ``(z, y, x)`` with identity direction (LPS): x toward the patient's left, y toward posterior, z
toward superior; body with subcutaneous fat and muscle wall, bowel/visceral fat, stomach, spleen, kidneys, lung bases,
spine with discs, aorta and IVC, and the liver (a deformed right lobe plus a smaller anterior left lobe) with a
portal-vein tree, hepatic arteries along its first branches and three hepatic veins (arteries enhance early, veins
later). All phases are composed on the reference grid; every other phase is then moved by a random rigid motion (the
STD-Net paper registers phases to the portal venous phase; here the misregistration is left in), blurred (partial
volume, sigma 0.5-0.85 voxel) and given correlated noise (7-13 HU). Labels are liver (1) and lesion (2) on the
reference phase; the case class is the class of the largest lesion. The text per case is
:func:`nnunet_ext.conversion.describe.describe_lesions` applied to the registered, noise-free phases.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.interpolate import PchipInterpolator
from scipy.spatial.transform import Rotation
from scipy.special import ndtr

from nnunet_ext.conversion.describe import describe_lesions
from nnunet_ext.conversion.synthetic import (
    SyntheticDataError,
    apply_rigid,
    base_dataset_json,
    case_rngs,
    check_geometry,
    correlated_noise,
    draw_tube,
    ellipsoid_radius,
    random_rigid,
    smooth_field,
    unit,
    write_dataset,
    write_nifti,
)

GENERATOR_VERSION = 1
MAX_PHASES = 6
MIN_SHAPE = (16, 32, 32)
LESION_TYPES = ("hcc", "metastasis", "hemangioma", "cyst")
DEFAULT_CLASS_MAP = {"hcc": "HCC", "metastasis": "metastasis", "hemangioma": "benign", "cyst": "benign"}
TABULAR_FEATURES = ("age", "afp", "cea")
# seconds after contrast injection of the phases known by name; others are given as (name, seconds)
PHASE_TIMES_S = {"pre_contrast": 0.0, "native": 0.0, "non_contrast": 0.0, "early_arterial": 20.0, "arterial": 30.0,
                 "late_arterial": 40.0, "portal_venous": 70.0, "portal": 70.0, "venous": 80.0,
                 "nephrographic": 100.0, "delayed": 180.0, "equilibrium": 180.0, "transitional": 180.0,
                 "hepatobiliary": 1200.0}
REFERENCE_TIME_S = 70.0

# enhancement curves: fraction of each compartment's peak enhancement at the knot times (s), interpolated
# monotonically (PCHIP) in log(1 + t / 10)
_KNOT_T = np.array([0.0, 20.0, 35.0, 70.0, 180.0, 600.0, 1200.0])
_CURVE_KNOTS = {
    "aorta": [0, 1.0, 0.75, 0.45, 0.32, 0.2, 0.14],
    "portal": [0, 0.2, 0.65, 1.0, 0.6, 0.35, 0.25],
    "hepatic_vein": [0, 0.02, 0.3, 0.95, 0.65, 0.35, 0.25],
    "liver": [0, 0.15, 0.45, 1.0, 0.85, 0.7, 0.6],
    "spleen": [0, 0.8, 1.0, 0.9, 0.7, 0.5, 0.4],
    "kidney_cortex": [0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.3],
    "kidney_medulla": [0, 0.2, 0.5, 0.9, 0.8, 0.5, 0.4],
    "muscle": [0, 0.3, 0.6, 1.0, 0.9, 0.7, 0.6],
    "bowel": [0, 0.6, 0.9, 1.0, 0.8, 0.6, 0.5],
    "hcc": [0, 1.0, 0.9, 0.5, 0.3, 0.15, 0.1],
    "capsule": [0, 0, 0.2, 0.6, 1.0, 0.9, 0.7],
    "met_rim": [0, 0.8, 1.0, 0.65, 0.25, 0.15, 0.1],
    "met_core": [0, 0, 0.1, 0.35, 0.8, 1.0, 1.0],
    "fill": [0, 0.06, 0.15, 0.35, 0.7, 1.0, 1.0],
}
_CURVES = {k: PchipInterpolator(np.log1p(_KNOT_T / 10.0), v) for k, v in _CURVE_KNOTS.items()}


def enhancement(curve: str, t_s: float | np.ndarray) -> np.ndarray:
    """Fraction of peak enhancement of compartment ``curve`` at time ``t_s`` (seconds, clipped to [0, 1200])."""
    return _CURVES[curve](np.log1p(np.clip(t_s, 0.0, _KNOT_T[-1]) / 10.0))


@dataclass
class LiverCase:
    """One synthetic case. ``image``: ``(P, Z, Y, X)`` float32 HU as acquired (phases moved, blurred, noisy);
    ``registered``: the same phases without motion and noise; ``seg``: ``(Z, Y, X)`` uint8 (0 background, 1 liver,
    2 lesion) on the reference phase; ``lesions``: ground truth per lesion, largest first."""

    image: np.ndarray
    registered: np.ndarray
    seg: np.ndarray
    class_name: str
    lesion_type: str
    lesions: list[dict]
    tabular: list[float]
    motion: list[dict]
    phase_times_s: list[float]
    text: str = ""
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- parameter checks
def resolve_phases(phases, reference_phase: str | None = None) -> tuple[list[str], list[float], str]:
    """Phase names, times (s) and the reference phase from names or ``(name, seconds)`` pairs / a mapping."""
    items = list(phases.items()) if isinstance(phases, Mapping) else list(phases)
    if not 1 <= len(items) <= MAX_PHASES:
        raise SyntheticDataError(f"{len(items)} phases requested ({items}); synthetic-liver supports 1 to "
                                 f"{MAX_PHASES}. Fix: pass between 1 and {MAX_PHASES} phase names.")
    names, times = [], []
    for item in items:
        if isinstance(item, str):
            if item not in PHASE_TIMES_S:
                raise SyntheticDataError(f"unknown phase {item!r}. Fix: use one of {sorted(PHASE_TIMES_S)} or give "
                                         f"its time after injection, e.g. ('{item}', 45.0) or {item}=45 on the CLI.")
            names.append(item)
            times.append(PHASE_TIMES_S[item])
        else:
            name, t = item
            if not isinstance(name, str) or not name or not 0.0 <= float(t) <= 3600.0:
                raise SyntheticDataError(f"invalid phase {item!r}: expected (name, seconds after injection 0-3600).")
            names.append(name)
            times.append(float(t))
    if len(set(names)) != len(names):
        raise SyntheticDataError(f"phase names must be unique, got {names}.")
    if reference_phase is None:
        reference_phase = ("portal_venous" if "portal_venous" in names
                           else names[int(np.argmin(np.abs(np.array(times) - REFERENCE_TIME_S)))])
    elif reference_phase not in names:
        raise SyntheticDataError(f"unknown reference phase {reference_phase!r}: it must be one of the phases {names}. "
                                 "Fix: pass reference_phase=None (portal venous, else the phase closest to 70 s).")
    return names, times, reference_phase


def resolve_class_map(class_map: Mapping[str, str] | None) -> tuple[dict[str, str], list[str]]:
    """Lesion type -> case class (types left out are not generated) and the class names in order."""
    cmap = dict(DEFAULT_CLASS_MAP if class_map is None else class_map)
    unknown = sorted(set(cmap) - set(LESION_TYPES))
    if unknown or not cmap or not all(isinstance(v, str) and v for v in cmap.values()):
        raise SyntheticDataError(f"invalid class_map {class_map!r}: keys must be lesion types from {LESION_TYPES}, "
                                 "values non-empty class names, e.g. {'hcc': 'HCC', 'cyst': 'benign'}.")
    names = list(dict.fromkeys(cmap[t] for t in LESION_TYPES if t in cmap))
    return {t: cmap[t] for t in LESION_TYPES if t in cmap}, names


# --------------------------------------------------------------------------- one case
def synthesize_liver_case(rng: np.random.Generator, shape: Sequence[int] = (64, 96, 96),
                          spacing: Sequence[float] = (2.0, 1.5, 1.5),
                          phases=("arterial", "portal_venous", "delayed"), reference_phase: str | None = None,
                          class_name: str | None = None, class_map: Mapping[str, str] | None = None,
                          max_shift_mm: float = 3.0, max_rotation_deg: float = 3.0, max_lesions: int = 3,
                          with_text: bool = True) -> LiverCase:
    """Generate one case in memory (see the module docstring). ``class_name`` picks the case class (default:
    random); the dominant (largest) lesion has a lesion type of that class."""
    shape, spacing = check_geometry(shape, spacing, MIN_SHAPE, "a liver with lesions")
    names, times, ref = resolve_phases(phases, reference_phase)
    cmap, class_names = resolve_class_map(class_map)
    if class_name is None:
        class_name = class_names[rng.integers(len(class_names))]
    elif class_name not in class_names:
        raise SyntheticDataError(f"class {class_name!r} is not one of {class_names}.")
    dominant = str(rng.choice([t for t, c in cmap.items() if c == class_name]))

    sub = _case_parameters(rng)
    body = build_anatomy(rng, shape, spacing)
    lesions = place_lesions(rng, body, dominant, list(cmap), max_lesions, _lesion_parameters)
    # effective times: the case's circulation speed and small per-phase timing jitter
    tau = [t / sub["time_scale"] * rng.uniform(0.92, 1.08) for t in times]

    ref_index = names.index(ref)
    registered, acquired, motion = [], [], []
    for p, t in enumerate(tau):
        clean = _compose_phase(body, lesions, sub, t)
        if p == ref_index or (max_shift_mm <= 0 and max_rotation_deg <= 0):
            rot, shift, angle = np.eye(3), np.zeros(3), 0.0
        else:
            rot, shift, angle = random_rigid(rng, max_shift_mm, max_rotation_deg)
        moved = apply_rigid(clean, rot, shift, spacing)
        registered.append(ndi.gaussian_filter(clean, sub["pv_sigma"]))
        blurred = ndi.gaussian_filter(moved, sub["pv_sigma"])
        acquired.append(blurred + correlated_noise(rng, shape, sub["noise_hu"]))
        motion.append({"phase": names[p], "rotation": rot.tolist(), "shift_mm": shift.tolist(),
                       "rotation_deg": float(angle), "time_s": float(t)})

    seg = body["liver"].astype(np.uint8)
    for les in lesions:
        seg[les["box"]][les["mask"]] = 2
    for les in lesions:  # what survives after overlaps with later lesions and the liver boundary
        les["n_voxels"] = int((seg[les["box"]][les["mask"]] == 2).sum())
    lesions.sort(key=lambda d: -d["n_voxels"])
    largest = lesions[0]["type"]
    image = np.stack(acquired).astype(np.float32)
    reg = np.stack(registered).astype(np.float32)
    text = describe_lesions(reg, seg > 0, seg == 2, spacing, names) if with_text else ""
    return LiverCase(image=image, registered=reg, seg=seg, class_name=cmap[largest], lesion_type=largest,
                     lesions=[_truth(d, spacing) for d in lesions], tabular=_tabular(rng, largest), motion=motion,
                     phase_times_s=list(map(float, tau)), text=text,
                     extra={"noise_hu": sub["noise_hu"], "pv_sigma_vox": sub["pv_sigma"], "reference_phase": ref})


def _case_parameters(rng: np.random.Generator) -> dict:
    dose = rng.uniform(0.75, 1.25)
    return {"time_scale": rng.uniform(0.8, 1.25), "dose": dose, "liver_base": rng.uniform(20.0, 75.0),
            "liver_amp": rng.uniform(45.0, 80.0) * dose, "aorta_amp": rng.uniform(220.0, 300.0) * dose,
            "portal_amp": rng.uniform(140.0, 190.0) * dose, "noise_hu": rng.uniform(7.0, 13.0),
            "pv_sigma": rng.uniform(0.5, 0.85)}


def _lesion_parameters(rng: np.random.Generator, lesion_type: str) -> dict:
    """Within-class variation of one lesion: baseline density (HU), enhancement amplitudes (HU at full dose),
    timing (multiplies the lesion's effective time), margin blur (mm) and shape irregularity."""
    p = {"time_scale": rng.uniform(0.8, 1.25), "texture_hu": rng.uniform(2.0, 8.0),
         "shift": rng.uniform(-35.0, 35.0) if lesion_type != "cyst" else 0.0,
         "core_offset": rng.uniform(-40.0, 40.0) if lesion_type != "cyst" else rng.uniform(-4.0, 4.0)}
    if lesion_type == "hcc":  # APHE, washout; an enhancing capsule or central necrosis in some
        p.update(base=rng.uniform(30, 50), amp=rng.uniform(40, 110),
                 capsule=rng.uniform(25, 50) * (rng.random() < 0.35),
                 necrosis=rng.uniform(0.3, 0.6) * (rng.random() < 0.35), necrosis_hu=rng.uniform(15, 35),
                 margin_mm=rng.uniform(2.5, 4.0) if rng.random() < 0.4 else 0.3, irregularity=rng.uniform(0.05, 0.2))
    elif lesion_type == "metastasis":  # arterial rim (v=0) to homogeneous (v=1), peripheral washout, target fill
        p.update(base=rng.uniform(30, 45), amp=rng.uniform(25, 90), rim=rng.uniform(0.25, 0.45),
                 core_base=rng.uniform(20, 40), core_amp=rng.uniform(25, 65),
                 arterial_core=rng.uniform(0.0, 1.0),
                 margin_mm=rng.uniform(2.5, 4.0) if rng.random() < 0.5 else 0.3, irregularity=rng.uniform(0.1, 0.25))
    elif lesion_type == "hemangioma":  # nodules at blood-pool density, centripetal fill, a central scar in some
        p.update(base=rng.uniform(30, 45), amp=rng.uniform(0.7, 0.9), fill_scale=3.0 if rng.random() < 0.1 else 1.0,
                 scar=rng.uniform(0.2, 0.35) * (rng.random() < 0.2),
                 margin_mm=rng.uniform(2.5, 4.0) if rng.random() < 0.1 else 0.3, irregularity=rng.uniform(0.05, 0.15))
    elif lesion_type == "cyst":  # water, no enhancement, sharp
        p.update(base=rng.uniform(0, 20), amp=rng.uniform(0, 4), margin_mm=0.3, irregularity=rng.uniform(0.0, 0.06),
                 texture_hu=rng.uniform(1.0, 3.0))
    else:
        raise SyntheticDataError(f"unknown lesion type {lesion_type!r}; known: {LESION_TYPES}.")
    return p


def _lesion_values(les: dict, sub: dict, tau: float) -> np.ndarray:
    """HU of one lesion in its box at effective time ``tau`` (s): a type-specific enhancement pattern plus static
    offsets (the same in every phase) of the whole lesion and of its centre against its periphery."""
    p, kind, depth = les["params"], les["type"], les["depth"]
    t = tau * p["time_scale"]
    dose = sub["dose"]
    static = p["shift"] + p["core_offset"] * ndtr((depth - 0.5) / 0.1) + les["texture"] * p["texture_hu"]
    if kind == "hcc":
        v = p["base"] + dose * p["amp"] * enhancement("hcc", t)
        if p["capsule"] > 0:
            v = v + np.exp(-(((depth - 0.06) / 0.05) ** 2)) * dose * p["capsule"] * enhancement("capsule", t)
        if p["necrosis"] > 0:
            w = ndtr((depth - (1.0 - p["necrosis"])) / 0.05)
            v = (1.0 - w) * v + w * p["necrosis_hu"]
    elif kind == "metastasis":
        w = ndtr((p["rim"] - depth) / 0.05)
        rim = p["base"] + dose * p["amp"] * enhancement("met_rim", t)
        core = (p["core_base"] + dose * p["core_amp"] * enhancement("met_core", t)
                + dose * p["arterial_core"] * p["amp"] * enhancement("hcc", t))
        v = w * rim + (1.0 - w) * core
    elif kind == "hemangioma":
        gamma = 0.6
        front = enhancement("fill", t * p["fill_scale"]) * (1.0 + gamma)
        w = ndtr((front - (depth + gamma * (1.0 - les["nodularity"]))) / 0.05) * ndtr((1.0 - p["scar"] - depth) / 0.05)
        v = p["base"] + w * p["amp"] * sub["aorta_amp"] * enhancement("aorta", tau)
    else:
        v = p["base"] + dose * p["amp"] * enhancement("liver", t)
    return v + static


def _compose_phase(body: dict, lesions: list[dict], sub: dict, tau: float) -> np.ndarray:
    """Noise-free ``(Z, Y, X)`` float32 HU of one phase on the reference grid."""
    amps = {"liver": sub["liver_amp"], "aorta": sub["aorta_amp"], "portal": sub["portal_amp"],
            "hepatic_vein": sub["portal_amp"]}
    lut = np.zeros(len(TISSUES), dtype=np.float32)
    for i, (_, base, curve, amp) in enumerate(TISSUES):
        lut[i] = base + (0.0 if curve is None else amps.get(curve, amp * sub["dose"]) * enhancement(curve, tau))
    lut[TISSUE_INDEX["liver"]] += sub["liver_base"] - TISSUES[TISSUE_INDEX["liver"]][1]
    img = lut[body["tissue"]] + body["texture"]
    for vessel, curve in (("artery", "aorta"), ("portal", "portal"), ("hepatic_vein", "hepatic_vein")):
        w = body["vessels"][vessel]
        value = 40.0 + amps[curve] * enhancement(curve, tau)
        box = body["vessel_box"]
        img[box] += w * (value - img[box])
    for les in lesions:
        region = img[les["box"]]
        m = les["weight"]
        region += m * (_lesion_values(les, sub, tau) - region)
    return img


def _truth(les: dict, spacing) -> dict:
    return {"type": les["type"], "center_mm": [float(c) for c in les["center_mm"]],
            "radii_mm": [float(r) for r in les["radii_mm"]], "margin_sigma_mm": float(les["params"]["margin_mm"]),
            "n_voxels": les["n_voxels"], "volume_ml": les["n_voxels"] * float(np.prod(spacing)) / 1000.0,
            "params": {k: float(v) for k, v in les["params"].items()}}


def _tabular(rng: np.random.Generator, lesion_type: str) -> list[float]:
    """Age (years), AFP-like and CEA-like markers (ng/mL), weakly associated with the dominant lesion type."""
    age = rng.normal({"hcc": 63, "metastasis": 61}.get(lesion_type, 50), 11)
    afp = 10 ** rng.normal(1.2 if lesion_type == "hcc" else 0.6, 0.55)
    cea = 10 ** rng.normal(0.8 if lesion_type == "metastasis" else 0.35, 0.4)
    return [float(np.round(np.clip(age, 18, 95), 1)), float(np.round(afp, 2)), float(np.round(cea, 2))]


# --------------------------------------------------------------------------- anatomy
# (name, unenhanced HU, enhancement curve or None, peak enhancement in HU at full dose; the liver, aorta and
# hepatic-vein amplitudes are drawn per case)
TISSUES = (("air", -1000.0, None, 0.0), ("fat", -100.0, None, 0.0), ("muscle", 50.0, "muscle", 15.0),
           ("visceral_fat", -90.0, None, 0.0), ("bowel", 30.0, "bowel", 40.0), ("gas", -900.0, None, 0.0),
           ("lung", -850.0, None, 0.0), ("bone_cortex", 750.0, None, 0.0), ("bone_marrow", 220.0, None, 0.0),
           ("disc", 80.0, None, 0.0), ("aorta", 40.0, "aorta", 0.0), ("ivc", 40.0, "hepatic_vein", 0.0),
           ("kidney_cortex", 35.0, "kidney_cortex", 160.0), ("kidney_medulla", 30.0, "kidney_medulla", 120.0),
           ("spleen", 45.0, "spleen", 90.0), ("stomach_wall", 40.0, "bowel", 50.0), ("fluid", 10.0, None, 0.0),
           ("liver", 55.0, "liver", 0.0))
TISSUE_INDEX = {t[0]: i for i, t in enumerate(TISSUES)}
_TEXTURE_HU = {"fat": 6.0, "visceral_fat": 10.0, "bowel": 15.0, "muscle": 5.0, "liver": 3.0, "spleen": 4.0,
               "bone_marrow": 40.0, "lung": 30.0}


def build_anatomy(rng: np.random.Generator, shape, spacing) -> dict:
    """Tissue map (``(Z, Y, X)`` uint8 indices into :data:`TISSUES`), texture (HU), liver mask and vessel weights.
    Positions are fractions of the body half-axes (x toward the patient's left, y posterior, z superior)."""
    s = np.asarray(spacing)
    z, y, x = ((np.arange(n) - (n - 1) / 2.0) * sp for n, sp in zip(shape, spacing))
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    hz = shape[0] * spacing[0] / 2.0
    ax, ay = 0.92 * shape[2] * spacing[2] / 2.0 * rng.uniform(0.93, 1.0), 0.72 * shape[1] * spacing[1] / 2.0
    j = lambda v, d=0.04: v + rng.uniform(-d, d)  # noqa: E731  (position jitter)
    T = TISSUE_INDEX
    theta = np.arctan2(y / ay, x / ax)
    rmod = 1.0 + sum(rng.uniform(0, 0.025) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    r2d = (np.sqrt((x / ax) ** 2 + (y / ay) ** 2) / rmod)[0]
    fat_t = rng.uniform(0.07, 0.12)
    tissue = np.zeros(shape, np.uint8)
    tissue[:] = np.where(r2d <= 1.0, T["fat"], T["air"])
    interior2d = r2d <= 1.0 - fat_t - 0.05
    tissue[:, (r2d > 1.0 - fat_t - 0.05) & (r2d <= 1.0 - fat_t)] = T["muscle"]
    interior = np.broadcast_to(interior2d, shape)
    coarse = smooth_field(rng, shape, 8.0)
    fine = smooth_field(rng, shape, 4.0)
    visceral = np.where(coarse > rng.uniform(-0.3, 0.3), T["bowel"], T["visceral_fat"])
    visceral[(visceral == T["bowel"]) & (fine > 2.0)] = T["gas"]
    tissue[interior] = visceral[interior]

    def put(mask, name):
        tissue[np.broadcast_to(mask, shape) & interior] = T[name]

    def ell(center, radii):  # normalised radius; center and radii as fractions of (hz, ay, ax)
        return ellipsoid_radius((z, y, x), np.multiply(center, (hz, ay, ax)), np.multiply(radii, (hz, ay, ax)))

    def cyl(center_yx, radii_yx):  # along z
        return ellipsoid_radius((0, y, x), (0, center_yx[0] * ay, center_yx[1] * ax), (1, radii_yx[0], radii_yx[1]))

    e = ell((j(0.3), j(-0.25), j(0.45)), (0.3, 0.25, 0.22))  # stomach: wall, fluid, gas anteriorly (low y)
    put(e <= 1.0, "stomach_wall")
    put((e <= 0.8) & (y > -0.4 * ay), "fluid")
    put((e <= 0.8) & (y <= -0.4 * ay), "gas")
    put(ell((j(0.25), j(0.3), j(0.6)), (0.35, 0.3, 0.18)) <= 1.0, "spleen")
    # liver: right lobe plus a smaller anterior left lobe, smoothly deformed
    right_c, left_c = (j(0.1), j(-0.02), j(-0.38)), (j(0.3), j(-0.4), j(0.1))
    right = ell(right_c, np.array([0.62, 0.62, 0.42]) * rng.uniform(0.9, 1.1, 3))
    left = ell(left_c, np.array([0.32, 0.28, 0.42]) * rng.uniform(0.85, 1.1, 3))
    put(np.minimum(right, left) * (1.0 + 0.08 * smooth_field(rng, shape, 10.0)) <= 1.0, "liver")
    for side, dz in ((-1, -0.45), (1, -0.3)):  # kidneys, the right one lower
        k = ell((j(dz), j(0.5), side * j(0.5)), (0.3, 0.2, 0.15))
        put(k <= 1.0, "kidney_cortex")
        put(k <= 0.7, "kidney_medulla")
    for side in (-1, 1):
        put(ell((1.25, 0.1, side * 0.45), (0.55, 0.75, 0.4)) <= 1.0, "lung")
        put(cyl((0.8, side * 0.2), (0.16 * ay, 0.15 * ax)) <= 1.0, "muscle")  # paraspinal
    put(cyl((0.38, 0.15), (0.08 * ax, 0.08 * ax)) <= 1.0, "aorta")
    put(cyl((0.3, -0.2), (0.085 * ax, 0.085 * ax)) <= 1.0, "ivc")
    spine = cyl((0.62, 0.0), (0.13 * ax, 0.13 * ax))
    disc = np.cos(2 * np.pi * z / rng.uniform(22, 28) + rng.uniform(0, 2 * np.pi)) > 0.85
    put(spine <= 1.0, "bone_cortex")
    put(spine <= 0.75, "bone_marrow")
    put((spine <= 1.0) & disc, "disc")

    liver = tissue == T["liver"]
    lab, n = ndi.label(liver)
    if n == 0:
        raise SyntheticDataError(f"shape {shape} with spacing {spacing} leaves no liver. Fix: a larger shape.")
    liver = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    tissue[(tissue == T["liver"]) & ~liver] = T["visceral_fat"]
    scale = np.zeros(len(TISSUES), np.float32)
    for name, v in _TEXTURE_HU.items():
        scale[T[name]] = v
    texture = scale[tissue] * fine
    body = {"tissue": tissue, "texture": texture, "liver": liver, "spacing": s,
            "coords": (z, y, x), "axes": (hz, ay, ax)}
    body.update(_vessels(rng, body, *(np.multiply(c, (hz, ay, ax)) for c in (right_c, left_c))))
    return body


def _vessels(rng, body, right_center, left_center) -> dict:
    """Portal vein tree (from a hilum into both lobes), hepatic arteries alongside its first branches and three
    hepatic veins converging on the IVC: soft weights ``(0..1)`` over the liver's bounding box."""
    hz, ay, ax = body["axes"]
    liver, spacing = body["liver"], body["spacing"]
    idx = np.argwhere(liver)
    lo, hi = np.maximum(idx.min(0) - 2, 0), np.minimum(idx.max(0) + 3, liver.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    centre = (np.asarray(liver.shape) - 1) / 2.0
    to_mm = lambda i: (np.asarray(i) - centre) * spacing  # noqa: E731
    inside = lambda p: bool(liver[tuple(np.clip(np.round(p / spacing + centre).astype(int), 0,  # noqa: E731
                                                        np.asarray(liver.shape) - 1))])
    h = float(spacing[1:].mean())
    segments = {"portal": [], "artery": [], "hepatic_vein": []}

    def grow(kind, start, direction, length, radius, depth):
        end = start + direction * length
        if not inside(end) or radius < 0.35 * h:
            return
        segments[kind].append((start, end, radius))
        if kind == "portal" and depth <= 1:
            offset = np.cross(direction, rng.standard_normal(3))
            offset *= (radius + 0.6 * h) / max(np.linalg.norm(offset), 1e-6)
            segments["artery"].append((start + offset, end + offset, max(0.35 * radius, 0.45 * h)))
        if depth >= 3:
            return
        for _ in range(2):
            turn = Rotation.from_rotvec(unit(np.cross(direction, rng.standard_normal(3)))
                                        * np.deg2rad(rng.uniform(25, 45))).as_matrix()
            grow(kind, end, turn @ direction, length * rng.uniform(0.6, 0.8), radius * 0.72, depth + 1)

    liver_mm = to_mm(idx)
    hilum = liver_mm.mean(0) + np.array([-0.25 * hz, 0.15 * ay, 0.15 * ax]) * np.array([0.5, 0.5, 1.0])
    if not inside(hilum):
        hilum = liver_mm[np.argmin(np.linalg.norm(liver_mm - hilum, axis=1))]
    trunk = 0.055 * ax
    segments["portal"].append((hilum + np.array([-0.25 * hz, 0.1 * ay, 0.25 * ax]), hilum, trunk))
    for target in (np.asarray(right_center), np.asarray(left_center)):
        d = target - hilum
        grow("portal", hilum, unit(d), 0.6 * np.linalg.norm(d), 0.75 * trunk, 1)
    top = liver_mm[liver_mm[:, 0] > np.percentile(liver_mm[:, 0], 90)]
    confluence = top[np.argmin(np.abs(top[:, 2] + 0.1 * ax))]
    for target in (right_center + np.array([-0.5 * hz, 0.0, -0.15 * ax]), liver_mm.mean(0), left_center):
        d = np.asarray(target) - confluence
        grow("hepatic_vein", confluence, unit(d), 0.5 * np.linalg.norm(d), 0.05 * ax, 1)

    grid = [(np.arange(a, b) - c) * sp for a, b, c, sp in zip(lo, hi, centre, spacing)]
    allowed = np.isin(body["tissue"][box], [TISSUE_INDEX[t] for t in ("liver", "visceral_fat", "bowel")])
    weights = {}
    for kind, segs in segments.items():
        w = np.zeros(allowed.shape, np.float32)
        for a, b, r in segs:
            draw_tube(w, grid, a, b, r, h)
        weights[kind] = w * allowed
    return {"vessels": weights, "vessel_box": box, "vessel_segments": {k: len(v) for k, v in segments.items()}}


def place_lesions(rng, body, dominant: str, types: list[str], max_lesions: int, lesion_parameters) -> list[dict]:
    """1 to ``max_lesions`` non-touching lesions inside the liver, the dominant (largest) of type ``dominant``; the
    others share its type with probability 0.6, else any type. Each lesion carries its box, soft weight, label
    mask, normalised depth (0 on the surface, 1 at the centre), texture and nodularity fields."""
    liver, spacing = body["liver"], body["spacing"]
    idx = np.argwhere(liver)
    lo, hi = idx.min(0), idx.max(0) + 1
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    depth_mm = ndi.distance_transform_edt(np.pad(liver[crop], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    h_max = float(spacing.max())
    d_max = float(depth_mm.max())
    n = min(max_lesions, 1 + int(rng.choice(3, p=[0.4, 0.35, 0.25])))
    radii = [rng.uniform(0.35, 0.7) * d_max]
    radii += sorted((rng.uniform(1.3 * spacing[1:].max(), max(1.4 * spacing[1:].max(), min(0.5 * radii[0],
                     0.3 * d_max))) for _ in range(n - 1)), reverse=True)
    centre = (np.asarray(liver.shape) - 1) / 2.0
    lesions: list[dict] = []
    for i, r in enumerate(radii):
        kind = dominant if i == 0 or rng.random() < 0.6 else str(rng.choice(types))
        params = lesion_parameters(rng, kind)
        axes = rng.uniform(0.8, 1.25, 3)
        axes /= np.prod(axes) ** (1 / 3)
        placed = None
        for _ in range(8):
            r_ext = r * axes.max() * (1.0 + params["irregularity"])
            ok = depth_mm >= max(0.85 * r_ext, h_max)
            cand = np.argwhere(ok)
            far = np.ones(len(cand), bool)
            for other in lesions:
                dist = np.linalg.norm(((cand + lo) - centre) * spacing - other["center_mm"], axis=1)
                far &= dist >= r_ext + other["r_ext"] + 2 * h_max + 2 * params["margin_mm"]
            cand = cand[far]
            if len(cand):
                placed = ((cand[rng.integers(len(cand))] + lo) - centre) * spacing
                break
            r *= 0.85
        if placed is None:
            if i == 0:
                raise SyntheticDataError(f"shape {liver.shape} is too small for lesions (the liver is at most "
                                         f"{d_max:.1f} mm deep). Fix: pass a larger shape, e.g. (32, 48, 48).")
            continue
        lesions.append(_rasterise_lesion(rng, body, kind, params, placed, r * axes, r_ext))
    return lesions


def _rasterise_lesion(rng, body, kind, params, center_mm, radii_mm, r_ext) -> dict:
    liver, spacing = body["liver"], body["spacing"]
    centre = (np.asarray(liver.shape) - 1) / 2.0
    c_idx = center_mm / spacing + centre
    half = (r_ext + 3 * params["margin_mm"]) / spacing + 2
    lo = np.maximum(np.floor(c_idx - half).astype(int), 0)
    hi = np.minimum(np.ceil(c_idx + half).astype(int) + 1, liver.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    p = [((np.arange(a, b) - c) * sp) for a, b, c, sp in zip(lo, hi, c_idx, spacing)]
    p = np.stack(np.broadcast_arrays(p[0][:, None, None], p[1][None, :, None], p[2][None, None, :]), -1)
    q = p @ Rotation.random(random_state=rng).as_matrix()  # lesion frame
    qn = q / radii_mm
    rho = np.linalg.norm(qn, axis=-1)
    k = rng.standard_normal((3, 3)) * 1.6
    bumps = sum(np.cos(qn @ k[i] + rng.uniform(0, 2 * np.pi)) for i in range(3)) / 3.0
    rho = rho * (1.0 + params["irregularity"] * bumps)
    inside_liver = liver[box]
    sd = (rho - 1.0) * float(np.mean(radii_mm))
    shape = rho.shape
    return {"type": kind, "params": params, "center_mm": center_mm, "radii_mm": radii_mm, "r_ext": r_ext,
            "box": box, "weight": (ndtr(-sd / params["margin_mm"]) * inside_liver).astype(np.float32),
            "mask": (rho <= 1.0) & inside_liver, "depth": np.clip(1.0 - rho, 0.0, 1.0).astype(np.float32),
            "texture": smooth_field(rng, shape, 2.5), "nodularity": ndtr(1.5 * smooth_field(rng, shape, 2.0))}


# --------------------------------------------------------------------------- dataset
def convert_synthetic_liver(dataset_id: int, n_cases: int = 30, shape: Sequence[int] = (64, 96, 96),
                            phases=("arterial", "portal_venous", "delayed"), seed: int = 0,
                            max_shift_mm: float = 3.0, max_rotation_deg: float = 3.0,
                            class_map: Mapping[str, str] | None = None, output_root: str | None = None,
                            spacing: Sequence[float] = (2.0, 1.5, 1.5), reference_phase: str | None = None,
                            max_lesions: int = 3, name: str = "SyntheticLiver", overwrite: bool = False,
                            progress: bool = True) -> str:
    """Write ``DatasetXXX_SyntheticLiver`` (nnU-Net v2 raw format) and return its folder.

    Args:
        dataset_id: nnU-Net dataset id.
        n_cases: number of cases ``liver_000`` ... (case classes cycle through the class names, so every class is
            present once ``n_cases >= number of classes``).
        shape: ``(Z, Y, X)`` voxels per phase, at least :data:`MIN_SHAPE`.
        phases: 1 to 6 phase names from :data:`PHASE_TIMES_S` or ``(name, seconds after injection)`` pairs.
        seed: everything is deterministic given the seed; case ``i`` does not depend on ``n_cases``.
        max_shift_mm, max_rotation_deg: random rigid motion of every non-reference phase (0 and 0: none).
        class_map: lesion type (:data:`LESION_TYPES`) -> case class; default :data:`DEFAULT_CLASS_MAP`. Types left
            out are not generated.
        output_root: default ``$nnUNet_raw``.
        spacing: ``(z, y, x)`` mm.
        reference_phase: the phase that is not moved and that the labels belong to (default portal venous, else
            the phase closest to 70 s).
        max_lesions: 1 to 3 lesions per case.
        overwrite: replace an existing, different ``DatasetXXX_<name>``.

    Writes ``imagesTr/liver_XXX_000P.nii.gz`` (int16 HU; every channel named "CT"), ``labelsTr/liver_XXX.nii.gz``
    (0 background, 1 liver, 2 lesion), ``dataset.json`` with the ``"nnunet_ext"`` block (classes, phases and
    reference, tabular ``age``/``afp``/``cea``, a text per case) and ``synthetic_truth.json`` (lesion types, sizes,
    motion per phase).
    """
    shape, spacing = check_geometry(shape, spacing, MIN_SHAPE, "a liver with lesions")
    names, times, ref = resolve_phases(phases, reference_phase)
    cmap, class_names = resolve_class_map(class_map)
    if int(n_cases) < 1 or not 1 <= int(max_lesions) <= 3:
        raise SyntheticDataError(f"n_cases must be >= 1 and max_lesions in 1..3, got {n_cases}, {max_lesions}.")
    if max_shift_mm < 0 or max_rotation_deg < 0:
        raise SyntheticDataError("max_shift_mm and max_rotation_deg must be >= 0.")
    phase_spec = [[n, t] for n, t in zip(names, times)]
    fingerprint = {"generator": "synthetic-liver", "version": GENERATOR_VERSION, "n_cases": int(n_cases),
                   "shape": shape, "spacing": spacing, "phases": phase_spec, "reference": ref, "seed": int(seed),
                   "max_shift_mm": float(max_shift_mm), "max_rotation_deg": float(max_rotation_deg),
                   "class_map": cmap, "max_lesions": int(max_lesions)}

    def write_cases(folder: str) -> tuple[dict, dict]:
        from tqdm import tqdm

        cases, truth = {}, {}
        rngs = case_rngs(seed, n_cases)
        for i in tqdm(range(int(n_cases)), desc="synthetic-liver", disable=not progress):
            case_id = f"liver_{i:03d}"
            case = synthesize_liver_case(rngs[i], shape, spacing, list(zip(names, times)), ref,
                                         class_names[i % len(class_names)], cmap, max_shift_mm, max_rotation_deg,
                                         max_lesions)
            for p in range(len(names)):
                hu = np.clip(np.round(case.image[p]), -1024, 3071).astype(np.int16)
                write_nifti(hu, os.path.join(folder, "imagesTr", f"{case_id}_{p:04d}.nii.gz"), spacing)
            write_nifti(case.seg, os.path.join(folder, "labelsTr", f"{case_id}.nii.gz"), spacing)
            cases[case_id] = {"class": case.class_name, "text": case.text, "tabular": case.tabular}
            truth[case_id] = {"class": case.class_name, "lesion_type": case.lesion_type, "lesions": case.lesions,
                              "motion": case.motion, **case.extra}
        block = {"format_version": 1, "classification": {"class_names": class_names, "lesion_labels": [2]},
                 "phases": {"order": names, "reference": ref},
                 "tabular": {"feature_names": list(TABULAR_FEATURES)}, "cases": cases}
        description = ("Synthetic multiphasic liver CT (nnunet-ext synthetic-liver): lesion classes defined by "
                       "enhancement dynamics across phases; non-reference phases rigidly misaligned.")
        dj = base_dataset_json(["CT"] * len(names), {"background": 0, "liver": 1, "lesion": 2}, n_cases, name,
                               description, block)
        return dj, truth

    return write_dataset(dataset_id, name, output_root, fingerprint, overwrite, write_cases)
