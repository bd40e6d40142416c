"""The ``nnunet-ext`` command. Each subcommand is a thin argparse layer over a plain function; flags follow
nnU-Net's (``-d -c -f -tr -p -pl -i -o -np -device``).

Subcommands register themselves through ``add_parser(subparsers)`` functions listed in :data:`COMMAND_MODULES`, so
that the conversion, benchmark and demo modules own their flags.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import sys
import warnings

from nnunet_ext.errors import NnunetExtError

COMMAND_MODULES = (
    "nnunet_ext.cli",  # the core commands below
    "nnunet_ext.conversion.cli",
    "nnunet_ext.evaluation.cli",
    "nnunet_ext.planners.pretraining",  # pretrain-plans
    "nnunet_ext.trainers.pretraining",  # expand-pretrained
    "nnunet_ext.demo",
)


class CommandError(NnunetExtError, ValueError):
    """A dataset, model, fold, configuration or trainer named on the command line that does not exist; the message
    says where it was looked for and the fix."""


# the nnU-Net folder a subcommand's -d must exist in (benchmark resolves its own -d)
DATASET_ROOTS = {"validate": "nnUNet_raw", "plan-and-preprocess": "nnUNet_raw", "train": "nnUNet_preprocessed",
                 "predict": "nnUNet_results", "robustness": "nnUNet_results", "attention": "nnUNet_results",
                 "gradcam": "nnUNet_results",
                 "pretrain-plans": "nnUNet_preprocessed", "expand-pretrained": "nnUNet_preprocessed"}
_ROOT_FIX = {
    "nnUNet_raw": "Fix: check the id (the dataset must be a folder nnUNet_raw/DatasetXXX_Name with dataset.json, "
                  "imagesTr and labelsTr; `nnunet-ext convert` writes one) and the nnUNet_raw variable.",
    "nnUNet_preprocessed": "Fix: run `nnunet-ext plan-and-preprocess -d {d}` first, or check the id and the "
                           "nnUNet_preprocessed variable.",
    "nnUNet_results": "Fix: train a model first (`nnunet-ext train {d} CONFIGURATION FOLD`), pass -m MODEL_FOLDER, "
                      "or check the id and the nnUNet_results variable.",
}


def dataset_id_arg(text: str) -> int:
    """argparse type of plan-and-preprocess's -d: a dataset id (901) or name (Dataset901_Name), returned as the id."""
    m = re.fullmatch(r"(?:Dataset)?(\d+)(?:_.*)?", text.strip())
    if m is None or (not text.startswith("Dataset") and "_" in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a dataset id: give an integer such as 901 or a dataset "
                                         "name such as Dataset901_Liver")
    return int(m.group(1))


def fold_arg(text: str) -> str:
    """argparse type of a fold: 'all' or a non-negative integer (kept as the string nnU-Net expects)."""
    if text != "all" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a fold: give 0, 1, 2, 3, 4 (or another split index) or "
                                         "'all'")
    return text


def resolve_dataset(dataset, root: str) -> str:
    """``DatasetXXX_Name`` of ``dataset`` (an id or a name), which must have a folder in the nnU-Net folder ``root``
    (``nnUNet_raw``, ``nnUNet_preprocessed`` or ``nnUNet_results``). Raises :class:`CommandError` naming the
    folders searched and the fix instead of nnU-Net's RuntimeError."""
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    fix = _ROOT_FIX[root].format(d=dataset)
    base = os.environ.get(root)
    if not base:
        raise CommandError(f"{root} is not set, so dataset {dataset} cannot be looked up. Fix: export "
                           f"{root}=/path/to/{root} (see nnU-Net's documentation/setting_up_paths.md).")
    text = str(dataset)
    if text.startswith("Dataset"):
        names = [text]
    else:
        try:
            names = [str(n) for n in find_candidate_datasets(int(text))]
        except ValueError:
            raise CommandError(f"{text!r} is not a dataset id or name. Fix: give an integer such as 901 or a name "
                               "such as Dataset901_Liver.") from None
    if len(names) > 1:
        raise CommandError(f"dataset id {text} matches several dataset names: {', '.join(names)}. Fix: rename or "
                           "remove all but one of these folders (in nnUNet_raw, nnUNet_preprocessed, nnUNet_results).")
    if names and os.path.isdir(os.path.join(base, names[0])):
        return names[0]
    if names:
        elsewhere = [r for r in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
                     if os.environ.get(r) and os.path.isdir(os.path.join(os.environ[r], names[0]))]
        found = f" (it exists in {' and '.join(elsewhere)})" if elsewhere else ""
        raise CommandError(f"dataset {text}: there is no folder {names[0]} in {root} ({base}){found}. {fix}")
    raw, pre, res = (f"{r} ({os.environ.get(r) or 'not set'})"
                     for r in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
    searched = f"{raw}, {pre} or {res}"
    raise CommandError(f"dataset id {text} was not found: no folder Dataset{int(text):03d}_* in {searched}. {fix}")


def _check_dataset_args(args) -> None:
    """Resolve every -d of the command before any work starts (see :data:`DATASET_ROOTS`)."""
    root = DATASET_ROOTS.get(args.command)
    if root is None or getattr(args, "d", None) is None or getattr(args, "m", None) or getattr(args, "folder", None):
        return
    for d in args.d if isinstance(args.d, list) else [args.d]:
        resolve_dataset(d, root)


def _trainer_names() -> tuple[list[str], list[str]]:
    """(nnunet-ext trainers, nnU-Net's own trainers), by class name."""
    import inspect

    import nnunetv2.training.nnUNetTrainer as stock
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunet_ext.trainers as ours
    from nnunet_ext.introspection import subclass_names

    ext = [n for n in ours.__all__ if inspect.isclass(getattr(ours, n, None))]
    return ext, sorted(subclass_names(stock, nnUNetTrainer) - set(ext))


def _find_trainer(name: str) -> type:
    """nnU-Net's trainer lookup (nnunet-ext trainers on the search path), without its prints; a clean error."""
    import contextlib
    import difflib
    import io

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ext.paths import ensure_trainer_path

    ensure_trainer_path()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        ext, stock = _trainer_names()
        close = difflib.get_close_matches(name, ext + stock, n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise CommandError(f"trainer {name!r} was not found among the nnunet-ext trainers nor nnU-Net's "
                           f"(nnunetv2.training.nnUNetTrainer, plus the folders in nnUNet_extTrainer).{hint} Fix: "
                           "pass -tr with an existing trainer class; `nnunet-ext trainers` lists them.") from None


def _trainer_path(args) -> None:
    from nnunet_ext.paths import trainer_discovery_path

    print(trainer_discovery_path())


def _trainers(args) -> None:
    ext, stock = _trainer_names()
    print("nnunet-ext trainers:\n  " + "\n  ".join(ext))
    print("nnU-Net trainers:\n  " + "\n  ".join(stock))


def _validate(args) -> None:
    from nnunetv2.paths import nnUNet_raw

    from nnunet_ext.data.metadata import validate_raw_dataset

    folder = args.folder or os.path.join(nnUNet_raw.get(), resolve_dataset(args.d, "nnUNet_raw"))
    md = validate_raw_dataset(folder)
    if md is None:
        print(f"{folder}: no nnunet_ext metadata (a plain nnU-Net dataset).")
        return
    md.check_trainable(os.path.join(folder, "dataset.json"))
    n_lab = len(md.labeled_case_ids())
    print(f"{folder}: metadata OK: {len(md.cases)} cases, {n_lab} labeled, classes {md.class_names}, "
          f"phases {md.phases} (reference {md.reference_phase}), tabular {md.tabular_features}")


def _plan(args) -> None:
    from nnunet_ext.planners.api import plan_and_preprocess

    for d in args.d:
        ident = plan_and_preprocess(d, args.pl, tuple(args.c), args.np, args.verify_dataset_integrity,
                                    args.gpu_memory_target, args.overwrite_plans_name, args.clean, args.verbose,
                                    text_encoder=args.text_encoder, text_max_tokens=args.text_max_tokens)
        print(f"Dataset {d}: plans {ident}")


def _check_training_inputs(args) -> None:
    """Everything nnU-Net would otherwise trip over after creating the results folder: plans, configuration,
    preprocessed data and trainer."""
    import glob
    import json

    from nnunetv2.paths import nnUNet_preprocessed

    name = resolve_dataset(args.d, "nnUNet_preprocessed")
    folder = os.path.join(nnUNet_preprocessed.get(), name)
    plans_file = os.path.join(folder, args.p + ".json")
    if not os.path.isfile(plans_file):
        have = sorted(os.path.basename(f)[:-5] for f in glob.glob(os.path.join(folder, "*.json"))
                      if os.path.basename(f) not in ("dataset.json", "dataset_fingerprint.json", "splits_final.json"))
        other = f"pass -p with one of {', '.join(have)}, or " if have else ""
        raise CommandError(f"{name} has no plans {args.p!r} ({plans_file} does not exist; plans there: "
                           f"{', '.join(have) or 'none'}). Fix: {other}run `nnunet-ext plan-and-preprocess -d {args.d} "
                           f"-c {args.c}` (with -pl for other planners).")
    with open(plans_file, encoding="utf-8") as f:
        plans = json.load(f)
    configurations = sorted(plans.get("configurations", {}))
    planner = plans.get("experiment_planner_used") or "ExperimentPlanner"
    pl_flag = "" if planner == "ExperimentPlanner" else f" -pl {planner}"
    if pl_flag or args.p != "nnUNetPlans":
        pl_flag += f" -overwrite_plans_name {args.p}"
    if args.c not in configurations:
        raise CommandError(f"configuration {args.c!r} is not defined in the plans {args.p} of {name}; they define "
                           f"{', '.join(configurations)}. Fix: pass one of these.")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    data_identifier = PlansManager(plans_file).get_configuration(args.c).data_identifier
    data_folder = os.path.join(folder, data_identifier)
    if not os.path.isdir(data_folder) or not any(f.endswith(".pkl") for f in os.listdir(data_folder)):
        raise CommandError(f"configuration {args.c!r} of {name} was planned but not preprocessed ({data_folder} "
                           f"{'is empty' if os.path.isdir(data_folder) else 'does not exist'}). Fix: run `nnunet-ext "
                           f"plan-and-preprocess -d {args.d}{pl_flag} -c {args.c}`, then train again.")
    _check_preprocessing_complete(folder, data_folder, f"nnunet-ext plan-and-preprocess -d {args.d}{pl_flag} -c "
                                                       f"{args.c}")
    _find_trainer(args.tr)


def _check_preprocessing_complete(pre_folder: str, data_folder: str, command: str) -> None:
    """Every case of the split and of the metadata has preprocessed data; otherwise preprocessing was interrupted
    (or ran on another set of cases) and the fix is to run it again, not to edit case ids."""
    import json

    from nnunet_ext.data.metadata import METADATA_KEY
    from nnunet_ext.data.splits import SPLITS_FILE

    have = {f[:-len(".pkl")] for f in os.listdir(data_folder) if f.endswith(".pkl")}
    expected: set[str] = set()
    splits = os.path.join(pre_folder, SPLITS_FILE)
    if os.path.isfile(splits):
        with open(splits, encoding="utf-8") as f:
            expected |= {str(k) for fold in json.load(f) for part in ("train", "val") for k in fold.get(part, [])}
    dj_path = os.path.join(pre_folder, "dataset.json")
    if os.path.isfile(dj_path):
        with open(dj_path, encoding="utf-8") as f:
            block = json.load(f).get(METADATA_KEY) or {}
        expected |= {str(k) for k in (block.get("cases") or {})}
    missing = sorted(expected - have)
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        raise CommandError(f"{len(missing)} case(s) of the split / metadata have no preprocessed data in {data_folder}"
                           f" ({shown}): preprocessing was interrupted, or ran on another set of cases. Fix: rerun "
                           f"`{command}` (add --clean if the raw cases changed since).")


def _train(args) -> None:
    from nnunet_ext.trainers.run import torch_device, train

    torch_device(args.device)  # before any other check: a missing GPU is named, not torch's traceback
    _check_training_inputs(args)
    train(args.d, args.c, args.f, args.tr, args.p, device=args.device, continue_training=args.c_continue,
          only_validation=args.val, pretrained_weights=args.pretrained_weights,
          trust_checkpoint=args.trust_checkpoint)


def check_model_folds(model: str, folds: list | None, checkpoint: str) -> None:
    """``model`` is a trained model folder and every requested fold (default: any) has ``checkpoint``."""
    if not os.path.isfile(os.path.join(model, "dataset.json")):
        raise CommandError(f"no trained model in {model} (no dataset.json there). Fix: check -d/-tr/-p/-c (or -m), "
                           "or train the model first with `nnunet-ext train`.")
    trained = sorted(d[len("fold_"):] for d in os.listdir(model)
                     if d.startswith("fold_") and os.path.isfile(os.path.join(model, d, checkpoint)))
    missing = [str(f) for f in (folds or []) if str(f) not in trained]
    if missing or not trained:
        started = sorted(d[len("fold_"):] for d in os.listdir(model) if d.startswith("fold_"))
        raise CommandError(f"{model} has no {checkpoint} for fold(s) {', '.join(missing) or 'any'}; folds with "
                           f"{checkpoint}: {', '.join(trained) or 'none'} (fold folders: {', '.join(started) or 'none'}"
                           "). Fix: pass -f with trained folds (or leave -f out to use all of them), pass -chk with "
                           "another checkpoint (e.g. checkpoint_best.pth), or finish the training.")


def _model_and_folds(args) -> tuple[str, list | None]:
    """The model folder (-m, or -d/-tr/-p/-c) checked to hold the requested folds, and the folds (None: all)."""
    from nnunet_ext.inference.predict import model_folder_from_args

    if args.m is None and args.d is None:
        args.parser.error("give the model: -d DATASET (with -tr/-p/-c) or -m MODEL_FOLDER")
    model = args.m or model_folder_from_args(args.d, args.tr, args.p, args.c)
    check_model_folds(model, args.f, args.chk)
    return model, None if args.f is None else [f if f == "all" else int(f) for f in args.f]


def _predict(args) -> None:
    from nnunet_ext.inference.predict import predict

    model, folds = _model_and_folds(args)
    predict(args.i, args.o, model, folds, args.chk, args.step_size, args.disable_tta, args.device, args.npp,
            args.nps, args.save_probabilities, args.verbose, texts=args.texts, tabular=args.tabular,
            allow_missing_text=args.allow_missing_text, trust_checkpoint=args.trust_checkpoint,
            dicom_seg=args.dicom_seg, dicom_reference=args.dicom_reference)
    print(f"Predictions written to {args.o}")


def _attention(args) -> None:
    from nnunet_ext.inference.attention import phase_attention

    model, folds = _model_and_folds(args)
    rows = phase_attention(args.i, args.o, model, folds, args.chk, args.step_size, args.device, args.s, args.layer,
                           args.min_lesion_voxels, args.save_maps, not args.no_plot,
                           trust_checkpoint=args.trust_checkpoint)
    print(f"Attention over phases of {len(rows)} lesion(s) written to {args.o}")


def _gradcam(args) -> None:
    from nnunet_ext.inference.gradcam import gradcam

    model, folds = _model_and_folds(args)
    rows = gradcam(args.i, args.o, model, folds, args.chk, args.step_size, args.device, tabular=args.tabular,
                   target_class=args.target_class, plot=not args.no_plot, trust_checkpoint=args.trust_checkpoint)
    print(f"Grad-CAM maps of {len(rows)} case(s) written to {args.o}")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_model_input_args(p, trainer: str, plans: str) -> None:
    """The flags ``predict`` and ``attention`` share with nnUNetv2_predict: input, output and the trained model."""
    p.add_argument("-i", required=True, help="input folder (CASE_XXXX.nii.gz files; for predict also a folder of "
                                             "DICOM series)")
    p.add_argument("-o", required=True, help="output folder")
    p.add_argument("-d", help="dataset id or name")
    p.add_argument("-c", default="3d_fullres")
    p.add_argument("-tr", default=trainer)
    p.add_argument("-p", default=plans)
    p.add_argument("-m", help="or: a trained model folder (overrides -d/-tr/-p/-c)")
    p.add_argument("-f", nargs="+", type=fold_arg, default=None, help="folds to ensemble (default: all found)")
    p.add_argument("-chk", default="checkpoint_final.pth")
    p.add_argument("-step_size", type=float, default=0.5)
    _add_trust_arg(p)


def _add_trust_arg(p) -> None:
    p.add_argument("--trust-checkpoint", dest="trust_checkpoint", action="store_true",
                   help="load checkpoints that need unsafe unpickling (they can run code): only for files from a "
                        "trusted source; checkpoints of nnU-Net and nnunet-ext load safely without it")


def add_parser(sub) -> None:
    p = sub.add_parser("trainer-path", help="print the folder to export as nnUNet_extTrainer")
    p.set_defaults(func=_trainer_path)

    p = sub.add_parser("trainers", help="list the trainer classes -tr accepts (nnunet-ext's and nnU-Net's)")
    p.set_defaults(func=_trainers)

    p = sub.add_parser("validate", help="validate the case-level metadata of a raw dataset")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("-d", help="dataset id or name (in nnUNet_raw)")
    which.add_argument("--folder", help="or: a raw dataset folder")
    p.set_defaults(func=_validate)

    p = sub.add_parser("plan-and-preprocess", help="fingerprint, plan (any planner, ours included), preprocess")
    p.add_argument("-d", nargs="+", required=True, type=dataset_id_arg, help="dataset id(s)")
    p.add_argument("-pl", default="ExperimentPlanner", help="planner class, e.g. STDNetPlanner")
    p.add_argument("-c", nargs="+", default=["2d", "3d_fullres", "3d_lowres"], help="configurations to preprocess")
    p.add_argument("-np", type=int, default=2, help="processes for fingerprint and preprocessing")
    p.add_argument("-gpu_memory_target", type=float, default=None, help="VRAM target in GB")
    p.add_argument("-overwrite_plans_name", default=None)
    p.add_argument("--verify_dataset_integrity", action="store_true")
    p.add_argument("--clean", action="store_true", help="recompute the fingerprint and all preprocessed data")
    p.add_argument("--text-encoder", dest="text_encoder", default=None,
                   help="frozen text encoder for the cases' texts: all-MiniLM-L6-v2 (default, offline) or a local "
                        "Hugging Face BERT-style model folder")
    p.add_argument("--text-max-tokens", dest="text_max_tokens", type=int, default=64,
                   help="tokens per text (longer texts are truncated)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_plan)

    p = sub.add_parser("train", help="nnUNetv2_train with nnunet-ext trainers on the search path")
    p.add_argument("d", help="dataset id or name")
    p.add_argument("c", help="configuration")
    p.add_argument("f", type=fold_arg, help="fold (0-4 or all)")
    p.add_argument("-tr", default="EarlyFusionTrainer")
    p.add_argument("-p", default="nnUNetPlans")
    p.add_argument("-device", default=_default_device())
    p.add_argument("--c", dest="c_continue", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--val", action="store_true", help="only run the final validation")
    p.add_argument("-pretrained_weights", default=None,
                   help="nnU-Net checkpoint to initialise the network from (read with the safe loader)")
    _add_trust_arg(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="nnUNetv2_predict plus classification.csv / classification.json")
    _add_model_input_args(p, "EarlyFusionTrainer", "nnUNetPlans")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    p.add_argument("-device", default=_default_device())
    p.add_argument("-npp", type=int, default=2, help="preprocessing processes")
    p.add_argument("-nps", type=int, default=2, help="export processes")
    p.add_argument("--save_probabilities", action="store_true")
    p.add_argument("--texts", default=None, help="per-case texts for models that consume them: CSV case_id,text or "
                                                 "JSON {case_id: text}")
    p.add_argument("--tabular", default=None, help="per-case tabular features for models that consume them: CSV "
                                                   "with case_id and one column per feature, or JSON {case_id: "
                                                   "[values]}")
    p.add_argument("--allow-missing-text", dest="allow_missing_text", action="store_true",
                   help="predict cases without text with the network's learned 'no text' embedding (only for "
                        "networks that declare one)")
    p.add_argument("--dicom-seg", dest="dicom_seg", action="store_true",
                   help="also write each case's segmentation as a DICOM SEG (CASE_seg.dcm) referencing its DICOM "
                        "series: the input series (-i a folder of DICOM series), or --dicom-reference")
    p.add_argument("--dicom-reference", dest="dicom_reference", default=None,
                   help="for --dicom-seg with NIfTI input: the DICOM series folder the case was made from, or a CSV "
                        "case,series")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_predict, parser=p)

    p = sub.add_parser("attention", help="STD-Net's temporal attention over the phases, per lesion (CSV, JSON, plots)")
    _add_model_input_args(p, "STDNetTrainer", "STDNetPlans")
    p.add_argument("-device", default=_default_device())
    p.add_argument("-s", default=None, help="reference segmentations (CASE.nii.gz, e.g. labelsTr) whose lesions to "
                                            "report instead of the predicted ones")
    p.add_argument("--layer", type=int, default=-1, help="Transformer layer (default: the last)")
    p.add_argument("--min_lesion_voxels", type=int, default=10, help="smaller connected lesions are skipped")
    p.add_argument("--save_maps", action="store_true", help="also save the per-phase maps: as images on the input "
                   "image's grid (CASE_attention_<phase>.nii.gz, CASE_attention_lesions.nii.gz) and on the "
                   "preprocessed grid (CASE_phase_attention.npz)")
    p.add_argument("--no_plot", action="store_true", help="no per-case bar plot")
    p.set_defaults(func=_attention, parser=p)

    p = sub.add_parser("gradcam", help="Grad-CAM of DeSamba's case class per case and sequence (images on the input "
                                       "grid, PNG overlays; needs the gradcam extra)")
    _add_model_input_args(p, "DeSambaTrainer", "DeSambaPlans")
    p.add_argument("-device", default=_default_device())
    p.add_argument("--tabular", default=None, help="per-case clinical features for models that consume them: CSV "
                                                   "with case_id and one column per feature, or JSON {case_id: "
                                                   "[values]}")
    p.add_argument("--target-class", dest="target_class", default="predicted",
                   help="the class whose logit is explained: a class name or index (default: each case's predicted "
                        "class)")
    p.add_argument("--no_plot", action="store_true", help="no per-case PNG overlay")
    p.set_defaults(func=_gradcam, parser=p)


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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "nnunet-ext " + shlex.join(argv)  # reports record the literal command
    try:
        _check_dataset_args(args)
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
