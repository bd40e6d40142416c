"""``nnunet-ext predict``: nnUNetv2_predict's inputs and flags, plus ``classification.csv``/``.json``."""

from __future__ import annotations

import os
import sys

import numpy as np

from nnunet_ext.data.metadata import load_dataset_json
from nnunet_ext.inference.checks import InputError, check_input_folder, torch_device  # noqa: F401  (re-exported)
from nnunet_ext.inference.outputs import earlier_classifications  # noqa: F401  (re-exported)


def predict(input_folder: str, output_folder: str, model_folder: str, folds=None,
            checkpoint_name: str = "checkpoint_final.pth", step_size: float = 0.5, disable_tta: bool = False,
            device: str = "cuda", num_processes_preprocessing: int = 2, num_processes_export: int = 2,
            save_probabilities: bool = False, verbose: bool = False, texts: str | None = None,
            tabular: str | None = None, allow_missing_text: bool = False,
            trust_checkpoint: bool | None = None, dicom_seg: bool = False,
            dicom_reference: str | None = None) -> dict | None:
    """Segment every case of ``input_folder`` and, for models with a class head, write ``classification.csv`` and
    ``classification.json`` into ``output_folder``. Returns {case_id: probabilities} (None without a head).

    Checkpoints load through the safe loader (:mod:`nnunet_ext.data.checkpoints`); ``trust_checkpoint`` accepts one
    that needs unsafe unpickling. ``output_folder`` must not be ``input_folder`` and must not hold results of another
    model; rows of cases predicted before by the same model stay, and parallel runs into one folder merge their rows
    under a lock (:mod:`nnunet_ext.inference.outputs`).

    ``texts`` / ``tabular``: CSV or JSON files keyed by case id (:func:`~nnunet_ext.data.case_inputs.read_texts`,
    :func:`~nnunet_ext.data.case_inputs.read_tabular`) for models whose network consumes them. Every case must have
    each input its network needs; a network with a learned "no text" fallback predicts cases without text only with
    ``allow_missing_text``. Texts are embedded with the encoder recorded in the model folder. Everything is checked
    before the first case runs.

    DICOM (:mod:`nnunet_ext.inference.dicom_output`): ``input_folder`` may hold DICOM series (one case each, for
    models with one channel); ``dicom_seg`` also writes every case's segmentation as ``CASE_seg.dcm``, referencing
    its DICOM input series or the series ``dicom_reference`` names for NIfTI input.
    """
    import tempfile

    from nnunet_ext.inference.dicom_output import dicom_input_cases, is_dicom_input, reference_series, segment_names
    from nnunet_ext.inference.outputs import check_output_folder, model_identity

    dataset_json = load_dataset_json(os.path.join(model_folder, "dataset.json"))
    identity = model_identity(model_folder, folds, checkpoint_name)
    check_output_folder(input_folder, output_folder, model_folder, identity)
    if dicom_reference is not None and not dicom_seg:
        raise InputError("--dicom-reference is only used with --dicom-seg. Fix: add --dicom-seg, or drop it.")
    if dicom_seg:
        segment_names(dataset_json)  # region-based models are refused before anything runs
    with tempfile.TemporaryDirectory(prefix="nnunet_ext_dicom_input_") as work:
        sources = {}
        if is_dicom_input(input_folder, dataset_json["file_ending"]):
            if dicom_reference is not None:
                raise InputError("--dicom-reference is for NIfTI input; with DICOM input the segmentation refers to "
                                 "the input series. Fix: drop --dicom-reference.")
            sources = dicom_input_cases(input_folder, dataset_json, work)
            input_folder = work
        elif dicom_seg:
            if dicom_reference is None:
                raise InputError("--dicom-seg needs the DICOM series each case was made from: give DICOM input (-i "
                                 "a folder of series) or --dicom-reference (a series folder, or a CSV case,series).")
            sources = reference_series(dicom_reference, check_input_folder(input_folder, dataset_json))
        probabilities = _predict_folder(input_folder, output_folder, model_folder, dataset_json, identity, folds,
                                        checkpoint_name, step_size, disable_tta, device, num_processes_preprocessing,
                                        num_processes_export, save_probabilities, verbose, texts, tabular,
                                        allow_missing_text, trust_checkpoint)
        if dicom_seg:
            from nnunet_ext.inference.dicom_output import write_case_segs

            written = write_case_segs(output_folder, sources, dataset_json, model_folder)
            print(f"DICOM SEG: {len(written)} file(s) written to {output_folder}")
    return probabilities


def _predict_folder(input_folder, output_folder, model_folder, dataset_json, identity, folds, checkpoint_name,
                    step_size, disable_tta, device, num_processes_preprocessing, num_processes_export,
                    save_probabilities, verbose, texts, tabular, allow_missing_text, trust_checkpoint):
    """:func:`predict` on a folder of nnU-Net input images (output folder already checked)."""
    from nnunet_ext.inference.outputs import merge_classifications, write_record
    from nnunet_ext.inference.predictor import ClassifyingPredictor
    from nnunet_ext.paths import ensure_trainer_path

    ensure_trainer_path()  # nnU-Net finds the trainer class of the model by name on this path
    cases = check_input_folder(input_folder, dataset_json)
    dev = torch_device(device)
    predictor = ClassifyingPredictor.from_model_folder(model_folder, folds, checkpoint_name, dev, step_size,
                                                       mirroring=not disable_tta, verbose=verbose, allow_tqdm=True,
                                                       trust_checkpoint=trust_checkpoint)
    if predictor.has_classification:
        for line in collapsed_head_warnings(model_folder, folds):
            print(line, file=sys.stderr)
    predictor.case_inputs = prediction_case_inputs(predictor, cases, texts, tabular, allow_missing_text)
    if predictor.has_classification:  # a classification.json of other classes is refused before any case runs
        earlier_classifications(output_folder, predictor.class_names)
    write_record(output_folder, identity)
    predictor.predict_from_files(input_folder, output_folder, save_probabilities=save_probabilities, overwrite=True,
                                 num_processes_preprocessing=num_processes_preprocessing,
                                 num_processes_segmentation_export=num_processes_export)
    if not predictor.has_classification:
        return None
    new = {k: np.asarray(v, dtype=float) for k, v in predictor.case_probabilities.items()}
    kept = merge_classifications(output_folder, new, predictor.class_names)
    if kept:
        print(f"classification.csv/.json: kept the {kept} case(s) already in {output_folder} that were not predicted "
              "again")
    return new


def prediction_case_inputs(predictor, cases: list[str], texts: str | None, tabular: str | None,
                           allow_missing_text: bool = False):
    """The :class:`~nnunet_ext.data.case_inputs.CaseInputs` of ``cases`` from the ``--texts`` / ``--tabular`` files,
    checked against what the model's network consumes (an :class:`InputError` names the cases and the fix)."""
    from nnunet_ext.data.case_inputs import CaseInputError, CaseInputs, read_tabular, read_texts

    uses, optional = predictor.uses, predictor.optional_inputs
    settings = predictor.settings
    unused = [flag for flag, given, name in (("--texts", texts, "text"), ("--tabular", tabular, "tabular"))
              if given and name not in uses]
    if unused:
        print(f"note: this model's network does not consume {' or '.join(unused)}; ignored")
    try:
        table_text = {}
        if "text" in uses:
            if texts is None and not ("text" in optional and allow_missing_text):
                fix = " or --allow-missing-text (the network has a learned 'no text' fallback)" \
                    if "text" in optional else ""
                raise InputError(f"this model's network consumes a text per case. Fix: pass --texts FILE (CSV "
                                 f"case_id,text or JSON {{case_id: text}}){fix}.")
            given = read_texts(texts) if texts else {}
            missing = [c for c in cases if not given.get(c, "").strip()]
            if missing and not ("text" in optional and allow_missing_text):
                raise InputError(f"{len(missing)} case(s) have no (or an empty) text in {texts}: "
                                 f"{', '.join(missing[:20])}. Fix: add them to the --texts file"
                                 + (", or pass --allow-missing-text" if "text" in optional else "") + ".")
            present = {c: given[c] for c in cases if given.get(c, "").strip()}
            if present and not settings.get("text_encoder"):
                raise InputError("this model was trained without text embeddings (every training case used the "
                                 "network's 'no text' fallback), so it has no text encoder to embed --texts with. "
                                 "Fix: predict without --texts, with --allow-missing-text.")
            if missing:
                print(f"--allow-missing-text: {len(missing)} case(s) predicted without text (the network's learned "
                      f"'no text' embedding): {', '.join(missing[:20])}")
            table_text = embed_texts(settings, present)
        table_tab = {}
        if "tabular" in uses:
            if tabular is None:
                raise InputError(f"this model's network consumes the tabular features {settings['tabular_features']}. "
                                 "Fix: pass --tabular FILE (CSV with case_id and one column per feature, or JSON "
                                 "{case_id: [values]}).")
            table_tab = read_tabular(tabular, settings["tabular_features"])
        inputs = CaseInputs(tabular=table_tab, text=table_text, num_tabular=settings.get("num_tabular", 0))
        inputs.check(cases, uses, "the --texts / --tabular files", optional if allow_missing_text else ())
    except CaseInputError as e:
        raise InputError(str(e)) from None
    return inputs


def embed_texts(settings: dict, texts: dict[str, str]) -> dict:
    """{case: (tokens, mask)} of ``texts`` by the text encoder the model was trained with (its plans' record)."""
    from nnunet_ext.data.text_embeddings import load_text_encoder_from_info

    if not texts:
        return {}
    encoder = load_text_encoder_from_info(settings["text_encoder"])
    ids = sorted(texts)
    tokens, mask = encoder.encode([texts[k] for k in ids])
    return {k: (tokens[i], mask[i]) for i, k in enumerate(ids)}


def model_folder_from_args(dataset: str, trainer: str, plans: str, configuration: str) -> str:
    """nnU-Net's results folder for (-d, -tr, -p, -c)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    return get_output_folder(maybe_convert_to_dataset_name(dataset), trainer, plans, configuration)


def collapsed_head_warnings(model_folder: str, folds=None) -> list[str]:
    """Warnings for the folds (None: all) whose final validation found the classification head collapsed
    (``fold_X/validation/summary_classification.json``, ``head_collapse``)."""
    import glob
    import json

    warnings = []
    wanted = None if folds is None else {str(f) for f in folds}
    for path in sorted(glob.glob(os.path.join(model_folder, "fold_*", "validation", "summary_classification.json"))):
        fold = os.path.basename(os.path.dirname(os.path.dirname(path)))[len("fold_"):]
        if wanted is not None and fold not in wanted:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                collapse = json.load(f).get("head_collapse") or {}
        except (OSError, ValueError):
            continue
        if collapse.get("collapsed"):
            warnings.append(
                f"WARNING: fold {fold} of this model has a collapsed classification head: its validation cases all got "
                f"nearly the same class probabilities (spread {collapse.get('probability_spread', float('nan')):.4f}, "
                f"{path}). The class probabilities written here carry no information about the case; the "
                "segmentations are unaffected. Fix: retrain (docs/trainers.md, 'collapsed head').")
    return warnings
