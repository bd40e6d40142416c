"""The multi-task trainer base, exercised through the early-fusion baseline on the tiny dataset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from nnunet_ext.data.metadata import DatasetMetadata


def tiny_metadata_tabular(dataset, case_ids) -> np.ndarray:
    dj = json.load(open(dataset["preprocessed"] / "dataset.json", encoding="utf-8"))
    return DatasetMetadata.from_dataset_json(dj).tabular_matrix([str(k) for k in case_ids]).astype(np.float64)


def make_trainer(dataset, trainer="EarlyFusionTrainer_smoke", fold=0, plans="nnUNetPlans"):
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.paths import ensure_trainer_path

    ensure_trainer_path()
    return get_trainer_from_args(str(dataset["id"]), "3d_fullres", fold, trainer, plans,
                                 device=torch.device("cpu"))


@pytest.mark.parametrize("n_proc_da", ["0", "2"])
def test_batches_carry_the_case_ids_and_the_trainer_looks_up_their_inputs(tiny_multiphase, monkeypatch, n_proc_da):
    monkeypatch.setenv("nnUNet_n_proc_DA", n_proc_da)
    tr = make_trainer(tiny_multiphase, "EarlyFusionTrainer_tabular_smoke")
    tr.initialize()
    assert tr.case_uses == ("tabular",)  # this head consumes the dataset's tabular features
    dl_tr, dl_val = tr.get_dataloaders()
    md = tr.metadata
    expected_type = "SingleThreadedAugmenter" if n_proc_da == "0" else "NonDetMultiThreadedAugmenter"
    assert type(dl_tr).__name__ == expected_type
    try:
        for loader in (dl_tr, dl_val):
            for _ in range(3):
                batch = next(loader)
                keys = [str(k) for k in batch["keys"]]
                assert tr.case_inputs.class_targets(keys).tolist() == md.class_targets(keys).tolist()
                inputs = tr.case_inputs.batch(keys, tr.case_uses)
                assert set(inputs) == {"tabular"}
                assert torch.allclose(inputs["tabular"], torch.from_numpy(md.tabular_matrix(keys)))
                assert batch["data"].shape[0] == len(keys)
    finally:
        for loader in (dl_tr, dl_val):
            if hasattr(loader, "_finish"):
                loader._finish()


def test_train_step_logs_named_terms_and_combines_them_with_the_weight_table(tiny_multiphase, monkeypatch):
    tr = make_trainer(tiny_multiphase)
    tr.initialize()
    dl_tr, _ = tr.get_dataloaders()
    head_before = [p.detach().clone() for p in tr.network.cls_head.parameters()]
    batch = next(dl_tr)
    for i, k in enumerate(batch["keys"]):  # labeled cases of two classes
        tr.case_inputs.class_index[str(k)] = i % 2
    monkeypatch.setattr(type(tr), "loss_weights", {"seg": 1.0, "cls": 0.25})
    out = tr.train_step(batch)
    assert set(out["terms"]) == {"seg", "cls"}
    # the patch covers the whole tiny volume, so every sample shows its lesion and CE contributes
    np.testing.assert_allclose(out["loss"], out["terms"]["seg"] + 0.25 * out["terms"]["cls"], rtol=1e-5)
    assert out["terms"]["cls"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(head_before, tr.network.cls_head.parameters()))


def test_a_loss_term_without_a_weight_is_an_error_naming_it(tiny_multiphase, monkeypatch):
    tr = make_trainer(tiny_multiphase)
    monkeypatch.setattr(type(tr), "loss_weights", {"seg": 1.0})
    with pytest.raises(RuntimeError, match=r"no weight for the loss term\(s\) \['cls'\]"):
        tr.combine_loss_terms({"seg": torch.tensor(1.0), "cls": torch.tensor(2.0)})


def test_classification_loss_ignores_unlabeled_and_lesion_free_patches(tiny_multiphase):
    tr = make_trainer(tiny_multiphase)
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]], requires_grad=True)
    target = torch.tensor([0, -1, 0])
    lesion = torch.tensor([True, True, False])
    loss = tr.classification_loss(logits, target, lesion)
    expected = torch.nn.functional.cross_entropy(logits[:1], target[:1])
    assert torch.isclose(loss, expected)
    none = tr.classification_loss(logits, torch.tensor([-1, -1, -1]), lesion)
    assert none.item() == 0.0 and none.requires_grad  # still attached: DDP sees every head parameter


def test_trainer_without_classes_fails_clearly(tiny_multiphase, tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.trainers import EarlyFusionTrainer

    plans = PlansManager(str(tiny_multiphase["preprocessed"] / "nnUNetPlans.json")).plans
    plans["continue_training"] = False
    dj = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz"}
    with pytest.raises(RuntimeError, match="declares no classes"):
        EarlyFusionTrainer(plans, "3d_fullres", 0, dj, torch.device("cpu"))


def test_head_trainer_without_any_labeled_case_fails_at_start_with_the_fix(tiny_multiphase):
    import copy
    import json

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.data.metadata import MetadataError
    from nnunet_ext.trainers import EarlyFusionTrainer

    plans = PlansManager(str(tiny_multiphase["preprocessed"] / "nnUNetPlans.json")).plans
    plans["continue_training"] = False
    dj = copy.deepcopy(json.load(open(tiny_multiphase["preprocessed"] / "dataset.json", encoding="utf-8")))
    for case in dj["nnunet_ext"]["cases"].values():
        case["class"] = None
    with pytest.raises(MetadataError, match="dataset.json of Dataset900_TinyMultiphase: .* none of the 10 cases has "
                                            "a class label") as e:
        EarlyFusionTrainer(plans, "3d_fullres", 0, dj, torch.device("cpu"))
    assert "Fix:" in str(e.value)


def test_checkpoint_write_is_atomic(tiny_multiphase, monkeypatch):
    tr = make_trainer(tiny_multiphase, fold=1)
    tr.initialize()
    path = os.path.join(tr.output_folder, "checkpoint_latest.pth")
    tr.save_checkpoint(path)
    good = torch.load(path, weights_only=False)

    def dying_save(obj, f, *a, **k):  # writes half a file, then the process "dies"
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 truncated")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        tr.save_checkpoint(path)
    monkeypatch.undo()
    again = torch.load(path, weights_only=False)
    assert again["current_epoch"] == good["current_epoch"]
    assert all(torch.equal(again["network_weights"][k], v) for k, v in good["network_weights"].items())
    assert not [f for f in os.listdir(tr.output_folder) if ".tmp" in f]


def test_resume_restores_heads_optimizer_and_logs(tiny_multiphase):
    tr = make_trainer(tiny_multiphase, "EarlyFusionTrainer_tabular_smoke", fold=2)
    tr.num_epochs = 1
    tr.run_training()
    final = os.path.join(tr.output_folder, "checkpoint_final.pth")
    saved = torch.load(final, weights_only=False)

    tr2 = make_trainer(tiny_multiphase, "EarlyFusionTrainer_tabular_smoke", fold=2)
    tr2.num_epochs = 2
    tr2.load_checkpoint(final)
    state = tr2.network.state_dict()
    assert any(k.startswith("cls_head.") for k in saved["network_weights"])
    assert all(torch.equal(state[k], v) for k, v in saved["network_weights"].items())
    opt = tr2.optimizer.state_dict()
    assert [g["algorithm"] for g in opt["param_groups"]] == ["sgd", "adamw"]  # U-Net: SGD, head: AdamW
    saved_state = saved["optimizer_state"]["state"]
    assert opt["state"] and set(opt["state"]) == set(saved_state)
    for i, state in opt["state"].items():
        assert {"momentum_buffer"} == set(state) or {"step", "exp_avg", "exp_avg_sq"} == set(state)
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(saved_state[i][k])) for k, v in state.items())
    assert len(tr2.logger.get_value("cls_val_auc", None)) == 1
    tr2.run_training()
    for key in ("loss_cls_train", "loss_seg_train", "loss_cls_val", "loss_seg_val", "cls_val_loss",
                "cls_val_accuracy", "train_losses"):
        assert len(tr2.logger.get_value(key, None)) == 2, key
    assert os.path.isfile(os.path.join(tr2.output_folder, "progress_terms.png"))
    stats = json.load(open(os.path.join(tr2.output_folder, "tabular_statistics.json"), encoding="utf-8"))
    tr_keys, _ = tr2.do_split()
    expected = tiny_metadata_tabular(tiny_multiphase, tr_keys)
    np.testing.assert_allclose(stats["mean"], expected.mean(0), rtol=1e-5)
    np.testing.assert_allclose(tr2.network.cls_head.tabular_norm.std.numpy(), expected.std(0), rtol=1e-5)


def test_metadata_travels_to_preprocessed_and_results(tiny_multiphase):
    tr = make_trainer(tiny_multiphase, fold=2)
    tr.on_train_start()  # nnU-Net copies dataset.json and the plans into the results folder here
    tr.on_train_end()
    pre = json.load(open(tiny_multiphase["preprocessed"] / "dataset.json", encoding="utf-8"))
    res = json.load(open(os.path.join(tr.output_folder_base, "dataset.json"), encoding="utf-8"))
    plans = json.load(open(os.path.join(tr.output_folder_base, "plans.json"), encoding="utf-8"))
    for dj in (pre, res):
        assert DatasetMetadata.from_dataset_json(dj).class_names == ["washout", "progressive", "nonenhancing"]
    assert plans["nnunet_ext"]["class_names"] == ["washout", "progressive", "nonenhancing"]
    data_folder = tiny_multiphase["preprocessed"] / "nnUNetPlans_3d_fullres"
    endings = {f.split(".", 1)[1] for f in os.listdir(data_folder)}
    assert endings <= {"b2nd", "pkl"}, f"unexpected files in the data folder: {endings}"


def test_case_settings_record_activation_lesion_labels_and_inputs(tiny_multiphase):
    from nnunet_ext.architectures.contract import PLANS_KEY

    tr = make_trainer(tiny_multiphase, fold=4)
    settings = tr.plans_manager.plans[PLANS_KEY]
    assert settings["cls_activation"] == "leaky_relu"
    assert settings["lesion_labels"] == [2]
    assert settings["lesion_labels_source"] == "metadata classification.lesion_labels"
    assert settings["tabular_features"] == ["age", "marker"] and settings["text_encoder"] is None
    tr.initialize()
    assert isinstance(tr.network.cls_head.mlp[1], torch.nn.LeakyReLU)
    assert tr.network.cls_pool_channels == [2]


def test_the_log_says_when_declared_tabular_features_are_not_used(tiny_multiphase):
    tr = make_trainer(tiny_multiphase, fold=3)
    assert tr.metadata.tabular_features == ["age", "marker"]
    tr.initialize()
    assert "tabular" not in tr.case_uses  # images only, as STD-Net (EarlyFusionTrainer_tabular uses them)
    log = open(tr.log_file, encoding="utf-8").read()
    assert "tabular features ['age', 'marker']; EarlyFusionTrainer_smoke does not feed them to its network" in log


@pytest.mark.parametrize("pools_with_truth", [True, False])
def test_training_steps_pool_the_head_with_the_ground_truth_lesion(tiny_multiphase, monkeypatch, pools_with_truth):
    import nnunet_ext.architectures.classifying_unet as cu
    import nnunet_ext.trainers as trainers

    if not pools_with_truth:
        monkeypatch.setattr(trainers.EarlyFusionTrainer_smoke, "head_pool_in_training", "prediction")

    masks = []
    pool = cu.lesion_weighted_pool

    def spy(features, seg, channels, lesion_mask=None):
        masks.append(lesion_mask)
        return pool(features, seg, channels, lesion_mask)

    monkeypatch.setattr(cu, "lesion_weighted_pool", spy)
    tr = make_trainer(tiny_multiphase)
    tr.initialize()
    assert tr.head_pool_in_training == ("truth" if pools_with_truth else "prediction")
    dl_tr, dl_val = tr.get_dataloaders()
    batch = next(dl_tr)
    target = batch["target"][0].clone()
    tr.train_step(batch)
    if pools_with_truth:
        lesion = torch.zeros_like(target, dtype=torch.bool)
        for lab in tr.network.cls_pool_channels:
            lesion |= target == lab
        assert masks[-1] is not None and torch.equal(masks[-1].cpu(), lesion) and lesion.any()
    else:
        assert masks[-1] is None
    pooled_in_training = len(masks)
    with torch.no_grad():  # as nnU-Net's loop calls it
        tr.validation_step(next(dl_val))
    assert len(masks) > pooled_in_training and masks[-1] is None  # validation (and inference): the prediction


def test_unknown_head_pool_setting_fails_clearly(tiny_multiphase, monkeypatch):
    import nnunet_ext.trainers as trainers

    monkeypatch.setattr(trainers.EarlyFusionTrainer_smoke, "head_pool_in_training", "gt")
    with pytest.raises(ValueError, match="head_pool_in_training='gt'"):
        make_trainer(tiny_multiphase)
