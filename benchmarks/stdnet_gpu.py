"""GPU benchmark: STD-Net (paper defaults) against nnU-Net's PlainConvUNet on the same 3-phase input, in one run.

Both networks get the identical set-up: a random 3-phase patch 64x128x128 (z, y, x), batch 2, nnU-Net's training step
(its Dice + CE loss with deep supervision, fp16 autocast with GradScaler, gradient clipping at 12, SGD with Nesterov,
lr 1e-2, momentum 0.99, weight decay 3e-5) and ``torch.compile``. The U-Net takes the 3 phases as input channels
(early fusion); STD-Net folds them into the batch. STD-Net additionally pays a CE term on its class logits.

Topology: nnU-Net's planner logic for this patch, i.e. ``get_pool_and_conv_props`` at the paper's spacing
2.0 x 1.5 x 1.5 mm with the default planner's rules (32 * 2^i features capped at 320, 2 convs per stage in encoder and
decoder): 6 stages, strides 1,2,2,2,2,(1,2,2). No dataset is needed.

Measured (JSON lines on stdout and in ``--out``), per network:

* ``train_step_ms``: one training step on device-resident random data (no data loading), CUDA events,
  ``--warmup`` steps excluded (they include compilation), median (and all values) of ``--steps``;
* ``train_tflops``: FLOPs of one forward + backward counted by ``torch.utils.flop_counter.FlopCounterMode`` (eager,
  same shapes) x steps / measured time;
* ``forward_volume_s``: one forward pass (inference mode, autocast, no deep supervision, eager unless
  ``--compile-inference``) on a 3 x 224^3 volume, batch 1 (the paper reports 0.47 s on an H100);
* ``planner_predicted_gb`` vs ``measured_peak_gb``: nnU-Net's estimate (``compute_conv_feature_map_size`` of the
  patch) converted with nnU-Net's calibration (560e6 units at batch 2 = 8 GB), against
  ``torch.cuda.max_memory_allocated`` over the timed training steps.

Run on a GPU machine from the repository root::

    python benchmarks/stdnet_gpu.py --out stdnet_gpu.jsonl

Levers: ``--channels-last`` (channels_last_3d), ``--bf16`` (bf16 autocast, no GradScaler), ``--sdpa-backend``
(force a fused kernel or the math path), ``--cuda-graphs`` (``torch.compile(mode="reduce-overhead")``),
``--dynamic`` (default ``dynamic=False``: no symbolic shapes, recompiles when shapes such as N change),
``--no-compile``, ``--phases N``, ``--fused-sgd`` (``torch.optim.SGD(fused=True)`` for both networks),
``--optimizer hybrid`` (what the nnunet-ext trainers use: nnU-Net's SGD for the U-Net parts, AdamW for STD-Net's
temporal modeler and head, :mod:`nnunet_ext.trainers.optim`; the U-Net has no such modules and keeps SGD).
``--device cpu --tiny`` runs the same code path at tiny sizes (and narrow widths) as
a sanity check, with bf16 autocast (CPU float16 kernels are emulated): its timings mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

PAPER_SPACING = (2.0, 1.5, 1.5)
# nnU-Net's default planner: 560e6 units (compute_conv_feature_map_size) at batch 2 fill 8 GB
NNUNET_REFERENCE_UNITS, NNUNET_REFERENCE_BATCH, NNUNET_REFERENCE_GB = 560_000_000, 2, 8.0

FULL = {"patch": (64, 128, 128), "batch": 2, "volume": (224, 224, 224), "base_features": 32, "max_features": 320,
        "temporal_dim": 768, "temporal_depth": 6, "temporal_heads": 8, "steps": 20, "warmup": 5, "volume_repeats": 3}
TINY = {"patch": (16, 32, 32), "batch": 2, "volume": (16, 32, 32), "base_features": 4, "max_features": 16,
        "temporal_dim": 16, "temporal_depth": 2, "temporal_heads": 2, "steps": 2, "warmup": 1, "volume_repeats": 1}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (sanity check of the code path)")
    p.add_argument("--networks", nargs="+", default=["stdnet", "nnunet"], choices=["stdnet", "nnunet"])
    p.add_argument("--phases", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 20; tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 5; tiny 1)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--cuda-graphs", action="store_true", help='torch.compile(mode="reduce-overhead")')
    p.add_argument("--dynamic", action="store_true", help="torch.compile(dynamic=None) instead of dynamic=False")
    p.add_argument("--compile-inference", action="store_true", help="also compile the 224^3 forward")
    p.add_argument("--channels-last", action="store_true", help="channels_last_3d memory format")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast instead of fp16 (no GradScaler)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "hybrid"],
                   help="sgd: nnU-Net's SGD for every parameter (the issue's set-up); hybrid: the trainers' optimizer")
    p.add_argument("--fused-sgd", action="store_true",
                   help="fused kernels: torch.optim.SGD(fused=True); with --optimizer hybrid its fused path "
                        "(fused SGD + fused AdamW, the trainers' default on CUDA) instead of _foreach")
    p.add_argument("--sdpa-backend", default="auto", choices=["auto", "flash", "efficient", "cudnn", "math"])
    p.add_argument("--skip-volume", action="store_true", help="skip the 224^3 forward")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="", help="label copied into every record (e.g. the lever being measured)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- networks
def nnunet_topology(patch, spacing=PAPER_SPACING, base_features: int = 32, max_features: int = 320) -> dict:
    """PlainConvUNet arch kwargs as nnU-Net's default planner would choose them for ``patch`` at ``spacing``
    (``base_features``/``max_features``: nnU-Net's 32/320; smaller only for the tiny sanity check)."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, strides, kernels, patch_out, _ = get_pool_and_conv_props(list(spacing), list(patch), 4, 999999)
    if tuple(int(i) for i in patch_out) != tuple(patch):
        raise ValueError(f"patch {patch} is not a valid nnU-Net patch for this topology (nnU-Net: {patch_out})")
    n = len(strides)
    return {"n_stages": n, "features_per_stage": [min(max_features, base_features * 2 ** i) for i in range(n)],
            "conv_op": nn.Conv3d, "kernel_sizes": [list(k) for k in kernels], "strides": [list(s) for s in strides],
            "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
            "norm_op": nn.InstanceNorm3d, "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
            "dropout_op_kwargs": None, "nonlin": nn.LeakyReLU, "nonlin_kwargs": {"inplace": True}}


def build_network(name: str, topology: dict, cfg: dict, phases: int, num_classes: int = 3) -> nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnunet_ext.architectures.stdnet import STDNet

    if name == "nnunet":
        net = PlainConvUNet(input_channels=phases, num_classes=num_classes, deep_supervision=True, **topology)
    else:
        net = STDNet(phases, num_classes, **topology, deep_supervision=True, num_phases=phases,
                     reference_phase=1 if phases > 1 else 0, num_cls_classes=3, temporal="transformer",
                     temporal_dim=cfg["temporal_dim"], temporal_depth=cfg["temporal_depth"],
                     temporal_heads=cfg["temporal_heads"])
    net.apply(net.initialize)
    return net


# ---------------------------------------------------------------------------------------------- training step
def nnunet_loss(num_outputs: int):
    """nnU-Net's default segmentation loss (Dice + CE) with its deep-supervision weights."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    weights = np.array([1 / 2 ** i for i in range(num_outputs)])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


def make_batch(cfg, phases, strides, device, channels_last):
    """Random input (B, N, *patch), label maps at every deep-supervision resolution, class targets (B,)."""
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(cfg["batch"], phases, *cfg["patch"], generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    targets, size = [], list(cfg["patch"])
    for i, s in enumerate(strides[:-1]):
        size = [a // b for a, b in zip(size, s)] if i else size
        targets.append(torch.randint(0, 3, (cfg["batch"], 1, *size), generator=g).float().to(device))
    cls_target = torch.randint(0, 3, (cfg["batch"],), generator=g).to(device)
    return x, targets, cls_target


def make_optimizer(net, kind: str = "sgd", fused: bool = False):
    """nnU-Net's SGD (optionally the fused kernel) or the trainers' hybrid SGD + AdamW optimizer (``fused``: its
    fused-kernel path, the trainers' default on CUDA; otherwise its ``_foreach`` path)."""
    if kind == "hybrid":
        from nnunet_ext.trainers.optim import make_hybrid_optimizer

        return make_hybrid_optimizer(net, 1e-2, 3e-5, 3e-4, 1e-4, num_epochs=1000, warmup_iterations=1,
                                     fused=fused)[0]
    return torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5,
                           **({"fused": True} if fused else {}))


def make_train_step(model, params, loss_fn, amp_dtype, device, use_heads: bool, opt):
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def step(x, targets, cls_target):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype):
            if use_heads:
                out = model(x, return_heads=True)
                loss = loss_fn(out.seg, targets) + nn.functional.cross_entropy(out.cls.float(), cls_target)
            else:
                loss = loss_fn(model(x), targets)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 12)
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    return step


def train_flops(net, x, targets, cls_target, loss_fn, amp_dtype, device, use_heads) -> int:
    """FLOPs of one eager forward + backward (optimizer excluded)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=amp_dtype):
        if use_heads:
            out = net(x, return_heads=True)
            loss = loss_fn(out.seg, targets) + nn.functional.cross_entropy(out.cls.float(), cls_target)
        else:
            loss = loss_fn(net(x), targets)
        loss.backward()
    net.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


class _Timer:
    """CUDA events on GPU, perf_counter elsewhere; returns milliseconds."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, *args):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t = time.perf_counter()
        fn(*args)
        return (time.perf_counter() - t) * 1e3


def sdpa_context(backend: str):
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[backend])


# ---------------------------------------------------------------------------------------------- one network
def benchmark_network(name: str, args, cfg: dict, topology: dict, device: torch.device) -> dict:
    torch.manual_seed(args.seed)
    amp_dtype = _amp_dtype(args, device)
    net = build_network(name, topology, cfg, args.phases).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    use_heads = name == "stdnet"
    estimate = int(net.compute_conv_feature_map_size(cfg["patch"]))
    rec = {"record": "network", "tag": args.tag, "network": name, "class": type(net).__name__,
           "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3), "planner_estimate_units": estimate,
           "planner_predicted_gb": round(estimate * cfg["batch"] / NNUNET_REFERENCE_BATCH * NNUNET_REFERENCE_GB
                                         / NNUNET_REFERENCE_UNITS, 3)}
    loss_fn = nnunet_loss(len(topology["strides"]) - 1)
    x, targets, cls_target = make_batch(cfg, args.phases, topology["strides"], device, args.channels_last)
    with sdpa_context(args.sdpa_backend):
        rec["train_flops"] = train_flops(net, x, targets, cls_target, loss_fn, amp_dtype, device, use_heads)
        model = net
        if args.compile:
            model = torch.compile(net, mode="reduce-overhead" if args.cuda_graphs else None,
                                  dynamic=None if args.dynamic else False)
        opt = make_optimizer(net, args.optimizer, args.fused_sgd)
        step = make_train_step(model, list(net.parameters()), loss_fn, amp_dtype, device, use_heads, opt)
        timer = _Timer(device)
        t0 = time.perf_counter()
        for _ in range(cfg["warmup"]):
            timer(step, x, targets, cls_target)
        rec["warmup_s"] = round(time.perf_counter() - t0, 3)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = [timer(step, x, targets, cls_target) for _ in range(cfg["steps"])]
        rec["train_step_ms"] = round(statistics.median(times), 3)
        rec["train_step_ms_all"] = [round(t, 3) for t in times]
        rec["train_tflops"] = round(rec["train_flops"] * len(times) / (sum(times) / 1e3) / 1e12, 4)
        if device.type == "cuda":
            rec["measured_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
            rec["measured_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2 ** 30, 3)
        else:
            rec["measured_peak_gb"] = rec["measured_reserved_gb"] = None
        del step, model, opt
        if not args.skip_volume:
            rec.update(forward_volume(net, args, cfg, device, amp_dtype))
    return rec


def forward_volume(net, args, cfg, device, amp_dtype) -> dict:
    """One forward of a (1, N, *volume) input, segmentation only (nnU-Net inference: no deep supervision)."""
    net.decoder.deep_supervision = False
    net.eval()
    model = torch.compile(net, dynamic=False) if args.compile_inference else net
    x = torch.randn(1, args.phases, *cfg["volume"], device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    timer = _Timer(device)
    out = {"volume": list(cfg["volume"])}
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype):
            timer(model, x)  # warm-up (cuDNN autotuning, compilation)
            times = [timer(model, x) / 1e3 for _ in range(cfg["volume_repeats"])]
        out["forward_volume_s"] = round(statistics.median(times), 4)
        out["forward_volume_s_all"] = [round(t, 4) for t in times]
    except torch.OutOfMemoryError as e:  # reported, not fatal: the training numbers stand
        out["forward_volume_error"] = f"out of memory: {str(e).splitlines()[0]}"
    finally:
        net.decoder.deep_supervision = True
        net.train()
    return out


def _amp_dtype(args, device: torch.device) -> torch.dtype:
    """fp16 (nnU-Net's default) on GPU; bf16 with ``--bf16`` and on CPU, where float16 kernels are emulated (100x
    slower) and bfloat16 is the native autocast type."""
    return torch.bfloat16 if args.bf16 or device.type == "cpu" else torch.float16


def environment(args, device) -> dict:
    env = {"record": "config", "tag": args.tag, "torch": torch.__version__, "python": platform.python_version(),
           "device": str(device), "tiny": args.tiny, "phases": args.phases, "compile": args.compile,
           "cuda_graphs": args.cuda_graphs, "dynamic": args.dynamic, "channels_last": args.channels_last,
           "amp_dtype": "bf16" if _amp_dtype(args, device) == torch.bfloat16 else "fp16",
           "sdpa_backend": args.sdpa_backend,
           "optimizer": _optimizer_description(args),
           "time": time.time()}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def _optimizer_description(args) -> str:
    sgd = f"SGD(nesterov, lr=1e-2, momentum=0.99, weight_decay=3e-5{', fused' if args.fused_sgd else ''})"
    if args.optimizer == "hybrid":
        adamw = f"AdamW(lr=3e-4, weight_decay=1e-4{', fused' if args.fused_sgd else ''})"
        return f"hybrid: {sgd} for the U-Net parts, {adamw} for temporal modeler and head"
    return sgd


def run(args) -> list[dict]:
    device = torch.device(args.device)
    cfg = dict(TINY if args.tiny else FULL)
    cfg["steps"] = args.steps if args.steps is not None else cfg["steps"]
    cfg["warmup"] = args.warmup if args.warmup is not None else cfg["warmup"]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    topology = nnunet_topology(cfg["patch"], base_features=cfg["base_features"], max_features=cfg["max_features"])
    head = {**environment(args, device), **{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
            "topology": {k: v for k, v in topology.items() if k in ("n_stages", "features_per_stage", "strides")}}
    records = [head]
    emit(head, args.out)
    for name in args.networks:
        rec = benchmark_network(name, args, cfg, topology, device)
        records.append(rec)
        emit(rec, args.out)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records


def emit(record: dict, out: str | None) -> None:
    """Print one JSON line and append it to ``out`` (if given)."""
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: pass --device cpu --tiny for a sanity check", file=sys.stderr)
        return 2
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
