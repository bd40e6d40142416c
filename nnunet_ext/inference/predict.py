"""``nnunet-ext predict``: nnUNetv2_predict's inputs and flags, plus ``classification.csv``/``.json``."""

from __future__ import annotations

import os
import re
from collections import defaultdict

import numpy as np
import torch

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
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    channels: dict[str, set[int]] = defaultdict(set)
    strays = []
    for f in sorted(os.listdir(input_folder)):
        m = pattern.match(f)
        if m:
            channels[m.group(1)].add(int(m.group(2)))
        elif f.endswith(ending):
            strays.append(f)
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
    return sorted(channels)


def predict(input_folder: str, output_folder: str, model_folder: str, folds=None,
            checkpoint_name: str = "checkpoint_final.pth", step_size: float = 0.5, disable_tta: bool = False,
            device: str = "cuda", num_processes_preprocessing: int = 2, num_processes_export: int = 2,
            save_probabilities: bool = False, verbose: bool = False) -> dict | None:
    """Segment every case of ``input_folder`` and, for models with a class head, write ``classification.csv`` and
    ``classification.json`` into ``output_folder``. Returns {case_id: probabilities} (None without a head)."""
    from nnunet_ext.inference.predictor import ClassifyingPredictor
    from nnunet_ext.inference.writers import write_classification_outputs

    dataset_json = load_dataset_json(os.path.join(model_folder, "dataset.json"))
    check_input_folder(input_folder, dataset_json)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("-device cuda was requested but no CUDA device is available. Fix: pass -device cpu.")
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
    ids = sorted(predictor.case_probabilities)
    probs = np.stack([predictor.case_probabilities[k] for k in ids])
    write_classification_outputs(output_folder, ids, probs, predictor.class_names)
    return dict(zip(ids, probs))


def model_folder_from_args(dataset: str, trainer: str, plans: str, configuration: str) -> str:
    """nnU-Net's results folder for (-d, -tr, -p, -c)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    return get_output_folder(maybe_convert_to_dataset_name(dataset), trainer, plans, configuration)
