"""The `nnunet-ext` command: subcommands exist, bad input exits 2 with a message naming the case and the fix."""

from __future__ import annotations

import json

import pytest

from nnunet_ext.cli import build_parser, main
from nnunet_ext.data.fixtures import make_tiny_multiphase_dataset


def test_core_subcommands_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"trainer-path", "validate", "plan-and-preprocess", "train", "predict"} <= set(sub.choices)


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
