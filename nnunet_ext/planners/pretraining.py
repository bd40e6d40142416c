"""Plans for STD-Net's encoder pre-training: a single-phase dataset trained by vanilla nnU-Net with STD-Net's U-Net.

The STD-Net paper (Methods, "Implementation details") pre-trains the shared spatial encoder for segmentation before
fine-tuning the whole model. In nnU-Net terms: a vanilla ``nnUNetTrainer`` trains a single-phase dataset (LiTS, MSD,
or the reference phase of the user's own cases, ``nnunet-ext convert reference-phase``) with exactly the U-Net
topology (stages, widths, kernels, strides, convolutions per stage, normalisation) that the STD-Net plans give each
phase; ``nnunet-ext expand-pretrained`` then turns its checkpoint into an STD-Net-shaped one.

:func:`write_pretraining_plans` is the "planner option" for that: it copies the pre-training dataset's own plans
(nnU-Net's, after ``plan-and-preprocess``: its spacing, normalisation and preprocessed data stay), and replaces one
configuration's network with the U-Net of the target's STD-Net plans, and its patch and batch size with the target's
(a topology is only valid for patch sizes divisible by its strides). Nothing is preprocessed again: the new plans
point at the pre-training dataset's existing data folder. nnU-Net's own ``nnUNetv2_move_plans_between_datasets``
would copy the STD-Net class too, which a single-phase vanilla training cannot build.
"""

from __future__ import annotations

import copy
import inspect
import json
import os

from nnunet_ext.errors import NnunetExtError

UNET_CLASSES = {"plain": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "residual": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"}
DEFAULT_PLANS_NAME = "STDNetPretrainPlans"


class PretrainingPlansError(NnunetExtError, ValueError):
    """Missing plans or configuration, or a pre-training dataset that cannot feed STD-Net's per-phase encoder."""


def _load_plans(dataset: str | int, plans_name: str) -> tuple[str, dict]:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(dataset)
    path = os.path.join(nnUNet_preprocessed, name, f"{plans_name}.json")
    if not os.path.isfile(path):
        raise PretrainingPlansError(f"{path} does not exist. Fix: run `nnunet-ext plan-and-preprocess -d {dataset}` "
                                    f"(with the planner that writes {plans_name}) first.")
    with open(path, encoding="utf-8") as f:
        return path, json.load(f)


def unet_architecture(architecture: dict) -> dict:
    """The U-Net (class name, arch_kwargs, imports) of one phase of a configuration's ``architecture`` entry: for
    STD-Net plans the plain or residual U-Net of its encoder with STD-Net's own keys removed; U-Net plans as they
    are."""
    from pydoc import locate

    from nnunet_ext.architectures.stdnet import STDNET_CLASS_NAME

    arch = copy.deepcopy(architecture)
    if arch["network_class_name"] != STDNET_CLASS_NAME:
        return arch
    kwargs = arch["arch_kwargs"]
    cls_name = UNET_CLASSES[kwargs.get("encoder") or "plain"]
    accepted = set(inspect.signature(locate(cls_name).__init__).parameters) - {"self", "input_channels",
                                                                                "num_classes"}
    arch["network_class_name"] = cls_name
    arch["arch_kwargs"] = {k: v for k, v in kwargs.items() if k in accepted}
    arch["_kw_requires_import"] = [k for k in arch.get("_kw_requires_import", []) if k in arch["arch_kwargs"]]
    return arch


def write_pretraining_plans(target_dataset: str | int, target_plans: str, pretrain_dataset: str | int,
                            configuration: str = "3d_fullres", source_plans: str = "nnUNetPlans",
                            plans_name: str = DEFAULT_PLANS_NAME) -> str:
    """Write ``<nnUNet_preprocessed>/<pretrain dataset>/<plans_name>.json`` (module docstring) and return its path.

    Args:
        target_dataset, target_plans: the multiphase dataset and the plans STD-Net will be trained with
            (``STDNetPlans``, ``STDNetPlansCPU``, ``STDNetPlansM`` ... or ``nnUNetPlans``).
        pretrain_dataset, source_plans: the single-phase dataset and its own plans (preprocessed).
        configuration: the configuration to transfer (the pre-training plans keep only it).
    """
    _, target = _load_plans(target_dataset, target_plans)
    source_path, source = _load_plans(pretrain_dataset, source_plans)
    for which, plans, pl in (("target", target, target_plans), ("pre-training", source, source_plans)):
        if configuration not in plans["configurations"]:
            raise PretrainingPlansError(f"the {which} plans {pl} have no configuration {configuration!r} (they have "
                                        f"{sorted(plans['configurations'])}).")
    n_channels = len(source.get("foreground_intensity_properties_per_channel", {})) or None
    if n_channels not in (None, 1):
        raise PretrainingPlansError(
            f"the pre-training dataset has {n_channels} input channels; STD-Net's encoder sees one phase (one "
            "channel) at a time. Fix: pre-train on a single-phase dataset, e.g. `nnunet-ext convert reference-phase`"
            " of the multiphase dataset, or LiTS / MSD Task03_Liver.")
    tcfg = target["configurations"][configuration]
    if "architecture" not in tcfg:
        raise PretrainingPlansError(f"{target_plans} {configuration!r} inherits its architecture; name the "
                                    "configuration it inherits from.")
    plans = copy.deepcopy(source)
    cfg = dict(plans["configurations"][configuration])
    if "data_identifier" not in cfg:
        raise PretrainingPlansError(f"{source_plans} {configuration!r} inherits from another configuration; "
                                    "name that one.")
    cfg["architecture"] = unet_architecture(tcfg["architecture"])
    cfg["patch_size"] = list(tcfg["patch_size"])
    cfg["batch_size"] = int(tcfg["batch_size"])
    plans["configurations"] = {configuration: cfg}
    plans["plans_name"] = plans_name
    plans["nnunet_ext_pretraining"] = {"target_dataset": str(target["dataset_name"]), "target_plans": target_plans,
                                       "configuration": configuration, "source_plans": source_plans}
    out = os.path.join(os.path.dirname(source_path), f"{plans_name}.json")
    from nnunet_ext.data.metadata import save_json_atomic

    save_json_atomic(plans, out)
    return out


def _cmd(args) -> None:
    path = write_pretraining_plans(args.d, args.p, args.t, args.c, args.tp, args.o)
    dataset = os.path.basename(os.path.dirname(path))
    print(f"wrote {path}\nnext: nnUNetv2_train {dataset} {args.c} all -p {args.o}   (vanilla nnU-Net; then "
          f"nnunet-ext expand-pretrained -i <its checkpoint_final.pth> -d {args.d} -p {args.p} -c {args.c} "
          "-o stdnet_init.pth)")


def add_parser(sub) -> None:
    p = sub.add_parser("pretrain-plans", help="plans for pre-training STD-Net's encoder on a single-phase dataset "
                                              "with the STD-Net plans' U-Net (vanilla nnU-Net trains it)")
    p.add_argument("-d", required=True, help="the multiphase dataset STD-Net will be trained on")
    p.add_argument("-p", default="STDNetPlans", help="its STD-Net plans (default STDNetPlans)")
    p.add_argument("-t", required=True, help="the single-phase pre-training dataset (preprocessed)")
    p.add_argument("-tp", default="nnUNetPlans", help="the pre-training dataset's own plans (default nnUNetPlans)")
    p.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    p.add_argument("-o", default=DEFAULT_PLANS_NAME, help=f"name of the new plans (default {DEFAULT_PLANS_NAME})")
    p.set_defaults(func=_cmd)
