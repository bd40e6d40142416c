"""LesionCentredDataLoader: foreground-forced patches are centred on a lesion label present in the case."""

from __future__ import annotations

import numpy as np

from nnunet_ext.data.sampling import LesionCentredDataLoader


class _Bare(LesionCentredDataLoader):
    """The loader's bbox logic without a dataset (nnU-Net's constructor needs one)."""

    def __init__(self, lesion_labels):
        self.lesion_labels = tuple(lesion_labels)
        self.patch_size = (4, 4, 4)
        self.need_to_pad = np.zeros(3, dtype=int)
        self.has_ignore = False
        self.annotated_classes_key = (1, 2, 3)


def _locations():
    liver = np.array([[0, 2, 2, 2]] * 5 + [[0, 30, 30, 30]] * 5)
    return {1: liver, 2: np.array([[0, 10, 10, 10]]), 3: np.array([], dtype=int).reshape(0, 4)}


def test_forced_patches_contain_a_present_lesion_label():
    np.random.seed(0)
    loader = _Bare(lesion_labels=(2, 3))
    for _ in range(20):
        lbs, ubs = loader.get_bbox(np.array([40, 40, 40]), True, _locations())
        assert all(lb <= 10 < ub for lb, ub in zip(lbs, ubs))  # the only lesion voxel is inside
    assert loader.lesion_class(_locations()) == 2  # label 3 has no voxel in this case


def test_cases_without_lesion_and_random_patches_keep_nnunet_sampling():
    np.random.seed(0)
    loader = _Bare(lesion_labels=(2,))
    no_lesion = {1: _locations()[1], 2: np.array([], dtype=int).reshape(0, 4)}
    assert loader.lesion_class(no_lesion) is None
    lbs, ubs = loader.get_bbox(np.array([40, 40, 40]), True, no_lesion)  # centred on the liver instead
    assert any(all(lb <= c < ub for lb, c, ub in zip(lbs, v[1:], ubs)) for v in no_lesion[1])
    seen = {tuple(loader.get_bbox(np.array([40, 40, 40]), False, _locations())[0]) for _ in range(10)}
    assert len(seen) > 1  # not forced: nnU-Net's uniform sampling
