"""``summary_classification.json``: where the accuracy and the macro AUC look contradictory ("accuracy 0.0000, macro
AUC 1.0000" in a training log), the summary says why."""

from __future__ import annotations

import json

import numpy as np

from nnunet_ext.data.classification_results import write_classification_outputs

CLASSES = ["HCC", "metastasis", "benign"]


def test_a_head_at_the_prior_with_a_perfect_ranking_is_explained(tmp_path):
    # two validation cases, both predicted "benign" (the prior), yet ranked perfectly for their own classes
    probs = np.array([[0.30, 0.32, 0.38], [0.29, 0.33, 0.38]])
    summary = write_classification_outputs(str(tmp_path), ["a", "b"], probs, CLASSES, targets=[0, 1])
    assert summary["accuracy"] == 0.0 and summary["auc_ovr_macro"] == 1.0  # what the log line printed
    notes = " | ".join(summary["notes"])
    assert "every case is predicted 'benign'" in notes
    assert "only 2 of 3 classes occur among the labeled cases ('HCC', 'metastasis')" in notes
    assert "2 labeled case(s): too few" in notes
    assert json.loads((tmp_path / "summary_classification.json").read_text())["notes"] == summary["notes"]


def test_a_plain_set_has_no_notes(tmp_path):
    rng = np.random.default_rng(0)
    targets = np.arange(30) % 3
    probs = np.eye(3)[targets] * 0.6 + rng.dirichlet(np.ones(3), 30) * 0.4
    summary = write_classification_outputs(str(tmp_path), [f"c{i}" for i in range(30)], probs, CLASSES, targets)
    assert summary["notes"] == [] and summary["n_labeled"] == 30 and summary["accuracy"] == 1.0
