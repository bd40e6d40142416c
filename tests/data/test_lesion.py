"""One definition of "the lesion", used by the trainer, the predictor, the attention command and the benchmark."""

from __future__ import annotations

import pytest

from nnunet_ext.data.lesion import foreground_labels, lesion_labels

LITS = {"background": 0, "liver": 1, "tumor": 2}
MSD = {"background": 0, "liver": 1, "cancer": 2}
TWO_TYPES = {"background": 0, "liver": 1, "hcc_lesion": 2, "liver_cyst": 3, "vessel": 4}
GENERIC = {"background": 0, "organ": 1, "other": 2}
REGIONS = {"background": 0, "whole": [1, 2], "core": 2}


@pytest.mark.parametrize("labels, declared, override, expected, source", [
    (LITS, None, None, (2,), "label names"),
    (MSD, None, None, (2,), "label names"),
    (TWO_TYPES, None, None, (2, 3), "label names"),
    (GENERIC, None, None, (1, 2), "every foreground label"),
    (LITS, [1, 2], None, (1, 2), "metadata classification.lesion_labels"),  # the metadata wins over the names
    (LITS, [2], 1, (1,), "explicit choice"),  # an explicit choice wins over everything
    ({"background": 0, "Liver Tumour 1": 1, "masses": 2}, None, None, (1,), "label names"),  # words, not substrings
    ({"background": 0, "massive_vessel": 1, "lesion": 2, "ignore": 3}, None, None, (2,), "label names"),
    (REGIONS, None, None, None, "region-based labels: every foreground region"),
])
def test_the_rule_picks_override_then_metadata_then_names_then_every_label(labels, declared, override, expected,
                                                                            source):
    chosen = lesion_labels(labels, declared, override)
    assert chosen.labels == expected and chosen.source == source


def test_foreground_labels_leave_out_background_ignore_and_regions():
    assert foreground_labels({"background": 0, "a": 1, "b": 2, "ignore": 3, "r": [1, 2]}) == [1, 2]


def test_the_trainer_plans_and_the_benchmark_agree(tmp_path):
    """The settings the trainer writes (and the predictor and attention command read) and the benchmark's lesion
    structure come from the same function."""
    from nnunet_ext.evaluation.benchmark import lesion_structure
    from nnunet_ext.planners.case_settings import make_case_settings

    dj = {"channel_names": {"0": "CT"}, "labels": LITS, "file_ending": ".nii.gz"}
    settings = make_case_settings(dj)
    structures: dict = {}
    name, labels, source = lesion_structure(structures, dj["labels"], None, None)
    assert settings["lesion_labels"] == list(labels) == [2] and name == "tumor"
    assert settings["lesion_labels_source"] == source == "label names"
