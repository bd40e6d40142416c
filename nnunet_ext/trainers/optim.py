"""One optimizer, two update rules: nnU-Net's SGD for the U-Net, AdamW with warm-up for the modules nnU-Net lacks.

Why. nnU-Net trains every parameter with SGD (Nesterov, momentum 0.99, lr 1e-2, poly decay, no warm-up). That is
tuned for convolutions with instance norm. Transformers are trained with AdamW and a warm-up (ViT, TimeSformer; the
STD-Net paper trains all of its parameters with AdamW, lr 1e-4, weight decay 1e-5, after a warm-up). On the synthetic
multiphase comparison (H100, 2500 iterations, ``benchmarks/RESULTS.md``) STD-Net's characterisation head trained by
nnU-Net's SGD output the same logits for every case from the fifth epoch on (validation AUC exactly 0.5), as did the
no-weight-sharing ablation, while the U-Net parts segmented as well as vanilla nnU-Net.

What. :class:`HybridSGDAdamW` is a single :class:`torch.optim.Optimizer` (so nnU-Net's ``GradScaler``, gradient
clipping, checkpointing and ``--c`` resume work unchanged) whose parameter groups carry ``"algorithm"``:

* ``"sgd"``: PyTorch's SGD with momentum, dampening 0, optional Nesterov and L2 weight decay (the exact update of
  ``torch.optim.SGD``, which nnU-Net uses);
* ``"adamw"``: PyTorch's AdamW (decoupled weight decay, bias-corrected moments; the update of ``torch.optim.AdamW``).

The trainer puts the U-Net's encoder and decoder in the SGD group, so the segmentation path trains exactly as in
nnU-Net, and the modules a network lists in ``auxiliary_modules`` (temporal modeler, skip fusion, class head) in the
AdamW group. :class:`HybridLRScheduler` keeps nnU-Net's per-epoch poly schedule for SGD and gives AdamW a linear
warm-up over the first iterations followed by the same poly decay.

Speed. By default (``fused=None``) groups whose parameters live on a CUDA device are updated with PyTorch's fused
multi-tensor kernels (``torch._fused_sgd_``, ``torch._fused_adamw_``: one kernel launch per group instead of one per
``_foreach`` operation), the kernels behind ``torch.optim.SGD(fused=True)`` / ``AdamW(fused=True)``; elsewhere with
``torch._foreach_*`` operations. Both compute the same update (tested to float tolerance); the state layout is the
same, so a checkpoint written by one path resumes on the other.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nnunet_ext.architectures.case_binding import unwrap

ALGORITHMS = ("sgd", "adamw")


class HybridSGDAdamW(torch.optim.Optimizer):
    """SGD for the groups with ``algorithm="sgd"``, AdamW for those with ``algorithm="adamw"``.

    Group options: ``lr``, ``weight_decay``; SGD: ``momentum``, ``nesterov``; AdamW: ``betas``, ``eps``;
    ``fused``: ``True`` (PyTorch's fused kernels; CUDA, or CPU where the installed torch has them), ``False``
    (``torch._foreach_*`` operations, one launch per operation and group) or ``None`` (fused on CUDA).
    """

    def __init__(self, params, lr: float = 1e-2, weight_decay: float = 0.0, momentum: float = 0.99,
                 nesterov: bool = True, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 algorithm: str = "sgd", fused: bool | None = None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, betas=betas,
                        eps=eps, algorithm=algorithm, fused=fused)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["algorithm"] not in ALGORITHMS:
                raise ValueError(f"algorithm={group['algorithm']!r}; choose one of {ALGORITHMS}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            fused = group.get("fused")
            if fused is None:
                fused = all(p.is_cuda for p in params)
            if group["algorithm"] == "sgd":
                (self._sgd_fused if fused else self._sgd)(group, params)
            else:
                self._adamw(group, params, fused)
        return loss

    @staticmethod
    def _by_device_and_dtype(indices: list[int], params: list[torch.Tensor]) -> list[list[int]]:
        """``indices`` split so that each part holds parameters of one device and dtype (fused kernels need it)."""
        parts: dict[tuple, list[int]] = {}
        for i in indices:
            parts.setdefault((params[i].device, params[i].dtype), []).append(i)
        return list(parts.values())

    def _sgd_fused(self, group: dict, params: list[torch.Tensor]) -> None:
        mom = group["momentum"]
        is_fresh = [bool(mom) and "momentum_buffer" not in self.state[p] for p in params]
        fresh = [i for i, f in enumerate(is_fresh) if f]
        old = [i for i, f in enumerate(is_fresh) if not f]
        for indices, first in ((fresh, True), (old, False)):
            for part in self._by_device_and_dtype(indices, params):
                ps = [params[i] for i in part]
                if mom and first:  # the kernel fills a new buffer with the gradient on the first step
                    for p in ps:
                        self.state[p]["momentum_buffer"] = torch.empty_like(p, memory_format=torch.preserve_format)
                bufs = [self.state[p]["momentum_buffer"] for p in ps] if mom else []
                torch._fused_sgd_(ps, [p.grad for p in ps], bufs, weight_decay=group["weight_decay"],
                                  momentum=mom, lr=group["lr"], dampening=0.0, nesterov=group["nesterov"],
                                  maximize=False, is_first_step=first)

    def _sgd(self, group: dict, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params]
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        mom = group["momentum"]
        if mom:
            fresh = [i for i, p in enumerate(params) if "momentum_buffer" not in self.state[p]]
            old = [i for i, p in enumerate(params) if "momentum_buffer" in self.state[p]]
            if old:
                bufs = [self.state[params[i]]["momentum_buffer"] for i in old]
                torch._foreach_mul_(bufs, mom)
                torch._foreach_add_(bufs, [grads[i] for i in old])
            for i in fresh:  # first step: the buffer is the gradient (torch.optim.SGD)
                self.state[params[i]]["momentum_buffer"] = grads[i].detach().clone()
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            grads = torch._foreach_add(grads, bufs, alpha=mom) if group["nesterov"] else bufs
        torch._foreach_add_(params, grads, alpha=-group["lr"])

    def _adamw(self, group: dict, params: list[torch.Tensor], fused: bool = False) -> None:
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] = int(state["step"]) + 1  # a Python int: no device sync, checkpoint-compatible
        if fused:
            for part in self._by_device_and_dtype(list(range(len(params))), params):
                ps = [params[i] for i in part]
                st = [self.state[p] for p in ps]
                # the kernel reads the (already incremented) step of every parameter from a float32 tensor
                steps = torch.tensor([s["step"] for s in st], dtype=torch.float32).to(ps[0].device, non_blocking=True)
                torch._fused_adamw_(ps, [p.grad for p in ps], [s["exp_avg"] for s in st],
                                    [s["exp_avg_sq"] for s in st], [], list(steps.unbind(0)), lr=lr, beta1=beta1,
                                    beta2=beta2, weight_decay=group["weight_decay"], eps=eps, amsgrad=False,
                                    maximize=False)
            return
        grads = [p.grad for p in params]
        exp_avg = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in params]
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
        # parameters of one group may have been added at different times: bias corrections per parameter
        steps = [self.state[p]["step"] for p in params]
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, [(1 - beta2 ** s) ** 0.5 for s in steps])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avg, denom, [-lr / (1 - beta1 ** s) for s in steps])


def auxiliary_parameters(network: nn.Module) -> list[nn.Parameter]:
    """Parameters of the submodules the (unwrapped) network names in ``auxiliary_modules`` (None entries skipped)."""
    net = unwrap(network)
    seen, out = set(), []
    for name in getattr(net, "auxiliary_modules", ()):
        module = getattr(net, name, None)
        if module is None:
            continue
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def hybrid_param_groups(network: nn.Module, sgd: dict, adamw: dict) -> list[dict]:
    """Two groups: everything but the auxiliary modules with ``sgd`` options (first, so that nnU-Net's log of
    ``param_groups[0]["lr"]`` stays the U-Net's learning rate), the auxiliary modules with ``adamw`` options. A
    network without auxiliary modules gets one SGD group."""
    aux = auxiliary_parameters(network)
    aux_ids = {id(p) for p in aux}
    rest = [p for p in network.parameters() if id(p) not in aux_ids]
    groups = [{"params": rest, "algorithm": "sgd", "name": "unet", **sgd}]
    if aux:
        groups.append({"params": aux, "algorithm": "adamw", "name": "auxiliary", **adamw})
    return groups


class HybridLRScheduler:
    """nnU-Net's poly schedule, ``lr = initial * (1 - epoch / num_epochs) ** 0.9`` set once per epoch (``step``, as
    nnU-Net calls it), for every group; AdamW groups additionally ramp linearly from ``1 / warmup_iterations`` to 1
    over their first ``warmup_iterations`` updates (``step_iteration``, called before each training step).

    Each group's peak learning rate is its ``initial_lr`` entry (set from ``lr`` on construction).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, num_epochs: int, warmup_iterations: int,
                 exponent: float = 0.9):
        self.optimizer, self.num_epochs, self.exponent = optimizer, num_epochs, exponent
        self.warmup_iterations = max(0, int(warmup_iterations))
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.epoch, self.iteration = 0, 0
        self.step(0)

    def _poly(self) -> float:
        return (1 - min(self.epoch, self.num_epochs) / self.num_epochs) ** self.exponent

    def _warmup(self) -> float:
        if not self.warmup_iterations:
            return 1.0
        return min(1.0, (self.iteration + 1) / self.warmup_iterations)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            factor = self._poly() * (self._warmup() if group.get("algorithm") == "adamw" else 1.0)
            group["lr"] = group["initial_lr"] * factor

    def step(self, current_step: int | None = None) -> None:
        self.epoch = self.epoch + 1 if current_step is None else int(current_step)
        self._apply()

    def step_iteration(self, iteration: int) -> None:
        """``iteration``: training steps done before this one (epoch * iterations per epoch + step in epoch)."""
        self.iteration = int(iteration)
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]


def default_warmup_iterations(total_iterations: int) -> int:
    """AdamW warm-up used by the trainers: 5% of all training iterations, at least 1, at most 2500."""
    return min(2500, max(1, round(0.05 * total_iterations)))


def make_hybrid_optimizer(network: nn.Module, sgd_lr: float, sgd_weight_decay: float, adamw_lr: float,
                          adamw_weight_decay: float, num_epochs: int, warmup_iterations: int,
                          fused: bool | None = None) -> tuple[HybridSGDAdamW, HybridLRScheduler]:
    """nnU-Net's SGD (momentum 0.99, Nesterov) for the U-Net, AdamW (betas 0.9/0.999) for the auxiliary modules.
    ``fused``: see :class:`HybridSGDAdamW` (default: fused kernels on CUDA)."""
    groups = hybrid_param_groups(network, {"lr": sgd_lr, "weight_decay": sgd_weight_decay, "momentum": 0.99,
                                           "nesterov": True},
                                 {"lr": adamw_lr, "weight_decay": adamw_weight_decay, "betas": (0.9, 0.999),
                                  "eps": 1e-8})
    optimizer = HybridSGDAdamW(groups, fused=fused)
    return optimizer, HybridLRScheduler(optimizer, num_epochs, warmup_iterations)


class WarmupCosineScheduler:
    """Linear warm-up over ``warmup_iterations`` updates, then cosine annealing to ``final_fraction`` of the peak by
    the last of ``total_iterations`` (the STD-Net paper's schedule: 20 warm-up epochs of 500, cosine). Applied per
    iteration (``step_iteration``, called before each training step); ``step(epoch)``, which nnU-Net calls at each
    epoch start, only records the epoch. Each group's peak learning rate is its ``initial_lr``."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_iterations: int, warmup_iterations: int,
                 final_fraction: float = 0.0):
        self.optimizer = optimizer
        self.total = max(1, int(total_iterations))
        self.warmup = max(0, min(int(warmup_iterations), self.total - 1))
        self.final_fraction = float(final_fraction)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.epoch, self.iteration = 0, 0
        self._apply()

    def factor(self, iteration: int) -> float:
        if iteration < self.warmup:
            return (iteration + 1) / self.warmup
        progress = min(1.0, (iteration - self.warmup) / max(1, self.total - self.warmup))
        return self.final_fraction + (1 - self.final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        f = self.factor(self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f

    def step(self, current_step: int | None = None) -> None:
        self.epoch = self.epoch + 1 if current_step is None else int(current_step)

    def step_iteration(self, iteration: int) -> None:
        self.iteration = int(iteration)
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]


def make_adamw_optimizer(network: nn.Module, lr: float, weight_decay: float, total_iterations: int,
                         warmup_iterations: int, fused: bool | None = None
                         ) -> tuple[HybridSGDAdamW, WarmupCosineScheduler]:
    """AdamW (betas 0.9/0.999) for every parameter with a linear warm-up and cosine annealing: the STD-Net paper's
    optimiser. One group, in :class:`HybridSGDAdamW` (the same checkpoint layout and fused kernels)."""
    groups = [{"params": list(network.parameters()), "algorithm": "adamw", "name": "all", "lr": lr,
               "weight_decay": weight_decay, "betas": (0.9, 0.999), "eps": 1e-8}]
    optimizer = HybridSGDAdamW(groups, fused=fused)
    return optimizer, WarmupCosineScheduler(optimizer, total_iterations, warmup_iterations)
