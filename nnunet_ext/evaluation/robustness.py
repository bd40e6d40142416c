"""``nnunet-ext robustness``: how much a trained multiphase model degrades under inter-phase misregistration.

Perturbation (at inference only; the reference segmentation is never moved):

* Every channel (phase) of every case gets its **own** random rigid transform, drawn independently: a SimpleITK
  ``Euler3DTransform`` (``Euler2DTransform`` for 2D images) about the physical centre of the image, with each
  rotation angle (about x, y, z) uniform in ``[-max_rotation_deg, max_rotation_deg]`` and each translation
  component uniform in ``[-max_shift_mm, max_shift_mm]``. The defaults, +-5 mm and +-7 degrees, follow the
  misregistration experiment of the STD-Net paper ("Spatio-temporal decoupling network for multiphasic liver lesion
  characterization", npj Digital Medicine 2025).
* The reference phase is perturbed too by default, so the measured degradation includes the misalignment between
  the image and the (unmoved) reference segmentation; ``fix_reference_phase`` leaves the reference phase
  (``plans["nnunet_ext"]["reference_phase_index"]``, else the metadata's ``phases.reference``) untouched, which
  isolates misregistration between phases.
* Resampling is linear; voxels that move in from outside the image get the image's minimum intensity (air in CT).
  Optional Gaussian noise (``noise_std``, in image intensity units, e.g. HU) is added to every channel afterwards.
* Draws come from ``numpy.random.default_rng([seed, crc32(case_id), repeat])``, so a case gets the same
  perturbations whatever other cases are evaluated; all parameters are saved in ``perturbations.csv``.

Evaluation: nnU-Net's predictor (with the class head of
:class:`~nnunet_ext.inference.predictor.ClassifyingPredictor`) runs once on the original images and once per repeat
on perturbed copies. Per case and structure, Dice is computed against the unmoved reference (conventions of
:mod:`~nnunet_ext.metrics.segmentation`) and the degradation is ``mean over repeats of Dice(perturbed) -
Dice(unperturbed)``; it is summarised by its mean with a bootstrap 95% CI over cases and a paired Wilcoxon test.
Accuracy and macro AUC (labeled cases) are compared the same way: ``mean over repeats of metric(perturbed) -
metric(unperturbed)``, bootstrapped over cases (see :mod:`~nnunet_ext.metrics.statistics`).
"""

from __future__ import annotations

import math
import os
import tempfile
import zlib
from dataclasses import dataclass

import numpy as np

from nnunet_ext.errors import NnunetExtError
from nnunet_ext.metrics import statistics as st
from nnunet_ext.metrics.segmentation import dice, structure_mask

DEFAULT_MAX_SHIFT_MM = 5.0
DEFAULT_MAX_ROTATION_DEG = 7.0


class RobustnessError(NnunetExtError, ValueError):
    """Bad robustness input (folders, labels, model); the message names it and the fix."""


@dataclass(frozen=True)
class RigidPerturbation:
    """Euler angles in degrees about (x, y, z) and a translation in mm along (x, y, z) (SimpleITK's physical
    axes); 2D uses the z angle and (x, y)."""

    rotation_deg: tuple[float, ...]
    translation_mm: tuple[float, ...]


def sample_perturbation(rng: np.random.Generator, max_shift_mm: float, max_rotation_deg: float,
                        dim: int = 3) -> RigidPerturbation:
    """Uniform angles in [-max_rotation_deg, max_rotation_deg] and shifts in [-max_shift_mm, max_shift_mm]."""
    n_angles = 3 if dim == 3 else 1
    rot = rng.uniform(-max_rotation_deg, max_rotation_deg, n_angles)
    shift = rng.uniform(-max_shift_mm, max_shift_mm, dim)
    return RigidPerturbation(tuple(float(a) for a in rot), tuple(float(s) for s in shift))


def rigid_transform(image, p: RigidPerturbation):
    """The SimpleITK Euler transform of ``p`` about the physical centre of ``image``."""
    import SimpleITK as sitk

    dim = image.GetDimension()
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()])
    t = sitk.Euler3DTransform() if dim == 3 else sitk.Euler2DTransform()
    t.SetCenter(centre)
    radians = [math.radians(a) for a in p.rotation_deg]
    if dim == 3:
        t.SetRotation(*radians)
    else:
        t.SetAngle(radians[-1])
    t.SetTranslation([float(v) for v in p.translation_mm])
    return t


def perturb_image(image, p: RigidPerturbation, noise_std: float = 0.0, rng: np.random.Generator | None = None):
    """Resample ``image`` (a SimpleITK image) under ``p`` (linear, outside = image minimum), plus Gaussian noise of
    ``noise_std`` intensity units; returns a float32 image on the same grid."""
    import SimpleITK as sitk

    img = sitk.Cast(image, sitk.sitkFloat32)
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(img)
    out = sitk.Resample(img, img, rigid_transform(img, p), sitk.sitkLinear, float(stats.GetMinimum()),
                        sitk.sitkFloat32)
    if noise_std > 0:
        rng = rng if rng is not None else np.random.default_rng()
        arr = sitk.GetArrayFromImage(out)
        noisy = sitk.GetImageFromArray((arr + rng.normal(0.0, noise_std, arr.shape)).astype(np.float32))
        noisy.CopyInformation(out)
        out = noisy
    return out


def case_rng(seed: int, case_id: str, repeat: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(case_id.encode()), int(repeat)])


# --------------------------------------------------------------------------- inputs
@dataclass
class RobustnessInputs:
    images: str
    labels: str
    cases: list[str]
    file_ending: str
    n_channels: int
    metadata: object | None  # DatasetMetadata


def resolve_inputs(input_path: str, labels_path: str | None, model_dataset_json: dict) -> RobustnessInputs:
    """Cases of a raw dataset folder (imagesTr/labelsTr/dataset.json) or of an images folder plus ``labels_path``;
    metadata (class labels) from the raw dataset's dataset.json, or one next to the images folder."""
    from nnunet_ext.data.metadata import DatasetMetadata, load_dataset_json
    from nnunet_ext.inference.checks import check_input_folder

    raw_json = os.path.join(input_path, "dataset.json")
    if os.path.isfile(raw_json) and os.path.isdir(os.path.join(input_path, "imagesTr")):
        images, labels, dj_path = os.path.join(input_path, "imagesTr"), labels_path or os.path.join(
            input_path, "labelsTr"), raw_json
    else:
        if labels_path is None:
            raise RobustnessError(f"{input_path} is not a raw dataset folder (imagesTr + dataset.json), so the "
                                  "reference segmentations are unknown. Fix: pass -l LABELS_FOLDER, or -i the raw "
                                  "dataset folder.")
        images, labels = input_path, labels_path
        dj_path = os.path.join(os.path.dirname(os.path.abspath(input_path)), "dataset.json")
    cases = check_input_folder(images, model_dataset_json)
    ending = model_dataset_json["file_ending"]
    missing = [c for c in cases if not os.path.isfile(os.path.join(labels, c + ending))]
    if missing:
        raise RobustnessError(f"{len(missing)} case(s) have no reference segmentation {labels}/CASE{ending}: "
                              f"{missing[:5]}. Fix: add the label files or remove those cases from {images}.")
    metadata = None
    if os.path.isfile(dj_path):
        metadata = DatasetMetadata.from_dataset_json(load_dataset_json(dj_path))
    return RobustnessInputs(images, labels, cases, ending, len(model_dataset_json["channel_names"]), metadata)


# --------------------------------------------------------------------------- prediction
def predict_in_process(model_folder: str, folds, items: list[tuple[str, list[str]]], output_folder: str,
                       device: str = "cpu", checkpoint_name: str = "checkpoint_final.pth",
                       disable_tta: bool = False, trust_checkpoint: bool | None = None,
                       case_inputs=None) -> dict[str, np.ndarray]:
    """Predict every ``(name, image files)`` item with nnU-Net's predictor, preprocessing in this process; writes
    ``<output_folder>/<name><ending>`` and returns {name: class probabilities (K,)} (empty without a head).
    ``case_inputs(predictor)``: the :class:`~nnunet_ext.data.case_inputs.CaseInputs` of the items, for a model
    whose network consumes tabular features or texts."""
    import torch

    from nnunet_ext.inference.predictor import ClassifyingPredictor
    from nnunet_ext.paths import ensure_trainer_path

    ensure_trainer_path()
    dev = torch.device(device)
    predictor = ClassifyingPredictor.from_model_folder(model_folder, folds, checkpoint_name, dev,
                                                       mirroring=not disable_tta, trust_checkpoint=trust_checkpoint)
    if case_inputs is not None:
        predictor.case_inputs = case_inputs(predictor)
    pm, cm, dj = predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
    preprocessor = cm.preprocessor_class(verbose=False)

    def items_iter():
        from tqdm import tqdm

        for name, files in tqdm(items, desc="robustness inference", unit="image"):
            data, _, props = preprocessor.run_case(files, None, pm, cm, dj)
            yield {"data": torch.from_numpy(data), "ofile": os.path.join(output_folder, name),
                   "data_properties": props}

    predictor.predict_from_data_iterator(items_iter(), False, 1)
    return dict(predictor.case_probabilities) if predictor.has_classification else {}


def item_case_inputs(predictor, inputs: RobustnessInputs, item_cases: dict[str, str], texts: str | None,
                     tabular: str | None, allow_missing_text: bool, folder: str):
    """The case inputs of the prediction items (``{item: case}``): every perturbed copy of a case gets that case's
    tabular features and text. They come from ``--tabular`` / ``--texts`` as in ``nnunet-ext predict``; when a file
    is not given, from the ``dataset.json`` metadata next to the images, if it has them for every case."""
    import json

    from nnunet_ext.data.case_inputs import CaseInputs
    from nnunet_ext.inference.predict import prediction_case_inputs

    uses, md = predictor.uses, inputs.metadata
    cases = sorted(set(item_cases.values()))
    if md is not None and all(c in md.cases for c in cases):
        if "tabular" in uses and tabular is None and md.tabular_features \
                and all(md.cases[c].tabular is not None for c in cases):
            tabular = os.path.join(folder, "tabular_from_dataset_json.json")
            with open(tabular, "w", encoding="utf-8") as f:
                json.dump({c: dict(zip(md.tabular_features, map(float, md.cases[c].tabular))) for c in cases}, f)
        if "text" in uses and texts is None and all(md.cases[c].text for c in cases):
            texts = os.path.join(folder, "texts_from_dataset_json.json")
            with open(texts, "w", encoding="utf-8") as f:
                json.dump({c: md.cases[c].text for c in cases}, f)
    base = prediction_case_inputs(predictor, cases, texts, tabular, allow_missing_text)
    return CaseInputs(tabular={n: base.tabular[c] for n, c in item_cases.items() if c in base.tabular},
                      text={n: base.text[c] for n, c in item_cases.items() if c in base.text},
                      num_tabular=base.num_tabular)


def write_perturbed_cases(inputs: RobustnessInputs, folder: str, repeats: int, seed: int, max_shift_mm: float,
                          max_rotation_deg: float, noise_std: float, fixed_phase: int | None
                          ) -> tuple[list[tuple[str, list[str]]], list[dict]]:
    """Write ``repeats`` perturbed copies of every case into ``folder``. Returns the prediction items (the original
    case ``<case>__unperturbed`` and ``<case>__r<k>``, each with its channel files) and the perturbation rows."""
    import SimpleITK as sitk

    items, rows = [], []
    ending = inputs.file_ending
    for case in inputs.cases:
        files = [os.path.join(inputs.images, f"{case}_{c:04d}{ending}") for c in range(inputs.n_channels)]
        items.append((f"{case}__unperturbed", files))
        for r in range(repeats):
            rng = case_rng(seed, case, r)
            perturbed = []
            for c, f in enumerate(files):
                img = sitk.ReadImage(f)
                p = sample_perturbation(rng, max_shift_mm, max_rotation_deg, img.GetDimension())
                if c == fixed_phase:  # drawn anyway, so the other phases get the same draws either way
                    p = RigidPerturbation(tuple(0.0 for _ in p.rotation_deg), tuple(0.0 for _ in p.translation_mm))
                out = os.path.join(folder, f"{case}__r{r}_{c:04d}{ending}")
                sitk.WriteImage(perturb_image(img, p, noise_std, rng), out)
                perturbed.append(out)
                axes = "xyz"[-len(p.rotation_deg):]
                rows.append({"case": case, "repeat": r, "channel": c,
                             **{f"rot_{a}_deg": v for a, v in zip(axes, p.rotation_deg)},
                             **{f"shift_{a}_mm": v for a, v in zip("xyz", p.translation_mm)}})
            items.append((f"{case}__r{r}", perturbed))
    return items, rows


def score_predictions(inputs: RobustnessInputs, pred_folder: str, structures: dict, repeats: int) -> list[dict]:
    """Dice rows (case, repeat ("none" for the original images), structure, dice) against the unmoved labels."""
    from nnunet_ext.evaluation.benchmark import read_label_map

    rows = []
    for case in inputs.cases:
        ref, _ = read_label_map(os.path.join(inputs.labels, case + inputs.file_ending))
        for repeat in ["none", *range(repeats)]:
            name = f"{case}__unperturbed" if repeat == "none" else f"{case}__r{repeat}"
            pred, _ = read_label_map(os.path.join(pred_folder, name + inputs.file_ending))
            if pred.shape != ref.shape:
                raise RobustnessError(f"case {case}: prediction shape {pred.shape} differs from its label "
                                      f"{ref.shape}. Fix: the label must be on the image grid.")
            for s, lab in structures.items():
                d = dice(structure_mask(pred, lab), structure_mask(ref, lab))
                rows.append({"case": case, "repeat": repeat, "structure": s, "dice": d})
    return rows


def _reference_phase(model_folder: str, metadata) -> int | None:
    import json

    with open(os.path.join(model_folder, "plans.json"), encoding="utf-8") as f:
        block = json.load(f).get("nnunet_ext") or {}
    if "reference_phase_index" in block:
        return int(block["reference_phase_index"])
    if metadata is not None and metadata.phases:
        return metadata.reference_phase_index
    return None


# --------------------------------------------------------------------------- the experiment
def run_robustness(dataset: str | int | None, trainer: str, input_path: str, output_folder: str,
                   plans: str = "nnUNetPlans", configuration: str = "3d_fullres", folds=None,
                   labels_path: str | None = None, max_shift_mm: float = DEFAULT_MAX_SHIFT_MM,
                   max_rotation_deg: float = DEFAULT_MAX_ROTATION_DEG, noise_std: float = 0.0, repeats: int = 1,
                   seed: int = 0, device: str = "cpu", fix_reference_phase: bool = False,
                   checkpoint_name: str = "checkpoint_final.pth", disable_tta: bool = False,
                   n_boot: int = st.DEFAULT_N_BOOTSTRAP, command: str | None = None,
                   model_folder: str | None = None, cases: list[str] | None = None,
                   trust_checkpoint: bool | None = None, texts: str | None = None, tabular: str | None = None,
                   allow_missing_text: bool = False) -> dict:
    """Run the experiment of the module docstring and write robustness.md, CSVs and robustness.png into
    ``output_folder`` (``cases``: evaluate only these case ids). Returns the summary dict (also saved as
    robustness_summary.json). Checkpoints load through the safe loader; ``trust_checkpoint`` (None: the
    ``nnUNet_ext_trust_checkpoint`` variable) accepts one that needs unsafe unpickling."""
    import torch

    from nnunet_ext.data.metadata import load_dataset_json, save_json_atomic
    from nnunet_ext.evaluation.benchmark import structures_from_labels
    from nnunet_ext.evaluation.efficiency import describe_device
    from nnunet_ext.evaluation.report import provenance, write_csv

    if repeats < 1:
        raise RobustnessError(f"--repeats must be >= 1 (got {repeats}).")
    if model_folder is None:
        from nnunet_ext.inference.predict import model_folder_from_args

        if dataset is None:
            raise RobustnessError("no model given. Fix: pass -d DATASET (with -tr/-p/-c) or -m MODEL_FOLDER.")
        model_folder = model_folder_from_args(str(dataset), trainer, plans, configuration)
    if not os.path.isfile(os.path.join(model_folder, "dataset.json")):
        raise RobustnessError(f"no trained model in {model_folder}. Fix: check -d/-tr/-p/-c or train the model.")
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    available = nnUNetPredictor.auto_detect_available_folds(model_folder, checkpoint_name)
    folds = available if folds is None else [f if f == "all" else int(f) for f in folds]
    missing = [f for f in folds if not os.path.isfile(os.path.join(model_folder, f"fold_{f}", checkpoint_name))]
    if not folds or missing:
        raise RobustnessError(f"{model_folder} has no {checkpoint_name} for fold(s) {missing or folds} (found folds "
                              f"{available}). Fix: pass -f with trained folds.")
    model_dj = load_dataset_json(os.path.join(model_folder, "dataset.json"))
    inputs = resolve_inputs(input_path, labels_path, model_dj)
    if cases:
        unknown = sorted(set(cases) - set(inputs.cases))
        if unknown:
            raise RobustnessError(f"--cases {unknown} are not in {inputs.images} (cases there: {inputs.cases[:5]}"
                                  f"{', ...' if len(inputs.cases) > 5 else ''}). Fix: use ids of existing cases.")
        inputs.cases = [c for c in inputs.cases if c in set(cases)]
    ref_phase = _reference_phase(model_folder, inputs.metadata) if fix_reference_phase else None
    if fix_reference_phase and ref_phase is None:
        raise RobustnessError("--fix-reference-phase needs a reference phase (plans nnunet_ext block or metadata "
                              "phases); this model has neither.")
    structures = structures_from_labels(model_dj["labels"])
    os.makedirs(output_folder, exist_ok=True)
    prov = provenance(command, describe_device(torch.device(device)))

    with tempfile.TemporaryDirectory(prefix="nnunet_ext_robustness_") as tmp:
        items, perturbation_rows = write_perturbed_cases(inputs, tmp, repeats, seed, max_shift_mm, max_rotation_deg,
                                                         noise_std, ref_phase)
        pred_folder = os.path.join(tmp, "predictions")
        os.makedirs(pred_folder)
        item_cases = {name: case for case in inputs.cases for name in
                      [f"{case}__unperturbed", *(f"{case}__r{r}" for r in range(repeats))]}
        probs = predict_in_process(model_folder, folds, items, pred_folder, device, checkpoint_name, disable_tta,
                                   trust_checkpoint,
                                   lambda predictor: item_case_inputs(predictor, inputs, item_cases, texts, tabular,
                                                                      allow_missing_text, tmp))
        dice_rows = score_predictions(inputs, pred_folder, structures, repeats)
    summary = summarise(dice_rows, probs, inputs, structures, repeats, n_boot, seed)
    summary.update({"provenance": prov, "model_folder": model_folder, "folds": folds,
                    "settings": {"max_shift_mm": max_shift_mm, "max_rotation_deg": max_rotation_deg,
                                 "noise_std": noise_std, "repeats": repeats, "seed": seed,
                                 "fix_reference_phase": fix_reference_phase, "reference_phase_index": ref_phase,
                                 "n_boot": n_boot}})
    write_csv(os.path.join(output_folder, "robustness_per_case.csv"), dice_rows)
    write_csv(os.path.join(output_folder, "perturbations.csv"), perturbation_rows)
    if summary.get("classification_cases"):
        write_csv(os.path.join(output_folder, "robustness_classification.csv"), summary.pop("classification_rows"))
    summary.pop("classification_rows", None)
    _write_outputs(summary, dice_rows, perturbation_rows, output_folder)
    save_json_atomic(_jsonable(summary), os.path.join(output_folder, "robustness_summary.json"))
    return summary


def summarise(dice_rows: list[dict], probs: dict, inputs: RobustnessInputs, structures: dict, repeats: int,
              n_boot: int, seed: int) -> dict:
    """Per structure: Dice unperturbed vs perturbed (mean over repeats), Δ with bootstrap CI and Wilcoxon p; for
    labeled cases with a head: accuracy and macro AUC, Δ with bootstrap CI and p."""
    from nnunet_ext.metrics.classification import macro_auc, ovr_aucs

    cases = inputs.cases
    index = {(r["case"], r["repeat"], r["structure"]): r["dice"] for r in dice_rows}
    seg_rows = []
    for s in structures:
        base = np.array([index[(c, "none", s)] for c in cases])
        pert = np.array([np.mean([index[(c, r, s)] for r in range(repeats)]) for c in cases])
        seg_rows.append({"structure": s, "n": len(cases), "dice_unperturbed": st.describe(base, n_boot, seed),
                         "dice_perturbed": st.describe(pert, n_boot, seed),
                         "delta": st.paired_bootstrap_mean_difference(pert, base, n_boot, seed),
                         "p_wilcoxon": st.wilcoxon_paired(pert, base)})
    out = {"cases": cases, "segmentation": seg_rows, "classification": None, "classification_cases": [],
           "classification_rows": []}
    md = inputs.metadata
    if not probs or md is None or not md.has_classification:
        return out
    targets = md.class_targets(cases)
    labeled = [c for c, t in zip(cases, targets) if t >= 0]
    if not labeled:
        return out
    y = np.array([t for t in targets if t >= 0])
    p0 = np.stack([probs[f"{c}__unperturbed"] for c in labeled])
    pr = [np.stack([probs[f"{c}__r{r}"] for c in labeled]) for r in range(repeats)]

    def acc(p, idx):
        return (p.argmax(1)[idx] == y[idx]).mean(1)

    def auc(p, idx):
        return macro_auc(ovr_aucs(y, p, idx))

    cls = {}
    for name, fn in (("accuracy", acc), ("auc_ovr_macro", auc)):
        cls[name] = {
            "unperturbed": st.bootstrap(lambda idx, fn=fn: fn(p0, idx), len(y), n_boot, seed),
            "perturbed": st.bootstrap(lambda idx, fn=fn: np.mean([fn(p, idx) for p in pr], 0), len(y), n_boot, seed),
            "delta": st.bootstrap(lambda idx, fn=fn: np.mean([fn(p, idx) for p in pr], 0) - fn(p0, idx), len(y),
                                  n_boot, seed)}
    names = md.class_names
    rows = [{"case": c, "repeat": "none", "true_class": names[t], "predicted_class": names[int(p.argmax())],
             **{f"prob_{n}": float(v) for n, v in zip(names, p)}} for c, t, p in zip(labeled, y, p0)]
    for r, p_r in enumerate(pr):
        rows += [{"case": c, "repeat": r, "true_class": names[t], "predicted_class": names[int(p.argmax())],
                  **{f"prob_{n}": float(v) for n, v in zip(names, p)}} for c, t, p in zip(labeled, y, p_r)]
    out.update({"classification": cls, "classification_cases": labeled, "classification_rows": rows,
                "class_names": list(names)})
    return out


def _write_outputs(summary: dict, dice_rows: list[dict], perturbation_rows: list[dict], folder: str) -> None:
    from nnunet_ext.evaluation import plots
    from nnunet_ext.evaluation.report import fmt, fmt_interval, md_table, provenance_markdown
    from nnunet_ext.metrics.statistics import format_p

    cases, s = summary["cases"], summary["settings"]
    index = {(r["case"], r["repeat"], r["structure"]): r["dice"] for r in dice_rows}
    panels = {}
    for row in summary["segmentation"]:
        name = row["structure"]
        panels[name] = ([index[(c, "none", name)] for c in cases],
                        [np.mean([index[(c, r, name)] for r in range(s["repeats"])]) for c in cases])
    plots.paired_scatter(panels, "Dice, original phases", "Dice, perturbed phases (mean over repeats)",
                         os.path.join(folder, "robustness.png"),
                         f"Per-phase rigid perturbation: shifts <= {s['max_shift_mm']:g} mm, rotations <= "
                         f"{s['max_rotation_deg']:g} deg, {s['repeats']} repeat(s)")
    shifts = np.array([[r[k] for k in r if k.startswith("shift_")] for r in perturbation_rows], dtype=float)
    rots = np.array([[r[k] for k in r if k.startswith("rot_")] for r in perturbation_rows], dtype=float)
    seg_table = [[r["structure"], r["n"], f"{fmt(r['dice_unperturbed']['mean'])} ± {fmt(r['dice_unperturbed']['sd'])}",
                  f"{fmt(r['dice_perturbed']['mean'])} ± {fmt(r['dice_perturbed']['sd'])}",
                  fmt_interval(r["delta"], signed=True), format_p(r["p_wilcoxon"])] for r in summary["segmentation"]]
    ref = s["reference_phase_index"]
    lines = ["# Robustness to inter-phase misregistration", "", provenance_markdown(summary["provenance"]), "",
             "## Setting", "",
             f"- Model: `{summary['model_folder']}`, folds {summary['folds']}",
             f"- Cases: {len(cases)}; repeats: {s['repeats']}; seed: {s['seed']}",
             f"- Each phase independently: rotations uniform in ±{s['max_rotation_deg']:g}° about x, y, z and shifts "
             f"uniform in ±{s['max_shift_mm']:g} mm along x, y, z, about the image centre (linear resampling); "
             + ("all phases perturbed, the reference phase included; the reference segmentation is not moved."
                if ref is None else f"phase {ref} (the reference phase) kept fixed."),
             f"- Gaussian noise: std {s['noise_std']:g} (image intensity units)",
             f"- Applied magnitudes: mean |shift| {fmt(float(np.abs(shifts).mean()) if shifts.size else 0.0, 2)} mm, "
             f"mean |angle| {fmt(float(np.abs(rots).mean()) if rots.size else 0.0, 2)}° (perturbations.csv)", "",
             "## Segmentation (Dice)", "",
             md_table(["structure", "n", "original (mean ± sd)", "perturbed (mean ± sd)", "Δ perturbed - original "
                       "[95% CI]", "p (Wilcoxon)"], seg_table), ""]
    cls = summary.get("classification")
    if cls:
        rows = [[k, fmt_interval(v["unperturbed"]), fmt_interval(v["perturbed"]), fmt_interval(v["delta"], signed=True),
                 format_p(v["delta"].p_value)] for k, v in cls.items()]
        lines += ["## Classification", "", f"{len(summary['classification_cases'])} labeled cases.", "",
                  md_table(["metric", "original [95% CI]", "perturbed [95% CI]", "Δ [95% CI]", "p (bootstrap)"],
                           rows), ""]
    lines += ["## Methods", "",
              "Δ is the mean over repeats of the perturbed score minus the original score, per case. 95% CIs: "
              f"percentile bootstrap over cases ({s['n_boot']} resamples, seed {s['seed']}); p (Wilcoxon): "
              "two-sided signed-rank test on per-case Dice; p (bootstrap): normal approximation with the bootstrap "
              "SE. Dice conventions: both masks empty = 1, one empty = 0.", "",
              "Files: robustness_per_case.csv, perturbations.csv"
              + (", robustness_classification.csv" if cls else "") + ", robustness_summary.json, robustness.png", ""]
    with open(os.path.join(folder, "robustness.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def _jsonable(obj):
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj):
        return _jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
