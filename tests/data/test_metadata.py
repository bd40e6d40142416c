"""Case-level metadata: the format, its validation errors (each naming the case and the fix), and its travel."""

from __future__ import annotations

import copy
import json

import pytest

from nnunet_ext.data.fixtures import make_tiny_multiphase_dataset
from nnunet_ext.data.metadata import (
    METADATA_KEY,
    DatasetMetadata,
    MetadataError,
    validate_raw_dataset,
    write_metadata,
)

CASES = ["a", "b", "c"]


def _dj(**block_overrides) -> dict:
    block = {
        "format_version": 1,
        "classification": {"class_names": ["HCC", "benign"], "lesion_labels": [2]},
        "phases": {"order": ["arterial", "portal_venous"], "reference": "portal_venous"},
        "tabular": {"feature_names": ["age", "afp"]},
        "cases": {
            "a": {"class": "HCC", "text": "a 20 mm lesion", "tabular": [61, 12.5]},
            "b": {"class": 1, "text": "a cyst", "tabular": [50.0, 3]},
            "c": {"class": None, "tabular": [70, 1.0]},
        },
    }
    block.update(block_overrides)
    return {"channel_names": {"0": "CT", "1": "CT"}, "labels": {"background": 0, "liver": 1, "lesion": 2},
            "file_ending": ".nii.gz", METADATA_KEY: block}


def test_valid_metadata_parses_with_explicit_unlabeled_case():
    md = DatasetMetadata.from_dataset_json(_dj(), CASES)
    assert md.class_names == ["HCC", "benign"]
    assert md.class_targets(CASES).tolist() == [0, 1, -1]
    assert md.labeled_case_ids() == ["a", "b"]
    assert md.reference_phase_index == 1
    assert md.tabular_matrix(["b"]).tolist() == [[50.0, 3.0]]
    assert md.lesion_labels == [2]


def test_round_trip_through_to_json_is_canonical():
    md = DatasetMetadata.from_dataset_json(_dj(), CASES)
    dj = _dj()
    dj[METADATA_KEY] = md.to_json()
    md2 = DatasetMetadata.from_dataset_json(dj, CASES)
    assert md2 == md
    assert dj[METADATA_KEY]["cases"]["b"]["class"] == "benign"  # indices are written back as names


def test_no_block_means_plain_dataset():
    dj = _dj()
    del dj[METADATA_KEY]
    assert DatasetMetadata.from_dataset_json(dj, CASES) is None


def _cases_with(case_id, **entry):
    dj = _dj()
    dj[METADATA_KEY]["cases"][case_id] = entry
    return dj


BAD = [
    # (description, dataset.json, case ids, fragments the message must contain)
    ("unknown case id", _cases_with("zz", **{"class": "HCC", "tabular": [1, 2]}), CASES,
     ["'zz'", "do not exist", "Fix"]),
    ("case missing from metadata", _dj(), CASES + ["d"], ["'d'", "no class label", '"class": null']),
    ("entry without class key", _cases_with("b", text="x", tabular=[1, 2]), CASES, ["'b'", "no class label"]),
    ("label outside class list", _cases_with("b", **{"class": "FNH", "tabular": [1, 2]}), CASES,
     ["'b'", "'FNH'", "outside the class list"]),
    ("index outside class list", _cases_with("b", **{"class": 5, "tabular": [1, 2]}), CASES, ["'b'", "5"]),
    ("NaN tabular value", _cases_with("b", **{"class": "HCC", "tabular": [float("nan"), 2]}), CASES,
     ["'b'", "age", "not finite", "impute"]),
    ("non-numeric tabular value", _cases_with("a", **{"class": "HCC", "tabular": [1, "high"]}), CASES,
     ["'a'", "afp", "not numeric"]),
    ("wrong tabular length", _cases_with("a", **{"class": "HCC", "tabular": [1]}), CASES, ["'a'", "1 values"]),
    ("missing tabular", _cases_with("a", **{"class": "HCC"}), CASES, ["'a'", "no tabular features"]),
    ("text not a string", _cases_with("a", **{"class": "HCC", "text": 42, "tabular": [1, 2]}), CASES,
     ["'a'", "texts must be strings", "int"]),
    ("phase names vs channel_names", _dj(phases={"order": ["arterial", "delayed", "x"]}), CASES,
     ["phases.order", "channel_names"]),
    ("unknown reference phase", _dj(phases={"order": ["arterial", "portal_venous"], "reference": "late"}), CASES,
     ["'late'"]),
    ("lesion label not a foreground label", _dj(classification={"class_names": ["a", "b"], "lesion_labels": [7]}),
     CASES, ["lesion_labels", "[7]"]),
]


@pytest.mark.parametrize("what,dj,ids,fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_metadata_names_case_and_fix(what, dj, ids, fragments):
    with pytest.raises(MetadataError) as e:
        DatasetMetadata.from_dataset_json(dj, ids)
    for f in fragments:
        assert f in str(e.value), f"{what}: {f!r} not in message:\n{e.value}"


def test_phase_names_may_equal_channel_names():
    dj = _dj()
    dj["channel_names"] = {"0": "arterial", "1": "portal_venous"}
    assert DatasetMetadata.from_dataset_json(dj, CASES).phases == ["arterial", "portal_venous"]
    dj["channel_names"] = {"0": "arterial", "1": "T2"}
    with pytest.raises(MetadataError, match="does not match channel_names"):
        DatasetMetadata.from_dataset_json(dj, CASES)


@pytest.mark.parametrize("keys", [{"arterial": "CT", "1": "CT"}, {"0": "CT", "2": "CT"}, {"0": "CT", " x": "CT"}])
def test_channel_names_keys_that_are_not_indices_are_named_not_a_traceback(keys, tmp_path):
    dj = _dj()
    dj["channel_names"] = keys
    with pytest.raises(MetadataError, match=r'"channel_names" keys must be the channel indices "0" to "1" .*found '
                                            r".*Fix: key each channel by its index"):
        DatasetMetadata.from_dataset_json(dj, CASES)
    raw = make_tiny_multiphase_dataset(str(tmp_path), 903, n_cases=2)  # plan-and-preprocess's case check too
    from nnunet_ext.planners.api import check_training_cases

    with open(f"{raw}/dataset.json", encoding="utf-8") as f:
        plain = json.load(f)
    plain.pop(METADATA_KEY)
    plain["channel_names"] = {"arterial": "CT", "1": "CT", "2": "CT"}
    with pytest.raises(MetadataError, match="keys must be the channel indices"):
        check_training_cases(raw, plain)


def test_all_problems_reported_at_once():
    dj = _cases_with("zz", **{"class": "nope", "text": 3})
    with pytest.raises(MetadataError) as e:
        DatasetMetadata.from_dataset_json(dj, CASES)
    msg = str(e.value)
    assert "'zz'" in msg and "'nope'" in msg and "texts must be strings" in msg


def test_missing_texts_are_named():
    md = DatasetMetadata.from_dataset_json(_dj(), CASES)
    with pytest.raises(MetadataError, match="'c'"):
        md.texts(CASES)
    assert md.texts(["a"]) == ["a 20 mm lesion"]


def test_raw_dataset_validation_and_atomic_write(tmp_path):
    folder = make_tiny_multiphase_dataset(str(tmp_path), 910, n_cases=4)
    md = validate_raw_dataset(folder)
    assert len(md.cases) == 4
    path = f"{folder}/dataset.json"
    before = open(path, encoding="utf-8").read()
    broken = copy.deepcopy(md)
    broken.phases = ["only_one"]
    with pytest.raises(MetadataError):
        write_metadata(path, broken)
    assert open(path, encoding="utf-8").read() == before, "a rejected write must leave dataset.json untouched"
    md.cases["case_000"] = type(md.cases["case_000"])(class_index=None, text="t", tabular=(1.0, 2.0))
    write_metadata(path, md)
    assert json.load(open(path, encoding="utf-8"))[METADATA_KEY]["cases"]["case_000"]["class"] is None


def test_corrupt_dataset_json_is_reported(tmp_path):
    (tmp_path / "dataset.json").write_text('{"labels": {,}', encoding="utf-8")
    with pytest.raises(MetadataError, match="not valid JSON"):
        validate_raw_dataset(str(tmp_path))


def test_case_ids_from_numpy_print_as_plain_strings():
    # nnU-Net enumerates case ids with np.unique: np.str_, whose repr is np.str_('d')
    import numpy as np

    with pytest.raises(MetadataError) as e:
        DatasetMetadata.from_dataset_json(_dj(), np.unique(CASES + ["d"]))
    assert "no class label: 'd'." in str(e.value) and "np.str_" not in str(e.value)
    md = DatasetMetadata.from_dataset_json(_dj(), CASES)
    with pytest.raises(MetadataError) as e:
        md.texts(np.unique(CASES))
    assert "description: 'c'." in str(e.value) and "np.str_" not in str(e.value)


def test_declared_classes_without_any_labeled_case_are_not_trainable():
    dj = _dj()
    for entry in dj[METADATA_KEY]["cases"].values():
        entry["class"] = None
    md = DatasetMetadata.from_dataset_json(dj, CASES)  # valid metadata ...
    with pytest.raises(MetadataError) as e:  # ... that a classification head cannot be trained on
        md.check_trainable("Dataset/dataset.json")
    msg = str(e.value)
    assert "Dataset/dataset.json" in msg and "['HCC', 'benign']" in msg and "none of the 3 cases" in msg
    assert 'Fix: give the labeled cases "class": "<name>"' in msg
    DatasetMetadata.from_dataset_json(_dj(), CASES).check_trainable()  # one labeled case is enough
