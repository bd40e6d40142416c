"""Can STD-Net's temporal modeler read the lesion class out of per-phase encoder features? A readout probe (CPU).

On the synthetic multiphase comparison (``benchmarks/RESULTS.md``) STD-Net's Transformer head never learned (macro AUC
0.50 / 0.50 / 0.43 in three runs) while the ConvGRU and early-fusion heads did. Joint training mixes many causes
(the head pools with the network's own, still poor, lesion prediction; the U-Net and the head share an encoder; two
optimizers). This probe removes all of them: the encoder is frozen, the per-phase bottleneck features of every case
are computed once, each case is pooled over the bottleneck cells that hold its ground-truth lesion, and only a
*readout* (temporal modeler + the characterisation head) is trained on the cached features. Every readout gets the
same features, cells, weights, head (:class:`~nnunet_ext.architectures.blocks.heads.ClassificationHead`: 512,
dropout 0.3), optimizer (AdamW, lr 3e-4, weight decay 1e-4, 5% linear warm-up then nnU-Net's poly, as the
trainers use for these modules), batches and steps:

* ``mean``: mean over phases (STD-Net's "no temporal modeler" ablation);
* ``concat``: the phases' features concatenated (an order-aware linear baseline);
* ``convgru``: :class:`~nnunet_ext.architectures.blocks.conv_gru.ConvGRU` over phases on the whole bottleneck grid
  (the ConvGRU ablation), its final state pooled;
* ``transformer``: :class:`~nnunet_ext.architectures.blocks.temporal_transformer.TemporalTransformer` exactly as in
  STD-Net (paper: L=6, h=8, D=768, pre-norm, CLS output); variants change one thing each:
  ``transformer_d256`` (D=256, h=4), ``transformer_l1`` (one layer), ``transformer_post_norm`` (post-norm, no final
  LayerNorm), ``transformer_tokens`` (the head reads the concatenated output *phase* tokens instead of CLS),
  ``transformer_lr1e-3`` / ``transformer_lr1e-4`` (lr 1e-3 / 1e-4), ``transformer_input_norm`` (the head
  standardises its input with running statistics, STD-Net's ``cls_input_norm="running"``);
* ``intensity``: per phase, the mean intensity of the (reference-phase) lesion mask and of the liver around it
  (6 numbers, standardised): how much of the class the enhancement curve itself carries.

Encoder: STD-Net's shared encoder (nnU-Net topology for the patch, reduced widths) either at its initialisation
(``--encoder-iterations 0``: random features) or after ``--encoder-iterations`` steps of segmentation-only training
(nnU-Net's Dice + CE with deep supervision and its SGD, no classification loss, so the features are not tuned for
the classes). The probe pools the ``--top-k`` bottleneck cells with the largest lesion fraction, weighted by that
fraction (cells of a 4x6x6 bottleneck for 32x48x48 patches): this is STD-Net's lesion-weighted pooling with the ground
truth in place of the prediction (``--pool-with prediction``: the frozen network's own predicted lesion probability,
as at inference), restricted to the cells that carry weight so that the paper-size Transformer runs on a CPU.
``--eval-pool-with`` pools the validation cases differently from the training cases (``--pool-with truth
--eval-pool-with prediction`` is what the trainers do). ``--batch 2`` with 6x the steps gives the joint training's
batch size for the same number of samples.

``--early-pool-with prediction --early-steps W`` asks whether a readout that has first been trained on uninformative
cells recovers once it gets informative ones, as joint training's head must (its early lesion maps find no lesion,
later ones do): the first W steps pool the training cases the early way, the next ``--steps`` the ``--pool-with``
way, one optimizer and one warm-up + poly schedule over all W + steps. For the Transformer readouts every evaluation
also records how much attention the CLS token pays to itself, per layer (``cls_self_attention``, mean over heads and
validation cells): a CLS token that only attends to itself carries nothing of the phases.

Reported per readout and seed (JSON lines): train CE and validation macro one-vs-rest AUC every ``--eval-every`` steps.

    python benchmarks/temporal_readout_probe.py --out readout_probe.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from head_optimizer_diagnostic import CLASSES, SPACING, ds_targets, make_cases  # noqa: E402  (same folder)
from stdnet_gpu import emit, nnunet_loss, nnunet_topology  # noqa: E402

TRANSFORMER_VARIANTS = {
    "transformer": {},
    "transformer_d256": {"dim": 256, "heads": 4},
    "transformer_l1": {"depth": 1},
    "transformer_post_norm": {"norm_first": False},
    "transformer_tokens": {"readout": "tokens"},
    "transformer_lr1e-3": {"lr": 1e-3},
    "transformer_lr1e-4": {"lr": 1e-4},
    "transformer_input_norm": {"head_input_norm": "running"},
}
READOUTS = ("intensity", "mean", "concat", "convgru", *TRANSFORMER_VARIANTS)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=96)
    p.add_argument("--n-val", type=int, default=48)
    p.add_argument("--shape", type=int, nargs=3, default=(32, 48, 48))
    p.add_argument("--base-features", type=int, default=8)
    p.add_argument("--max-features", type=int, default=64)
    p.add_argument("--encoder-iterations", type=int, default=300,
                   help="segmentation-only training steps of the encoder before freezing it (0: initial weights)")
    p.add_argument("--top-k", type=int, default=8, help="bottleneck cells pooled per case (largest lesion fraction)")
    p.add_argument("--pool-with", default="truth", choices=["truth", "prediction"],
                   help="lesion weights from the ground truth or from the frozen network's own segmentation (as "
                        "STD-Net pools at inference)")
    p.add_argument("--eval-pool-with", default=None, choices=["truth", "prediction"],
                   help="pooling of the validation cases (default: as --pool-with); '--pool-with truth "
                        "--eval-pool-with prediction' is how the trainers train and infer")
    p.add_argument("--early-pool-with", default=None, choices=["truth", "prediction"],
                   help="pool the training cases this way for the first --early-steps steps, then as --pool-with")
    p.add_argument("--early-steps", type=int, default=0)
    p.add_argument("--readouts", nargs="+", default=list(READOUTS), choices=READOUTS)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--temporal-dim", type=int, default=768)
    p.add_argument("--temporal-depth", type=int, default=6)
    p.add_argument("--temporal-heads", type=int, default=8)
    p.add_argument("--cache", default=None, help="folder for the cached features (reused when present)")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                   help="train and evaluate the readout under CPU autocast (fp16: with a GradScaler, as nnU-Net trains "
                        "on the GPU); the cached features stay float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.early_steps and not args.early_pool_with:
        p.error("--early-steps needs --early-pool-with (the pooling of the early steps)")
    return args


# ----------------------------------------------------------------------------------------------------- data
def intensity_features(images: np.ndarray, segs: np.ndarray) -> np.ndarray:
    """(n, 2N): per phase the mean intensity inside the lesion mask and in the liver (label 1)."""
    out = []
    for img, seg in zip(images, segs):
        lesion, liver = seg == 2, seg == 1
        out.append([v for ph in img for v in (ph[lesion].mean() if lesion.any() else 0.0, ph[liver].mean())])
    return np.asarray(out, dtype=np.float32)


def build_encoder_network(shape, base: int, cap: int):
    """STD-Net without head and with the parameter-free temporal mean (segmentation-only pre-training)."""
    from nnunet_ext.architectures.stdnet import STDNet

    topology = nnunet_topology(shape, SPACING, base, cap)
    net = STDNet(3, 3, **topology, deep_supervision=True, num_cls_classes=0, num_phases=3, reference_phase=1,
                 temporal="mean")
    net.apply(net.initialize)
    return net, topology


def train_encoder(net, strides, x: torch.Tensor, segs: torch.Tensor, iterations: int, seed: int) -> list[float]:
    """nnU-Net's segmentation training (Dice + CE, deep supervision, SGD 1e-2 / 0.99 Nesterov, poly per step)."""
    loss_fn = nnunet_loss(len(strides) - 1)
    opt = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for it in range(iterations):
        for group in opt.param_groups:
            group["lr"] = 1e-2 * (1 - it / iterations) ** 0.9
        idx = torch.randint(0, len(x), (2,), generator=g)
        loss = loss_fn(net(x[idx]), ds_targets(segs[idx, None], strides))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def bottleneck_features(net, x: torch.Tensor, segs: torch.Tensor, top_k: int, pool_with: str = "truth") -> dict:
    """Per case: the bottleneck grid (N, C, *S), the top-k cells by lesion fraction (ground truth, or the network's
    predicted lesion probability with ``pool_with="prediction"``) and their pooling weights."""
    from nnunet_ext.architectures.blocks.heads import LESION_POOL_FLOOR

    net.eval()
    grids, lesion = [], []
    for i in range(0, len(x), 8):
        feats = net._phase_features(x[i:i + 8])
        grids.append(feats[-1])  # (b, N, C, *S)
        if pool_with == "prediction":
            ctx = net._temporal_context(feats[-1])[0]
            logits = net.decoder(net._reference_skips(feats[:-1]) + [ctx])
            lesion.append(torch.softmax(logits[0] if isinstance(logits, list) else logits, 1)[:, 2])
    grids = torch.cat(grids)  # (n, N, C, *S)
    lesion = torch.cat(lesion) if lesion else (segs == 2).float()
    frac = F.adaptive_avg_pool3d(lesion[:, None], grids.shape[3:]).flatten(1)  # (n, L)
    k = min(top_k, frac.shape[1])
    vals, idx = frac.topk(k, dim=1)
    w = vals + LESION_POOL_FLOOR
    return {"grid": grids, "idx": idx, "weight": w / w.sum(1, keepdim=True), "lesion_fraction": vals}


def pooled_truth_fraction(d: dict, segs: torch.Tensor) -> float:
    """Mean ground-truth lesion fraction of the pooled cells, weighted as pooled (how well pooling finds lesions)."""
    truth = F.adaptive_avg_pool3d((segs == 2).float()[:, None], d["grid"].shape[3:]).flatten(1)
    return round(float((truth.gather(1, d["idx"]) * d["weight"]).sum(1).mean()), 4)


AMP_DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------------- readouts
class Readout(nn.Module):
    """Temporal modeler + characterisation head on cached features. ``forward(batch)`` -> logits (B, K)."""

    def __init__(self, kind: str, channels: int, num_phases: int, num_classes: int, args, intensity_dim: int = 0):
        super().__init__()
        from nnunet_ext.architectures.blocks.conv_gru import ConvGRU
        from nnunet_ext.architectures.blocks.heads import ClassificationHead
        from nnunet_ext.architectures.blocks.temporal_transformer import TemporalTransformer

        self.kind, self.readout = kind, "cls"
        self.temporal = None
        head_input_norm = "none"
        if kind == "intensity":
            width = intensity_dim
        elif kind == "mean":
            width = channels
        elif kind == "concat":
            width = num_phases * channels
        elif kind == "convgru":
            self.temporal = ConvGRU(nn.Conv3d, channels, channels, 3)
            width = channels
        else:
            cfg = {"dim": args.temporal_dim, "depth": args.temporal_depth, "heads": args.temporal_heads,
                   "norm_first": True, "readout": "cls", **TRANSFORMER_VARIANTS[kind]}
            cfg.pop("lr", None)
            self.readout = cfg.pop("readout")
            head_input_norm = cfg.pop("head_input_norm", "none")
            self.temporal = TemporalTransformer(channels, num_phases, **cfg)
            width = cfg["dim"] * (num_phases if self.readout == "tokens" else 1)
        self.head = ClassificationHead(width, num_classes, input_norm=head_input_norm)
        self.cls_self_attention = None  # per layer, filled by features(..., attention=True)

    def features(self, batch: dict, attention: bool = False) -> torch.Tensor:
        """(B, F): the pooled features the head reads. ``attention``: a Transformer readout also stores the mean
        attention of the CLS query on the CLS key per layer (over heads and the pooled cells, weighted as pooled) in
        ``self.cls_self_attention``."""
        if self.kind == "intensity":
            return batch["intensity"]
        grid, idx, w = batch["grid"], batch["idx"], batch["weight"]  # (B, N, C, *S), (B, k), (B, k)
        b, n, c = grid.shape[:3]
        if self.kind == "convgru":
            cells = self.temporal(grid).flatten(2)  # (B, C, L)
            picked = cells.gather(2, idx[:, None].expand(-1, cells.shape[1], -1)).transpose(1, 2)  # (B, k, C)
            return (picked * w[..., None]).sum(1)
        flat = grid.flatten(3)  # (B, N, C, L)
        tokens = flat.gather(3, idx[:, None, None].expand(-1, n, c, -1)).permute(0, 3, 1, 2)  # (B, k, N, C)
        if self.kind == "mean":
            cell = tokens.mean(2)
        elif self.kind == "concat":
            cell = tokens.flatten(2)
        else:
            z = self.temporal(tokens.reshape(-1, n, c), return_attention=attention)
            if attention:
                z, maps = z
                cell_w = (w / w.sum(1, keepdim=True)).reshape(-1)  # (B*k,), each case weighs 1
                self.cls_self_attention = [round(float((m[:, :, 0, 0].mean(1) * cell_w).sum() / b), 4) for m in maps]
            z = z.unflatten(0, tokens.shape[:2])  # (B, k, N+1, D)
            cell = z[:, :, 0] if self.readout == "cls" else z[:, :, 1:].flatten(2)
        return (cell * w[..., None]).sum(1)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.features(batch))


def take(data: dict, idx) -> dict:
    return {k: v[idx] for k, v in data.items() if k not in ("y", "early_idx", "early_weight")}


def train_readout(kind: str, train: dict, val: dict, args, seed: int) -> list[dict]:
    from nnunet_ext.evaluation.classification import classification_summary
    from nnunet_ext.trainers.optim import default_warmup_iterations

    torch.manual_seed(seed)
    channels, n = train["grid"].shape[2], train["grid"].shape[1]
    model = Readout(kind, channels, n, len(CLASSES), args, train["intensity"].shape[1])
    lr = TRANSFORMER_VARIANTS.get(kind, {}).get("lr", args.lr)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=args.weight_decay)
    total = args.early_steps + args.steps
    warm = default_warmup_iterations(total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else (1 - s / total) ** 0.9)
    early = {**train, "idx": train["early_idx"], "weight": train["early_weight"]} if args.early_steps else train
    g = torch.Generator().manual_seed(seed + 7)
    amp = args.amp
    scaler = torch.amp.GradScaler("cpu", enabled=amp == "fp16")

    def autocast():
        return torch.autocast("cpu", dtype=AMP_DTYPES[amp], enabled=amp != "none")

    records, losses, t0 = [], [], time.perf_counter()
    for step in range(1, total + 1):
        idx = torch.randint(0, len(train["y"]), (args.batch,), generator=g)
        cells = early if step <= args.early_steps else train
        with autocast():
            loss = F.cross_entropy(model(take(cells, idx)), train["y"][idx])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12)
        scaler.step(opt)
        scaler.update()
        sched.step()
        losses.append(float(loss.detach()))
        if step % args.eval_every == 0 or step == total:
            model.eval()
            with torch.no_grad(), autocast():
                attention = kind in TRANSFORMER_VARIANTS and model.readout == "cls"
                feats = model.features(take(val, slice(None)), attention=attention).float()
                probs = torch.softmax(model.head(feats).float(), 1).numpy()
            model.train()
            s = classification_summary(val["y"].numpy(), probs, list(CLASSES))
            rec = {"readout": kind, "seed": seed, "amp": amp, "step": step,
                   "train_ce": round(float(np.mean(losses)), 4),
                   "val_auc": round(float(s["auc_ovr_macro"]), 4), "val_accuracy": round(float(s["accuracy"]), 4),
                   "val_feature_std": round(float(feats.std(0).mean()), 5),
                   "seconds": round(time.perf_counter() - t0, 1)}
            if args.early_steps:
                rec["cells"] = args.early_pool_with if step <= args.early_steps else args.pool_with
            if model.cls_self_attention is not None:
                rec["cls_self_attention"] = model.cls_self_attention
            records.append(rec)
            losses = []
            emit(rec, args.out)
    return records


def prepare(args) -> tuple[dict, dict, dict]:
    """Cached features (train, val) and a record describing the encoder."""
    cache = Path(args.cache) / "features.pt" if args.cache else None
    eval_pool = args.eval_pool_with or args.pool_with
    key = {"shape": list(args.shape), "n_train": args.n_train, "n_val": args.n_val, "base": args.base_features,
           "cap": args.max_features, "encoder_iterations": args.encoder_iterations, "top_k": args.top_k,
           "pool_with": args.pool_with, "eval_pool_with": eval_pool}
    if args.early_pool_with:
        key["early_pool_with"] = args.early_pool_with
    if cache is not None and cache.is_file():
        stored = torch.load(cache, weights_only=False)
        if stored["key"] == key:
            return stored["train"], stored["val"], {**stored["info"], "cached": True}
    t0 = time.perf_counter()
    img_tr, seg_tr, y_tr = make_cases(args.n_train, args.shape, 0)
    img_va, seg_va, y_va = make_cases(args.n_val, args.shape, 1000)
    mean, std = img_tr.mean(), img_tr.std()  # one normalisation, from the training cases (nnU-Net-like z-score)
    x_tr, x_va = (torch.from_numpy((a - mean) / std) for a in (img_tr, img_va))
    s_tr, s_va = torch.from_numpy(seg_tr), torch.from_numpy(seg_va)
    torch.manual_seed(0)
    net, topology = build_encoder_network(args.shape, args.base_features, args.max_features)
    losses = train_encoder(net, topology["strides"], x_tr, s_tr, args.encoder_iterations, 0) \
        if args.encoder_iterations else []
    inten_tr, inten_va = intensity_features(img_tr, seg_tr), intensity_features(img_va, seg_va)
    mu, sd = inten_tr.mean(0), inten_tr.std(0) + 1e-6
    out = []
    for x, s, y, inten, pool in ((x_tr, s_tr, y_tr, inten_tr, args.pool_with),
                                 (x_va, s_va, y_va, inten_va, eval_pool)):
        d = bottleneck_features(net, x, s, args.top_k, pool)
        d["intensity"] = torch.from_numpy((inten - mu) / sd)
        d["y"] = torch.from_numpy(y)
        out.append(d)
    if args.early_pool_with:  # the same training features, other cells
        early = bottleneck_features(net, x_tr, s_tr, args.top_k, args.early_pool_with)
        out[0]["early_idx"], out[0]["early_weight"] = early["idx"], early["weight"]
    info = {"record": "encoder", "encoder_iterations": args.encoder_iterations,
            "seg_loss_first_last_25": [round(float(np.mean(losses[:25])), 4), round(float(np.mean(losses[-25:])), 4)]
            if losses else None, "bottleneck": list(out[0]["grid"].shape[1:]),
            "mean_lesion_fraction_topk": round(float(out[0]["lesion_fraction"].mean()), 4),
            "cases_without_lesion": int((out[0]["lesion_fraction"][:, 0] == 0).sum()),
            "pool_with": args.pool_with, "eval_pool_with": eval_pool,
            "truth_lesion_fraction_of_pooled_cells": pooled_truth_fraction(out[0], s_tr),
            "val_truth_lesion_fraction_of_pooled_cells": pooled_truth_fraction(out[1], s_va),
            "seconds": round(time.perf_counter() - t0, 1)}
    if args.early_pool_with:
        info["early_pool_with"] = args.early_pool_with
        info["early_truth_lesion_fraction_of_pooled_cells"] = pooled_truth_fraction(
            {"grid": out[0]["grid"], "idx": out[0]["early_idx"], "weight": out[0]["early_weight"]}, s_tr)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "train": out[0], "val": out[1], "info": info}, cache)
    return out[0], out[1], info


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    emit({"record": "config", **{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
          "torch": torch.__version__}, args.out)
    train, val, info = prepare(args)
    emit(info, args.out)
    for seed in args.seeds:
        for kind in args.readouts:
            train_readout(kind, train, val, args, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
