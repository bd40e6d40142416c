"""TexLiverNet's cost: parameters, forward FLOPs and a CPU training step, against nnU-Net's 2d PlainConvUNet.

Three networks, each counted with ``torch.utils.flop_counter.FlopCounterMode`` (one forward pass, batch 1; a
multiply-add is 2 FLOPs; convolutions, transposed convolutions and matrix products) and parameters:

* ``paper``: TexLiverNet as the paper describes it (arXiv 2411.04595): 2D, 256x256 input, five levels of widths
  64/128/256/512/1024, two convolutions per level, PubMedBERT-width text tokens (768), 64 tokens, 7x7 agents;
* ``texlivernet_nnunet``: TexLiverNet on nnU-Net's 2d plan for a 256x256 CT slice dataset (seven stages of widths
  32-512, what nnU-Net's planner gives for that image size), MiniLM-width text (384);
* ``plainconvunet_nnunet``: nnU-Net's own PlainConvUNet on the same plan (the baseline).

Then one training step (forward + backward + SGD step, float32, deep supervision) of TexLiverNet and PlainConvUNet on
the same nnU-Net plan, patch and batch, alternated, median of ``--repeats`` after a warm-up, with ``--threads``
torch threads.

    python benchmarks/texlivernet_cost.py --out benchmarks/texlivernet_cost_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

NNUNET_2D_256 = {"n_stages": 7, "features_per_stage": [32, 64, 128, 256, 512, 512, 512], "conv_op": nn.Conv2d,
                 "kernel_sizes": [[3, 3]] * 7, "strides": [[1, 1]] + [[2, 2]] * 6, "n_conv_per_stage": [2] * 7,
                 "n_conv_per_stage_decoder": [2] * 6, "conv_bias": True, "norm_op": nn.InstanceNorm2d,
                 "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                 "nonlin": nn.LeakyReLU, "nonlin_kwargs": {"inplace": True}}
PAPER = {**NNUNET_2D_256, "n_stages": 5, "features_per_stage": [64, 128, 256, 512, 1024],
         "kernel_sizes": [[3, 3]] * 5, "strides": [[1, 1]] + [[2, 2]] * 4, "n_conv_per_stage": [2] * 5,
         "n_conv_per_stage_decoder": [2] * 4}


def texlivernet(topology: dict, text_dim: int, size, ds: bool = True):
    from nnunet_ext.architectures.texlivernet import TexLiverNet

    net = TexLiverNet(1, 2, **topology, deep_supervision=ds, text_dim=text_dim, max_text_tokens=64,
                      input_size=list(size))
    net.apply(net.initialize)
    return net


def plain_unet(topology: dict, ds: bool = True):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(input_channels=1, num_classes=2, deep_supervision=ds, **topology)


def inputs(net, batch: int, size) -> tuple[torch.Tensor, dict]:
    x = torch.randn(batch, 1, *size)
    if hasattr(net, "text_dim"):
        return x, {"return_heads": True, "text": torch.randn(batch, 64, net.text_dim),
                   "text_mask": torch.ones(batch, 64, dtype=torch.bool)}
    return x, {}


def forward_flops(net, size) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    net.eval()
    x, kw = inputs(net, 1, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # inference_mode trips its module tracker
        net(x, **kw)
    return int(counter.get_total_flops())


def train_step_seconds(nets: dict, size, batch: int, repeats: int) -> dict[str, float]:
    """Median seconds per training step of each network, steps alternated between the networks."""
    state = {}
    for name, net in nets.items():
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
        x, kw = inputs(net, batch, size)
        state[name] = (net, opt, x, kw)

    def step(name):
        net, opt, x, kw = state[name]
        opt.zero_grad(set_to_none=True)
        out = net(x, **kw)
        out = out.seg if hasattr(out, "seg") else out
        sum(o.float().mean() for o in out).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()

    for name in nets:  # warm-up
        step(name)
    times = {name: [] for name in nets}
    for _ in range(repeats):
        for name in nets:
            t0 = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="JSON file to write")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = (args.size, args.size)
    nets = {"paper": texlivernet(PAPER, 768, size), "texlivernet_nnunet": texlivernet(NNUNET_2D_256, 384, size),
            "plainconvunet_nnunet": plain_unet(NNUNET_2D_256)}
    rows = {name: {"parameters": int(sum(p.numel() for p in net.parameters())),
                   "forward_gflops": forward_flops(net, size) / 1e9} for name, net in nets.items()}
    step = train_step_seconds({k: nets[k] for k in ("texlivernet_nnunet", "plainconvunet_nnunet")}, size,
                              args.batch, args.repeats)
    result = {"command": "python benchmarks/texlivernet_cost.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                         f"{args.threads} threads, float32",
              "input": f"1x{args.size}x{args.size}", "batch_train_step": args.batch, "networks": rows,
              "train_step_s": step, "train_step_ratio": step["texlivernet_nnunet"] / step["plainconvunet_nnunet"]}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
