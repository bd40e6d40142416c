"""The collapsed-head guard: a head that gives the same probabilities for every case is named as collapsed in the
training log, the progress plot, summary_classification.json and by nnunet-ext predict."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from nnunet_ext.metrics.classification import head_collapse, prior_entropy


def test_head_collapse_flags_constant_probabilities_only():
    rng = np.random.default_rng(0)
    constant = np.tile([0.2, 0.5, 0.3], (10, 1)) + rng.normal(0, 1e-3, (10, 3))
    varied = rng.dirichlet([1, 1, 1], size=10)
    assert head_collapse(constant)["collapsed"] is True
    assert head_collapse(varied)["collapsed"] is False
    # near-identical but confidently right (CE far below the prior's entropy): not a collapse
    assert head_collapse(constant, ce=0.1, prior_ce=1.1)["collapsed"] is False
    assert head_collapse(constant, ce=1.09, prior_ce=1.1)["collapsed"] is True
    assert head_collapse(constant[:1])["collapsed"] is None
    assert prior_entropy([0, 1, 2, 0, 1, 2], 3) == pytest.approx(np.log(3))
    assert prior_entropy([1, 1, -1], 3) == 0.0


def test_a_head_forced_constant_is_reported_everywhere(tiny_multiphase, tmp_path, capsys):
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.inference.predict import predict
    from nnunet_ext.paths import ensure_trainer_path

    ensure_trainer_path()
    tr = get_trainer_from_args(str(tiny_multiphase["id"]), "3d_fullres", 3, "EarlyFusionTrainer_smoke3",
                               "nnUNetPlans", device=torch.device("cpu"))
    tr.initialize()
    last = tr.network.cls_head.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()  # logits = bias: the same for every case, whatever the image
    last.weight.requires_grad_(False)
    tr.run_training()
    tr.perform_actual_validation()  # what nnU-Net's entry point runs after the training
    log = open(tr.log_file, encoding="utf-8").read()
    assert "WARNING: the classification head has collapsed" in log
    collapsed = tr.logger.get_value("cls_val_collapsed", None)
    assert any(v == 1.0 for v in collapsed)
    assert os.path.isfile(os.path.join(tr.output_folder, "progress_terms.png"))
    summary = json.load(open(os.path.join(tr.output_folder, "validation", "summary_classification.json")))
    assert summary["head_collapse"]["collapsed"] is True
    assert summary["head_collapse"]["probability_spread"] < 1e-6
    assert any("collapsed" in n for n in summary["notes"])

    images = tmp_path / "images"
    images.mkdir()
    for f in sorted((tiny_multiphase["raw"] / "imagesTr").glob("case_000_*.nii.gz")):
        shutil.copy(f, images / f.name)
    capsys.readouterr()
    predict(str(images), str(tmp_path / "pred"), tr.output_folder_base, folds=[3], device="cpu", disable_tta=True,
            num_processes_preprocessing=1, num_processes_export=1)
    assert "fold 3 of this model has a collapsed classification head" in capsys.readouterr().err
