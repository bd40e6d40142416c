"""The output folder of ``nnunet-ext predict``: one model per folder, and updates that parallel runs cannot lose.

* ``nnunet_ext_prediction.json`` records the model a folder's results come from (model folder, folds, checkpoint).
  Predicting with another model into a folder that holds results (ours, or nnU-Net's ``plans.json`` of other plans)
  is refused before anything runs, naming both models and the fix: otherwise rows and segmentations of two models
  would mix under one ``plans.json``.
* ``classification.csv`` / ``.json`` are updated under an exclusive lock on the folder (read, merge, write): two
  runs on different cases into the same folder both keep their rows.
* The output folder must not be the input folder: nnU-Net would write ``CASE.nii.gz`` beside ``CASE_0000.nii.gz``,
  and the next run would read the segmentations as images.
"""

from __future__ import annotations

import json
import os

import numpy as np

from nnunet_ext.data.files import folder_lock
from nnunet_ext.inference.checks import InputError

RECORD_FILE = "nnunet_ext_prediction.json"
LOCK_FILE = ".nnunet_ext_predict.lock"
CLASSIFICATION_JSON = "classification.json"


def model_identity(model_folder: str, folds, checkpoint_name: str) -> dict:
    """What identifies the model of a prediction: its folder (absolute), the folds used and the checkpoint."""
    if folds is None:
        folds = sorted(d[len("fold_"):] for d in os.listdir(model_folder)
                       if d.startswith("fold_") and d != "fold_all"
                       and os.path.isfile(os.path.join(model_folder, d, checkpoint_name)))
    return {"model": os.path.realpath(model_folder), "folds": sorted(str(f) for f in folds),
            "checkpoint": checkpoint_name}


def _describe(identity: dict) -> str:
    return f"{identity.get('model')} (folds {', '.join(identity.get('folds') or [])}, {identity.get('checkpoint')})"


def check_output_folder(input_folder: str, output_folder: str, model_folder: str, identity: dict) -> None:
    """Refuse an output folder that is the input folder, or that holds results of another model (module
    docstring). Checked before any case runs."""
    if os.path.realpath(input_folder) == os.path.realpath(output_folder):
        raise InputError(f"the output folder (-o) is the input folder (-i) {input_folder}: the segmentations "
                         "CASE.nii.gz would be written beside the images CASE_XXXX.nii.gz, and the next run would "
                         "take them for images. Fix: pass another -o.")
    if not os.path.isdir(output_folder):
        return
    record = os.path.join(output_folder, RECORD_FILE)
    fix = ("Fix: choose another output folder (-o), or move the earlier results away (all of them: segmentations, "
           "classification.csv/.json, plans.json).")
    if os.path.isfile(record):
        try:
            with open(record, encoding="utf-8") as f:
                earlier = json.load(f)
        except (OSError, ValueError) as e:
            raise InputError(f"{record} cannot be read ({e}). {fix}") from e
        if {k: earlier.get(k) for k in identity} != identity:
            raise InputError(f"{output_folder} holds predictions of another model: {_describe(earlier)}; this run "
                             f"uses {_describe(identity)}. Mixing them would put two models' segmentations and "
                             f"class rows under one plans.json. {fix}")
        return
    plans_here = os.path.join(output_folder, "plans.json")
    if os.path.isfile(plans_here) or os.path.isfile(os.path.join(output_folder, CLASSIFICATION_JSON)):
        same = False
        if os.path.isfile(plans_here):
            try:
                with open(plans_here, encoding="utf-8") as f, \
                        open(os.path.join(model_folder, "plans.json"), encoding="utf-8") as g:
                    same = json.load(f) == json.load(g)
            except (OSError, ValueError) as e:
                raise InputError(f"cannot compare {plans_here} with the model's plans.json ({e}). {fix}") from e
        if not same:
            raise InputError(f"{output_folder} holds predictions that were not made by this model "
                             f"({_describe(identity)}): "
                             f"{'its plans.json differs' if os.path.isfile(plans_here) else 'it has no plans.json'}. "
                             f"{fix}")


def write_record(output_folder: str, identity: dict) -> None:
    """Record the model of ``output_folder`` (:data:`RECORD_FILE`) unless it is recorded already."""
    from nnunet_ext.data.metadata import save_json_atomic

    os.makedirs(output_folder, exist_ok=True)
    with folder_lock(output_folder, LOCK_FILE):
        if not os.path.isfile(os.path.join(output_folder, RECORD_FILE)):
            save_json_atomic(identity, os.path.join(output_folder, RECORD_FILE))


def earlier_classifications(output_folder: str, class_names, exclude=()) -> dict[str, np.ndarray]:
    """Probabilities already in ``output_folder/classification.json`` for cases not predicted again, so that
    predicting more cases into a folder adds rows instead of dropping those written before (their segmentations stay
    in the folder too). A file of another model (other classes) is an error rather than a silent mix."""
    path = os.path.join(output_folder, CLASSIFICATION_JSON)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        kept = {k: v["probabilities"] for k, v in old.items() if k not in exclude}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path} exists but is not a classification.json written by nnunet-ext ({e}). Fix: move it "
                         "away or choose another output folder (-o).") from e
    other = sorted(k for k, p in kept.items() if list(p) != list(class_names))
    if other:
        raise InputError(f"{path} holds results for other classes than this model's {list(class_names)} (e.g. case "
                         f"{other[0]!r}: {list(kept[other[0]])}). Fix: choose another output folder (-o).")
    return {k: np.array([float(p[c]) for c in class_names]) for k, p in kept.items()}


def merge_classifications(output_folder: str, new: dict[str, np.ndarray], class_names) -> int:
    """Add ``new`` ({case: probabilities}) to ``classification.csv`` / ``.json`` under the folder lock (rows of
    other cases stay, rows of the cases in ``new`` are replaced); returns how many earlier rows were kept."""
    from nnunet_ext.data.classification_results import write_classification_outputs

    with folder_lock(output_folder, LOCK_FILE):
        kept = earlier_classifications(output_folder, class_names, exclude=new)
        merged = {**kept, **{k: np.asarray(v, dtype=float) for k, v in new.items()}}
        ids = sorted(merged)
        write_classification_outputs(output_folder, ids, np.stack([merged[k] for k in ids]), class_names)
    return len(kept)


__all__ = ["CLASSIFICATION_JSON", "RECORD_FILE", "check_output_folder", "earlier_classifications",
           "merge_classifications", "model_identity", "write_record"]
