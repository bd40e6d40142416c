"""Parameters and forward FLOPs of the DeSamba presets (``nnunet_ext.architectures.desamba.PRESETS``) beside the
paper's 433.82M parameters and 308.32 GFLOPs (DeSamba, arXiv 2507.15487).

Counted on the meta device (no memory, no compute): parameters of the network as built for three sequences (the
paper's T1, T2, T2-FS), one segmentation output per label (background + lesion), three classes and three clinical
features; FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` for one forward pass with every head
(``return_heads=True``: segmentation, DRLM with its reconstruction decoders, classifier), batch 1, multiply-add = 2
FLOPs. The counter covers convolutions, transposed convolutions and matrix products, not FFTs, norms or
element-wise operations. The topology is nnU-Net's for an isotropic patch of side ``--size``: stride 1, then 2 per
stage down to a 4-voxel bottleneck (``--stages`` overrides).

    python benchmarks/desamba_cost.py --size 64 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from torch import nn

from nnunet_ext.architectures.desamba import PAPER_GFLOPS, PAPER_PARAMS, PRESETS, DeSamba


def build(preset: str, size: int, stages: int, sequences: int = 3) -> DeSamba:
    topology = {"n_stages": stages, "features_per_stage": [32] * stages, "conv_op": nn.Conv3d,
                "kernel_sizes": [[3] * 3] * stages, "strides": [[1] * 3] + [[2] * 3] * (stages - 1),
                "norm_op": nn.InstanceNorm3d, "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "nonlin": nn.LeakyReLU,
                "nonlin_kwargs": {"inplace": True}}
    with torch.device("meta"):
        return DeSamba(sequences, 2, **topology, preset=preset, num_cls_classes=3, num_tabular=3,
                       cls_pool_channels=[1])


def forward_flops(net: DeSamba, size: int, sequences: int = 3) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, sequences, size, size, size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, return_heads=True, tabular=torch.zeros(1, 3, device="meta"))
    return int(counter.get_total_flops())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--stages", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    stages = args.stages or int(math.log2(args.size // 4)) + 1
    rows = {}
    for preset in PRESETS:
        net = build(preset, args.size, stages)
        params = net.parameter_count()
        flops = forward_flops(net, args.size)
        rows[preset] = {"parameters": params, "parameters_vs_paper": params / PAPER_PARAMS, "gflops": flops / 1e9,
                        "gflops_vs_paper": flops / 1e9 / PAPER_GFLOPS}
        print(f"{preset:6s} {params / 1e6:8.2f}M params ({params / PAPER_PARAMS:5.2f} x paper)  "
              f"{flops / 1e9:9.2f} GFLOPs ({flops / 1e9 / PAPER_GFLOPS:5.2f} x paper)")
    out = {"input": [1, 3, args.size, args.size, args.size], "stages": stages, "presets": rows,
           "paper": {"parameters": PAPER_PARAMS, "gflops": PAPER_GFLOPS}}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
