"""``nnunet-ext predict``: nnUNetv2_predict's inputs and flags, plus ``classification.csv``/``.json``."""

from __future__ import annotations

import os

import numpy as np
import torch

from nnunet_ext.data.integrity import channel_files
from nnunet_ext.data.metadata import load_dataset_json
from nnunet_ext.errors import NnunetExtError


class InputError(NnunetExtError, ValueError):
    """Bad prediction input; the message names the case and the fix."""


def check_input_folder(input_folder: str, dataset_json: dict) -> list[str]:
    """Check that every case in ``input_folder`` has exactly the model's channels; returns the case ids."""
    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    if not os.path.isdir(input_folder):
        raise InputError(f"input folder {input_folder} does not exist")
    files, strays = channel_files(input_folder, ending)
    channels = {case: set(found) for case, found in files.items()}
    if strays:
        raise InputError(f"{input_folder}: files without the _XXXX channel suffix: {strays[:5]}. Fix: name images "
                         f"CASE_0000{ending}, CASE_0001{ending}, ... (one file per channel).")
    if not channels:
        raise InputError(f"{input_folder} holds no {ending} images named CASE_XXXX{ending}.")
    expected = set(range(n_channels))
    bad = {k: sorted(v) for k, v in channels.items() if v != expected}
    if bad:
        names = [dataset_json["channel_names"][str(i)] for i in range(n_channels)]
        desc = "; ".join(f"{k}: channels {v}" for k, v in list(bad.items())[:10])
        raise InputError(f"the model expects {n_channels} channel(s) {names} (files _0000.._{n_channels - 1:04d}), "
                         f"but {len(bad)} case(s) differ: {desc}. Fix: provide exactly these channels per case, in "
                         "the training order.")
    for case in sorted(channels):
        check_case_files([os.path.join(input_folder, f"{case}_{c:04d}{ending}") for c in range(n_channels)], case,
                         [dataset_json["channel_names"][str(c)] for c in range(n_channels)])
    return sorted(channels)


def require_finite(data: torch.Tensor, case: str) -> None:
    """Preprocessed data of ``case`` holds no NaN or infinity, or an error naming the case and the fix."""
    if not torch.isfinite(data).all():
        raise InputError(f"case {case} contains NaN or infinite values after preprocessing. Fix: replace them in the "
                         "input image(s) (e.g. with the image minimum).")


def torch_device(device: str) -> torch.device:
    """``-device`` as a torch device; asking for CUDA on a machine without it is an error with the fix."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("-device cuda was requested but no CUDA device is available. Fix: pass -device cpu.")
    return dev


def check_case_files(files: list[str], case: str, names: list[str]) -> None:
    """Every channel file of one case whole and finite (:func:`~nnunet_ext.data.integrity.check_image_file`), and
    all on one voxel grid: nnU-Net only warns about channels whose origins differ and then predicts with the phases
    misaligned; with other sizes or spacings its workers die with an unrelated message."""
    from nnunet_ext.conversion.common import header_mismatch, image_header
    from nnunet_ext.data.integrity import check_image_file

    for f, name in zip(files, names):
        check_image_file(f, case, f"channel {name!r}")
    headers = [image_header(f, case, f"channel {name!r}") for f, name in zip(files, names)]
    for f, name, h in zip(files[1:], names[1:], headers[1:]):
        diff = header_mismatch(headers[0], h)
        if diff:
            raise InputError(f"case {case!r}: channel {name!r} ({os.path.basename(f)}) is not on the voxel grid of "
                             f"channel {names[0]!r} ({diff}). nnU-Net would predict with the channels misaligned. "
                             "Fix: register and resample every phase onto the reference phase's grid (nnunet-ext "
                             "convert dicom-multiphase does this), then rerun.")


def predict(input_folder: str, output_folder: str, model_folder: str, folds=None,
            checkpoint_name: str = "checkpoint_final.pth", step_size: float = 0.5, disable_tta: bool = False,
            device: str = "cuda", num_processes_preprocessing: int = 2, num_processes_export: int = 2,
            save_probabilities: bool = False, verbose: bool = False) -> dict | None:
    """Segment every case of ``input_folder`` and, for models with a class head, write ``classification.csv`` and
    ``classification.json`` into ``output_folder``. Returns {case_id: probabilities} (None without a head)."""
    from nnunet_ext.inference.predictor import ClassifyingPredictor
    from nnunet_ext.inference.writers import write_classification_outputs
    from nnunet_ext.trainers.run import ensure_trainer_path

    ensure_trainer_path()  # nnU-Net finds the trainer class of the model by name on this path
    dataset_json = load_dataset_json(os.path.join(model_folder, "dataset.json"))
    check_input_folder(input_folder, dataset_json)
    dev = torch_device(device)
    predictor = ClassifyingPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=not disable_tta,
                                     perform_everything_on_device=dev.type == "cuda", device=dev, verbose=verbose,
                                     verbose_preprocessing=verbose, allow_tqdm=True)
    predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name)
    os.makedirs(output_folder, exist_ok=True)
    predictor.predict_from_files(input_folder, output_folder, save_probabilities=save_probabilities, overwrite=True,
                                 num_processes_preprocessing=num_processes_preprocessing,
                                 num_processes_segmentation_export=num_processes_export)
    if not predictor.has_classification:
        return None
    new = {k: np.asarray(v, dtype=float) for k, v in predictor.case_probabilities.items()}
    merged = {**earlier_classifications(output_folder, predictor.class_names, exclude=new), **new}
    ids = sorted(merged)
    write_classification_outputs(output_folder, ids, np.stack([merged[k] for k in ids]), predictor.class_names)
    return new


def earlier_classifications(output_folder: str, class_names, exclude=()) -> dict[str, np.ndarray]:
    """Probabilities already in ``output_folder/classification.json`` for cases not predicted again, so that
    predicting more cases into a folder adds rows instead of dropping those written before (their segmentations stay
    in the folder too). A file of another model (other classes) is an error rather than a silent mix."""
    import json

    path = os.path.join(output_folder, "classification.json")
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
    if kept:
        print(f"classification.csv/.json: keeping the {len(kept)} case(s) already in {output_folder} that were not "
              "predicted again")
    return {k: np.array([float(p[c]) for c in class_names]) for k, p in kept.items()}


def model_folder_from_args(dataset: str, trainer: str, plans: str, configuration: str) -> str:
    """nnU-Net's results folder for (-d, -tr, -p, -c)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    return get_output_folder(maybe_convert_to_dataset_name(dataset), trainer, plans, configuration)
