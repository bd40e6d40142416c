"""``nnunet-ext benchmark`` and ``nnunet-ext robustness``: thin argparse layers over
:func:`~nnunet_ext.evaluation.benchmark.run_benchmark` and :func:`~nnunet_ext.evaluation.robustness.run_robustness`.
"""

from __future__ import annotations

import argparse
import os
import shlex

from nnunet_ext.metrics.statistics import DEFAULT_N_BOOTSTRAP, DEFAULT_SEED

_PARSERS: dict[str, argparse.ArgumentParser] = {}


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _default_processes() -> int:
    from nnunetv2.configuration import default_num_processes

    return int(default_num_processes)


def command_line(args: argparse.Namespace) -> str:
    """The command as typed when run from a shell; otherwise (called from Python) an equivalent command with every
    option written out, so that the report always states how to reproduce it."""
    if getattr(args, "command_line", None):  # set by nnunet_ext.cli.main from the argv it parsed
        return args.command_line
    parts = ["nnunet-ext", args.command]
    for action in _PARSERS[args.command]._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            parts += [flag] if value else []
        elif value is not None:
            parts += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return shlex.join(parts)


def _benchmark(args) -> None:
    if args.trust_checkpoint:  # the checkpoint loader of the efficiency step reads this (data/checkpoints.py)
        from nnunet_ext.data.checkpoints import TRUST_ENV

        os.environ[TRUST_ENV] = "1"
    from nnunet_ext.evaluation.benchmark import DEFAULT_SMALL_LESION_MM3, run_benchmark

    if args.small_lesion_voxels is not None:
        threshold, unit = float(args.small_lesion_voxels), "voxels"
    else:
        threshold = DEFAULT_SMALL_LESION_MM3 if args.small_lesion_mm3 is None else args.small_lesion_mm3
        unit = "mm3"
    res = run_benchmark(args.d, args.m, args.ref, args.f, args.o, threshold, unit, args.labels, args.lesion_label,
                        args.np, args.device, args.full_model, args.n_bootstrap, args.seed,
                        not args.skip_efficiency, args.timing_repeats, command_line(args))
    dropped = f" ({len(res.dropped)} case(s) dropped, see dropped_cases.csv)" if res.dropped else ""
    print(f"Benchmark of {len(res.methods)} methods on {len(res.cases)} cases (folds {res.folds}){dropped} written "
          f"to {os.path.join(res.output_folder, 'report.md')}")


def _robustness(args) -> None:
    from nnunet_ext.evaluation.robustness import run_robustness

    summary = run_robustness(args.d, args.tr, args.i, args.o, args.p, args.c, args.f, args.l, args.max_shift_mm,
                             args.max_rotation_deg, args.noise_std, args.repeats, args.seed, args.device,
                             args.fix_reference_phase, args.chk, args.disable_tta, args.n_bootstrap,
                             command_line(args), args.m, args.cases,
                             trust_checkpoint=True if args.trust_checkpoint else None, texts=args.texts,
                             tabular=args.tabular, allow_missing_text=args.allow_missing_text)
    print(f"Robustness of {summary['model_folder']} on {len(summary['cases'])} cases written to {args.o}")


def add_parser(sub) -> None:
    p = sub.add_parser("benchmark", help="compare trained methods with a reference (default vanilla nnU-Net) on "
                                         "their cross-validation predictions: metrics, CIs, tests, plots, report.md",
                       description="Per-case Dice/HD95/ASSD (+ classification) of each method's fold_k/validation "
                                   "predictions, bootstrap CIs and paired tests against the reference.")
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-m", nargs="+", required=True, metavar="TRAINER[:PLANS[:CONFIG]]",
                   help="methods (plans default nnUNetPlans, configuration default 3d_fullres)")
    p.add_argument("-ref", default="nnUNetTrainer", metavar="TRAINER[:PLANS[:CONFIG]]",
                   help="reference method (default: vanilla nnUNetTrainer); added to -m if missing")
    p.add_argument("-f", nargs="+", default=None, help="folds (default: every fold present for all methods)")
    p.add_argument("-o", default=None, help="output folder (default: $nnUNet_results/DatasetXXX/benchmark)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--small-lesion-mm3", type=float, default=None,
                      help="lesions below this total reference volume per case are 'small' (default 523.6 mm^3, a "
                           "10 mm sphere)")
    size.add_argument("--small-lesion-voxels", type=int, default=None, help="the same threshold in voxels")
    p.add_argument("--labels", nargs="+", default=None, help="only these structures (names or label values)")
    p.add_argument("--lesion-label", type=int, default=None,
                   help="the lesion label (default: the metadata's classification.lesion_labels, else labels named "
                        "like a lesion, else every foreground label; docs/benchmarking.md)")
    p.add_argument("--full-model", default=None, help="the full model of an ablation study (adds ablation.png)")
    p.add_argument("-np", type=int, default=_default_processes(), help="processes for the per-case metrics")
    p.add_argument("-device", default=_default_device(), help="device for the efficiency measurements")
    p.add_argument("--n-bootstrap", type=int, default=DEFAULT_N_BOOTSTRAP, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="bootstrap seed")
    p.add_argument("--skip-efficiency", action="store_true", help="no parameter/FLOP/memory/time measurements")
    p.add_argument("--timing-repeats", type=int, default=1, help="timed inference runs per method (median)")
    p.add_argument("--trust-checkpoint", dest="trust_checkpoint", action="store_true",
                   help="accept checkpoints that need unsafe unpickling for the efficiency step (they can run code: "
                        "only for model folders from a trusted source)")
    p.set_defaults(func=_benchmark)
    _PARSERS["benchmark"] = p

    p = sub.add_parser("robustness", help="Dice/AUC degradation of a multiphase model under random per-phase rigid "
                                          "misregistration",
                       description="Predict every case unperturbed and with an independent random rigid transform "
                                   "per phase; report the degradation with bootstrap CIs and paired tests.")
    p.add_argument("-d", default=None, help="dataset id or name of the trained model")
    p.add_argument("-tr", default="EarlyFusionTrainer", help="trainer")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-c", default="3d_fullres", help="configuration")
    p.add_argument("-m", default=None, help="or: a trained model folder (overrides -d/-tr/-p/-c)")
    p.add_argument("-f", nargs="+", default=None, help="folds to ensemble (default: all trained)")
    p.add_argument("-chk", default="checkpoint_final.pth")
    p.add_argument("-i", required=True, help="raw dataset folder (imagesTr, labelsTr, dataset.json) or images")
    p.add_argument("-l", default=None, help="labels folder (required when -i is an images folder)")
    p.add_argument("--cases", nargs="+", default=None, help="only these case ids")
    p.add_argument("--max-shift-mm", type=float, default=5.0, help="max |shift| per axis and phase (mm)")
    p.add_argument("--max-rotation-deg", type=float, default=7.0, help="max |angle| per axis and phase (degrees)")
    p.add_argument("--noise-std", type=float, default=0.0, help="Gaussian noise std in intensity units")
    p.add_argument("--fix-reference-phase", action="store_true", help="leave the reference phase unperturbed")
    p.add_argument("--repeats", type=int, default=1, help="perturbed predictions per case")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--n-bootstrap", type=int, default=DEFAULT_N_BOOTSTRAP, help="bootstrap resamples")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    p.add_argument("-o", required=True, help="output folder")
    p.add_argument("-device", default=_default_device())
    p.add_argument("--trust-checkpoint", dest="trust_checkpoint", action="store_true",
                   help="accept a checkpoint that needs unsafe unpickling (it can run code: only for a model folder "
                        "from a trusted source)")
    p.add_argument("--tabular", default=None,
                   help="for a model whose network consumes tabular features: CSV/JSON as for nnunet-ext predict "
                        "(default: the features in -i's dataset.json)")
    p.add_argument("--texts", default=None,
                   help="for a model whose network consumes texts: CSV/JSON as for nnunet-ext predict (default: the "
                        "texts in -i's dataset.json)")
    p.add_argument("--allow-missing-text", action="store_true",
                   help="cases without a text use the network's learned 'no text' embedding")
    p.set_defaults(func=_robustness)
    _PARSERS["robustness"] = p
