"""The ``nnunet-ext`` command. Each subcommand is a thin argparse layer over a plain function; flags follow
nnU-Net's (``-d -c -f -tr -p -pl -i -o -np -device``).

Subcommands register themselves through ``add_parser(subparsers)`` functions listed in :data:`COMMAND_MODULES`, so
that the conversion, benchmark and demo modules own their flags.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import warnings

COMMAND_MODULES = (
    "nnunet_ext.cli",  # the core commands below
    "nnunet_ext.conversion.cli",
    "nnunet_ext.evaluation.cli",
    "nnunet_ext.demo",
)


def _trainer_path(args) -> None:
    from nnunet_ext.trainers import trainer_discovery_path

    print(trainer_discovery_path())


def _validate(args) -> None:
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_ext.data.metadata import validate_raw_dataset

    folder = args.folder or os.path.join(nnUNet_raw.get(), maybe_convert_to_dataset_name(args.d))
    md = validate_raw_dataset(folder)
    if md is None:
        print(f"{folder}: no nnunet_ext metadata (a plain nnU-Net dataset).")
    else:
        n_lab = len(md.labeled_case_ids())
        print(f"{folder}: metadata OK: {len(md.cases)} cases, {n_lab} labeled, classes {md.class_names}, "
              f"phases {md.phases} (reference {md.reference_phase}), tabular {md.tabular_features}")


def _plan(args) -> None:
    from nnunet_ext.planners.api import plan_and_preprocess

    for d in args.d:
        ident = plan_and_preprocess(int(d), args.pl, tuple(args.c), args.np, args.verify_dataset_integrity,
                                    args.gpu_memory_target, args.overwrite_plans_name, args.clean, args.verbose)
        print(f"Dataset {d}: plans {ident}")


def _train(args) -> None:
    from nnunet_ext.trainers.run import train

    train(args.d, args.c, args.f, args.tr, args.p, device=args.device, continue_training=args.c_continue,
          only_validation=args.val)


def _predict(args) -> None:
    from nnunet_ext.inference.predict import model_folder_from_args, predict

    model = args.m or model_folder_from_args(args.d, args.tr, args.p, args.c)
    folds = None if args.f is None else [f if f == "all" else int(f) for f in args.f]
    predict(args.i, args.o, model, folds, args.chk, args.step_size, args.disable_tta, args.device, args.npp,
            args.nps, args.save_probabilities, args.verbose)
    print(f"Predictions written to {args.o}")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_parser(sub) -> None:
    p = sub.add_parser("trainer-path", help="print the folder to export as nnUNet_extTrainer")
    p.set_defaults(func=_trainer_path)

    p = sub.add_parser("validate", help="validate the case-level metadata of a raw dataset")
    p.add_argument("-d", help="dataset id or name (in nnUNet_raw)")
    p.add_argument("--folder", help="or: a raw dataset folder")
    p.set_defaults(func=_validate)

    p = sub.add_parser("plan-and-preprocess", help="fingerprint, plan (any planner, ours included), preprocess")
    p.add_argument("-d", nargs="+", required=True, help="dataset id(s)")
    p.add_argument("-pl", default="ExperimentPlanner", help="planner class, e.g. STDNetPlanner")
    p.add_argument("-c", nargs="+", default=["2d", "3d_fullres", "3d_lowres"], help="configurations to preprocess")
    p.add_argument("-np", type=int, default=2, help="processes for fingerprint and preprocessing")
    p.add_argument("-gpu_memory_target", type=float, default=None, help="VRAM target in GB")
    p.add_argument("-overwrite_plans_name", default=None)
    p.add_argument("--verify_dataset_integrity", action="store_true")
    p.add_argument("--clean", action="store_true", help="recompute the fingerprint and all preprocessed data")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_plan)

    p = sub.add_parser("train", help="nnUNetv2_train with nnunet-ext trainers on the search path")
    p.add_argument("d", help="dataset id or name")
    p.add_argument("c", help="configuration")
    p.add_argument("f", help="fold (0-4 or all)")
    p.add_argument("-tr", default="EarlyFusionTrainer")
    p.add_argument("-p", default="nnUNetPlans")
    p.add_argument("-device", default=_default_device())
    p.add_argument("--c", dest="c_continue", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--val", action="store_true", help="only run the final validation")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="nnUNetv2_predict plus classification.csv / classification.json")
    p.add_argument("-i", required=True, help="input folder (CASE_XXXX.nii.gz files)")
    p.add_argument("-o", required=True, help="output folder")
    p.add_argument("-d", help="dataset id or name")
    p.add_argument("-c", default="3d_fullres")
    p.add_argument("-tr", default="EarlyFusionTrainer")
    p.add_argument("-p", default="nnUNetPlans")
    p.add_argument("-m", help="or: a trained model folder (overrides -d/-tr/-p/-c)")
    p.add_argument("-f", nargs="+", default=None, help="folds to ensemble (default: all found)")
    p.add_argument("-chk", default="checkpoint_final.pth")
    p.add_argument("-step_size", type=float, default=0.5)
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    p.add_argument("-device", default=_default_device())
    p.add_argument("-npp", type=int, default=2, help="preprocessing processes")
    p.add_argument("-nps", type=int, default=2, help="export processes")
    p.add_argument("--save_probabilities", action="store_true")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-ext", description="STD-Net and multi-task extensions for nnU-Net v2.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a command module that is not part of this installation yet
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # timm (imported by dynamic-network-architectures) uses torch.jit.interface; the deprecation is not ours to fix
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)
    from nnunet_ext.errors import NnunetExtError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "nnunet-ext " + shlex.join(argv)  # reports record the literal command
    try:
        args.func(args)
    except NnunetExtError as e:
        print(f"nnunet-ext {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
