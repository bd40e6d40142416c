"""Why did STD-Net's characterisation head output constant logits under nnU-Net's SGD? A controlled CPU diagnostic.

The synthetic GPU comparison (``benchmarks/RESULTS.md``) trained STD-Net with nnU-Net's optimizer for every
parameter (SGD, Nesterov, lr 1e-2, momentum 0.99, no warm-up) and its validation AUC was exactly 0.5 from the fifth
epoch on: the same logits for every case. This script trains the same network on the same kind of data twice, from
the same initial weights and batches, once with that optimizer and once with the hybrid optimizer of
:mod:`nnunet_ext.trainers.optim` (nnU-Net's SGD for the U-Net, AdamW 3e-4 with warm-up for the transformer and the
head), and records what happens inside the head:

* ``logit_std``: standard deviation of the class logits across probe cases (0 = constant output);
* ``dead_hidden``: fraction of the head's 512 hidden units whose pre-activation is negative for every probe case
  (with a ReLU head: units that get no gradient);
* ``cls_feature_std``: standard deviation across probe cases of the pooled CLS features entering the head;
  ``bottleneck_std`` / ``bottleneck_mean_abs``: the same for the (lesion-pooled) encoder bottleneck of all phases;
* ``cls_self_attention``: mean attention weight of CLS on itself, per Transformer layer; ``cls_constant_norm``: norm
  of the learned CLS token + its positional embedding;
* ``temporal_grad_norm_seg`` / ``temporal_grad_norm_cls``: norm of each loss's gradient on the Transformer blocks at
  the logged step (before clipping; the weights both the decoded reference token and the CLS path use), and their
  ratio ``temporal_grad_ratio_cls_to_seg``;
* ``cls_loss``: mean training CE over the last logging interval; ``train_auc`` / ``val_auc``: macro one-vs-rest AUC on
  the probe (training) cases and on held-out cases.

Two switches test why the Transformer's CLS path stays flat in joint training while the same module learns on
frozen features (``benchmarks/temporal_readout_probe.py``): ``--train-pool truth`` lets the head pool with the
ground-truth lesion mask during training (not the still poor prediction), ``--detach-reference`` stops the
segmentation gradient from entering the Transformer through the decoded reference-phase token.

Data: ``synthesize_liver_case`` volumes (3 phases, misaligned by up to 3 mm / 3 deg, 3 classes), CT-windowed and
z-scored, whole volumes as patches. Loss: nnU-Net's Dice + CE with deep supervision + CE on the class logits
(lesion-containing cases only, as the trainer does), gradient clipping at 12, fp32. Network: STD-Net with nnU-Net's
topology rules for the patch and the paper's temporal modeler (L=6, h=8, D=768) and head (512, dropout 0.3); the
encoder widths are reduced (``--base-features``) so that it runs on a laptop CPU.

    python benchmarks/head_optimizer_diagnostic.py --out head_diag.jsonl
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stdnet_gpu import PAPER_SPACING, emit, nnunet_loss, nnunet_topology  # noqa: E402  (same folder)

SPACING = PAPER_SPACING
CLASSES = ("HCC", "metastasis", "benign")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=24)
    p.add_argument("--n-val", type=int, default=12)
    p.add_argument("--shape", type=int, nargs=3, default=(32, 48, 48))
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--iterations-per-epoch", type=int, default=50, help="poly schedule steps once per 'epoch'")
    p.add_argument("--epochs", type=int, default=50, help="length of the poly schedule (nnU-Net: num_epochs)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--base-features", type=int, default=16)
    p.add_argument("--max-features", type=int, default=128)
    p.add_argument("--optimizers", nargs="+", default=["nnunet_sgd", "hybrid"], choices=["nnunet_sgd", "hybrid"])
    p.add_argument("--head-activation", default="leaky_relu", choices=["leaky_relu", "relu", "gelu"],
                   help="relu: the head of the first GPU runs")
    p.add_argument("--head-input-norm", default="none", choices=["none", "running"],
                   help="running: standardise the pooled head features with running statistics (cls_input_norm)")
    p.add_argument("--temporal-depth", type=int, default=6, help="Transformer layers (paper: 6)")
    p.add_argument("--temporal", default="transformer", choices=["transformer", "convgru", "mean"])
    p.add_argument("--freeze-cls-token", action="store_true",
                   help="keep the CLS token and its positional embedding at their initial values")
    p.add_argument("--train-pool", default="prediction", choices=["prediction", "truth"],
                   help="truth: during training the head pools with the ground-truth lesion mask instead of the "
                        "network's prediction (the probes keep pooling with the prediction, as at inference)")
    p.add_argument("--detach-reference", action="store_true",
                   help="the decoder's reference-phase token does not back-propagate into the Transformer, which is "
                        "then trained by the classification loss alone")
    p.add_argument("--batch", type=int, default=2, help="cases per training step")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def make_cases(n: int, shape, seed: int):
    """``synthesize_liver_case`` volumes, classes in turn: CT-windowed images (n, 3, *shape) float32 in [-100, 300],
    segmentations (n, *shape) int64 (1 liver, 2 lesion) and class indices (n,) int64."""
    from nnunet_ext.conversion.synthetic_liver import synthesize_liver_case

    rng = np.random.default_rng(seed)
    images, segs, ys = [], [], []
    for i in range(n):
        case = synthesize_liver_case(rng, shape=shape, spacing=SPACING, class_name=CLASSES[i % len(CLASSES)],
                                     with_text=False)
        images.append(case.image)
        segs.append(case.seg)
        ys.append(CLASSES.index(case.class_name))
    return np.clip(np.stack(images), -100, 300), np.stack(segs).astype(np.int64), np.array(ys, dtype=np.int64)


def make_data(n: int, shape, seed: int):
    """(images (n, 3, *shape) float32 z-scored over the set, segs (n, 1, *shape) int64, class targets (n,))."""
    x, segs, ys = make_cases(n, shape, seed)
    x = (x - x.mean()) / x.std()
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(segs[:, None]), torch.from_numpy(ys)


def build_network(shape, base: int, cap: int, activation: str = "leaky_relu", **overrides):
    """STD-Net with nnU-Net's topology for ``shape`` (widths ``base`` .. ``cap``), the paper's temporal modeler and
    head, lesion-weighted pooling on label 2."""
    from nnunet_ext.architectures.stdnet import STDNet

    topology = nnunet_topology(shape, SPACING, base, cap)
    net = STDNet(3, 3, **topology, deep_supervision=True, num_cls_classes=3, num_phases=3, reference_phase=1,
                 cls_pool_channels=[2], cls_activation=activation, **overrides)
    net.apply(net.initialize)
    return net, topology["strides"]


def ds_targets(seg: torch.Tensor, strides) -> list[torch.Tensor]:
    """nnU-Net's deep-supervision targets: nearest downsampling by the cumulative strides."""
    out, scale = [], np.ones(3)
    for i, s in enumerate(strides[:-1]):
        if i:
            scale = scale * np.array(s)
        size = [int(round(d / f)) for d, f in zip(seg.shape[2:], scale)]
        out.append(F.interpolate(seg.float(), size=size, mode="nearest"))
    return out


def make_optimizer(kind: str, net, epochs: int, iterations: int):
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

    from nnunet_ext.trainers.optim import default_warmup_iterations, make_hybrid_optimizer

    if kind == "nnunet_sgd":
        opt = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
        return opt, PolyLRScheduler(opt, 1e-2, epochs)
    return make_hybrid_optimizer(net, 1e-2, 3e-5, 3e-4, 1e-4, epochs, default_warmup_iterations(epochs * iterations))


@torch.no_grad()
def probe(net, x, y) -> dict:
    """Head statistics on a set of cases (eval mode, one case at a time)."""
    from nnunet_ext.architectures.blocks.heads import lesion_weighted_pool
    from nnunet_ext.evaluation.classification import classification_summary

    net.eval()
    feats, logits, hidden, inputs, self_attn = [], [], [], [], []
    for i in range(len(x)):
        f = net._phase_features(x[i:i + 1])
        ctx, cls_feat, weights = net._temporal_context(f[-1], return_attention=net.temporal_kind == "transformer")
        seg = net.decoder(net._reference_skips(f[:-1]) + [ctx])
        pooled = lesion_weighted_pool(cls_feat, seg, net.cls_pool_channels)
        feats.append(pooled[0])
        inputs.append(lesion_weighted_pool(f[-1].flatten(1, 2), seg, net.cls_pool_channels)[0])
        if weights:
            self_attn.append([float(w[..., 0, 0].mean()) for w in weights])  # CLS -> CLS, per layer
        hidden.append(net.cls_head.hidden_activations(pooled)[0])
        logits.append(net.cls_head(pooled)[0])
    net.train()
    feats, logits, hidden, inputs = torch.stack(feats), torch.stack(logits), torch.stack(hidden), torch.stack(inputs)
    s = classification_summary(y.numpy(), torch.softmax(logits, 1).numpy(), list(CLASSES))
    out = {"logit_std": float(logits.std(0).mean()), "dead_hidden": float((hidden.amax(0) <= 0).float().mean()),
           "cls_feature_std": float(feats.std(0).mean()), "bottleneck_std": float(inputs.std(0).mean()),
           "bottleneck_mean_abs": float(inputs.abs().mean()), "auc": float(s["auc_ovr_macro"]),
           "accuracy": float(s["accuracy"])}
    if self_attn:
        out["cls_self_attention"] = [round(v, 4) for v in np.mean(self_attn, 0)]
        t = net.temporal
        out["cls_constant_norm"] = float((t.cls_token[0, 0] + t.pos_embed[0, 0]).norm())
    return out


def training_forward(net, x: torch.Tensor, seg: torch.Tensor, train_pool: str) -> dict:
    """``net(x, return_heads=True)``; with ``train_pool="truth"`` the head pools with the ground-truth lesion (label
    2) instead of the prediction, as the trainers' ``head_pool_in_training = "truth"`` does."""
    return net(x, return_heads=True, lesion_mask=(seg == 2) if train_pool == "truth" else None)


def detach_reference(net) -> None:
    """Cut the input of ``temporal_out`` (the reference-phase token the decoder reads) from the autograd graph:
    ``temporal_out`` still learns, the Transformer gets no segmentation gradient."""
    net.temporal_out.register_forward_pre_hook(lambda _module, inputs: tuple(i.detach() for i in inputs))


def gradient_split(net, l_seg: torch.Tensor, l_cls: torch.Tensor) -> dict:
    """Norms of the segmentation and the classification loss's gradients on the temporal modeler's blocks (the
    weights both paths share), before clipping: how much of what AdamW normalises by comes from each loss."""
    params = [p for p in net.temporal.blocks.parameters() if p.requires_grad]
    out = {}
    for name, loss in (("seg", l_seg), ("cls", l_cls)):
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        sq = sum(float(g.pow(2).sum()) for g in grads if g is not None)
        out[f"temporal_grad_norm_{name}"] = sq ** 0.5
    seg = out["temporal_grad_norm_seg"]
    out["temporal_grad_ratio_cls_to_seg"] = out["temporal_grad_norm_cls"] / seg if seg > 0 else None
    return out


def train(kind: str, net0, strides, data, val, args) -> list[dict]:
    torch.manual_seed(args.seed)
    net = copy.deepcopy(net0)
    opt, sched = make_optimizer(kind, net, args.epochs, args.iterations_per_epoch)
    loss_fn = nnunet_loss(len(strides) - 1)
    x, segs, y = data
    g = torch.Generator().manual_seed(args.seed + 1)
    records, cls_losses, t0 = [], [], time.perf_counter()
    for it in range(args.iterations):
        if it % args.iterations_per_epoch == 0:
            sched.step(it // args.iterations_per_epoch)
        if hasattr(sched, "step_iteration"):
            sched.step_iteration(it)
        idx = torch.randint(0, len(x), (args.batch,), generator=g)
        out = training_forward(net, x[idx], segs[idx], args.train_pool)
        l_seg = loss_fn(out["seg"], ds_targets(segs[idx], strides))
        lesion = (segs[idx] == 2).flatten(1).any(1).float()
        ce = F.cross_entropy(out["cls"], y[idx], reduction="none")
        l_cls = (ce * lesion).sum() / lesion.sum().clamp_min(1)
        log_now = (it + 1) % args.log_every == 0 or it == 0
        split = gradient_split(net, l_seg, l_cls) if log_now and net.temporal_kind == "transformer" else {}
        opt.zero_grad(set_to_none=True)
        (l_seg + l_cls).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        cls_losses.append(float(l_cls.detach()))
        if log_now:
            rec = {"optimizer": kind, "iteration": it + 1, "cls_loss": float(np.mean(cls_losses)),
                   "seg_loss": float(l_seg.detach()), "seconds": round(time.perf_counter() - t0, 1), **split}
            tr = probe(net, x[:args.n_val], y[:args.n_val])
            va = probe(net, val[0], val[2])
            rec.update({f"train_{k}": v for k, v in tr.items()})
            rec.update({f"val_{k}": v for k, v in va.items()})
            records.append(rec)
            cls_losses = []
            emit(rec, args.out)
    return records


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = make_data(args.n_train, args.shape, args.seed)
    val = make_data(args.n_val, args.shape, args.seed + 1000)
    net0, strides = build_network(args.shape, args.base_features, args.max_features, args.head_activation,
                                  temporal=args.temporal, cls_input_norm=args.head_input_norm,
                                  temporal_depth=args.temporal_depth)
    emit({"record": "config", **{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
           "torch": torch.__version__, "params_M": round(sum(p.numel() for p in net0.parameters()) / 1e6, 2)},
          args.out)
    if args.detach_reference:
        detach_reference(net0)
    if args.freeze_cls_token:
        net0.temporal.cls_token.requires_grad_(False)
        net0.temporal.pos_embed.requires_grad_(False)
    for kind in args.optimizers:
        train(kind, net0, strides, data, val, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
