"""``nnunet-ext expand-pretrained``: a single-phase nnU-Net checkpoint expanded into an STD-Net-shaped one.

The STD-Net paper (Methods, "Implementation details") pre-trains the spatial encoder for segmentation (200 epochs
on LiTS + MSD) and then fine-tunes the whole model. nnU-Net's ``-pretrained_weights`` (``load_pretrained_weights``)
requires every key of the new network, except the segmentation layers, to exist in the checkpoint with the same
shape; STD-Net's temporal modeler and classification head are in no segmentation checkpoint. Stock
``nnUNetv2_train`` calls that function itself, so no trainer can relax it. :func:`expand_pretrained` therefore
writes a checkpoint that has every key of the target STD-Net:

* the shared encoder (each encoder, without weight sharing) from the checkpoint's ``encoder.*``; a mismatch here is
  an error that names what differs (input channels per phase, number of stages, widths);
* the decoder from the checkpoint's ``decoder.*`` where names and shapes match (the rest, e.g. segmentation layers
  for other labels, keeps STD-Net's initialisation; nnU-Net never loads ``seg_layers`` anyway);
* the temporal modeler, skip fusion and head at STD-Net's own initialisation (seeded, :data:`DEFAULT_SEED`);

and reports what it copied. ``nnUNetv2_train D C F -tr STDNetTrainer_paperProtocol -p STDNetPlans
-pretrained_weights <out>`` then loads it unchanged. The whole workflow is in ``docs/stdnet.md``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field

import torch

from nnunet_ext.errors import NnunetExtError

DEFAULT_SEED = 0
_PREFIXES = ("_orig_mod.", "module.")  # torch.compile / DDP wrappers, in case a checkpoint kept them
_PER_PHASE_ENCODER = re.compile(r"(^|\.)encoder\.\d+\.")  # encoder.<phase>. without weight sharing


class PretrainedMismatchError(NnunetExtError, ValueError):
    """The checkpoint's encoder does not fit STD-Net's per-phase encoder of the target plans."""


@dataclass
class ExpansionReport:
    checkpoint: str
    output: str
    network: str
    copied_encoder: int = 0
    copied_decoder: int = 0
    initialised: dict[str, int] = field(default_factory=dict)  # module -> tensors left at STD-Net's initialisation
    decoder_not_copied: list[str] = field(default_factory=list)
    seed: int = DEFAULT_SEED

    def summary(self) -> str:
        init = ", ".join(f"{k} ({v})" for k, v in sorted(self.initialised.items())) or "nothing"
        lines = [f"expanded {self.checkpoint} -> {self.output} ({self.network})",
                 f"  copied: {self.copied_encoder} encoder tensors, {self.copied_decoder} decoder tensors",
                 f"  at STD-Net's initialisation (seed {self.seed}): {init}"]
        if self.decoder_not_copied:
            more = " ..." if len(self.decoder_not_copied) > 6 else ""
            lines.append(f"  decoder tensors not in the checkpoint or of another shape (initialised): "
                         f"{', '.join(self.decoder_not_copied[:6])}{more}")
        return "\n".join(lines)


def source_key(key: str) -> str:
    """The key of a single-phase U-Net that STD-Net's ``key`` is initialised from."""
    return _PER_PHASE_ENCODER.sub(r"\1encoder.", key)


def is_encoder_key(key: str) -> bool:
    return key.startswith("encoder.") or key.startswith("decoder.encoder.")


def _strip(weights: dict) -> dict:
    out = {}
    for k, v in weights.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def _stage_widths(weights: dict, prefix: str = "encoder.") -> list:
    """Output channels of each encoder stage (a tuple where its convolutions differ)."""
    widths: dict[int, set] = {}
    for k, v in weights.items():
        m = re.match(re.escape(prefix) + r"stages\.(\d+)\..*conv\.weight$", k)
        if m and v.ndim >= 3:
            widths.setdefault(int(m.group(1)), set()).add(int(v.shape[0]))
    return [min(w) if len(w) == 1 else tuple(sorted(w)) for _, w in sorted(widths.items())]


def _first_conv(weights: dict, prefix: str = "encoder.") -> torch.Tensor | None:
    for k, v in weights.items():
        if k.startswith(prefix) and k.endswith("conv.weight") and v.ndim >= 3:
            return v
    return None


def explain_mismatch(target: dict, source: dict, problems: list[str]) -> str:
    """What differs between STD-Net's encoder (``target``, single-phase key names) and the checkpoint's."""
    reasons = []
    t_first, s_first = _first_conv(target), _first_conv(source)
    if s_first is None:
        reasons.append("the checkpoint has no encoder (no 'encoder.*conv.weight' key): it is not an nnU-Net U-Net "
                       "checkpoint")
    elif t_first is not None and t_first.shape[1] != s_first.shape[1]:
        reasons.append(f"input channels per phase: STD-Net's encoder takes {t_first.shape[1]} channel(s) per "
                       f"phase, the checkpoint's first convolution {s_first.shape[1]} (it was trained on "
                       f"{s_first.shape[1]} input channels; pre-train on one phase, `nnunet-ext convert "
                       "reference-phase`)")
    tw, sw = _stage_widths(target), _stage_widths(source)
    if len(tw) != len(sw):
        reasons.append(f"stages: STD-Net's encoder has {len(tw)}, the checkpoint's {len(sw)}")
    elif tw != sw:
        reasons.append(f"widths per stage: STD-Net {tw}, checkpoint {sw}")
    if not reasons:
        reasons.append("kernel sizes, convolutions per stage or normalisation differ")
    detail = "; ".join(problems[:4]) + (" ..." if len(problems) > 4 else "")
    return ("the checkpoint's encoder does not match STD-Net's: " + "; ".join(reasons) + f" (first keys: {detail}). "
            "Fix: pre-train with the STD-Net plans' topology: `nnunet-ext pretrain-plans -d <this dataset> -p "
            "<these plans> -t <pre-training dataset>`, then train vanilla nnU-Net with those plans.")


def build_target_network(dataset: str | int, plans: str, configuration: str, trainer: str) -> torch.nn.Module:
    """The network ``nnUNetv2_train dataset configuration F -tr trainer -p plans`` builds (with deep supervision,
    as in training)."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.architectures.contract import PLANS_KEY
    from nnunet_ext.paths import ensure_trainer_path
    from nnunet_ext.planners.case_settings import make_case_settings

    folder = os.path.join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset))
    plans_file = os.path.join(folder, f"{plans}.json")
    if not os.path.isfile(plans_file):
        raise NnunetExtError(f"{plans_file} does not exist. Fix: run `nnunet-ext plan-and-preprocess -d {dataset}` "
                             "with the planner of these plans first.")
    with open(os.path.join(folder, "dataset.json"), encoding="utf-8") as f:
        dataset_json = json.load(f)
    pm = PlansManager(plans_file)
    if configuration not in pm.available_configurations:
        raise NnunetExtError(f"{plans} has no configuration {configuration!r} ({pm.available_configurations}).")
    pm.plans[PLANS_KEY] = make_case_settings(dataset_json)
    cm = pm.get_configuration(configuration)
    ensure_trainer_path()
    trainer_class = recursive_find_trainer_class_by_name(trainer)
    if trainer_class is None:
        raise NnunetExtError(f"trainer {trainer!r} not found. Fix: `nnunet-ext trainers` lists them.")
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    return trainer_class.build_network_architecture(pm, cm, n_in, n_out, True)


def expand_weights(network: torch.nn.Module, source: dict) -> tuple[dict, ExpansionReport]:
    """STD-Net's state dict with encoder and matching decoder tensors taken from ``source`` (module docstring)."""
    source = _strip(source)
    state = network.state_dict()
    report = ExpansionReport("", "", type(network).__name__)
    problems: list[str] = []
    target_single: dict = {}
    out = {}
    for key, value in state.items():
        src = source_key(key)
        if is_encoder_key(key):
            target_single.setdefault(src, value)
            if src not in source:
                problems.append(f"{src} missing")
            elif tuple(source[src].shape) != tuple(value.shape):
                problems.append(f"{src}: STD-Net {tuple(value.shape)}, checkpoint {tuple(source[src].shape)}")
            else:
                out[key] = source[src].detach().to(value.dtype).clone()
                report.copied_encoder += 1
                continue
            out[key] = value
        elif key.startswith("decoder."):
            if src in source and tuple(source[src].shape) == tuple(value.shape):
                out[key] = source[src].detach().to(value.dtype).clone()
                report.copied_decoder += 1
            else:
                out[key] = value
                report.decoder_not_copied.append(key)
        else:
            out[key] = value
            module = key.split(".")[0]
            report.initialised[module] = report.initialised.get(module, 0) + 1
    if problems:
        raise PretrainedMismatchError(explain_mismatch(target_single, source, problems))
    return out, report


def expand_pretrained(checkpoint: str, dataset: str | int, plans: str = "STDNetPlans",
                      configuration: str = "3d_fullres", trainer: str = "STDNetTrainer", output: str | None = None,
                      seed: int = DEFAULT_SEED, trust: bool | None = None) -> ExpansionReport:
    """Write ``output`` (default: beside ``checkpoint``, ``<stem>_stdnet.pth``) and ``output + '.json'`` (the report);
    return the report. ``checkpoint``: an nnU-Net checkpoint (``checkpoint_final.pth``) of a single-phase U-Net with
    the STD-Net plans' topology, read with the safe loader (``trust`` as ``--trust-checkpoint``)."""
    from nnunet_ext.data.checkpoints import load_checkpoint, write_weights_only

    ckpt = load_checkpoint(checkpoint, map_location="cpu", trust=trust)
    weights = ckpt.get("network_weights") if isinstance(ckpt, dict) else None
    if not isinstance(weights, dict):
        raise PretrainedMismatchError(f"{checkpoint} holds no 'network_weights' (an nnU-Net checkpoint has one). "
                                      "Fix: pass the pre-training's checkpoint_final.pth.")
    torch.manual_seed(seed)
    network = build_target_network(dataset, plans, configuration, trainer)
    expanded, report = expand_weights(network, weights)
    output = output or os.path.splitext(checkpoint)[0] + "_stdnet.pth"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = f"{output}.tmp{os.getpid()}"
    write_weights_only(expanded, tmp)
    os.replace(tmp, output)
    report.checkpoint, report.output, report.seed = str(checkpoint), str(output), int(seed)
    report.network = f"{type(network).__name__} from {plans} {configuration} ({trainer})"
    from nnunet_ext.data.metadata import save_json_atomic

    save_json_atomic(asdict(report), output + ".json")
    return report


def _cmd(args) -> None:
    report = expand_pretrained(args.i, args.d, args.p, args.c, args.tr, args.o, args.seed, args.trust_checkpoint)
    print(report.summary())
    print(f"next: nnUNetv2_train {args.d} {args.c} FOLD -tr {args.tr} -p {args.p} -pretrained_weights {report.output}")


def add_parser(sub) -> None:
    p = sub.add_parser("expand-pretrained", help="turn a single-phase nnU-Net checkpoint into an STD-Net-shaped one "
                                                 "for -pretrained_weights (encoder + decoder copied)")
    p.add_argument("-i", required=True, help="the single-phase checkpoint (checkpoint_final.pth of the pre-training)")
    p.add_argument("-d", required=True, help="the multiphase dataset STD-Net is trained on")
    p.add_argument("-p", default="STDNetPlans", help="its plans (default STDNetPlans)")
    p.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    p.add_argument("-tr", default="STDNetTrainer", help="the STD-Net trainer (its variant decides e.g. weight "
                                                        "sharing; default STDNetTrainer)")
    p.add_argument("-o", default=None, help="output file (default: <checkpoint>_stdnet.pth)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the initialisation of the new modules")
    p.add_argument("--trust-checkpoint", dest="trust_checkpoint", action="store_true",
                   help="read a checkpoint that needs unsafe unpickling (only from a trusted source)")
    p.set_defaults(func=_cmd)
