"""Does DeSamba learn, and which of its parts matter? Held-out accuracy and AUC on synthetic multi-sequence MRI.

DeSamba (arXiv 2507.15487; issue 21) classifies vertebral lesions from several MRI sequences and clinical features.
On synthetic multi-sequence MRI (``nnunet_ext.conversion.synthetic_mri``: T1, T2, T2-FS; three lesion classes set by
the cross-sequence signal pattern and the lesion texture, not by any single sequence; three clinical features weakly
associated with the class) the script trains, for every seed and method, fold 0 on one CPU schedule (``lc300``: 15
epochs x 20 iterations, from ``benchmarks/trainers/learning_check.py``; half the STD-Net check's ``lc600``, because
eight methods train here) on 16x32x32 volumes (6x2x2 mm: the generator's default field of view), seeded with
``nnUNet_ext_seed``:

* ``EarlyFusionTrainer_tabular`` (nnUNetPlans): nnU-Net's U-Net on the sequences as channels + a class head that also
  reads the clinical features, the comparator;
* ``DeSambaTrainer`` (``DeSambaPlansCPU``: ``DeSambaPlannerCPU``, the ``tiny`` preset; not the paper's size) and its
  six ablations ``_noDRLM``, ``_noSpectral``, ``_noMambaOut``, ``_noTabular``, ``_noSelfRecon``, ``_noCrossRecon``.
  ``tiny`` keeps every component; ``small`` takes 6.6x the U-Net's CPU training step (benchmarks/RESULTS.md,
  "DeSamba presets"), which puts sixteen trainings far beyond an hour on two cores.

Measured per method and seed: the head's training CE per epoch (``loss_cls_train`` of ``checkpoint_final.pth``) and
whether the last epoch's is below 0.8 ln K; on a separate held-out test set (other generator seed; predicted with
``nnunet-ext predict --tabular`` and the cases' clinical features), the accuracy and the macro one-vs-rest AUC with
bootstrap 95% CIs, the mean lesion ROI Dice (label 1), the spread of the class probabilities across cases and
whether the head collapsed (:func:`~nnunet_ext.metrics.classification.head_collapse`); the wall time.

    .venv/bin/python benchmarks/desamba_learning_check.py -o /tmp/dlc --threads 1   # 16 trainings
    .venv/bin/python benchmarks/desamba_learning_check.py -o /tmp/dlc_smoke --smoke   # about 1 min: plumbing only

The seeds can run side by side, one core each (``--seeds 0`` and ``--seeds 1`` with the same ``-o``, once the first
has planned and preprocessed: later runs keep that data as it is; a last run with both seeds collects them).
Results and run times: benchmarks/RESULTS.md. The bookkeeping (``Timings``, resumable trainings and predictions,
training CE, the machine record, JSON output) is the STD-Net check's (``benchmarks/stdnet_learning_check.py``),
imported from it.

Everything lives under ``-o`` (nnU-Net folders; each seed trains into ``nnUNet_results/seed_<k>``; nnU-Net's prints
go to ``logs/``). Writes ``<output>/learning_check.json`` and prints a Markdown table. A rerun with the same ``-o``
skips finished trainings and predictions. Kept out of CI (only ``--smoke`` runs in the tests); CPU only, one
process, ``nnUNet_n_proc_DA=0`` unless set, so a seeded run repeats exactly.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the STD-Net check's helpers live in the benchmarks folder
    sys.path.insert(0, str(REPO))

from benchmarks.stdnet_learning_check import (  # noqa: E402
    CE_FRACTION,
    CONFIGURATION,
    DEVICE,
    RESULT_FILE,
    Timings,
    _f,
    _jsonable,
    _load_average,
    finished,
    learning_check_trainers,
    machine,
    predictions_current,
    put_benchmark_trainers_on_search_path,
    read_classification,
    run_seeds,
    schedule_record,
    train_ce,
    train_fold,
)

TRAIN_ID, TEST_ID = 530, 531
TEST_NAME = "SyntheticMRITest"
BASELINE = "EarlyFusionTrainer_tabular"
DESAMBA_METHODS = ("DeSambaTrainer", "DeSambaTrainer_noDRLM", "DeSambaTrainer_noSpectral",
                   "DeSambaTrainer_noMambaOut", "DeSambaTrainer_noTabular", "DeSambaTrainer_noSelfRecon",
                   "DeSambaTrainer_noCrossRecon")
DEFAULT_METHODS = (BASELINE, *DESAMBA_METHODS)
SMOKE_METHODS = (BASELINE, "DeSambaTrainer")
SCHEDULE, SMOKE_SCHEDULE = "lc300", "lcsmoke"
PLANNER, PLANS = "DeSambaPlannerCPU", "DeSambaPlansCPU"
LESION_LABEL = 1


def plans_of(method: str) -> str:
    return PLANS if method.startswith("DeSamba") else "nnUNetPlans"


# ------------------------------------------------------------------------------------------------ data
def preprocessed_already(train_name: str, n_cases: int) -> bool:
    """Both plans and the vanilla preprocessed data of every training case exist. Planning again would delete and
    rewrite the files that a run of another seed beside this one is training from."""
    folder = os.path.join(os.environ["nnUNet_preprocessed"], train_name)
    data = os.path.join(folder, f"nnUNetPlans_{CONFIGURATION}")
    return (all(os.path.isfile(os.path.join(folder, f"{plans}.json")) for plans in ("nnUNetPlans", PLANS))
            and os.path.isfile(os.path.join(folder, "splits_final.json")) and os.path.isdir(data)
            and sum(f.endswith(".pkl") for f in os.listdir(data)) == n_cases)


def drop_texts(folder: str) -> None:
    """Remove the generator's per-case texts from ``dataset.json``: neither method reads them, and planning would
    embed them with a text encoder."""
    path = os.path.join(folder, "dataset.json")
    with open(path, encoding="utf-8") as f:
        dataset_json = json.load(f)
    cases = dataset_json.get("nnunet_ext", {}).get("cases", {})
    if any("text" in c for c in cases.values()):
        for c in cases.values():
            c.pop("text", None)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(dataset_json, f, indent=2)


def write_tabular_csv(dataset_folder: str, path: str) -> str:
    """The cases' clinical features of a raw dataset's metadata as ``nnunet-ext predict --tabular`` reads them
    (``case_id`` + one column per feature)."""
    from nnunet_ext.data.metadata import validate_raw_dataset

    md = validate_raw_dataset(dataset_folder)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case_id", *md.tabular_features])
        for case in sorted(md.cases):
            w.writerow([case, *md.cases[case].tabular])
    return path


def predict_heldout(test_folder: str, tabular: str, out: str, model: str, log: str) -> None:
    """``nnunet-ext predict --tabular`` of the held-out cases with fold 0 (no test-time mirroring on the CPU)."""
    from nnunet_ext.inference.predict import predict
    from nnunet_ext.workflows import quiet

    with quiet(log):
        predict(os.path.join(test_folder, "imagesTr"), out, model, folds=[0], device=DEVICE, disable_tta=True,
                num_processes_preprocessing=1, num_processes_export=1, tabular=tabular)


# ------------------------------------------------------------------------------------------------ metrics
def _interval(iv) -> dict:
    return {"estimate": iv.estimate, "ci_low": iv.low, "ci_high": iv.high, "n_boot": iv.n_boot}


def heldout_metrics(test_folder: str, pred_folder: str, prior_ce: float) -> dict:
    """Accuracy and macro one-vs-rest AUC (bootstrap 95% CIs), per-class AUC, CE, probability spread and collapse of
    the head on the held-out cases; their mean lesion ROI Dice (label 1)."""
    import SimpleITK as sitk

    from nnunet_ext.data.metadata import validate_raw_dataset
    from nnunet_ext.metrics.classification import bootstrap_classification, head_collapse
    from nnunet_ext.metrics.segmentation import dice

    md = validate_raw_dataset(test_folder)
    cases, probs = read_classification(os.path.join(pred_folder, "classification.csv"), md.class_names)
    y = np.array([md.cases[c].class_index for c in cases])
    boot = bootstrap_classification(y, probs, seed=0)
    ce = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))
    collapse = head_collapse(probs, ce=ce, prior_ce=prior_ce)
    dices = []
    for case in cases:
        ref = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(test_folder, "labelsTr", f"{case}.nii.gz")))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(pred_folder, f"{case}.nii.gz")))
        dices.append(dice(pred == LESION_LABEL, ref == LESION_LABEL))
    return {"n_cases": len(cases), "accuracy": _interval(boot["accuracy"]),
            "auc_ovr_macro": _interval(boot["auc_ovr_macro"]),
            "auc_per_class": dict(zip(md.class_names, (a.estimate for a in boot["auc_per_class"]))),
            "cross_entropy": ce, "probability_spread": collapse["probability_spread"],
            "collapsed": collapse["collapsed"], "lesion_dice": float(np.nanmean(dices))}


# ------------------------------------------------------------------------------------------------ the steps
def run_method(method: str, seed: int, schedule: str, ctx: dict, timings: Timings) -> dict:
    """Train fold 0, predict the held-out set with its clinical features and measure one method."""
    from nnunet_ext.workflows import model_folder

    trainer, plans = f"{method}_{schedule}", plans_of(method)
    key = f"seed_{seed}/{trainer}"
    logs = os.path.join(ctx["logs"], f"seed_{seed}")
    model = model_folder(ctx["train_name"], trainer, plans, CONFIGURATION)
    fold = os.path.join(model, "fold_0")
    train_seconds = timings.run(f"{key}/train", finished(fold), lambda: train_fold(
        ctx["train_name"], 0, trainer, plans, os.path.join(logs, f"train_{trainer}.log")))
    out = os.path.join(ctx["root"], "predictions", f"seed_{seed}", trainer)
    current = predictions_current(ctx["test_folder"], out, model)
    predict_seconds = timings.run(f"{key}/predict", current, lambda: None if current else predict_heldout(
        ctx["test_folder"], ctx["test_tabular"], out, model, os.path.join(logs, f"predict_{trainer}.log")))
    ce = train_ce(fold)
    threshold = CE_FRACTION * math.log(ctx["num_classes"])
    finite = [v for v in ce if math.isfinite(v)]
    heldout = heldout_metrics(ctx["test_folder"], out, ctx["prior_ce"])
    seconds = {"training": train_seconds, "prediction": predict_seconds}
    seconds["total"] = sum(seconds.values())
    return {"method": method, "trainer": trainer, "plans": plans, "seed": seed,
            "train_ce_per_epoch": ce, "ce_epoch1": ce[0] if ce else math.nan,
            "ce_last": finite[-1] if finite else math.nan, "ce_threshold": threshold,
            "ce_last_below_threshold": bool(finite and finite[-1] < threshold),
            "heldout": heldout, "heldout_accuracy": heldout["accuracy"], "heldout_auc": heldout["auc_ovr_macro"],
            "lesion_dice": heldout["lesion_dice"], "probability_spread": heldout["probability_spread"],
            "collapsed": heldout["collapsed"], "seconds": seconds, "minutes": seconds["total"] / 60,
            "model_folder": model, "predictions": out}


# ------------------------------------------------------------------------------------------------ output
def markdown_table(runs: list[dict], num_classes: int) -> str:
    """Method, seed, CE epoch 1, CE last, < 0.8 ln K?, held-out accuracy and AUC [95% CI], collapsed, lesion Dice,
    minutes."""
    threshold = CE_FRACTION * math.log(num_classes)
    lines = [f"| method | seed | CE epoch 1 | CE last | < {CE_FRACTION} ln K ({threshold:.3f})? "
             "| held-out accuracy [95% CI] | held-out macro AUC [95% CI] | collapsed | lesion Dice | minutes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        acc, auc = r["heldout_accuracy"], r["heldout_auc"]
        lines.append(f"| {r['method']} | {r['seed']} | {_f(r['ce_epoch1'])} | {_f(r['ce_last'])} | "
                     f"{'yes' if r['ce_last_below_threshold'] else 'no'} | {_f(acc['estimate'])} "
                     f"[{_f(acc['ci_low'])}, {_f(acc['ci_high'])}] | {_f(auc['estimate'])} "
                     f"[{_f(auc['ci_low'])}, {_f(auc['ci_high'])}] | {'yes' if r['collapsed'] else 'no'} | "
                     f"{_f(r['lesion_dice'])} | {_f(r['minutes'], 1)} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-o", "--output", default="/tmp/desamba_learning_check",
                   help="workspace (nnUNet_* folders, logs, predictions, learning_check.json)")
    p.add_argument("--n-train", type=int, default=60, help="training cases (fold 0 trains on 4/5 of them)")
    p.add_argument("--n-test", type=int, default=60, help="held-out test cases (another generator seed)")
    p.add_argument("--shape", type=int, nargs=3, default=[16, 32, 32], metavar=("Z", "Y", "X"))
    p.add_argument("--spacing", type=float, nargs=3, default=[6.0, 2.0, 2.0], metavar=("Z", "Y", "X"),
                   help="mm (the default keeps the generator's field of view at 16x32x32)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1; --smoke: 0)")
    p.add_argument("--methods", nargs="+", default=None, metavar="TRAINER",
                   help=f"default {' '.join(DEFAULT_METHODS)} (--smoke: {' '.join(SMOKE_METHODS)})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: one per core; 1 is faster when other jobs share the CPU)")
    p.add_argument("--smoke", action="store_true", help="9 + 6 cases of 16x32x32, 1 epoch x 2 iterations, one seed: "
                                                        "checks the plumbing in well under 60 s")
    args = p.parse_args(argv)
    args.schedule = SMOKE_SCHEDULE if args.smoke else SCHEDULE
    if args.smoke:
        args.n_train, args.n_test, args.shape, args.spacing = 9, 6, [16, 32, 32], [6.0, 2.0, 2.0]
    args.seeds = args.seeds or ([0] if args.smoke else [0, 1])
    args.methods = args.methods or list(SMOKE_METHODS if args.smoke else DEFAULT_METHODS)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    t_start, load_at_start = time.time(), _load_average()
    from nnunet_ext.workflows import cpu_friendly_processes

    # before nnU-Net is imported: it reads nnUNet_def_n_proc (worker pools, default 8) at import
    os.environ.setdefault("nnUNet_n_proc_DA", "0")  # single-process loading: a seeded run repeats exactly
    cpu_friendly_processes(DEVICE)
    module = learning_check_trainers()
    known = [b.__name__ for b in module.DESAMBA_LEARNING_CHECK_BASES]
    unknown = sorted(set(args.methods) - set(known))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {known} (benchmarks/trainers/learning_check.py)")

    import torch

    from nnunet_ext.conversion.synthetic_mri import convert_synthetic_mri
    from nnunet_ext.data.metadata import validate_raw_dataset
    from nnunet_ext.metrics.classification import prior_entropy
    from nnunet_ext.planners.api import plan_and_preprocess
    from nnunet_ext.workflows import quiet, stage, use_workspace

    root = os.path.abspath(args.output)
    env = use_workspace(root)
    put_benchmark_trainers_on_search_path()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    logs = os.path.join(root, "logs")
    schedule = module.LEARNING_CHECK_SCHEDULES[args.schedule]
    shape, spacing = tuple(args.shape), tuple(args.spacing)

    stage(f"synthetic multi-sequence MRI: {args.n_train} training + {args.n_test} held-out cases of "
          f"{'x'.join(map(str, shape))} voxels ({'x'.join(map(str, spacing))} mm)")
    with quiet(os.path.join(logs, "generate.log")):
        train_folder = convert_synthetic_mri(TRAIN_ID, n_cases=args.n_train, shape=shape, spacing=spacing, seed=0,
                                             progress=False)
        test_folder = convert_synthetic_mri(TEST_ID, n_cases=args.n_test, shape=shape, spacing=spacing, seed=1000,
                                            name=TEST_NAME, progress=False)
    for folder in (train_folder, test_folder):
        drop_texts(folder)
    train_md = validate_raw_dataset(train_folder)
    num_classes = train_md.num_classes
    ctx = {"root": root, "logs": logs, "train_name": os.path.basename(os.path.normpath(train_folder)),
           "test_folder": test_folder, "num_classes": num_classes,
           "test_tabular": write_tabular_csv(test_folder, os.path.join(root, "heldout_tabular.csv")),
           "prior_ce": prior_entropy([r.class_index for r in train_md.cases.values() if r.class_index is not None],
                                     num_classes)}

    if preprocessed_already(ctx["train_name"], args.n_train):
        stage("plan and preprocess: done before, kept as it is (a run beside this one may be reading it)")
    else:
        stage(f"plan and preprocess: vanilla nnU-Net plans, then {PLANNER} (tiny preset, reuses the vanilla data)")
        with quiet(os.path.join(logs, "plan.log")):
            plan_and_preprocess(TRAIN_ID, "ExperimentPlanner", (CONFIGURATION,), num_processes=1)
            plan_and_preprocess(TRAIN_ID, PLANNER, (CONFIGURATION,), num_processes=1)

    timings = Timings(root)

    def train_and_predict(method: str, seed: int) -> dict:
        run = run_method(method, seed, args.schedule, ctx, timings)
        print(f"    {method} seed {seed}: CE {_f(run['ce_epoch1'])} -> {_f(run['ce_last'])}, held-out accuracy "
              f"{_f(run['heldout_accuracy']['estimate'])}, AUC {_f(run['heldout_auc']['estimate'])}, "
              f"{run['minutes']:.1f} min", file=sys.stderr, flush=True)
        return run

    runs = run_seeds(args, schedule, env, train_and_predict)

    result = _jsonable({
        "benchmark": "desamba_learning_check",
        "command": shlex.join([".venv/bin/python", "benchmarks/desamba_learning_check.py", *argv]),
        "machine": machine(load_at_start), "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "config": {"n_train": args.n_train, "n_test": args.n_test, "shape": list(shape), "spacing": list(spacing),
                   "seeds": args.seeds, "methods": args.methods, "baseline": BASELINE, "fold": 0,
                   "configuration": CONFIGURATION, "device": DEVICE, "desamba_plans": PLANS,
                   "schedule": schedule_record(args.schedule, schedule),
                   "num_classes": num_classes, "class_names": train_md.class_names,
                   "tabular_features": train_md.tabular_features,
                   "ce_threshold": CE_FRACTION * math.log(num_classes), "prior_ce": ctx["prior_ce"],
                   "datasets": {"train": train_folder, "test": test_folder}},
        "runs": runs, "wall_seconds": time.time() - t_start})
    with open(os.path.join(root, RESULT_FILE), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(markdown_table(runs, num_classes))
    print(f"\n{os.path.join(root, RESULT_FILE)}; wall {(time.time() - t_start) / 60:.1f} min", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
