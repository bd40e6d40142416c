"""Is a synthetic class decided by one phase? Hand-crafted lesion features per phase and a cross-validated linear
classifier, on one phase at a time and on all phases together (the check behind the synthetic-liver generator's
claim that only the enhancement dynamics separate its classes)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nnunet_ext.conversion.synthetic_liver import DEFAULT_CLASS_MAP


def lesion_features(image: np.ndarray, seg: np.ndarray, spacing) -> np.ndarray:
    """``(P, 2)`` per phase: mean lesion-minus-liver HU and rim-minus-core HU of the largest lesion (rim: outer half
    of its depth, core: inner half)."""
    lab, _ = ndi.label(seg == 2, np.ones((3, 3, 3)))
    lesion = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    depth = ndi.distance_transform_edt(lesion, sampling=spacing)
    rim, core = lesion & (depth <= 0.5 * depth.max()), depth > 0.5 * depth.max()
    if not rim.any():  # a lesion one voxel thick everywhere: no rim/core structure
        rim = core = lesion
    parenchyma = seg == 1
    return np.array([[ph[lesion].mean() - ph[parenchyma].mean(), ph[rim].mean() - ph[core].mean()] for ph in image])


def class_accuracy(features: np.ndarray, types: np.ndarray, classes: np.ndarray) -> float:
    """Case-class accuracy of a logistic regression trained on lesion *types* (a linear model cannot represent
    benign = hemangioma or cyst as one region; training on types keeps single phases from looking worse than they
    are), 5-fold cross-validation repeated 3 times."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
    accs = []
    for repeat in range(3):
        pred = cross_val_predict(clf, features, types, cv=StratifiedKFold(5, shuffle=True, random_state=repeat))
        accs.append(np.mean(np.array([DEFAULT_CLASS_MAP[t] for t in pred]) == classes))
    return float(np.mean(accs))


def phase_separability(n_cases: int = 150, seed: int = 0, shape=(32, 48, 48), spacing=(4.0, 3.0, 3.0),
                       max_shift_mm: float = 0.0, max_rotation_deg: float = 0.0) -> dict:
    """Accuracy of the all-phase classifier and of each single-phase classifier on ``n_cases`` generated cases.
    Features come from the reference-grid labels, so with motion the non-reference phases are measured where the
    lesion is *labelled*, as a registration-free model would see them."""
    from nnunet_ext.conversion.synthetic import case_rngs
    from nnunet_ext.conversion.synthetic_liver import synthesize_liver_case

    names = sorted(set(DEFAULT_CLASS_MAP.values()), key=list(DEFAULT_CLASS_MAP.values()).index)
    feats, types, classes = [], [], []
    for i, rng in enumerate(case_rngs(seed, n_cases)):
        case = synthesize_liver_case(rng, shape, spacing, class_name=names[i % len(names)], max_shift_mm=max_shift_mm,
                                     max_rotation_deg=max_rotation_deg, with_text=False)
        feats.append(lesion_features(case.image, case.seg, spacing))
        types.append(case.lesion_type)
        classes.append(case.class_name)
    feats, types, classes = np.array(feats), np.array(types), np.array(classes)
    return {"all_phases": class_accuracy(feats.reshape(len(feats), -1), types, classes),
            "single_phase": [class_accuracy(feats[:, p], types, classes) for p in range(feats.shape[1])]}
