"""Case-level aggregation over sliding-window patches: lesion-weighted, robust to lesion-free patches,
averaged over folds; and clear errors for inputs that do not match the model."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_ext.architectures.contract import PLANS_KEY, ContractNetwork, HeadsOutput
from nnunet_ext.inference.checks import InputError, check_input_folder
from nnunet_ext.inference.predictor import ClassifyingPredictor


class LesionVoter(ContractNetwork):
    """Segments voxels > 5 in channel 0 as lesion (label 2); votes class 1 for patches that contain lesion and
    class 0 (strongly) for patches that do not. ``shift`` lets two "folds" disagree."""

    def __init__(self):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(3))

    def produces_classes(self) -> bool:
        return True

    def forward(self, x, return_heads=False):
        lesion = (x[:, :1] > 5).float()
        seg = torch.cat([torch.zeros_like(lesion), torch.zeros_like(lesion), 40 * lesion - 20], 1)
        if not return_heads:
            return seg
        has = lesion.flatten(1).amax(1)
        cls = torch.stack([8 * (1 - has), 8 * has, torch.zeros_like(has)], 1) + self.shift
        return HeadsOutput(seg, cls)


@pytest.fixture
def predictor(tiny_multiphase):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = copy.deepcopy(PlansManager(str(tiny_multiphase["preprocessed"] / "nnUNetPlans.json")).plans)
    plans[PLANS_KEY] = {"num_cls_classes": 3, "class_names": ["a", "b", "c"], "lesion_labels": [2]}
    pm = PlansManager(plans)
    dj = json.load(open(tiny_multiphase["preprocessed"] / "dataset.json", encoding="utf-8"))
    p = ClassifyingPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                             perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    p.manual_initialization(LesionVoter(), pm, pm.get_configuration("3d_fullres"), None, dj, "test", None)
    return p


def _volume(with_lesion: bool) -> torch.Tensor:
    x = torch.zeros(3, 16, 64, 64)  # 16x32x32 patches at step 0.5: 3x3 = 9 patches
    if with_lesion:
        x[0, 6:9, 52:56, 52:56] = 10.0  # a small lesion in one corner: 1 of 9 patches holds it fully
    return x


def test_lesion_patches_decide_the_case(predictor):
    probs = predictor.classify_preprocessed(_volume(True))
    assert len(predictor.binding._passes) == 1 and len(predictor.binding._passes[0]) == 9  # one call per patch
    assert probs.argmax() == 1 and probs[1] > 0.9, probs
    # the plain mean over patches would have said class 0: most patches hold no lesion
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_no_predicted_lesion_falls_back_to_the_patch_mean(predictor):
    probs = predictor.classify_preprocessed(_volume(False))
    assert probs.argmax() == 0 and probs[0] > 0.99


def test_fold_ensemble_averages_probabilities(predictor):
    sd_a = {"shift": torch.tensor([0.0, 0.0, 0.0])}
    sd_b = {"shift": torch.tensor([0.0, -8.0, 16.0])}  # fold b votes class 2 everywhere
    predictor.list_of_parameters = [sd_a, sd_b]
    single = []
    for sd in (sd_a, sd_b):
        predictor.network.load_state_dict(sd)
        single.append(predictor.classify_preprocessed(_volume(True)))
    predictor.start_case("case")
    predictor.predict_logits_from_preprocessed_data(_volume(True))
    assert len(predictor.binding._passes) == 2  # one pass per fold
    np.testing.assert_allclose(predictor.binding.case_probabilities(), np.mean(single, axis=0), atol=1e-6)


def test_channel_count_mismatch_names_the_case(tiny_multiphase, tmp_path):
    dj = json.load(open(tiny_multiphase["preprocessed"] / "dataset.json", encoding="utf-8"))
    src = tiny_multiphase["raw"] / "imagesTr"
    for f in sorted(src.glob("case_00[01]_*")):
        shutil.copy(f, tmp_path / f.name)
    assert check_input_folder(str(tmp_path), dj) == ["case_000", "case_001"]
    (tmp_path / "case_001_0002.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case_001: channels \[0, 1\]"):
        check_input_folder(str(tmp_path), dj)
    shutil.copy(tmp_path / "case_000_0000.nii.gz", tmp_path / "case_000_0003.nii.gz")
    with pytest.raises(InputError, match="expects 3 channel"):
        check_input_folder(str(tmp_path), dj)
    (tmp_path / "stray.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="stray.nii.gz"):
        check_input_folder(str(tmp_path), dj)


def test_truncated_nan_or_misaligned_input_files_are_refused_before_predicting(tiny_multiphase, tmp_path):
    """Three inputs SimpleITK (and so nnU-Net) reads without complaint: a cut-off file (missing voxels read as 0), NaN
    voxels in NIfTI (read as 0), a phase on another grid (nnU-Net only warns, then predicts misaligned)."""
    import SimpleITK as sitk

    from nnunet_ext.data.integrity import ImageFileError

    dj = json.load(open(tiny_multiphase["preprocessed"] / "dataset.json", encoding="utf-8"))
    for f in sorted((tiny_multiphase["raw"] / "imagesTr").glob("case_00[01]_*")):
        shutil.copy(f, tmp_path / f.name)
    target = tmp_path / "case_001_0001.nii.gz"
    whole = target.read_bytes()
    target.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageFileError, match=r"case 'case_001': channel .* is truncated or corrupt") as e:
        check_input_folder(str(tmp_path), dj)
    assert "Fix:" in str(e.value)

    img = sitk.ReadImage(str(tmp_path / "case_000_0001.nii.gz"), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, :3] = np.nan
    nan_img = sitk.GetImageFromArray(arr)
    nan_img.CopyInformation(img)
    sitk.WriteImage(nan_img, str(target))
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(target)))).any()  # what nnU-Net would see
    with pytest.raises(ImageFileError, match=r"case 'case_001': .* holds 3 NaN"):
        check_input_folder(str(tmp_path), dj)

    shifted = sitk.ReadImage(str(tmp_path / "case_001_0000.nii.gz"))
    shifted.SetOrigin(tuple(o + 12.0 for o in shifted.GetOrigin()))
    sitk.WriteImage(shifted, str(target))
    with pytest.raises(InputError, match=r"case 'case_001': channel .* not on the voxel grid .*origin"):
        check_input_folder(str(tmp_path), dj)
    shutil.copy(tmp_path / "case_001_0000.nii.gz", target)
    assert check_input_folder(str(tmp_path), dj) == ["case_000", "case_001"]


def test_earlier_classifications_are_kept_unless_predicted_again_or_of_another_model(tmp_path):
    from nnunet_ext.data.classification_results import write_classification_outputs
    from nnunet_ext.inference.predict import earlier_classifications

    classes = ["hcc", "metastasis", "benign"]
    write_classification_outputs(str(tmp_path), ["a", "b"], np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]), classes)
    kept = earlier_classifications(str(tmp_path), classes, exclude={"b"})
    assert list(kept) == ["a"]
    np.testing.assert_allclose(kept["a"], [0.7, 0.2, 0.1])
    assert earlier_classifications(str(tmp_path / "empty"), classes) == {}
    with pytest.raises(InputError, match="other classes"):
        earlier_classifications(str(tmp_path), ["hcc", "benign"])
    (tmp_path / "classification.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="not a classification.json"):
        earlier_classifications(str(tmp_path), classes)


def test_a_set_without_labeled_cases_gets_probabilities_and_no_metrics(tmp_path):
    from nnunet_ext.data.classification_results import write_classification_outputs

    summary = write_classification_outputs(str(tmp_path), ["a", "b"], np.array([[0.6, 0.4], [0.3, 0.7]]),
                                           ["hcc", "benign"], targets=[-1, -1])
    assert summary["n_labeled"] == 0 and summary["n_unlabeled_excluded"] == 2
    saved = json.loads((tmp_path / "summary_classification.json").read_text(encoding="utf-8"))
    assert saved == summary
    assert (tmp_path / "classification.csv").read_text(encoding="utf-8").count("\n") == 3


def test_nan_input_names_the_case(predictor):
    x = _volume(True)
    x[1, 2, 3, 4] = float("nan")
    predictor.start_case("case_007")
    with pytest.raises(InputError, match="case_007 contains NaN"):
        predictor.predict_logits_from_preprocessed_data(x)


def test_non_finite_preprocessed_data_and_missing_cuda_are_named_with_the_fix(monkeypatch):
    from nnunet_ext.inference.checks import require_finite, torch_device

    require_finite(torch.zeros(1, 2, 2, 2), "case_x")
    with pytest.raises(InputError, match=r"case case_x contains NaN or infinite values after preprocessing\. Fix: "):
        require_finite(torch.tensor([0.0, float("nan")]), "case_x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device("cpu").type == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device is available. Fix: pass -device cpu"):
        torch_device("cuda")
