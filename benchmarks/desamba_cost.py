"""Parameters, forward FLOPs and a CPU training step of the DeSamba presets against nnU-Net's PlainConvUNet.

The presets of ``nnunet_ext.architectures.desamba.PRESETS`` against nnU-Net's PlainConvUNet on the same topology
(same-run baseline), beside the paper's 433.82M parameters and 308.32 GFLOPs (DeSamba, arXiv 2507.15487; the paper
does not give the input size of its FLOPs).

Size. Counted on the meta device (no memory, no compute): parameters of the network as built for three sequences
(the paper's T1, T2, T2-FS), one segmentation output per label (background + lesion), three classes and three
clinical features; FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` for one forward pass with every head
(``return_heads=True``: segmentation, DRLM with its reconstruction decoders, classifier), batch 1, multiply-add = 2
FLOPs. **The counter covers convolutions, transposed convolutions and matrix products only: not FFTs** (SAMNet's
frequency branch), norms or element-wise operations. The topology is nnU-Net's for an isotropic patch of side
``--size``: stride 1, then 2 per stage down to a 4-voxel bottleneck (``--stages`` overrides).

Baseline. nnU-Net's ``PlainConvUNet`` on the same topology with the same 3 input channels (the sequences stacked as
channels) and 2 segmentation outputs: nnU-Net's default widths ``min(32 * 2^i, 320)``, 2 convolutions per encoder and
decoder stage, instance norm, LeakyReLU; no classifier.

Training step (``--step``). On the CPU, float32, ``--threads`` torch threads (default 1), batch 1, 3 sequences, a
patch of side ``--step-size`` with ``--step-stages`` stages (default 32^3, 4 stages), deep supervision on: DeSamba
``tiny`` and ``small`` (``base`` is too large for a CPU step; parameters and FLOPs only) and the PlainConvUNet.
One step = forward with every head (segmentation, DRLM, classifier, tabular encoder; the ground-truth lesion mask
weights the head's pooling, as in the trainers' training steps) + nnU-Net's Dice + CE with deep supervision
(+ the class CE and the two reconstruction losses at ``DeSambaTrainer.loss_weights``) + backward + gradient clipping
(12) + the trainers' optimizer step (DeSamba: nnU-Net's SGD for the light path and decoder, AdamW for the rest,
``make_hybrid_optimizer``; PlainConvUNet: nnU-Net's SGD). Steps are alternated between the networks; median of
``--repeats`` after ``--warmup`` warm-up steps each.

    python benchmarks/desamba_cost.py --size 64 [--step] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from nnunet_ext.architectures.desamba import PAPER_GFLOPS, PAPER_PARAMS, PRESETS, DeSamba

SEQUENCES, SEG_CLASSES, CLS_CLASSES, TABULAR = 3, 2, 3, 3
STEP_PRESETS = ("tiny", "small")
BASELINE = "plainconvunet"


def topology(size: int, stages: int) -> dict:
    """nnU-Net's 3D topology for an isotropic patch: stride 1, then 2 per stage; 3x3x3 kernels; nnU-Net's default
    widths (read by the PlainConvUNet; DeSamba's widths come from its preset)."""
    return {"n_stages": stages, "features_per_stage": [min(32 * 2 ** i, 320) for i in range(stages)],
            "conv_op": nn.Conv3d, "kernel_sizes": [[3] * 3] * stages, "strides": [[1] * 3] + [[2] * 3] * (stages - 1),
            "conv_bias": True, "norm_op": nn.InstanceNorm3d, "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": nn.LeakyReLU, "nonlin_kwargs": {"inplace": True}}


def build(preset: str, size: int, stages: int, sequences: int = SEQUENCES, deep_supervision: bool = False,
          device: str = "meta") -> DeSamba:
    """DeSamba for ``sequences`` one-channel sequences; on ``device`` "meta" uninitialised, elsewhere with its own
    initialisation (as ``from_plans``)."""
    with torch.device(device):
        net = DeSamba(sequences, SEG_CLASSES, **topology(size, stages), deep_supervision=deep_supervision,
                      preset=preset, num_cls_classes=CLS_CLASSES, num_tabular=TABULAR, cls_pool_channels=[1])
    if device != "meta":
        net.apply(net.initialize)
    return net


def build_baseline(size: int, stages: int, sequences: int = SEQUENCES, deep_supervision: bool = False,
                   device: str = "meta") -> nn.Module:
    """nnU-Net's PlainConvUNet on the same topology and input channels (He init off the meta device, as nnU-Net)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from dynamic_network_architectures.initialization.weight_init import InitWeights_He

    with torch.device(device):
        net = PlainConvUNet(sequences, num_classes=SEG_CLASSES, n_conv_per_stage=[2] * stages,
                            n_conv_per_stage_decoder=[2] * (stages - 1), deep_supervision=deep_supervision,
                            **topology(size, stages))
    if device != "meta":
        net.apply(InitWeights_He(1e-2))
    return net


def parameter_count(net: nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


def forward_flops(net: nn.Module, size: int, sequences: int = SEQUENCES) -> int:
    """FLOPs of one forward pass, batch 1 (DeSamba with every head), on the network's device."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(net.parameters()).device
    x = torch.zeros(1, sequences, size, size, size, device=device)
    kw = {"return_heads": True, "tabular": torch.zeros(1, TABULAR, device=device)} if isinstance(net, DeSamba) else {}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, **kw)
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------------ training step
def _seg_loss():
    """nnU-Net's default training loss: Dice + CE (memory-efficient soft Dice without background), deep supervision
    weights 1/2^i normalised, the lowest resolution left out."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)


class _Step:
    """One network's training step on a fixed random batch (3 sequences, a cubic lesion in the middle)."""

    def __init__(self, net: nn.Module, size: int, seed: int = 0):
        from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

        from nnunet_ext.trainers.desamba import DeSambaTrainer
        from nnunet_ext.trainers.optim import make_hybrid_optimizer

        g = torch.Generator().manual_seed(seed)
        self.net, self.desamba = net.train(), isinstance(net, DeSamba)
        self.x = torch.randn(1, SEQUENCES, size, size, size, generator=g)
        seg = torch.zeros(1, 1, size, size, size)
        q = size // 4
        seg[..., q:3 * q, q:3 * q, q:3 * q] = 1
        self.lesion = seg
        with torch.no_grad():
            out = net(self.x)
        out = out if isinstance(out, (list, tuple)) else [out]
        self.targets = [nn.functional.interpolate(seg, o.shape[2:], mode="nearest") for o in out]
        weights = torch.tensor([1 / 2 ** i for i in range(len(out))])
        if len(out) > 1:
            weights[-1] = 0
        self.seg_loss = DeepSupervisionWrapper(_seg_loss(), (weights / weights.sum()).tolist())
        if self.desamba:
            self.weights = DeSambaTrainer.loss_weights
            self.tabular = torch.randn(1, TABULAR, generator=g)
            self.y = torch.tensor([1])
            self.opt, _ = make_hybrid_optimizer(net, 1e-2, 3e-5, DeSambaTrainer.head_lr,
                                                DeSambaTrainer.head_weight_decay, 1000, 1)
        else:
            self.opt = torch.optim.SGD(net.parameters(), lr=1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)

    def __call__(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        if self.desamba:
            out = self.net(self.x, return_heads=True, tabular=self.tabular, lesion_mask=self.lesion)
            loss = self.weights["seg"] * self.seg_loss(out.seg, self.targets)
            loss = loss + self.weights["cls"] * nn.functional.cross_entropy(out.cls, self.y)
            for name, value in out.aux_losses.items():
                loss = loss + self.weights[name] * value
        else:
            loss = self.seg_loss(self.net(self.x), self.targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 12)
        self.opt.step()
        return float(loss.detach())


def train_step_seconds(nets: dict[str, nn.Module], size: int, repeats: int, warmup: int) -> dict[str, dict]:
    """Median (and min / max) seconds per training step of each network, steps alternated between the networks."""
    steps = {name: _Step(net, size) for name, net in nets.items()}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            loss = step()
            times[name].append(time.perf_counter() - t0)
            if not math.isfinite(loss):
                raise RuntimeError(f"{name}: non-finite training loss {loss}")
    return {name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "steps": v}
            for name, v in times.items()}


def machine(threads: int) -> str:
    load = ""
    try:
        load = ", load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except (AttributeError, OSError):  # not on every platform
        pass
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
            f"torch {torch.__version__}, {threads} thread(s), float32{load}")


# ------------------------------------------------------------------------------------------------ main
def _row(net: nn.Module, size: int) -> dict:
    params, flops = parameter_count(net), forward_flops(net, size)
    return {"parameters": params, "parameters_vs_paper": params / PAPER_PARAMS, "gflops": flops / 1e9,
            "gflops_vs_paper": flops / 1e9 / PAPER_GFLOPS}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="patch side of the parameter / FLOP count")
    p.add_argument("--stages", type=int, default=None, help="default: down to a 4-voxel bottleneck")
    p.add_argument("--step", action="store_true", help="also time a CPU training step (tiny, small, PlainConvUNet)")
    p.add_argument("--step-size", type=int, default=32)
    p.add_argument("--step-stages", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per network (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per network first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="JSON file to write")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    stages = args.stages or int(math.log2(args.size // 4)) + 1
    torch.set_num_threads(args.threads)

    rows = {}
    for name in (*PRESETS, BASELINE):
        net = build_baseline(args.size, stages) if name == BASELINE else build(name, args.size, stages)
        rows[name] = _row(net, args.size)
        r = rows[name]
        print(f"{name:13s} {r['parameters'] / 1e6:8.2f}M params ({r['parameters_vs_paper']:5.2f} x paper)  "
              f"{r['gflops']:9.2f} GFLOPs ({r['gflops_vs_paper']:5.2f} x paper)", flush=True)
    out = {"command": "python benchmarks/desamba_cost.py " + " ".join(argv),
           "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": machine(args.threads),
           "input": [1, SEQUENCES, args.size, args.size, args.size], "stages": stages,
           "topology": f"{args.size}^3, {stages} stages (strides 1, then 2 per stage)",
           "flop_counter": "torch.utils.flop_counter.FlopCounterMode: convolutions, transposed convolutions, matrix "
                           "products; FFTs, norms and element-wise operations not counted; multiply-add = 2 FLOPs",
           "presets": {k: v for k, v in rows.items() if k != BASELINE}, "baseline": {BASELINE: rows[BASELINE]},
           "paper": {"parameters": PAPER_PARAMS, "gflops": PAPER_GFLOPS}}

    if args.step:
        size, st = args.step_size, args.step_stages
        nets = {name: build(name, size, st, deep_supervision=True, device="cpu") for name in STEP_PRESETS}
        nets[BASELINE] = build_baseline(size, st, deep_supervision=True, device="cpu")
        sizes = {name: _row(net, size) for name, net in nets.items()}
        times = train_step_seconds(nets, size, args.repeats, args.warmup)
        base = times[BASELINE]["median_s"]
        out["train_step"] = {
            "input": [1, SEQUENCES, size, size, size], "stages": st, "threads": args.threads,
            "repeats": args.repeats, "warmup": args.warmup, "machine_after": machine(args.threads),
            "networks": {name: {**sizes[name], **times[name], "ratio_to_baseline": times[name]["median_s"] / base}
                         for name in nets}}
        for name, r in out["train_step"]["networks"].items():
            print(f"train step {size}^3 x{st} stages {name:13s} {r['median_s']:7.3f} s (median of {args.repeats}; "
                  f"{r['ratio_to_baseline']:.2f}x baseline)  {r['parameters'] / 1e6:.2f}M params  "
                  f"{r['gflops']:.2f} GFLOPs forward", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
