"""``nnunet-ext demo`` (what ``make demo`` runs): the whole product on synthetic multiphase liver CT.

1. generate a training set and a separate held-out test set with :func:`convert_synthetic_liver` (lesion classes
   defined by their enhancement over arterial / portal venous / delayed phases, random inter-phase misalignment);
2. plan and preprocess vanilla (``nnUNetPlans``) and with ``STDNetPlanner`` (which reuses the vanilla data);
3. train fold 0 of the early-fusion baseline (nnU-Net's U-Net on the stacked phases + a lesion-type head) and STD-Net
   on the ``_demo`` schedule (600 iterations) with the stock nnU-Net training code. Two methods on small volumes
   (16x32x32) rather than three on larger ones, so that on a 2-core CPU both learn to find lesions within the
   15-minute budget; vanilla nnU-Net is the early-fusion network without its head (``nnUNetTrainer_demo`` trains it);
4. predict the held-out cases (segmentations + ``classification.csv``) with ``nnunet-ext predict``, and write
   STD-Net's attention over the phases per held-out lesion with ``nnunet-ext attention``;
5. run ``nnunet-ext benchmark`` on the fold-0 validation predictions;
6. print a results table and where the report and plots are.

Everything lives under ``--output`` (default ``./demo_output``); nnU-Net's own log lines go to
``<output>/logs/*.log``. A re-run reuses what is already there (the generators are deterministic and finished
trainings are not repeated); ``--fresh`` starts over. GPU when available, else CPU.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

from nnunet_ext.workflows import (
    cpu_friendly_processes,
    model_folder,
    quiet,
    stage,
    stdnet_planner_for,
    train_if_needed,
    use_workspace,
)

TRAIN_ID, TEST_ID = 500, 501
TRAIN_NAME = f"Dataset{TRAIN_ID}_SyntheticLiver"


def trainers(device: str, schedule: str = "demo") -> tuple[tuple[str, str], ...]:
    """(trainer, plans) of the demo; the first is the benchmark's reference. On a CPU STD-Net uses ``STDNetPlansCPU``
    (reduced temporal modeler, D=64, L=2); on a GPU the paper's ``STDNetPlans`` (D=768, L=6, h=8)."""
    stdnet_plans = stdnet_planner_for(device)[1]
    return ((f"EarlyFusionTrainer_{schedule}", "nnUNetPlans"), (f"STDNetTrainer_{schedule}", stdnet_plans))


DEMO_MARKER = ".nnunet_ext_demo_workspace"  # written into every demo output folder; --fresh deletes only those


def remove_demo_workspace(folder: str) -> None:
    """``--fresh``: delete ``folder`` if it is empty or a demo workspace (holds :data:`DEMO_MARKER`); anything else
    might be the user's and is refused."""
    from nnunet_ext.errors import NnunetExtError

    if os.listdir(folder) and not os.path.isfile(os.path.join(folder, DEMO_MARKER)):
        raise NnunetExtError(f"--fresh: {folder} is not a demo workspace (no {DEMO_MARKER} in it), so it is not "
                             "deleted. Fix: pick another -o folder, or delete this one yourself if it is a demo "
                             "output of an older version.")
    shutil.rmtree(folder)


@dataclass
class DemoConfig:
    output: str = "demo_output"
    device: str | None = None
    n_train: int = 24
    n_test: int = 9
    shape: tuple[int, int, int] = (16, 32, 32)
    seed: int = 0
    fresh: bool = False
    schedule: str = "demo"  # the tests run the same code on "smoke"


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo end to end; returns the benchmark result and the held-out predictions' folders."""
    import torch

    t0 = time.time()
    cfg.device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.fresh and os.path.isdir(cfg.output):
        remove_demo_workspace(cfg.output)
    env = use_workspace(cfg.output)
    open(os.path.join(cfg.output, DEMO_MARKER), "a", encoding="utf-8").close()
    cpu_friendly_processes(cfg.device)
    # the trainings are seeded too (unless nnUNet_ext_seed is already set), so the demo repeats on the same machine
    from nnunet_ext.trainers.seeding import SEED_ENV

    os.environ.setdefault(SEED_ENV, str(cfg.seed))
    logs = os.path.join(os.path.abspath(cfg.output), "logs")

    from nnunet_ext.conversion.synthetic_liver import convert_synthetic_liver
    from nnunet_ext.evaluation.benchmark import run_benchmark
    from nnunet_ext.inference.attention import phase_attention
    from nnunet_ext.inference.predict import predict
    from nnunet_ext.planners.api import plan_and_preprocess

    stage(f"1/6 synthetic multiphase liver CT: {cfg.n_train} training + {cfg.n_test} held-out cases "
           f"of {'x'.join(map(str, cfg.shape))} voxels")
    with quiet(os.path.join(logs, "generate.log")):
        convert_synthetic_liver(TRAIN_ID, n_cases=cfg.n_train, shape=cfg.shape, seed=cfg.seed)
        test_folder = convert_synthetic_liver(TEST_ID, n_cases=cfg.n_test, shape=cfg.shape, seed=cfg.seed + 1000,
                                              name="SyntheticLiverTest")

    planner = stdnet_planner_for(cfg.device)[0]
    stage(f"2/6 plan and preprocess: vanilla nnU-Net plans, then {planner} (reuses the vanilla data)")
    with quiet(os.path.join(logs, "plan.log")):
        plan_and_preprocess(TRAIN_ID, "ExperimentPlanner", ("3d_fullres",), num_processes=2)
        plan_and_preprocess(TRAIN_ID, planner, ("3d_fullres",), num_processes=2)

    methods = trainers(cfg.device, cfg.schedule)
    stage(f"3/6 train fold 0 on the short {cfg.schedule} schedule ({cfg.device}): " + ", ".join(t for t, _ in methods))
    for trainer, plans in methods:
        train_if_needed(TRAIN_NAME, "3d_fullres", 0, trainer, plans, cfg.device,
                        os.path.join(logs, f"train_{trainer}.log"))

    stage("4/6 predict the held-out cases (segmentations + classification.csv; STD-Net's attention over phases per "
          "lesion)")
    predictions = {}
    for trainer, plans in methods:
        out = os.path.join(os.path.abspath(cfg.output), "predictions_heldout", trainer)
        model = model_folder(TRAIN_NAME, trainer, plans)
        with quiet(os.path.join(logs, f"predict_{trainer}.log")):
            predict(os.path.join(test_folder, "imagesTr"), out, model, folds=[0], device=cfg.device,
                    disable_tta=cfg.device == "cpu", num_processes_preprocessing=1, num_processes_export=1)
        predictions[trainer] = out
    stdnet, stdnet_plans = methods[-1]
    attention = os.path.join(os.path.abspath(cfg.output), "attention_heldout")
    with quiet(os.path.join(logs, "attention.log")):
        phase_attention(os.path.join(test_folder, "imagesTr"), attention,
                        model_folder(TRAIN_NAME, stdnet, stdnet_plans), folds=[0], device=cfg.device,
                        reference_folder=os.path.join(test_folder, "labelsTr"))

    stage("5/6 nnunet-ext benchmark on the fold-0 validation predictions")
    with quiet(os.path.join(logs, "benchmark.log")):
        res = run_benchmark(TRAIN_ID, [t if p == "nnUNetPlans" else f"{t}:{p}" for t, p in methods[1:]],
                            reference=methods[0][0], folds=[0], device=cfg.device,
                            full_model=stdnet, command="nnunet-ext demo")
    heldout = heldout_scores(test_folder, predictions)

    stage("6/6 results")
    print(results_table(res, heldout, cfg, time.time() - t0))
    return {"benchmark": res, "heldout": heldout, "predictions": predictions, "env": env}


def heldout_scores(test_folder: str, predictions: dict[str, str]) -> dict[str, dict]:
    """Mean liver and lesion Dice and case accuracy of each method on the held-out set (the test dataset's truth)."""
    import csv

    import numpy as np
    import SimpleITK as sitk

    from nnunet_ext.data.metadata import validate_raw_dataset
    from nnunet_ext.metrics.classification import head_collapse
    from nnunet_ext.metrics.segmentation import dice

    md = validate_raw_dataset(test_folder)
    out = {}
    for trainer, folder in predictions.items():
        dices, liver, correct, probs = [], [], [], {}
        for case in sorted(md.cases):
            ref = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(test_folder, "labelsTr", f"{case}.nii.gz")))
            pred = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, f"{case}.nii.gz")))
            dices.append(dice(pred == 2, ref == 2))
            liver.append(dice(pred == 1, ref == 1))
        csv_path = os.path.join(folder, "classification.csv")
        if os.path.isfile(csv_path):
            with open(csv_path, encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    true = md.cases[row["case_id"]].class_index
                    correct.append(md.class_names[true] == row["predicted_class"])
                    probs[row["case_id"]] = [float(row[f"prob_{c}"]) for c in md.class_names]
        spread = head_collapse(np.array(list(probs.values())))["probability_spread"] if probs else float("nan")
        out[trainer] = {"lesion_dice": float(np.nanmean(dices)), "liver_dice": float(np.nanmean(liver)),
                        "accuracy": float(np.mean(correct)) if correct else float("nan"), "n": len(dices),
                        "probability_spread": spread, "probabilities": probs, "class_names": list(md.class_names)}
    return out


def results_table(res, heldout: dict, cfg: DemoConfig, seconds: float) -> str:
    """Plain-text summary: fold-0 validation (from the benchmark) and the held-out set, per method."""
    from nnunet_ext.trainers.schedules import SCHEDULES

    s = SCHEDULES[cfg.schedule]
    lesion = res.lesion[0]
    dice = {(r["method"], r["structure"]): r["mean"] for r in res.segmentation
            if r["metric"] == "dice" and r["subset"] == "all"}
    cls = (res.classification or {}).get("results", {})
    lines = [
        "",
        f"SHORT SCHEDULE: {s.num_epochs} epochs x {s.iterations_per_epoch} iterations, fold 0 only, "
        f"{cfg.n_train} synthetic training cases of {'x'.join(map(str, cfg.shape))} voxels, {cfg.device}. Enough to "
        "see both methods find lesions;",
        "far too short, on too few cases, to say which method is better (benchmarks/stdnet_learning_check.py, "
        "examples/synthetic_comparison.py).",
        "",
        f"{'':<40}{'fold-0 validation':^39}  {'held-out set':^37}",
        f"{'method (plans)':<40}{'liver Dice':>11}{'lesion Dice':>12}{'AUC':>8}{'acc':>8}  {'liver Dice':>11}"
        f"{'lesion Dice':>12}{'acc':>8}{'p spread':>10}",
    ]
    for spec in res.methods:
        m = spec.name
        summary = cls.get(m, {}).get("summary", {})
        h = heldout.get(spec.trainer, {})
        lines.append(f"{f'{spec.trainer} ({spec.plans})':<40}{_fmt(dice.get((m, 'liver'))):>11}"
                     f"{_fmt(dice.get((m, lesion))):>12}{_fmt(summary.get('auc_ovr_macro')):>8}"
                     f"{_fmt(summary.get('accuracy')):>8}  {_fmt(h.get('liver_dice')):>11}"
                     f"{_fmt(h.get('lesion_dice')):>12}{_fmt(h.get('accuracy')):>8}"
                     f"{_fmt(h.get('probability_spread')):>10}")
    n_val = len(res.cases)
    lines += [f"(validation: {n_val} fold-0 cases; held-out: {next(iter(heldout.values()))['n']} cases; '-' = the "
              "method has no classification head; p spread: mean over classes of the standard deviation of the "
              "held-out probabilities across cases, 0 = the same probabilities for every case)", ""]
    for trainer, h in heldout.items():
        shown = list(h.get("probabilities", {}).items())[:3]
        if shown:
            lines.append(f"{trainer}: held-out class probabilities ({', '.join(h['class_names'])}): "
                         + "; ".join(f"{case} {' '.join(f'{p:.2f}' for p in ps)}" for case, ps in shown))
    lines += [
              "", f"report:      {os.path.join(res.output_folder, 'report.md')}",
              f"plots:       {res.output_folder}/*.png",
              f"predictions: {os.path.join(os.path.abspath(cfg.output), 'predictions_heldout')}/<method>/"
              "(*.nii.gz, classification.csv)",
              f"attention:   {os.path.join(os.path.abspath(cfg.output), 'attention_heldout')}/ (STD-Net's attention "
              "over phases per held-out lesion: phase_attention.csv, one plot per case)",
              f"total time:  {seconds / 60:.1f} min"]
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"


def _demo(args) -> None:
    cfg = DemoConfig(output=args.o, device=args.device, n_train=args.n_train, n_test=args.n_test,
                     shape=tuple(args.shape), seed=args.seed, fresh=args.fresh)
    run_demo(cfg)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job on synthetic multiphase CT (what `make demo` runs)")
    p.add_argument("-o", default="demo_output", help="output folder (nnUNet_raw/preprocessed/results inside)")
    p.add_argument("-device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--n-train", type=int, default=DemoConfig.n_train)
    p.add_argument("--n-test", type=int, default=DemoConfig.n_test)
    p.add_argument("--shape", type=int, nargs=3, default=list(DemoConfig.shape), metavar=("Z", "Y", "X"))
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of the trainings "
                   "(nnUNet_ext_seed, unless already set)")
    p.add_argument("--fresh", action="store_true", help="delete the output folder first")
    p.set_defaults(func=_demo)
