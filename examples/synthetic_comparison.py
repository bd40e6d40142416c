"""Does spatio-temporal decoupling help? STD-Net, its three ablations, early fusion and vanilla nnU-Net on synthetic
multiphase liver CT with inter-phase misalignment, same schedule and folds for every method.

    python examples/synthetic_comparison.py -o runs/synthetic --n-cases 100 --folds 0 1 2 3 4 --schedule 50epochs
    python examples/synthetic_comparison.py --smoke          # CI: a few iterations, checks the plumbing
    python examples/synthetic_comparison.py -o runs/gpu -device cuda --schedule gpu2500 --jobs 6   # one GPU, 6 at once
    python examples/synthetic_comparison.py ... --methods nnUNetTrainer STDNetTrainer STDNetTrainer_predictionPool

Methods (trainer, plans): nnUNetTrainer (vanilla nnU-Net, segmentation only; the reference), EarlyFusionTrainer
(nnU-Net + head: the "joint 4D CNN"), STDNetTrainer, STDNetTrainer_noTemporal, STDNetTrainer_noWeightSharing,
STDNetTrainer_ConvGRU; with ``--controls`` also STDNetTrainer_predictionPool (the head pools with the predicted
lesion in training steps too, instead of the ground truth: the pooling control) and STDNetTrainer_nnUNetSGD (every
parameter with nnU-Net's SGD instead of AdamW for the temporal modeler and head: the optimizer control). Only with
``--methods``: the diagnostics STDNetTrainer_shallowTemporal and STDNetTrainer_headLR1e4. Controls and diagnostics
are not part of the package: they live in ``benchmarks/trainers/head_diagnostics.py``, which this script adds to
``nnUNet_extTrainer`` when one of them is trained. STD-Net uses ``STDNetPlans`` on a GPU (paper-size temporal
modeler) and ``STDNetPlansCPU`` (reduced temporal modeler) on a CPU. The benchmark report (``nnunet-ext benchmark`` with
STDNetTrainer as the full model of the ablation chart) is written to ``<output>/report``.

The STD-Net paper's ablation ordering (without temporal modeler worst) is the hypothesis, not the expected answer.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from nnunet_ext.workflows import (
    benchmark_methods,
    plan_vanilla_and_stdnet,
    quiet,
    stage,
    start_run,
    train_methods,
)

DATASET_ID = 510
STD_VARIANTS = ("STDNetTrainer", "STDNetTrainer_noTemporal", "STDNetTrainer_noWeightSharing", "STDNetTrainer_ConvGRU")


CONTROLS = ("STDNetTrainer_predictionPool", "STDNetTrainer_nnUNetSGD")


# one suspect each for the Transformer head that stays at the class prior (benchmarks/trainers/head_diagnostics.py)
DIAGNOSTICS = ("STDNetTrainer_shallowTemporal", "STDNetTrainer_headLR1e4")
DIAGNOSTIC_TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                                         "trainers")


ALL_METHODS = ("nnUNetTrainer", "EarlyFusionTrainer") + STD_VARIANTS + CONTROLS + DIAGNOSTICS


def methods(schedule: str, stdnet_plans: str, controls: bool = False,
            only: list[str] | None = None) -> list[tuple[str, str]]:
    """(trainer, plans) per method; ``only``: a subset of :data:`ALL_METHODS` (names without the schedule suffix),
    kept in the order of ``ALL_METHODS`` so that the first is still the reference of the report."""
    if only:
        unknown = sorted(set(only) - set(ALL_METHODS))
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; choose from {list(ALL_METHODS)}")
        names = [m for m in ALL_METHODS if m in only]
    else:
        names = ["nnUNetTrainer", "EarlyFusionTrainer", *STD_VARIANTS, *(CONTROLS if controls else ())]
    return [(f"{t}_{schedule}", "nnUNetPlans" if t in ("nnUNetTrainer", "EarlyFusionTrainer") else stdnet_plans)
            for t in names]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-o", "--output", default="runs/synthetic_comparison", help="workspace (nnUNet_* folders)")
    p.add_argument("--n-cases", type=int, default=100)
    p.add_argument("--shape", type=int, nargs=3, default=[32, 48, 48], metavar=("Z", "Y", "X"))
    p.add_argument("--max-shift-mm", type=float, default=3.0, help="inter-phase misalignment")
    p.add_argument("--max-rotation-deg", type=float, default=3.0)
    p.add_argument("--folds", nargs="+", default=["0"])
    p.add_argument("--schedule", default="cpu240", help="trainer suffix: smoke, demo, cpu240, 50epochs, ...")
    p.add_argument("-device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="trainings run at once (one process each; useful on a GPU)")
    p.add_argument("--controls", action="store_true",
                   help="also train the controls STDNetTrainer_predictionPool and STDNetTrainer_nnUNetSGD")
    p.add_argument("--methods", nargs="+", default=None, metavar="TRAINER",
                   help=f"train and compare only these (without schedule suffix; any of {', '.join(ALL_METHODS)}); "
                        "the first in that order is the report's reference")
    p.add_argument("--smoke", action="store_true", help="tiny data and the smoke schedule (CI)")
    args = p.parse_args(argv)
    if args.smoke:
        args.n_cases, args.shape, args.schedule, args.folds = 10, [16, 32, 32], "smoke", ["0"]

    from nnunet_ext.conversion.synthetic_liver import convert_synthetic_liver

    device, root, logs = start_run(args.output, args.device)
    name = f"Dataset{DATASET_ID}_SyntheticLiverMisaligned"

    stage(f"synthetic multiphase liver CT: {args.n_cases} cases of {'x'.join(map(str, args.shape))}, misalignment "
          f"up to {args.max_shift_mm} mm / {args.max_rotation_deg} deg")
    with quiet(os.path.join(logs, "generate.log")):
        convert_synthetic_liver(DATASET_ID, n_cases=args.n_cases, shape=tuple(args.shape), seed=args.seed,
                                max_shift_mm=args.max_shift_mm, max_rotation_deg=args.max_rotation_deg,
                                name=name.split("_", 1)[1], progress=False)
    stdnet_plans = plan_vanilla_and_stdnet(DATASET_ID, device, os.path.join(logs, "plan.log"))
    todo = methods(args.schedule, stdnet_plans, args.controls, args.methods)
    if any(t.rsplit("_", 1)[0] in CONTROLS + DIAGNOSTICS for t, _ in todo):
        current = os.environ.get("nnUNet_extTrainer", "")
        if DIAGNOSTIC_TRAINER_FOLDER not in current.split(os.pathsep):
            os.environ["nnUNet_extTrainer"] = os.pathsep.join(p for p in (current, DIAGNOSTIC_TRAINER_FOLDER) if p)
    stage(f"train {len(todo)} methods x folds {args.folds} ({device}, schedule {args.schedule})")
    train_methods(name, todo, args.folds, device, logs, jobs=args.jobs)
    stage("benchmark")
    command = "python examples/synthetic_comparison.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    res = benchmark_methods(DATASET_ID, todo, args.folds, device, os.path.join(root, "report"),
                            command, full_model=f"STDNetTrainer_{args.schedule}"
                            if any(t == f"STDNetTrainer_{args.schedule}" for t, _ in todo) else None,
                            log_path=os.path.join(logs, "benchmark.log"), efficiency=not args.smoke)
    print(f"report: {os.path.join(res.output_folder, 'report.md')}")
    return {"benchmark": res, "dataset": name}


if __name__ == "__main__":
    main()
