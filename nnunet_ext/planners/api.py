"""``nnunet-ext plan-and-preprocess``: nnU-Net's fingerprint / plan / preprocess API with plugin planners.

Adds, around nnU-Net's own functions, before anything is computed or removed: the planner resolved, metadata
validated, every training case checked (channel and label files present, whole and finite; only declared label
values) and preprocessed files of another set of cases refused (``clean`` replaces them). Then: reuse of already
preprocessed data when a plugin plan's preprocessing equals an existing data folder, requested configurations the
plans do not define refused, and the stratified split.
"""

from __future__ import annotations

import os

from nnunet_ext.data.metadata import raw_case_ids, validate_raw_dataset
from nnunet_ext.data.splits import write_stratified_splits_if_missing
from nnunet_ext.errors import NnunetExtError
from nnunet_ext.planners import find_planner


class DataError(NnunetExtError, ValueError):
    """Image or label content nnU-Net cannot use (e.g. NaN); the message names the files and the fix."""


class PlanError(NnunetExtError, ValueError):
    """An unknown planner or configuration, or preprocessed files of an earlier version of the raw dataset."""


MAX_LISTED = 10  # problems shown in one error message
# configurations nnU-Net's planners only create when the images are large (3d_fullres is then not enough)
OPTIONAL_CONFIGURATIONS = frozenset({"3d_lowres", "3d_cascade_fullres"})
SPLITS_STALE_SUFFIX = ".stale"


def _declared_label_values(dataset_json) -> set[int]:
    values: set[int] = set()
    for v in dataset_json.get("labels", {}).values():  # region-based datasets declare lists of labels
        values |= {int(i) for i in v} if isinstance(v, (list, tuple)) else {int(v)}
    return values


def _training_files(raw_folder: str, dataset_json: dict, problems: list[str]) -> dict[str, dict]:
    """{case: {"channels": {index: path}, "label": path}} of the training cases, as nnU-Net enumerates them."""
    import copy

    from nnunet_ext.data.integrity import channel_files

    ending = dataset_json["file_ending"]
    if "dataset" in dataset_json:  # explicit file lists: nnU-Net's own expansion of the paths
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        listed = get_filenames_of_train_images_and_targets(raw_folder, copy.deepcopy(dataset_json))
        return {str(k): {"channels": dict(enumerate(v["images"])), "label": v["label"]} for k, v in listed.items()}
    images_dir = os.path.join(raw_folder, "imagesTr")
    if not os.path.isdir(images_dir):
        problems.append(f"{images_dir} does not exist. Fix: put the training images there (CASE_XXXX{ending}).")
        return {}
    found, strays = channel_files(images_dir, ending)
    cases = {case: {"channels": channels, "label": os.path.join(raw_folder, "labelsTr", case + ending)}
             for case, channels in found.items()}
    if strays:
        problems.append(f"{len(strays)} file(s) in {images_dir} lack the _XXXX channel suffix: {', '.join(strays[:5])}"
                        f"{' ...' if len(strays) > 5 else ''}. Fix: name images CASE_0000{ending}, CASE_0001{ending}, "
                        "... (one file per channel).")
    return cases


def _case_problems(case: str, files: dict, channel_names: list[str], allowed: set[int], ending: str) -> list[str]:
    """Everything wrong with one training case: missing, extra, truncated or non-finite files, undeclared labels."""
    import numpy as np

    from nnunet_ext.data.integrity import ImageFileError, check_image_file, read_voxels

    out = []
    n = len(channel_names)
    channels = files["channels"]
    folder = os.path.dirname(next(iter(channels.values()))) if channels else ""
    for c in range(n):
        what = f"channel {c} ({channel_names[c]!r})"
        if c not in channels:
            out.append(f"case {case!r}: {what} file {os.path.join(folder, f'{case}_{c:04d}{ending}')} does not exist. "
                       f"Fix: provide it (every case needs one file per channel of dataset.json channel_names, "
                       f"_0000 to _{n - 1:04d}).")
            continue
        try:
            check_image_file(channels[c], case, what)
        except ImageFileError as e:
            out.append(str(e))
    for c in sorted(set(channels) - set(range(n))):
        out.append(f"case {case!r}: {channels[c]} is channel {c}, but dataset.json declares {n} channel(s) "
                   f"{channel_names}. Fix: remove the file, or declare the channel in channel_names.")
    label = files["label"]
    if not os.path.isfile(label):
        out.append(f"case {case!r}: label file {label} does not exist. Fix: provide the segmentation (labelsTr/"
                   f"{case}{ending}), or move the case's images out of imagesTr (e.g. to imagesTs).")
        return out
    if not out:
        out += _grid_problems(case, [channels[c] for c in range(n)], channel_names, label)
    try:
        voxels = read_voxels(label)
    except Exception:  # noqa: BLE001  check_image_file turns the reader's error into the message
        try:
            check_image_file(label, case, "label")
            out.append(f"case {case!r}: label {label} cannot be read. Fix: re-export the file.")
        except ImageFileError as e:
            out.append(str(e))
        return out
    values = np.unique(voxels)
    finite = np.isfinite(values) if np.issubdtype(values.dtype, np.floating) else np.ones(len(values), bool)
    if not finite.all():
        out.append(f"case {case!r}: label {label} holds NaN or infinite values. Fix: replace them with 0 "
                   "(background) or the right label and rerun.")
    bad = [v for v in values[finite].tolist() if not float(v).is_integer() or int(v) not in allowed]
    if bad:
        shown = ", ".join(f"{int(v) if float(v).is_integer() else v:g}" for v in bad[:10])
        out.append(f"case {case!r}: label {label} holds value(s) {shown} that dataset.json \"labels\" does not "
                   f"declare (declared: {', '.join(str(v) for v in sorted(allowed))}); training would fail late "
                   "(\"index ... is out of bounds\") without naming the case. Fix: correct the label map, or declare "
                   "the label in dataset.json \"labels\".")
    return out


def _grid_problems(case: str, channels: list[str], channel_names: list[str], label: str) -> list[str]:
    """Every channel and the label on channel 0's voxel grid (headers only). nnU-Net only warns about channels whose
    origins differ and trains with them misaligned (``predict`` refuses the same case), ignores a label's spacing,
    origin and direction (the model trains on a misplaced label), and fails on a label of another size with a
    broadcast error that names no case."""
    from nnunet_ext.data.geometry import header_mismatch, image_header
    from nnunet_ext.data.integrity import ImageFileError

    try:
        headers = [image_header(f, case, f"channel {c} ({channel_names[c]!r})") for c, f in enumerate(channels)]
        label_header = image_header(label, case, "label")
    except ImageFileError as e:
        return [str(e)]
    out = []
    for c in range(1, len(channels)):
        diff = header_mismatch(headers[0], headers[c])
        if diff:
            out.append(f"case {case!r}: channel {c} ({channel_names[c]!r}, {channels[c]}) is not on the voxel grid of "
                       f"channel 0 ({diff}). nnU-Net would only warn and train with the channels misaligned, and "
                       "nnunet-ext predict refuses such a case. Fix: register and resample every channel onto channel "
                       "0's grid (nnunet-ext convert dicom-multiphase does this for DICOM phases), then rerun.")
    diff = header_mismatch(headers[0], label_header)
    if diff and label_header.GetSize() != headers[0].GetSize():
        out.append(f"case {case!r}: label {label} has {label_header.GetSize()} voxels, the images "
                   f"{headers[0].GetSize()} ({diff}). nnU-Net would stop with a broadcast error that names no case. "
                   "Fix: export the label on the image's voxel grid (or resample it onto the image, nearest "
                   "neighbour).")
    elif diff:
        out.append(f"case {case!r}: label {label} is not on the image's voxel grid ({diff}); nnU-Net ignores the "
                   "label's geometry, so the model would train on a misplaced label. Fix: resample the label onto the "
                   "image grid (nearest neighbour); if its voxels do match the image and only the header is wrong, "
                   "copy the image's spacing, origin and direction into it (nnunet-ext convert lits / nnunet-v1 "
                   "--copy-image-geometry).")
    return out


def check_training_cases(raw_folder: str, dataset_json: dict | None = None, num_processes: int = 1) -> list[str]:
    """Problems of the training cases of a raw dataset (empty when every case is usable): every channel file and
    the label present, whole and finite, on one voxel grid (:func:`_grid_problems`), and only label values that
    dataset.json declares. SimpleITK, and so nnU-Net, reads truncated and NaN-holding NIfTI files silently, and
    undeclared labels only fail in training. A progress bar is shown from 50 cases on."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from nnunet_ext.data.metadata import _channel_names, load_dataset_json

    dj = dataset_json if dataset_json is not None else load_dataset_json(os.path.join(raw_folder, "dataset.json"))
    problems: list[str] = []
    cases = _training_files(raw_folder, dj, problems)
    if not cases and not problems:
        problems.append(f"{raw_folder} has no training cases. Fix: put the images into imagesTr (CASE_XXXX"
                        f"{dj['file_ending']}) and the labels into labelsTr.")
    names, allowed, ending = _channel_names(dj), _declared_label_values(dj), dj["file_ending"]
    with ThreadPoolExecutor(max_workers=max(1, num_processes)) as pool, \
            tqdm(total=len(cases), desc="checking training cases", unit="case", file=sys.stderr,
                 disable=len(cases) < 50) as bar:  # file reads and zlib release the GIL
        for found in pool.map(lambda k: _case_problems(k, cases[k], names, allowed, ending), sorted(cases)):
            problems += found
            bar.update()
    return problems


def _planner_names() -> tuple[list[str], list[str]]:
    """(nnunet-ext planners, nnU-Net's experiment planners), by class name."""
    import importlib

    import nnunetv2.experiment_planning.experiment_planners as stock
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    from nnunet_ext.introspection import subclass_names
    from nnunet_ext.planners import PLANNERS

    importlib.import_module("nnunet_ext.planners.registry")
    return sorted(PLANNERS), sorted(subclass_names(stock, ExperimentPlanner) - set(PLANNERS))


def resolve_planner(name: str) -> type:
    """The planner class called ``name`` (nnunet-ext's, then nnU-Net's); :class:`PlanError` listing them if none."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    try:
        cls = find_planner(name)
    except ValueError:
        cls = None
    if isinstance(cls, type) and issubclass(cls, ExperimentPlanner):
        return cls
    import difflib

    ours, stock = _planner_names()
    close = difflib.get_close_matches(name, ours + stock, n=3)
    raise PlanError(f"unknown planner {name!r}.{' Did you mean ' + ' or '.join(close) + '?' if close else ''} "
                    f"nnunet-ext planners: {', '.join(ours)}; nnU-Net planners: {', '.join(stock)}. Fix: pass -pl "
                    "with one of these (names are case-sensitive).")


def _ids_text(ids: list[str], limit: int = 5) -> str:
    return ", ".join(ids[:limit]) + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def stale_preprocessed_files(pre_folder: str, case_ids: list[str]) -> list[str]:
    """Files of ``nnUNet_preprocessed/DatasetXXX`` made from another set of cases than ``case_ids`` (the raw dataset
    now): the fingerprint (which records one entry per case, no ids) and ``splits_final.json``."""
    import json

    from nnunet_ext.data.splits import SPLITS_FILE

    out = []
    fp_file = os.path.join(pre_folder, "dataset_fingerprint.json")
    if os.path.isfile(fp_file):
        with open(fp_file, encoding="utf-8") as f:
            n = len(json.load(f).get("spacings", []))
        if n != len(case_ids):
            change = f"{len(case_ids) - n} added" if len(case_ids) > n else f"{n - len(case_ids)} removed"
            out.append(f"{fp_file} was computed from {n} cases; the raw dataset now has {len(case_ids)} ({change}).")
    splits_file = os.path.join(pre_folder, SPLITS_FILE)
    if os.path.isfile(splits_file):
        with open(splits_file, encoding="utf-8") as f:
            splits = json.load(f)
        in_split = {str(k) for fold in splits for part in ("train", "val") for k in fold.get(part, [])}
        added, removed = sorted(set(case_ids) - in_split), sorted(in_split - set(case_ids))
        if added or removed:
            parts = ([f"{len(added)} case(s) added since ({_ids_text(added)})"] if added else []) + \
                    ([f"{len(removed)} removed ({_ids_text(removed)})"] if removed else [])
            out.append(f"{splits_file} covers {len(in_split)} cases; the raw dataset has {len(case_ids)}: "
                       f"{' and '.join(parts)}.")
    return out


def _data_folder_complete(folder: str, case_ids: list[str]) -> bool:
    if not os.path.isdir(folder):
        return False
    have = {f.split(".")[0] for f in os.listdir(folder) if f.endswith(".pkl")}
    return set(case_ids) <= have


def plan_and_preprocess(dataset_id: int, planner: str = "ExperimentPlanner",
                        configurations: tuple[str, ...] = ("2d", "3d_fullres", "3d_lowres"),
                        num_processes: int = 2, verify_dataset_integrity: bool = False,
                        gpu_memory_target_in_gb: float | None = None, plans_name: str | None = None,
                        clean: bool = False, verbose: bool = False, text_encoder: str | None = None,
                        text_max_tokens: int = 64) -> str:
    """Validate metadata, fingerprint, plan with ``planner`` and preprocess ``configurations``.

    Returns the plans identifier. A configuration whose ``data_identifier`` belongs to other plans (plugin planners
    point at the vanilla folder when their preprocessing is identical) is not preprocessed again when that folder
    already holds every case; ``clean`` forces preprocessing.

    Raises (before anything is computed or removed) :class:`PlanError` for an unknown planner or a fingerprint /
    ``splits_final.json`` of another set of cases (unless ``clean``: then the fingerprint is recomputed and the old
    split kept as ``splits_final.json.stale``), and :class:`DataError` listing the unusable training cases; after
    planning, :class:`PlanError` for requested configurations the plans do not define (``3d_lowres`` and
    ``3d_cascade_fullres``, which nnU-Net only plans for large images, are skipped with a note).

    Texts: when cases of the metadata carry a ``text``, their token embeddings are computed by the frozen
    ``text_encoder`` (default all-MiniLM-L6-v2; or a local model folder) and stored beside the preprocessed
    ``dataset.json`` (:mod:`nnunet_ext.data.text_embeddings`); unchanged texts are not embedded again. The encoder
    is loaded before the fingerprint is computed; an encoder given explicitly that does not load is an error, the
    default one missing (the ``text`` extra not installed) only a note, since most networks use no text.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if nnUNet_raw.get() is None or nnUNet_preprocessed.get() is None:
        raise PlanError("nnUNet_raw and nnUNet_preprocessed must be set. Fix: export both (see nnU-Net's "
                        "documentation/setting_up_paths.md).")
    planner_cls = resolve_planner(planner)  # before any work: a typo costs no fingerprint
    try:
        dataset_name = str(convert_id_to_dataset_name(dataset_id))
    except RuntimeError as e:
        if "More than one" in str(e):
            raise PlanError(f"dataset id {dataset_id} matches several dataset names. Fix: rename or remove all but "
                            f"one Dataset{int(dataset_id):03d}_* folder in nnUNet_raw, nnUNet_preprocessed and "
                            "nnUNet_results.") from None
        raise PlanError(f"dataset {dataset_id} was not found: no folder Dataset{int(dataset_id):03d}_* in nnUNet_raw "
                        f"({nnUNet_raw.get()}). Fix: check the id, or convert the dataset first.") from None
    raw_folder = os.path.join(nnUNet_raw.get(), dataset_name)
    pre_folder = os.path.join(nnUNet_preprocessed.get(), dataset_name)
    metadata = validate_raw_dataset(raw_folder)
    case_ids = [str(k) for k in raw_case_ids(raw_folder)]
    # every case usable before anything is computed or deleted (nnU-Net's preprocessing first removes the old data)
    problems = check_training_cases(raw_folder, num_processes=num_processes)
    if problems:
        more = f"\n  - ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} problem(s) in the training cases of {dataset_name} ({raw_folder}); nothing "
                        "was computed and no preprocessed data was touched:\n  - "
                        + "\n  - ".join(problems[:MAX_LISTED]) + more)
    stale = stale_preprocessed_files(pre_folder, case_ids)
    if stale and not clean:
        raise PlanError(f"{pre_folder} was made from another set of cases than the raw dataset {raw_folder} holds "
                        "now:\n  - " + "\n  - ".join(stale) + "\nKeeping them would plan on a stale fingerprint and "
                        "cross-validate without the new cases. Fix: rerun plan-and-preprocess with --clean "
                        "(clean=True): it recomputes the fingerprint and the preprocessed data and writes a new split "
                        f"(the old splits_final.json is kept as splits_final.json{SPLITS_STALE_SUFFIX}). Models "
                        "trained on the old split are not comparable with new ones.")
    if stale:
        from nnunet_ext.data.splits import SPLITS_FILE

        splits_file = os.path.join(pre_folder, SPLITS_FILE)
        if any(p.startswith(splits_file) for p in stale):
            os.replace(splits_file, splits_file + SPLITS_STALE_SUFFIX)
            print(f"--clean: {splits_file} did not match the cases; kept as {splits_file + SPLITS_STALE_SUFFIX}")

    texts = {k: r.text for k, r in (metadata.cases.items() if metadata is not None else ()) if r.text is not None}
    encoder = None
    if texts:  # fail on a missing encoder or an empty text before hours of fingerprinting
        from nnunet_ext.data.text_embeddings import TextEncoderError, check_texts, load_text_encoder

        check_texts(texts)
        try:
            encoder = load_text_encoder(text_encoder, text_max_tokens)
        except TextEncoderError as e:
            if text_encoder is not None:  # asked for explicitly: a missing encoder is an error
                raise
            print(f"note: the cases' texts are not embedded: {e} Networks that consume texts cannot train on "
                  f"{dataset_name} until they are (rerun plan-and-preprocess once the encoder loads).")
        without = sorted(set(case_ids) - set(texts))
        if without:
            more = " ..." if len(without) > 5 else ""
            print(f"note: {len(without)} case(s) have no text ({', '.join(without[:5])}{more}); networks that "
                  "consume texts need one per case")
    elif text_encoder is not None:
        print(f"note: --text-encoder {text_encoder!r} ignored: no case of {dataset_name} has a text")
    # NaN / inf voxels, which nnU-Net's fingerprint only asserts on without naming the case, were refused above
    extract_fingerprint_dataset(dataset_id, check_dataset_integrity=verify_dataset_integrity, clean=clean,
                                num_processes=num_processes, verbose=verbose)
    # nnU-Net's VRAM estimate calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0 (in-process DA)
    saved = os.environ.get("nnUNet_n_proc_DA")
    if saved is not None and int(saved) < 1:
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        _, plans_identifier = plan_experiment_dataset(dataset_id, planner_cls, gpu_memory_target_in_gb,
                                                      overwrite_plans_name=plans_name)
    finally:
        if saved is not None:
            os.environ["nnUNet_n_proc_DA"] = saved
    plans = PlansManager(os.path.join(pre_folder, plans_identifier + ".json"))
    available = list(plans.available_configurations)
    unknown = [c for c in configurations if c not in available and c not in OPTIONAL_CONFIGURATIONS]
    if unknown:
        raise PlanError(f"configuration(s) {', '.join(map(repr, unknown))} are not defined by the plans "
                        f"{plans_identifier} of {dataset_name}, which define {', '.join(available)}. Nothing was "
                        "preprocessed. Fix: pass -c with some of these (e.g. -c 3d_fullres).")
    todo = []
    for c in configurations:
        if c not in available:
            print(f"{c}: not planned for {dataset_name} (its images are small enough for 3d_fullres); skipped")
            continue
        data_identifier = plans.get_configuration(c).data_identifier
        data_folder = os.path.join(pre_folder, data_identifier)
        borrowed = not data_identifier.startswith(plans_identifier + "_")
        if borrowed and not clean and _data_folder_complete(data_folder, case_ids):
            print(f"{c}: reusing preprocessed data in {data_folder} (identical preprocessing)")
        else:
            todo.append(c)
    if todo:
        preprocess_dataset(dataset_id, plans_identifier, tuple(todo), [num_processes] * len(todo), verbose=verbose)
    written = write_stratified_splits_if_missing(pre_folder, case_ids, metadata)
    if written:
        print(f"Wrote a stratified 5-fold split: {written}")
    if encoder is not None:
        from nnunet_ext.data.text_embeddings import TextEmbeddingStore, set_active_text_encoder

        store = TextEmbeddingStore(pre_folder, encoder.info)
        stats = store.update(texts, encoder)
        set_active_text_encoder(pre_folder, encoder.info)
        print(f"text embeddings: {stats['computed']} computed, {stats['reused']} reused ({encoder.info.name}, "
              f"{encoder.info.dim}-d, {encoder.info.max_tokens} tokens) -> {store.folder}")
    return plans_identifier
