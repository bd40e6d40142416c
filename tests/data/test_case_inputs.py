"""Case inputs by case id (tabular features, text embeddings, class targets) and the --texts / --tabular files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nnunet_ext.data.case_inputs import CaseInputError, CaseInputs, read_tabular, read_texts
from nnunet_ext.data.metadata import DatasetMetadata

DJ = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz",
      "nnunet_ext": {"classification": {"class_names": ["a", "b"]}, "tabular": {"feature_names": ["age", "afp"]},
                     "cases": {"c1": {"class": "a", "tabular": [60, 1.5], "text": "one"},
                               "c2": {"class": None, "tabular": [70, 3.5]},
                               "c3": {"class": "b", "tabular": [50, 2.0], "text": "three"}}}}


def _inputs(text=True) -> CaseInputs:
    t = {"c1": (np.ones((4, 3), np.float32), np.array([1, 1, 0, 0], bool)),
         "c3": (2 * np.ones((4, 3), np.float32), np.array([1, 0, 0, 0], bool))} if text else None
    return CaseInputs.from_metadata(DatasetMetadata.from_dataset_json(DJ), ["c1", "c2", "c3"], t)


def test_batches_follow_the_keys_order():
    inputs = _inputs()
    assert inputs.class_targets(["c3", "c2", "c1"]).tolist() == [1, -1, 0]
    batch = inputs.batch(["c3", "c1"], ("tabular", "text"))
    assert batch["tabular"].tolist() == [[50.0, 2.0], [60.0, 1.5]] and batch["tabular"].dtype == torch.float32
    assert batch["text"].shape == (2, 4, 3) and batch["text"][0, 0, 0] == 2.0
    assert batch["text_mask"].tolist() == [[True, False, False, False], [True, True, False, False]]
    assert set(inputs.batch(["c1"], ())) == set()


def test_a_case_without_text_gets_zero_tokens_and_an_empty_mask():
    batch = _inputs().batch(["c2", "c1"], ("text",))
    assert not batch["text_mask"][0].any() and batch["text"][0].abs().sum() == 0 and batch["text_mask"][1].any()


def test_check_names_every_case_that_lacks_a_required_input():
    inputs = _inputs()
    inputs.check(["c1", "c3"], ("tabular", "text"), "dataset.json")
    inputs.check(["c1", "c2"], ("text",), "dataset.json", optional=("text",))  # a learned fallback: allowed
    with pytest.raises(CaseInputError, match=r"1 case\(s\) have no text input: 'c2'.*Fix: give each case a text"):
        inputs.check(["c1", "c2"], ("text",), "dataset.json")


def test_tabular_statistics_come_from_the_given_cases_only():
    mean, std = _inputs().tabular_statistics(["c1", "c3"])  # the training fold
    np.testing.assert_allclose(mean, [55.0, 1.75])
    np.testing.assert_allclose(std, [5.0, 0.25])


def test_texts_from_json_and_csv(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"c1": "a lesion", "c2": ""}), encoding="utf-8")
    assert read_texts(str(tmp_path / "t.json")) == {"c1": "a lesion", "c2": ""}
    (tmp_path / "t.csv").write_text('case_id,text\nc1,"a lesion, 2 cm"\n', encoding="utf-8")
    assert read_texts(str(tmp_path / "t.csv")) == {"c1": "a lesion, 2 cm"}
    (tmp_path / "bad.json").write_text(json.dumps({"c1": 3}), encoding="utf-8")
    with pytest.raises(CaseInputError, match="texts must be strings.*'c1'"):
        read_texts(str(tmp_path / "bad.json"))
    (tmp_path / "nocol.csv").write_text("case_id,description\nc1,x\n", encoding="utf-8")
    with pytest.raises(CaseInputError, match="case_id,text"):
        read_texts(str(tmp_path / "nocol.csv"))
    with pytest.raises(CaseInputError, match="does not exist"):
        read_texts(str(tmp_path / "missing.csv"))


def test_tabular_from_csv_by_column_name_and_from_json(tmp_path):
    (tmp_path / "t.csv").write_text("case_id,afp,age\nc1,1.5,60\n", encoding="utf-8")
    out = read_tabular(str(tmp_path / "t.csv"), ["age", "afp"])
    assert out["c1"].tolist() == [60.0, 1.5]
    (tmp_path / "t.json").write_text(json.dumps({"c1": [60, 1.5], "c2": {"afp": 2, "age": 70}}), encoding="utf-8")
    out = read_tabular(str(tmp_path / "t.json"), ["age", "afp"])
    assert out["c1"].tolist() == [60.0, 1.5] and out["c2"].tolist() == [70.0, 2.0]


@pytest.mark.parametrize("content, match", [
    ("case_id,age\nc1,60\n", r"missing: \['afp'\]"),
    ('{"c1": [60]}', r"'c1': 1 values for the 2 features"),
    ('{"c1": [60, "high"]}', r"'c1': non-numeric"),
    ('{"c1": [60, NaN]}', r"'c1': non-finite"),
])
def test_bad_tabular_rows_name_the_case_and_the_fix(tmp_path, content, match):
    path = tmp_path / ("t.csv" if content.startswith("case_id") else "t.json")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CaseInputError, match=match) as e:
        read_tabular(str(path), ["age", "afp"])
    assert "Fix:" in str(e.value)


def test_without_any_text_the_text_arguments_are_left_out():
    inputs = _inputs(text=False)
    assert set(inputs.batch(["c1", "c2"], ("tabular", "text"))) == {"tabular"}
