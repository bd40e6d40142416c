"""``nnunet-ext benchmark``: trained methods against a reference (vanilla nnU-Net by default) on the
cross-validation predictions nnU-Net already wrote, with per-case metrics, bootstrap CIs and paired tests.

Data: for every method ``$nnUNet_results/DatasetXXX/<Trainer>__<Plans>__<cfg>/fold_k/validation/*<file_ending>``
against ``$nnUNet_preprocessed/DatasetXXX/gt_segmentations/``; class probabilities from each fold's
``validation/classification.csv`` (methods with a head) and true classes from the ``nnunet_ext`` metadata of the
preprocessed ``dataset.json``. Only folds present for every method are used (or the ``folds`` requested, which must
then exist for all), and only cases predicted by every method; dropped cases are listed in ``dropped_cases.csv``.
Cross-validation predictions of all folds are pooled, so every case counts once.

Metrics and statistics are defined in :mod:`~nnunet_ext.metrics.segmentation`,
:mod:`~nnunet_ext.metrics.classification` and :mod:`~nnunet_ext.metrics.statistics`; the report repeats the
conventions. Classification comparisons use the reference when it has a head, else the first method with one.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nnunet_ext.errors import NnunetExtError
from nnunet_ext.metrics import segmentation as seg
from nnunet_ext.metrics import statistics as st

DEFAULT_SMALL_LESION_MM3 = 4.0 / 3.0 * math.pi * 5.0 ** 3  # a sphere of 10 mm diameter: 523.6 mm^3
METRICS = ("dice", "hd95", "assd")
METRIC_LABELS = {"dice": "Dice", "hd95": "HD95 (mm)", "assd": "ASSD (mm)"}
UNIT_LABELS = {"mm3": "mm³", "voxels": "voxels"}


class BenchmarkError(NnunetExtError, ValueError):
    """Bad benchmark input (missing results, folds, cases, ground truth); the message names it and the fix."""


@dataclass(frozen=True)
class MethodSpec:
    """One trained method: ``TRAINER[:PLANS[:CONFIGURATION]]``."""

    trainer: str
    plans: str = "nnUNetPlans"
    configuration: str = "3d_fullres"

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        parts = text.split(":")
        if not 1 <= len(parts) <= 3 or not all(parts):
            raise BenchmarkError(f"cannot read method {text!r}. Fix: write TRAINER[:PLANS[:CONFIGURATION]], e.g. "
                                 "EarlyFusionTrainer:nnUNetPlans:3d_fullres.")
        return cls(*parts)

    @property
    def name(self) -> str:
        if (self.plans, self.configuration) == ("nnUNetPlans", "3d_fullres"):
            return self.trainer
        return f"{self.trainer}:{self.plans}:{self.configuration}"

    def folder(self, results_root: str, dataset_name: str) -> str:
        return os.path.join(results_root, dataset_name, f"{self.trainer}__{self.plans}__{self.configuration}")


@dataclass
class Collection:
    """What a benchmark evaluates: cases common to every method, where each method's predictions are."""

    dataset_name: str
    folds: list
    cases: list[str]
    predictions: dict[str, dict[str, tuple[object, str]]]  # method -> case -> (fold, path)
    gt_folder: str
    dropped: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- collecting results
def _fold_key(name: str):
    f = name[len("fold_"):]
    return int(f) if f.isdigit() else f


def validation_predictions(model_folder: str, file_ending: str) -> dict:
    """{fold: {case: path}} of the validation predictions found in a results folder."""
    out = {}
    if not os.path.isdir(model_folder):
        return out
    for name in sorted(os.listdir(model_folder)):
        val = os.path.join(model_folder, name, "validation")
        if name.startswith("fold_") and os.path.isdir(val):
            cases = {f[:-len(file_ending)]: os.path.join(val, f) for f in sorted(os.listdir(val))
                     if f.endswith(file_ending)}
            if cases:
                out[_fold_key(name)] = cases
    return out


def collect(dataset_name: str, methods: Sequence[MethodSpec], folds: Sequence | None, results_root: str,
            preprocessed_root: str, file_ending: str) -> Collection:
    """Find every method's validation predictions and the cases they share (see module docstring)."""
    gt_folder = os.path.join(preprocessed_root, dataset_name, "gt_segmentations")
    if not os.path.isdir(gt_folder):
        raise BenchmarkError(f"no ground truth folder {gt_folder}. Fix: run nnunet-ext plan-and-preprocess for "
                             f"{dataset_name} (it copies the reference segmentations there) or check "
                             "nnUNet_preprocessed.")
    found = {}
    for m in methods:
        folder = m.folder(results_root, dataset_name)
        if not os.path.isdir(folder):
            raise BenchmarkError(f"method {m.name}: results folder {folder} does not exist. Fix: train it "
                                 f"(nnunet-ext train {dataset_name} {m.configuration} FOLD -tr {m.trainer} -p "
                                 f"{m.plans}) or correct -m/-ref.")
        found[m.name] = validation_predictions(folder, file_ending)
        if not found[m.name]:
            raise BenchmarkError(f"method {m.name}: no fold_k/validation/*{file_ending} predictions in {folder}. "
                                 "Fix: let training finish, or run its final validation with "
                                 f"nnunet-ext train {dataset_name} {m.configuration} FOLD -tr {m.trainer} --val.")
    if folds:
        missing = {name: [f for f in folds if f not in fmap] for name, fmap in found.items()}
        missing = {k: v for k, v in missing.items() if v}
        if missing:
            desc = "; ".join(f"{k} lacks fold(s) {v} (has {sorted(found[k], key=str)})" for k, v in missing.items())
            raise BenchmarkError(f"requested folds are missing: {desc}. Fix: train/validate those folds or pass -f "
                                 "with folds every method has.")
        used = list(folds)
    else:
        used = sorted(set.intersection(*(set(f) for f in found.values())), key=str)
        if not used:
            desc = "; ".join(f"{k}: folds {sorted(v, key=str)}" for k, v in found.items())
            raise BenchmarkError(f"no fold has validation predictions for every method ({desc}). Fix: train the "
                                 "same folds for all methods, or pass -f.")
    predictions = {name: {c: (f, p) for f in used for c, p in fmap[f].items()} for name, fmap in found.items()}
    all_cases = sorted(set().union(*(set(p) for p in predictions.values())))
    common = [c for c in all_cases if all(c in p for p in predictions.values())]
    dropped = [{"case": c, "missing_for": ";".join(n for n, p in predictions.items() if c not in p),
                "reason": "no validation prediction in the folds used"} for c in all_cases if c not in common]
    no_gt = [c for c in common if not os.path.isfile(os.path.join(gt_folder, c + file_ending))]
    if no_gt:
        raise BenchmarkError(f"{len(no_gt)} case(s) have predictions but no ground truth in {gt_folder}: "
                             f"{no_gt[:5]}. Fix: re-run plan-and-preprocess, or remove stray files from the "
                             "validation folders.")
    if not common:
        raise BenchmarkError(f"no case was predicted by every method in folds {used}. Fix: check that the methods "
                             "were trained on the same dataset and splits.")
    return Collection(dataset_name, used, common, predictions, gt_folder, dropped)


# --------------------------------------------------------------------------- structures
def structures_from_labels(labels: dict, selected: Sequence[str] | None = None) -> dict[str, tuple[int, ...]]:
    """{name: labels} of the foreground labels (or regions) of dataset.json ``labels``; ``selected`` keeps only
    names or label values listed there."""
    out = {}
    for name, v in labels.items():
        lab = tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else (int(v),)
        if name in ("background", "ignore") or lab == (0,):
            continue
        out[name] = lab
    if selected:
        keep = {str(s) for s in selected}
        unknown = keep - set(out) - {str(v[0]) for v in out.values() if len(v) == 1}
        if unknown:
            raise BenchmarkError(f"--labels {sorted(unknown)} are not foreground labels of dataset.json "
                                 f"({ {k: list(v) for k, v in out.items()} }). Fix: use names or values from it.")
        out = {k: v for k, v in out.items() if k in keep or (len(v) == 1 and str(v[0]) in keep)}
    return out


def lesion_structure(structures: dict, labels: dict, metadata_lesion: Sequence[int] | None,
                     lesion_label: int | None) -> tuple[str, tuple[int, ...], str]:
    """The lesion by the package's one rule (:func:`nnunet_ext.data.lesion.lesion_labels`: ``--lesion-label``, else
    the metadata's ``classification.lesion_labels``, else labels named like a lesion, else every foreground label).
    ``labels``: dataset.json ``labels``. Returns (name, labels, where it came from); adds a structure to
    ``structures`` when the lesion is not one of them."""
    from nnunet_ext.data.lesion import lesion_labels

    chosen = lesion_labels(labels, metadata_lesion, lesion_label)
    all_structures = structures_from_labels(labels)
    lab = tuple(chosen.labels) if chosen.labels is not None else tuple(sorted({v for t in all_structures.values()
                                                                                for v in t}))
    for name, v in all_structures.items():
        if v == lab:
            structures.setdefault(name, v)
            return name, lab, chosen.source
    name = "lesion" if "lesion" not in all_structures else "lesion_union"
    structures[name] = lab
    return name, lab, chosen.source


# --------------------------------------------------------------------------- per-case scores
def read_label_map(path: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """Label map (*spatial, SimpleITK axis order z, y, x) and its spacing in mm in the same order."""
    import SimpleITK as sitk

    img = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(img), tuple(float(s) for s in img.GetSpacing()[::-1])


def score_case(task: tuple) -> list[dict]:
    """Rows (one per method and structure) of one case. ``task``: (case, gt_path, {method: (fold, pred_path)},
    structures, ignore_label). Module-level so that process pools can run it."""
    case, gt_path, preds, structures, ignore_label = task
    ref, spacing = read_label_map(gt_path)
    keep = None if ignore_label is None else ref != ignore_label
    if keep is not None:
        ref = np.where(keep, ref, 0)
    rows = []
    for method, (fold, path) in preds.items():
        pred, pred_spacing = read_label_map(path)
        if pred.shape != ref.shape:
            raise BenchmarkError(f"case {case}: prediction {path} has shape {pred.shape} but the ground truth "
                                 f"{gt_path} has {ref.shape}. Fix: predictions must be nnU-Net exports in the "
                                 "original image geometry; re-run the validation of that fold.")
        if not np.allclose(pred_spacing, spacing, rtol=1e-3, atol=1e-5):
            raise BenchmarkError(f"case {case}: prediction {path} has spacing {pred_spacing} mm but the ground "
                                 f"truth has {spacing} mm. Fix: re-export the prediction in the original geometry.")
        if keep is not None:
            pred = np.where(keep, pred, 0)
        for name, scores in seg.case_scores(pred, ref, spacing, structures).items():
            rows.append({"method": method, "fold": fold, "case": case, "structure": name, **scores.as_dict()})
    return rows


def compute_case_scores(collection: Collection, structures: dict, file_ending: str, ignore_label: int | None,
                        num_processes: int = 1) -> list[dict]:
    """Per-case rows for every method, case and structure, with a progress bar; in ``num_processes`` processes."""
    from tqdm import tqdm

    tasks = [(c, os.path.join(collection.gt_folder, c + file_ending),
              {m: preds[c] for m, preds in collection.predictions.items()}, structures, ignore_label)
             for c in collection.cases]
    rows: list[dict] = []
    bar = tqdm(total=len(tasks), desc="segmentation metrics", unit="case")
    try:
        if num_processes <= 1 or len(tasks) <= 1:
            for t in tasks:
                rows += score_case(t)
                bar.update()
        else:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(min(num_processes, len(tasks))) as pool:
                for r in pool.imap(score_case, tasks):
                    rows += r
                    bar.update()
    finally:
        bar.close()
    return rows


def add_lesion_strata(rows: list[dict], lesion_name: str, threshold: float, unit: str) -> dict[str, str]:
    """Add ``lesion_ref_volume`` (in ``unit``: "mm3" or "voxels") and ``lesion_size`` to every row; returns
    {case: stratum}. The stratum uses the case's total reference lesion volume."""
    key = "ref_volume_mm3" if unit == "mm3" else "ref_voxels"
    volume = {r["case"]: r[key] for r in rows if r["structure"] == lesion_name}
    strata = {c: seg.lesion_size_stratum(v, threshold) for c, v in volume.items()}
    for r in rows:
        r["lesion_ref_volume_" + unit] = volume[r["case"]]
        r["lesion_size"] = strata[r["case"]]
    return strata


# --------------------------------------------------------------------------- summaries
def summarise_segmentation(rows: list[dict], methods: list[str], reference: str, cases: list[str],
                           structures: Sequence[str], lesion_name: str, strata: dict[str, str],
                           n_boot: int = st.DEFAULT_N_BOOTSTRAP, seed: int = st.DEFAULT_SEED) -> list[dict]:
    """One row per (metric, structure, subset, method): describe() of the per-case values, and against the
    reference the paired mean difference (bootstrap CI), Wilcoxon p and Holm-adjusted p (over the methods)."""
    index = {(r["method"], r["case"], r["structure"]): r for r in rows}
    out = []
    for metric in METRICS:
        for s in structures:
            subsets = [("all", cases)]
            if s == lesion_name:
                subsets += [(k, [c for c in cases if strata[c] == k]) for k in ("small", "large", "no lesion")]
            for subset, ids in subsets:
                if not ids:
                    continue
                values = {m: np.array([index[(m, c, s)][metric] for c in ids], dtype=float) for m in methods}
                block = []
                for m in methods:
                    row = {"metric": metric, "structure": s, "subset": subset, "method": m,
                           **st.describe(values[m], n_boot, seed)}
                    if m != reference:
                        row["diff"] = st.paired_bootstrap_mean_difference(values[m], values[reference], n_boot, seed)
                        row["p_wilcoxon"] = st.wilcoxon_paired(values[m], values[reference])
                    block.append(row)
                compared = [r for r in block if r["method"] != reference]
                for r, p in zip(compared, st.holm([r["p_wilcoxon"] for r in compared])):
                    r["p_holm"] = p
                out += block
    return out


def summarise_volume_metrics(rows: list[dict], methods: list[str], cases: list[str], structures: Sequence[str],
                             n_boot: int = st.DEFAULT_N_BOOTSTRAP, seed: int = st.DEFAULT_SEED) -> list[dict]:
    """The liver-tumour literature's metrics per (structure, method): mean per-case Dice, Dice Global (pooled over
    the cases), VOE and RAVD (over the cases with a reference: RAVD is undefined without one), each with its
    bootstrap 95% CI over cases (:mod:`nnunet_ext.metrics.segmentation`)."""
    index = {(r["method"], r["case"], r["structure"]): r for r in rows}
    out = []
    for s in structures:
        for m in methods:
            rs = [index[(m, c, s)] for c in cases]
            inter, pred, ref = (np.array([r[k] for r in rs], dtype=float)
                                for k in ("intersection_voxels", "pred_voxels", "ref_voxels"))

            def pooled(idx, inter=inter, pred=pred, ref=ref):
                denom = pred[idx].sum(1) + ref[idx].sum(1)
                return np.where(denom > 0, 2 * inter[idx].sum(1) / np.where(denom > 0, denom, 1),
                                seg.EMPTY_BOTH_DICE)

            dg = st.bootstrap(pooled, len(rs), n_boot, seed)
            ravd = np.array([r["ravd"] for r in rs if r["ref_voxels"] > 0], dtype=float)
            row = {"structure": s, "method": m, "n": len(rs),
                   "dice_global": seg.dice_global(inter, pred, ref), "dice_global_ci_low": dg.low,
                   "dice_global_ci_high": dg.high}
            for name, values in (("dice", [r["dice"] for r in rs]), ("voe", [r["voe"] for r in rs]),
                                 ("ravd", ravd)):
                d = st.describe(values, n_boot, seed)
                row.update({f"{name}_mean": d["mean"], f"{name}_ci_low": d["ci_low"], f"{name}_ci_high": d["ci_high"]})
            row["n_ravd"] = int(ravd.size)
            out.append(row)
    return out


def read_classification_csv(path: str, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """{case: (K,) probabilities} from a ``classification.csv`` with ``prob_<class>`` columns."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [f"prob_{c}" for c in class_names]
        missing = [c for c in cols if c not in (reader.fieldnames or [])]
        if missing:
            raise BenchmarkError(f"{path} lacks columns {missing} (has {reader.fieldnames}). Fix: the model's class "
                                 "names must match the dataset metadata; re-run the validation of that fold.")
        return {row["case_id"]: np.array([float(row[c]) for c in cols]) for row in reader}


def model_class_names(model_folder: str) -> list[str] | None:
    """Class names of a results folder's classification head (plans.json ``nnunet_ext``), None without a head."""
    path = os.path.join(model_folder, "plans.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        block = json.load(f).get("nnunet_ext") or {}
    return list(block["class_names"]) if block.get("num_cls_classes") else None


def collect_classification(collection: Collection, methods: Sequence[MethodSpec], results_root: str,
                           class_names: Sequence[str], targets: dict[str, int]) -> tuple[dict, list[str], list]:
    """Probabilities of the methods with a head on the labeled cases they share: ({method: (N, K)}, cases, dropped)."""
    probs: dict[str, dict[str, np.ndarray]] = {}
    for m in methods:
        folder = m.folder(results_root, collection.dataset_name)
        names = model_class_names(folder)
        if names is None:
            continue
        if list(names) != list(class_names):
            raise BenchmarkError(f"method {m.name} classifies {names} but the dataset metadata declares "
                                 f"{list(class_names)}. Fix: retrain on the current dataset.json.")
        probs[m.name] = {}
        for fold in collection.folds:
            path = os.path.join(folder, f"fold_{fold}", "validation", "classification.csv")
            if not os.path.isfile(path):
                raise BenchmarkError(f"method {m.name} has a classification head but {path} is missing. Fix: run "
                                     f"the final validation again: nnunet-ext train {collection.dataset_name} "
                                     f"{m.configuration} {fold} -tr {m.trainer} -p {m.plans} --val.")
            probs[m.name].update(read_classification_csv(path, class_names))
    if not probs:
        return {}, [], []
    labeled = [c for c in collection.cases if targets.get(c, -1) >= 0]
    cases = [c for c in labeled if all(c in p for p in probs.values())]
    dropped = [{"case": c, "missing_for": ";".join(m for m, p in probs.items() if c not in p),
                "reason": "no classification.csv row"} for c in labeled if c not in cases]
    return {m: np.stack([p[c] for c in cases]) if cases else np.zeros((0, len(class_names)))
            for m, p in probs.items()}, cases, dropped


def summarise_classification(y: np.ndarray, probs: dict[str, np.ndarray], class_names: Sequence[str],
                             reference: str, n_boot: int = st.DEFAULT_N_BOOTSTRAP,
                             seed: int = st.DEFAULT_SEED) -> dict[str, dict]:
    """Per method: classification_summary, bootstrap intervals and, against ``reference``, the paired bootstrap of
    Δ accuracy / Δ macro AUC, McNemar's test and per-class one-vs-rest DeLong tests."""
    from nnunet_ext.metrics.classification import (
        bootstrap_classification,
        classification_summary,
        paired_bootstrap_classification,
    )

    out = {}
    for m, p in probs.items():
        res = {"summary": classification_summary(y, p, class_names),
               "intervals": bootstrap_classification(y, p, n_boot, seed)}
        if m != reference:
            pr = probs[reference]
            res["vs_reference"] = paired_bootstrap_classification(y, p, pr, n_boot, seed)
            res["p_mcnemar"] = st.mcnemar_exact(p.argmax(1) == y, pr.argmax(1) == y)
            res["delong"] = [st.delong_test(y == c, p[:, c], pr[:, c]) for c in range(len(class_names))]
        out[m] = res
    compared = [m for m in out if m != reference]
    for key in ("auc_ovr_macro", "accuracy"):
        adjusted = st.holm([out[m]["vs_reference"][key].p_value for m in compared])
        for m, q in zip(compared, adjusted):
            out[m].setdefault("p_holm", {})[key] = q
    return out




# --------------------------------------------------------------------------- the whole benchmark
@dataclass
class BenchmarkResult:
    """Everything a benchmark computed; :func:`nnunet_ext.evaluation.report.benchmark_markdown` renders it."""

    dataset_name: str
    methods: list[MethodSpec]
    reference: str
    folds: list
    cases: list[str]
    dropped: list[dict]
    structures: dict[str, tuple[int, ...]]
    lesion: tuple[str, tuple[int, ...], str]
    small_lesion: tuple[float, str]
    strata: dict[str, str]
    case_rows: list[dict]
    segmentation: list[dict]
    volume_metrics: list[dict] = field(default_factory=list)  # Dice Global, VOE, RAVD per structure and method
    heads: dict[str, bool] = field(default_factory=dict)
    classification: dict | None = None  # class_names, cases, y, probs, reference, results, folds_by_case
    efficiency: list = field(default_factory=list)
    ablation: dict | None = None  # full_model, {metric: {method: Interval}}
    provenance: dict = field(default_factory=dict)
    n_boot: int = st.DEFAULT_N_BOOTSTRAP
    seed: int = st.DEFAULT_SEED
    output_folder: str = ""
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _resolve_method(name: str | None, specs: Sequence[MethodSpec], what: str) -> str | None:
    if name is None:
        return None
    for m in specs:
        if name in (m.name, m.trainer, f"{m.trainer}:{m.plans}:{m.configuration}"):
            return m.name
    raise BenchmarkError(f"{what} {name!r} is not one of the methods {[m.name for m in specs]}. Fix: list it "
                         "with -m.")


def run_benchmark(dataset: str | int, methods: Sequence[str], reference: str = "nnUNetTrainer",
                  folds: Sequence | None = None, output_folder: str | None = None,
                  small_lesion: float = DEFAULT_SMALL_LESION_MM3, small_lesion_unit: str = "mm3",
                  labels: Sequence[str] | None = None, lesion_label: int | None = None, num_processes: int = 1,
                  device: str = "cpu", full_model: str | None = None, n_boot: int = st.DEFAULT_N_BOOTSTRAP,
                  seed: int = st.DEFAULT_SEED, efficiency: bool = True, timing_repeats: int = 1,
                  command: str | None = None) -> BenchmarkResult:
    """Benchmark ``methods`` (``TRAINER[:PLANS[:CONFIG]]``) against ``reference`` on a dataset's cross-validation
    predictions and write report.md, CSVs and PNGs to ``output_folder`` (default
    ``$nnUNet_results/DatasetXXX/benchmark``). See the module docstring and docs/benchmarking.md."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_ext.data.metadata import DatasetMetadata, load_dataset_json
    from nnunet_ext.evaluation.efficiency import describe_device
    from nnunet_ext.evaluation.report import provenance

    if small_lesion_unit not in ("mm3", "voxels"):
        raise BenchmarkError(f"small-lesion unit {small_lesion_unit!r}: use 'mm3' or 'voxels'.")
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise BenchmarkError(f"dataset {dataset!r} not found ({e}). Fix: check -d and the nnUNet_* variables.") \
            from None
    results_root, pre_root = nnUNet_results.require(), nnUNet_preprocessed.require()
    ref_spec = MethodSpec.parse(reference)
    specs = [MethodSpec.parse(m) for m in methods]
    specs = ([ref_spec] if ref_spec.name not in {m.name for m in specs} else []) + specs
    if len({m.name for m in specs}) != len(specs):
        raise BenchmarkError(f"methods are listed twice: {[m.name for m in specs]}.")
    full = _resolve_method(full_model, specs, "--full-model")
    import torch

    prov = provenance(command, describe_device(torch.device(device)))
    dj = load_dataset_json(os.path.join(pre_root, dataset_name, "dataset.json"))
    file_ending = dj["file_ending"]
    metadata = DatasetMetadata.from_dataset_json(dj)
    fold_list = None if folds is None else [int(f) if str(f).isdigit() else f for f in folds]
    collection = collect(dataset_name, specs, fold_list, results_root, pre_root, file_ending)

    structures = structures_from_labels(dj["labels"], labels)
    lesion = lesion_structure(structures, dj["labels"], metadata.lesion_labels if metadata else None, lesion_label)
    names = [m.name for m in specs]
    rows = compute_case_scores(collection, structures, file_ending, dj["labels"].get("ignore"), num_processes)
    strata = add_lesion_strata(rows, lesion[0], small_lesion, small_lesion_unit)
    res = BenchmarkResult(dataset_name, specs, ref_spec.name, collection.folds, collection.cases,
                          list(collection.dropped), structures, lesion, (small_lesion, small_lesion_unit), strata,
                          rows, summarise_segmentation(rows, names, ref_spec.name, collection.cases,
                                                       list(structures), lesion[0], strata, n_boot, seed),
                          provenance=prov, n_boot=n_boot, seed=seed)
    res.volume_metrics = summarise_volume_metrics(rows, names, collection.cases, list(structures), n_boot, seed)
    res.heads = {m.name: model_class_names(m.folder(results_root, dataset_name)) is not None for m in specs}

    if metadata is not None and metadata.has_classification and any(res.heads.values()):
        targets = dict(zip(collection.cases, metadata.class_targets(collection.cases).tolist()))
        probs, cls_cases, dropped = collect_classification(collection, specs, results_root, metadata.class_names,
                                                           targets)
        res.dropped += dropped
        if cls_cases:
            cls_ref = ref_spec.name if ref_spec.name in probs else next(iter(probs))
            y = np.array([targets[c] for c in cls_cases])
            res.classification = {
                "class_names": list(metadata.class_names), "cases": cls_cases, "y": y, "probs": probs,
                "reference": cls_ref,
                "n_unlabeled": sum(1 for c in collection.cases if targets[c] < 0),
                "results": summarise_classification(y, probs, metadata.class_names, cls_ref, n_boot, seed)}
        else:
            res.notes.append("classification: no labeled case was classified by every method with a head")
    elif any(res.heads.values()):
        res.notes.append("classification: dataset.json declares no classes, so heads were not evaluated")

    if full is not None:
        res.ablation = ablation(res, full)
    out = output_folder or os.path.join(results_root, dataset_name, "benchmark")
    os.makedirs(out, exist_ok=True)
    res.output_folder = out
    if efficiency:
        res.efficiency = measure_all(res, collection, results_root, pre_root, device, timing_repeats)
    write_outputs(res)
    return res


def ablation(res: BenchmarkResult, full: str) -> dict:
    """Paired differences (method - full model) of the mean lesion Dice and of the macro AUC."""
    lesion = res.lesion[0]
    index = {(r["method"], r["case"]): r["dice"] for r in res.case_rows if r["structure"] == lesion}
    dice = {m: np.array([index[(m, c)] for c in res.cases]) for m in {r["method"] for r in res.case_rows}}
    panels: dict[str, dict] = {f"Δ Dice ({lesion})": {
        m.name: st.paired_bootstrap_mean_difference(dice[m.name], dice[full], res.n_boot, res.seed)
        for m in res.methods if m.name != full}}
    cls = res.classification
    if cls is not None and full in cls["probs"]:
        from nnunet_ext.metrics.classification import paired_bootstrap_classification

        others = {m: p for m, p in cls["probs"].items() if m != full}
        if others:
            panels["Δ macro AUC"] = {m: paired_bootstrap_classification(cls["y"], p, cls["probs"][full], res.n_boot,
                                                                        res.seed)["auc_ovr_macro"]
                                     for m, p in others.items()}
    return {"full_model": full, "panels": panels}


def measure_all(res: BenchmarkResult, collection: Collection, results_root: str, pre_root: str, device: str,
                repeats: int) -> list:
    """Efficiency of every method, timed on the first common case (same case for all methods)."""
    import warnings

    from nnunet_ext.evaluation.efficiency import Efficiency, describe_device, measure_efficiency

    case = collection.cases[0]
    out = []
    for m in res.methods:
        fold = collection.predictions[m.name][case][0]
        try:
            out.append(measure_efficiency(m.name, m.folder(results_root, res.dataset_name), m.configuration, device,
                                          fold, case, os.path.join(pre_root, res.dataset_name), repeats))
        except Exception as e:  # cost measurement is auxiliary: report why it failed instead of losing the benchmark
            warnings.warn(f"efficiency of {m.name} could not be measured: {e!r}", stacklevel=2)
            import torch

            out.append(Efficiency(m.name, describe_device(torch.device(device)), notes=[f"failed: {e!r}"]))
    return out


def write_outputs(res: BenchmarkResult) -> None:
    """CSV files, PNG figures, summary.json and report.md into ``res.output_folder``."""
    from nnunet_ext.evaluation import plots
    from nnunet_ext.evaluation.report import benchmark_markdown, benchmark_tables, write_csv

    out = res.output_folder
    files = res.files
    for name, (rows, fields) in benchmark_tables(res).items():
        files[name] = write_csv(os.path.join(out, name), rows, fields)
    methods = [m.name for m in res.methods]
    label = plots.short_names(methods)
    index = {(r["method"], r["case"], r["structure"]): r for r in res.case_rows}
    for metric, fname in (("dice", "dice_violin.png"), ("hd95", "hd95_violin.png")):
        panels = {s: {label[m]: [index[(m, c, s)][metric] for c in res.cases] for m in methods}
                  for s in res.structures}
        files[fname] = plots.violins_by_method(panels, METRIC_LABELS[metric], os.path.join(out, fname),
                                               f"{METRIC_LABELS[metric]} per case ({len(res.cases)} cases)")
        lesion = res.lesion[0]
        strata = {k: {label[m]: [index[(m, c, lesion)][metric] for c in res.cases if res.strata[c] == k]
                      for m in methods}
                  for k in ("small", "large", "no lesion") if any(v == k for v in res.strata.values())}
        fname = f"{metric}_by_lesion_size.png"
        thr, unit = res.small_lesion
        files[fname] = plots.violins_by_stratum(
            strata, f"{METRIC_LABELS[metric]} ({lesion})", os.path.join(out, fname),
            f"{lesion}: {METRIC_LABELS[metric]} by lesion volume (small < {thr:.4g} {UNIT_LABELS[unit]})")
    cls = res.classification
    if cls is not None:
        aucs = {label[m]: list(cls["results"][m]["summary"]["auc_per_class"].values()) for m in cls["probs"]}
        files["roc_curves.png"] = plots.roc_curves(cls["y"], {label[m]: p for m, p in cls["probs"].items()},
                                                   cls["class_names"], os.path.join(out, "roc_curves.png"), aucs)
        files["confusion_matrices.png"] = plots.confusion_matrices(
            {label[m]: np.array(cls["results"][m]["summary"]["confusion_matrix"]) for m in cls["probs"]},
            cls["class_names"], os.path.join(out, "confusion_matrices.png"))
    if res.ablation is not None:
        panels = {k: {label.get(m, m): v for m, v in by_method.items()} for k, by_method in
                  res.ablation["panels"].items()}
        files["ablation.png"] = plots.ablation_bars(panels, label.get(res.ablation["full_model"],
                                                                      res.ablation["full_model"]),
                                                    os.path.join(out, "ablation.png"))
    path = os.path.join(out, "report.md")
    files["report.md"] = path
    with open(path, "w", encoding="utf-8") as f:
        f.write(benchmark_markdown(res))
