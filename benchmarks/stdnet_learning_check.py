"""Does STD-Net's characterization head learn? Training CE of the head and held-out AUC on synthetic multiphase CT.

The check behind the issue "STD-Net's characterization head must learn". On synthetic multiphase liver CT (lesion
classes defined by their enhancement over the arterial, portal venous and delayed phases; 3 classes) the script
trains, for every seed and method, fold 0 on the same CPU schedule (``lc600``: 30 epochs x 20 iterations, the length
of the ``demo`` schedule, from ``benchmarks/trainers/learning_check.py``) on 16x32x32 volumes, seeded with
``nnUNet_ext_seed``:

* ``EarlyFusionTrainer`` (nnUNetPlans): nnU-Net's U-Net on the phases as channels + the class head, the comparator;
* ``STDNetTrainer``, ``STDNetTrainer_noTemporal`` (STDNetPlansCPU, the reduced temporal modeler);
* ``STDNetTrainer_paperProtocol`` (STDNetPlansCPU): the paper's optimisation, fine-tuned from an encoder pre-trained
  for segmentation as the paper does: a vanilla ``nnUNetTrainer`` on the reference phase of the training cases with
  the STD-Net U-Net topology (``convert reference-phase``, ``pretrain-plans``), fold "all", same schedule and seed,
  expanded to an STD-Net-shaped checkpoint (``expand_pretrained``) and passed as ``-pretrained_weights``;
* ``STDNetTrainer_paperProtocolNoTemporal``: the same recipe without the temporal modeler.

Measured per method and seed: the head's training CE per epoch (``loss_cls_train`` of ``checkpoint_final.pth``) and
whether the last epoch's is below 0.8 ln K (the prior's CE is at most ln K: a head that stays near it has not
learned); on a separate held-out test set (other generator seed), the macro one-vs-rest AUC with a bootstrap 95% CI,
the mean lesion Dice (label 2), the spread of the class probabilities across cases and whether the head collapsed
(:func:`~nnunet_ext.metrics.classification.head_collapse`); the wall time.

    .venv/bin/python benchmarks/stdnet_learning_check.py -o /tmp/lc --threads 1   # about 1 h on the 2-core CPU
    .venv/bin/python benchmarks/stdnet_learning_check.py -o /tmp/lc_smoke --smoke   # < 90 s: plumbing only

The ``minutes`` column (pre-training included for the paper protocol) gives the real figure per run, and
``machine`` the threads and the load it ran under. With two torch threads on a machine that other jobs share, steps
were 2-3x slower than with one: pass ``--threads 1`` then.

Everything lives under ``-o`` (nnU-Net folders; each seed trains into ``nnUNet_results/seed_<k>``; nnU-Net's prints
go to ``logs/``). Writes ``<output>/learning_check.json`` and prints a Markdown table for benchmarks/RESULTS.md. A
rerun with the same ``-o`` skips finished trainings and predictions (their recorded times are reported). Kept out of
CI (only ``--smoke`` runs in the tests); CPU only, one process, ``nnUNet_n_proc_DA=0`` unless set, so a seeded run
repeats exactly.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAINER_FOLDER = REPO / "benchmarks" / "trainers"
TRAIN_ID, TEST_ID, REFERENCE_ID = 520, 521, 522
TEST_NAME = "SyntheticLiverTest"
CONFIGURATION = "3d_fullres"
DEVICE = "cpu"
DEFAULT_METHODS = ("EarlyFusionTrainer", "STDNetTrainer", "STDNetTrainer_paperProtocol", "STDNetTrainer_noTemporal",
                   "STDNetTrainer_paperProtocolNoTemporal")
SMOKE_METHODS = ("EarlyFusionTrainer", "STDNetTrainer_paperProtocol")
SCHEDULE, SMOKE_SCHEDULE = "lc600", "lcsmoke"
PRETRAIN_TRAINER, PRETRAIN_PLANS = "nnUNetTrainer", "STDNetPretrainPlans"
CE_FRACTION = 0.8  # the head has learned when its last training CE is below CE_FRACTION * ln K
RESULT_FILE, TIMINGS_FILE = "learning_check.json", "learning_check_timings.json"
# the package functions of the paper protocol's encoder pre-training
PRETRAINING_API = (("nnunet_ext.conversion.reference_phase", "convert_reference_phase"),
                   ("nnunet_ext.planners.pretraining", "write_pretraining_plans"),
                   ("nnunet_ext.trainers.pretraining", "expand_pretrained"))


def pretraining_api_missing() -> list[str]:
    """The functions of :data:`PRETRAINING_API` this installation lacks (``module.function``)."""
    missing = []
    for module, name in PRETRAINING_API:
        try:
            found = hasattr(importlib.import_module(module), name)
        except ImportError:
            found = False
        if not found:
            missing.append(f"{module}.{name}")
    return missing


def needs_pretraining(method: str) -> bool:
    return "paperProtocol" in method


def learning_check_trainers():
    """benchmarks/trainers/learning_check.py (bases and schedules of the check's trainers)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("benchmarks.trainers.learning_check")


def put_benchmark_trainers_on_search_path() -> None:
    """Add benchmarks/trainers to ``nnUNet_extTrainer`` (after nnunet-ext's own folder) for training and prediction."""
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if str(TRAINER_FOLDER) not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([*current, str(TRAINER_FOLDER)])


# ------------------------------------------------------------------------------------------------ bookkeeping
class Timings:
    """Wall seconds of each step, kept in ``<output>/learning_check_timings.json`` so that a rerun that skips a
    finished training still reports the time it took. The file is read again before every lookup and merged before
    every write, so that runs of other seeds beside this one (same ``-o``) keep their entries."""

    def __init__(self, root: str):
        self.path = os.path.join(root, TIMINGS_FILE)

    def _load(self) -> dict:
        if not os.path.isfile(self.path):
            return {}
        with open(self.path, encoding="utf-8") as f:
            return json.load(f)

    def run(self, key: str, done_before: bool, step) -> float:
        """Run ``step()`` and return its wall seconds, or, when it had nothing to do (``done_before``), the seconds
        recorded when it ran (NaN if never recorded)."""
        t0 = time.time()
        step()
        seconds = time.time() - t0
        if done_before:
            return float(self._load().get(key, math.nan))
        data = {**self._load(), key: seconds}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.path)
        return seconds


def run_seeds(args: argparse.Namespace, schedule, env: dict, train_and_predict) -> list[dict]:
    """``train_and_predict(method, seed)`` for every seed and method of ``args``: each seed trains into
    ``nnUNet_results/seed_<k>`` with ``nnUNet_ext_seed=<k>``; the workspace's variables are restored afterwards (for
    a caller in this process). Returns the runs in order."""
    from nnunet_ext.workflows import stage

    runs = []
    saved_seed = os.environ.get("nnUNet_ext_seed")
    try:
        for seed in args.seeds:
            os.environ["nnUNet_results"] = os.path.join(env["nnUNet_results"], f"seed_{seed}")
            os.makedirs(os.environ["nnUNet_results"], exist_ok=True)
            os.environ["nnUNet_ext_seed"] = str(seed)
            stage(f"seed {seed}: train fold 0 ({args.schedule}: {schedule.num_epochs} x "
                  f"{schedule.iterations_per_epoch} iterations), predict the held-out set: {', '.join(args.methods)}")
            runs += [train_and_predict(method, seed) for method in args.methods]
    finally:
        os.environ["nnUNet_results"] = env["nnUNet_results"]
        if saved_seed is None:
            os.environ.pop("nnUNet_ext_seed", None)
        else:
            os.environ["nnUNet_ext_seed"] = saved_seed
    return runs


def schedule_record(name: str, schedule) -> dict:
    """The schedule as the result JSON records it."""
    return {"name": name, "epochs": schedule.num_epochs, "iterations_per_epoch": schedule.iterations_per_epoch,
            "val_iterations_per_epoch": schedule.val_iterations_per_epoch, "mirroring": schedule.mirroring}


def finished(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))


def train_fold(dataset: str, fold, trainer: str, plans: str, log: str, pretrained: str | None = None) -> str:
    """:func:`~nnunet_ext.workflows.train_if_needed`; a fresh training that starts from ``pretrained`` weights is
    started with them (an interrupted one continues from its own checkpoint). Returns the fold folder."""
    from nnunet_ext.trainers.run import train
    from nnunet_ext.workflows import model_folder, quiet, train_if_needed

    folder = os.path.join(model_folder(dataset, trainer, plans, CONFIGURATION), f"fold_{fold}")
    if pretrained is None or finished(folder) or os.path.isfile(os.path.join(folder, "checkpoint_latest.pth")):
        return train_if_needed(dataset, CONFIGURATION, fold, trainer, plans, DEVICE, log)
    print(f"    {trainer} ({plans}) fold {fold} from {pretrained}", file=sys.stderr, flush=True)
    with quiet(log):
        train(dataset, CONFIGURATION, str(fold), trainer, plans, device=DEVICE, pretrained_weights=pretrained)
    return folder


def predictions_current(test_folder: str, out: str, model: str) -> bool:
    """``out`` holds this model's predictions (segmentation and class probabilities) of every held-out case, written
    after its checkpoint."""
    csv_path = os.path.join(out, "classification.csv")
    checkpoint = os.path.join(model, "fold_0", "checkpoint_final.pth")
    if not os.path.isfile(csv_path) or os.path.getmtime(csv_path) < os.path.getmtime(checkpoint):
        return False
    cases = [p[:-len(".nii.gz")] for p in os.listdir(os.path.join(test_folder, "labelsTr")) if p.endswith(".nii.gz")]
    with open(csv_path, encoding="utf-8") as f:
        have = {row["case_id"] for row in csv.DictReader(f)}
    return have >= set(cases) and all(os.path.isfile(os.path.join(out, f"{c}.nii.gz")) for c in cases)


def predict_heldout(test_folder: str, out: str, model: str, log: str) -> None:
    """``nnunet-ext predict`` of the held-out cases with fold 0 (no test-time mirroring on the CPU)."""
    from nnunet_ext.inference.predict import predict
    from nnunet_ext.workflows import quiet

    with quiet(log):
        predict(os.path.join(test_folder, "imagesTr"), out, model, folds=[0], device=DEVICE, disable_tta=True,
                num_processes_preprocessing=1, num_processes_export=1)


# ------------------------------------------------------------------------------------------------ metrics
def train_ce(fold_folder: str) -> list[float]:
    """The head's training CE per epoch (``loss_cls_train`` of nnU-Net's logger in ``checkpoint_final.pth``)."""
    from nnunet_ext.data.checkpoints import load_checkpoint
    from nnunet_ext.trainers.logging import term_key

    logging = load_checkpoint(os.path.join(fold_folder, "checkpoint_final.pth"))["logging"]
    return [float(v) for v in logging.get(term_key("cls", "train"), [])]


def read_classification(csv_path: str, class_names: list[str]) -> tuple[list[str], np.ndarray]:
    """(case ids, probabilities (N, K) in ``class_names`` order) of a ``classification.csv``."""
    with open(csv_path, encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["case_id"])
    return [r["case_id"] for r in rows], np.array([[float(r[f"prob_{c}"]) for c in class_names] for r in rows])


def heldout_metrics(test_folder: str, pred_folder: str, prior_ce: float) -> dict:
    """Macro one-vs-rest AUC (bootstrap 95% CI), accuracy, CE, probability spread and collapse of the head on the
    held-out cases; their mean lesion and liver Dice."""
    from nnunet_ext.data.metadata import validate_raw_dataset
    from nnunet_ext.demo import heldout_scores
    from nnunet_ext.metrics.classification import bootstrap_classification, head_collapse

    md = validate_raw_dataset(test_folder)
    cases, probs = read_classification(os.path.join(pred_folder, "classification.csv"), md.class_names)
    y = np.array([md.cases[c].class_index for c in cases])
    boot = bootstrap_classification(y, probs, seed=0)
    ce = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))
    collapse = head_collapse(probs, ce=ce, prior_ce=prior_ce)
    seg = heldout_scores(test_folder, {"model": pred_folder})["model"]
    iv = boot["auc_ovr_macro"]
    return {"n_cases": len(cases), "auc_ovr_macro": {"estimate": iv.estimate, "ci_low": iv.low, "ci_high": iv.high,
                                                     "n_boot": iv.n_boot},
            "auc_per_class": dict(zip(md.class_names, (a.estimate for a in boot["auc_per_class"]))),
            "accuracy": boot["accuracy"].estimate, "cross_entropy": ce,
            "probability_spread": collapse["probability_spread"], "collapsed": collapse["collapsed"],
            "lesion_dice": seg["lesion_dice"], "liver_dice": seg["liver_dice"]}


# ------------------------------------------------------------------------------------------------ the steps
def prepare_pretraining(train_folder: str, stdnet_plans: str, logs: str) -> str:
    """The one-phase dataset (reference phase of the training cases), planned vanilla, and the pre-training plans
    with the U-Net topology of ``stdnet_plans``. Returns the dataset's name."""
    from nnunet_ext.conversion.reference_phase import convert_reference_phase
    from nnunet_ext.planners.api import plan_and_preprocess
    from nnunet_ext.planners.pretraining import write_pretraining_plans
    from nnunet_ext.workflows import quiet

    with quiet(os.path.join(logs, "pretraining_data.log")):
        folder = convert_reference_phase(train_folder, REFERENCE_ID)
        plan_and_preprocess(REFERENCE_ID, "ExperimentPlanner", (CONFIGURATION,), num_processes=1)
        write_pretraining_plans(TRAIN_ID, stdnet_plans, REFERENCE_ID, configuration=CONFIGURATION,
                                source_plans="nnUNetPlans", plans_name=PRETRAIN_PLANS)
    return os.path.basename(os.path.normpath(folder))


def pretrain(method: str, reference_name: str, stdnet_plans: str, schedule: str, seed: int, timings: Timings,
             logs: str) -> dict:
    """The paper protocol's encoder: vanilla nnU-Net on the reference phase (fold "all"), expanded to an STD-Net
    checkpoint. Returns the report, the expanded checkpoint's path and the seconds both took."""
    from nnunet_ext.trainers.pretraining import expand_pretrained
    from nnunet_ext.workflows import model_folder

    trainer = f"{PRETRAIN_TRAINER}_{schedule}"
    model = model_folder(reference_name, trainer, PRETRAIN_PLANS, CONFIGURATION)
    fold = os.path.join(model, "fold_all")
    seconds = timings.run(f"seed_{seed}/{trainer}/train", finished(fold), lambda: train_fold(
        reference_name, "all", trainer, PRETRAIN_PLANS, os.path.join(logs, f"train_{trainer}.log")))
    expanded = os.path.join(model, f"fold_all_expanded_for_{method}_{stdnet_plans}.pth")
    report = {}

    def expand():
        rep = expand_pretrained(os.path.join(fold, "checkpoint_final.pth"), TRAIN_ID, plans=stdnet_plans,
                                configuration=CONFIGURATION, trainer=method, output=expanded, seed=seed)
        report.update(dataclasses.asdict(rep) if dataclasses.is_dataclass(rep) else dict(rep))

    current = os.path.isfile(expanded) and os.path.getmtime(expanded) >= os.path.getmtime(
        os.path.join(fold, "checkpoint_final.pth"))
    if not current and os.path.isfile(expanded):
        os.remove(expanded)  # from a pre-training that has been redone since
    seconds_expand = timings.run(f"seed_{seed}/{trainer}/expand", current, lambda: None if current else expand())
    if not report and os.path.isfile(f"{expanded}.json"):  # expand_pretrained's own record of an earlier run
        with open(f"{expanded}.json", encoding="utf-8") as f:
            report = json.load(f)
    return {"trainer": trainer, "plans": PRETRAIN_PLANS, "dataset": reference_name, "fold": "all",
            "checkpoint": os.path.join(fold, "checkpoint_final.pth"), "expanded": expanded,
            "expand_report": _jsonable(report) or None,
            "seconds": seconds + seconds_expand}


def run_method(method: str, plans: str, seed: int, schedule: str, ctx: dict, timings: Timings) -> dict:
    """Train (pre-training first for the paper protocol), predict the held-out set and measure one method."""
    from nnunet_ext.workflows import model_folder

    trainer = f"{method}_{schedule}"
    key = f"seed_{seed}/{trainer}"
    logs = os.path.join(ctx["logs"], f"seed_{seed}")
    pretraining = None
    if needs_pretraining(method):
        pretraining = pretrain(method, ctx["reference_name"], ctx["stdnet_plans"], schedule, seed, timings, logs)
    model = model_folder(ctx["train_name"], trainer, plans, CONFIGURATION)
    fold = os.path.join(model, "fold_0")
    train_seconds = timings.run(f"{key}/train", finished(fold), lambda: train_fold(
        ctx["train_name"], 0, trainer, plans, os.path.join(logs, f"train_{trainer}.log"),
        pretraining["expanded"] if pretraining else None))
    out = os.path.join(ctx["root"], "predictions", f"seed_{seed}", trainer)
    current = predictions_current(ctx["test_folder"], out, model)
    predict_seconds = timings.run(f"{key}/predict", current, lambda: None if current else predict_heldout(
        ctx["test_folder"], out, model, os.path.join(logs, f"predict_{trainer}.log")))
    ce = train_ce(fold)
    k = ctx["num_classes"]
    threshold = CE_FRACTION * math.log(k)
    finite = [v for v in ce if math.isfinite(v)]
    heldout = heldout_metrics(ctx["test_folder"], out, ctx["prior_ce"])
    seconds = {"pretraining": pretraining["seconds"] if pretraining else 0.0, "training": train_seconds,
               "prediction": predict_seconds}
    seconds["total"] = sum(seconds.values())
    return {"method": method, "trainer": trainer, "plans": plans, "seed": seed,
            "train_ce_per_epoch": ce, "ce_epoch1": ce[0] if ce else math.nan,
            "ce_last": finite[-1] if finite else math.nan, "ce_threshold": threshold,
            "ce_last_below_threshold": bool(finite and finite[-1] < threshold),
            "heldout": heldout, "heldout_auc": heldout["auc_ovr_macro"],
            "lesion_dice": heldout["lesion_dice"], "probability_spread": heldout["probability_spread"],
            "collapsed": heldout["collapsed"], "seconds": seconds, "pretraining": pretraining,
            "model_folder": model, "predictions": out}


# ------------------------------------------------------------------------------------------------ output
def _jsonable(obj):
    """JSON-safe copy: NaN/inf -> None, numpy scalars and arrays -> Python, paths and other objects -> str."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def _f(v, digits: int = 3) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def markdown_table(runs: list[dict], num_classes: int) -> str:
    """Method, seed, CE epoch 1, CE last, < 0.8 ln K?, held-out AUC [95% CI], lesion Dice, minutes."""
    threshold = CE_FRACTION * math.log(num_classes)
    lines = [f"| method | seed | CE epoch 1 | CE last | < {CE_FRACTION} ln K ({threshold:.3f})? "
             "| held-out AUC [95% CI] | lesion Dice | minutes |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        auc = r["heldout_auc"]
        lines.append(f"| {r['method']} | {r['seed']} | {_f(r['ce_epoch1'])} | {_f(r['ce_last'])} | "
                     f"{'yes' if r['ce_last_below_threshold'] else 'no'} | {_f(auc['estimate'])} "
                     f"[{_f(auc['ci_low'])}, {_f(auc['ci_high'])}] | {_f(r['lesion_dice'])} | "
                     f"{_f(r['seconds']['total'] / 60, 1)} |")
    return "\n".join(lines)


def machine(load_at_start: list[float] | None = None) -> dict:
    """The machine and its load (1/5/15-minute load averages at the start and the end: the minutes of a run on a
    shared machine depend on them)."""
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA"),
            "nnUNet_def_n_proc": os.environ.get("nnUNet_def_n_proc"), "load_average_start": load_at_start,
            "load_average_end": _load_average(),
            "summary": f"{os.cpu_count()}-core CPU ({platform.machine()}), {torch.get_num_threads()} torch threads, "
                       f"nnUNet_n_proc_DA={os.environ.get('nnUNet_n_proc_DA')}"}


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return None


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-o", "--output", default="/tmp/stdnet_learning_check", help="workspace (nnUNet_* folders, logs, "
                                                                                "predictions, learning_check.json)")
    p.add_argument("--n-train", type=int, default=40, help="training cases (fold 0 trains on 4/5 of them)")
    p.add_argument("--n-test", type=int, default=30, help="held-out test cases (another generator seed)")
    p.add_argument("--shape", type=int, nargs=3, default=[16, 32, 32], metavar=("Z", "Y", "X"))
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1; --smoke: 0)")
    p.add_argument("--methods", nargs="+", default=None, metavar="TRAINER",
                   help=f"default {' '.join(DEFAULT_METHODS)} (--smoke: {' '.join(SMOKE_METHODS)})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: one per core; 1 is faster when other jobs share the CPU)")
    p.add_argument("--smoke", action="store_true", help="9 + 6 cases of 16x32x32, 1 epoch x 2 iterations, one seed: "
                                                        "checks the plumbing in well under 90 s")
    args = p.parse_args(argv)
    args.schedule = SMOKE_SCHEDULE if args.smoke else SCHEDULE
    if args.smoke:
        args.n_train, args.n_test, args.shape = 9, 6, [16, 32, 32]
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
    known = [b.__name__ for b in module.LEARNING_CHECK_BASES if b.__name__ != PRETRAIN_TRAINER]
    unknown = sorted(set(args.methods) - set(known))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {known} (benchmarks/trainers/learning_check.py)")
    missing = pretraining_api_missing() if any(needs_pretraining(m) for m in args.methods) else []
    if missing:
        raise SystemExit(f"{', '.join(m for m in args.methods if needs_pretraining(m))} needs the encoder "
                         f"pre-training functions, which this installation lacks: {', '.join(missing)}. Fix: update "
                         "nnunet-ext, or leave the paper protocol out with --methods.")

    import torch

    from nnunet_ext.conversion.synthetic_liver import convert_synthetic_liver
    from nnunet_ext.data.metadata import validate_raw_dataset
    from nnunet_ext.metrics.classification import prior_entropy
    from nnunet_ext.workflows import plan_vanilla_and_stdnet, quiet, stage, use_workspace

    root = os.path.abspath(args.output)
    env = use_workspace(root)
    put_benchmark_trainers_on_search_path()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    logs = os.path.join(root, "logs")
    schedule = module.LEARNING_CHECK_SCHEDULES[args.schedule]
    shape = tuple(args.shape)

    stage(f"synthetic multiphase liver CT: {args.n_train} training + {args.n_test} held-out cases of "
          f"{'x'.join(map(str, shape))} voxels")
    with quiet(os.path.join(logs, "generate.log")):
        train_folder = convert_synthetic_liver(TRAIN_ID, n_cases=args.n_train, shape=shape, seed=0, progress=False)
        test_folder = convert_synthetic_liver(TEST_ID, n_cases=args.n_test, shape=shape, seed=1000, name=TEST_NAME,
                                              progress=False)
    train_md = validate_raw_dataset(train_folder)
    num_classes = train_md.num_classes
    ctx = {"root": root, "logs": logs, "train_name": os.path.basename(os.path.normpath(train_folder)),
           "test_folder": test_folder, "num_classes": num_classes,
           "prior_ce": prior_entropy([r.class_index for r in train_md.cases.values() if r.class_index is not None],
                                     num_classes)}

    stage("plan and preprocess: vanilla nnU-Net plans, then STDNetPlannerCPU (reuses the vanilla data)")
    ctx["stdnet_plans"] = plan_vanilla_and_stdnet(TRAIN_ID, DEVICE, os.path.join(logs, "plan.log"), CONFIGURATION)
    if any(needs_pretraining(m) for m in args.methods):
        stage("paper protocol: reference-phase dataset and pre-training plans with the STD-Net U-Net topology")
        ctx["reference_name"] = prepare_pretraining(train_folder, ctx["stdnet_plans"], logs)

    timings = Timings(root)

    def train_and_predict(method: str, seed: int) -> dict:
        plans = ctx["stdnet_plans"] if method.startswith("STDNet") else "nnUNetPlans"
        run = run_method(method, plans, seed, args.schedule, ctx, timings)
        print(f"    {method} seed {seed}: CE {_f(run['ce_epoch1'])} -> {_f(run['ce_last'])}, held-out AUC "
              f"{_f(run['heldout_auc']['estimate'])}, {run['seconds']['total'] / 60:.1f} min", file=sys.stderr,
              flush=True)
        return run

    runs = run_seeds(args, schedule, env, train_and_predict)
    result = _jsonable({
        "benchmark": "stdnet_learning_check",
        "command": shlex.join([".venv/bin/python", "benchmarks/stdnet_learning_check.py", *argv]),
        "machine": machine(load_at_start), "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "config": {"n_train": args.n_train, "n_test": args.n_test, "shape": list(shape), "seeds": args.seeds,
                   "methods": args.methods, "fold": 0, "configuration": CONFIGURATION, "device": DEVICE,
                   "schedule": schedule_record(args.schedule, schedule),
                   "num_classes": num_classes, "class_names": train_md.class_names,
                   "ce_threshold": CE_FRACTION * math.log(num_classes), "prior_ce": ctx["prior_ce"],
                   "datasets": {"train": train_folder, "test": test_folder,
                                "pretraining": ctx.get("reference_name")}},
        "runs": runs, "wall_seconds": time.time() - t_start})
    with open(os.path.join(root, RESULT_FILE), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(markdown_table(runs, num_classes))
    print(f"\n{os.path.join(root, RESULT_FILE)}; wall {(time.time() - t_start) / 60:.1f} min", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
