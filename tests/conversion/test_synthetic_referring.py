"""The synthetic referring task: the image shows two or three look-alike lesions, the label and the text one of them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.conversion.synthetic import SyntheticDataError
from nnunet_ext.conversion.synthetic_referring import (
    convert_synthetic_referring,
    shuffled_texts,
    synthesize_referring_case,
)


@pytest.mark.parametrize("seed", range(6))
def test_one_of_several_lesions_is_labelled_and_the_text_names_it(seed):
    rng = np.random.default_rng(seed)
    n = 2 + seed % 2
    case = synthesize_referring_case(rng, 64, n)
    lesions, target = case["lesions"], case["lesions"][case["target"]]
    assert len(lesions) == n and len({les["quadrant"] for les in lesions}) == n  # one per quadrant
    diameters = sorted(les["diameter_mm"] for les in lesions)
    assert all(b >= 1.4 * a for a, b in zip(diameters, diameters[1:]))  # sizes clearly differ
    assert target["quadrant"] in case["text"] and f"{int(round(target['diameter_mm']))} mm" in case["text"]
    assert (case["seg"] == 2).sum() == target["n_pixels"] > 0
    ys, xs = np.nonzero(case["seg"] == 2)
    assert abs(ys.mean() - target["center_yx"][0]) < 2 and abs(xs.mean() - target["center_yx"][1]) < 2
    # every lesion looks alike: the mean intensities of the labelled and the other lesions are within noise
    image = case["image"]
    means = []
    for les in lesions:
        cy, cx = les["center_yx"]
        means.append(image[int(round(cy)), int(round(cx))])
    assert max(means) - min(means) < 40 and image[case["seg"] == 2].mean() < image[case["seg"] == 1].mean() - 30


def test_dataset_is_deterministic_with_valid_metadata(tmp_path):
    a = convert_synthetic_referring(990, n_cases=4, size=48, output_root=str(tmp_path / "a"), progress=False)
    b = convert_synthetic_referring(990, n_cases=4, size=48, output_root=str(tmp_path / "b"), progress=False)
    for case in ("ref_0000", "ref_0003"):
        for sub, name in (("imagesTr", f"{case}_0000.nii.gz"), ("labelsTr", f"{case}.nii.gz")):
            ia, ib = (sitk.GetArrayFromImage(sitk.ReadImage(f"{d}/{sub}/{name}")) for d in (a, b))
            assert ia.shape == (1, 48, 48) and np.array_equal(ia, ib)
    dj = json.loads((tmp_path / "a" / "Dataset990_SyntheticReferring" / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "liver": 1, "lesion": 2}
    assert all(c["text"].startswith("a ") for c in dj["nnunet_ext"]["cases"].values())
    with pytest.raises(SyntheticDataError, match="min_lesions"):
        convert_synthetic_referring(991, min_lesions=1, output_root=str(tmp_path / "c"))


def test_shuffled_texts_give_every_case_another_case_text():
    texts = {f"c{i}": f"text {i % 4}" for i in range(9)}  # shared texts, as the generator can produce
    shuffled = shuffled_texts(texts, seed=3)
    assert set(shuffled) == set(texts) and set(shuffled.values()) <= set(texts.values())
    assert all(shuffled[k] != texts[k] for k in texts) and shuffled == shuffled_texts(texts, seed=3)
