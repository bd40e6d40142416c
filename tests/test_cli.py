"""The `nnunet-ext` command: subcommands exist, bad input exits 2 with a message naming the case and the fix."""

from __future__ import annotations

import json

import pytest

from nnunet_ext.cli import build_parser, main
from nnunet_ext.data.fixtures import make_tiny_multiphase_dataset


def test_core_subcommands_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"trainer-path", "validate", "plan-and-preprocess", "train", "predict", "attention",
            "gradcam"} <= set(sub.choices)


def test_trainer_path_points_at_the_discovery_shim(capsys):
    assert main(["trainer-path"]) == 0
    folder = capsys.readouterr().out.strip()
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ext.trainers import EarlyFusionTrainer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_extTrainer", folder)
        assert recursive_find_trainer_class_by_name("EarlyFusionTrainer") is EarlyFusionTrainer


def test_validate_reports_bad_metadata(tmp_path, capsys):
    folder = make_tiny_multiphase_dataset(str(tmp_path), 911, n_cases=3, with_tabular=False)
    assert main(["validate", "--folder", folder]) == 0
    assert "metadata OK: 3 cases, 3 labeled" in capsys.readouterr().out
    dj = json.load(open(f"{folder}/dataset.json", encoding="utf-8"))
    dj["nnunet_ext"]["cases"]["case_001"]["class"] = "adenoma"
    json.dump(dj, open(f"{folder}/dataset.json", "w", encoding="utf-8"))
    assert main(["validate", "--folder", folder]) == 2
    err = capsys.readouterr().err
    assert "'case_001'" in err and "'adenoma'" in err and "Fix" in err


def test_validate_refuses_declared_classes_without_labeled_cases(tmp_path, capsys):
    folder = make_tiny_multiphase_dataset(str(tmp_path), 912, n_cases=3, n_unlabeled=3, with_tabular=False)
    assert main(["validate", "--folder", folder]) == 2
    err = capsys.readouterr().err
    assert "declares the classes ['washout', 'progressive', 'nonenhancing']" in err
    assert "none of the 3 cases has a class label" in err and 'Fix: give the labeled cases "class"' in err


@pytest.mark.parametrize("argv,root", [
    (["plan-and-preprocess", "-d", "999"], "nnUNet_raw"),
    (["validate", "-d", "999"], "nnUNet_raw"),
    (["train", "999", "3d_fullres", "0"], "nnUNet_preprocessed"),
    (["predict", "-i", "in", "-o", "out", "-d", "999"], "nnUNet_results"),
    (["robustness", "-d", "999", "-i", "in", "-o", "out"], "nnUNet_results"),
    (["attention", "-d", "999", "-i", "in", "-o", "out"], "nnUNet_results"),
    (["gradcam", "-d", "999", "-i", "in", "-o", "out"], "nnUNet_results"),
], ids=lambda v: v[0] if isinstance(v, list) else v)
def test_unknown_dataset_id_is_a_clean_error(nnunet_dirs, capsys, argv, root):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nnunet-ext {argv[0]}: error: dataset id 999 was not found: no folder Dataset999_* in "
                          f"nnUNet_raw ({nnunet_dirs['nnUNet_raw']}), nnUNet_preprocessed "
                          f"({nnunet_dirs['nnUNet_preprocessed']}) or nnUNet_results ({nnunet_dirs['nnUNet_results']})")
    assert "Fix:" in err and {"nnUNet_raw": "nnUNet_raw/DatasetXXX_Name", "nnUNet_results": "pass -m MODEL_FOLDER",
                              "nnUNet_preprocessed": "nnunet-ext plan-and-preprocess -d 999"}[root] in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["validate"], "one of the arguments -d --folder is required"),
    (["predict", "-i", "in", "-o", "out"], "give the model: -d DATASET (with -tr/-p/-c) or -m MODEL_FOLDER"),
    (["attention", "-i", "in", "-o", "out"], "give the model: -d DATASET (with -tr/-p/-c) or -m MODEL_FOLDER"),
    (["gradcam", "-i", "in", "-o", "out"], "give the model: -d DATASET (with -tr/-p/-c) or -m MODEL_FOLDER"),
    (["plan-and-preprocess", "-d", "abc"], "argument -d: 'abc' is not a dataset id"),
    (["train", "900", "3d_fullres", "one"], "argument f: 'one' is not a fold"),
])
def test_argument_errors_are_argparse_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and message in err and "Traceback" not in err


def test_dataset_names_are_accepted_as_ids():
    from nnunet_ext.cli import dataset_id_arg

    assert dataset_id_arg("Dataset901_Liver") == 901 and dataset_id_arg("7") == 7


def test_train_refuses_what_nnunet_would_fail_on_after_creating_the_results_folder(tiny_multiphase, capsys):
    d = str(tiny_multiphase["id"])
    results = tiny_multiphase["results"]
    assert main(["train", d, "2d", "0", "-device", "cpu"]) == 2  # planned, not preprocessed
    err = capsys.readouterr().err
    assert "configuration '2d' of Dataset900_TinyMultiphase was planned but not preprocessed" in err
    assert "Fix: run `nnunet-ext plan-and-preprocess -d 900 -c 2d`" in err
    assert not (results / "EarlyFusionTrainer__nnUNetPlans__2d").exists()
    assert main(["train", d, "3d_fulres", "0", "-device", "cpu"]) == 2
    assert "configuration '3d_fulres' is not defined in the plans nnUNetPlans of Dataset900_TinyMultiphase; they " \
           "define 2d, 3d_fullres" in capsys.readouterr().err
    assert main(["train", d, "3d_fullres", "0", "-p", "FooPlans", "-device", "cpu"]) == 2
    assert "has no plans 'FooPlans'" in capsys.readouterr().err
    assert main(["train", d, "3d_fullres", "0", "-tr", "EarlyFusionTrainer_cpu24", "-device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "trainer 'EarlyFusionTrainer_cpu24' was not found" in err
    assert "Did you mean EarlyFusionTrainer_cpu240" in err
    assert "`nnunet-ext trainers` lists them" in err and "Traceback" not in err
    assert not (results / "EarlyFusionTrainer_cpu24__nnUNetPlans__3d_fullres").exists()
    assert main(["trainers"]) == 0
    out = capsys.readouterr().out
    assert "\n  EarlyFusionTrainer\n" in out and "\n  nnUNetTrainer\n" in out


def test_predict_names_the_trained_folds(tmp_path, capsys):
    model = tmp_path / "model"
    for f in ("0", "2"):
        (model / f"fold_{f}").mkdir(parents=True)
        (model / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"")
    (model / "fold_1").mkdir()  # started, never finished
    (model / "dataset.json").write_text("{}", encoding="utf-8")
    assert main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(model), "-f", "0", "3"]) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint_final.pth for fold(s) 3; folds with checkpoint_final.pth: 0, 2 (fold folders: 0, 1, 2)" \
        in err and "Fix: pass -f with trained folds" in err
    assert main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "none")]) == 2
    assert "no trained model in" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
