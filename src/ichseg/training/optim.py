"""The optimizer and the learning-rate schedule a run is built with (`training.optimizer`,
`training.scheduler`)."""

from __future__ import annotations

import torch
from torch import nn

from ichseg.config import Config


class PolyLR(torch.optim.lr_scheduler.LRScheduler):
    """nnU-Net's poly decay, lr = base · (1 − step / total)^0.9, in closed form.

    `total_steps` is a plain attribute so a continued run whose target was raised stretches the
    curve from where it is (a chained torch scheduler would not).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9):
        self.total_steps = max(total_steps, 1)
        self.power = power
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        done = min(self.last_epoch, self.total_steps) / self.total_steps
        return [base * (1.0 - done) ** self.power for base in self.base_lrs]


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; parameters flagged `_no_weight_decay` (Mamba's A_log, D) get none.

    Everything else is decayed, norms and biases included, as nnU-Net and the nnMamba authors do.
    """
    t = cfg.training
    params = list(model.parameters())
    groups = [{"params": [p for p in params if not getattr(p, "_no_weight_decay", False)]},
              {"params": [p for p in params if getattr(p, "_no_weight_decay", False)],
               "weight_decay": 0.0}]
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                           weight_decay=t.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config,
                   target_epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per optimizer step. Built before any optimizer state is loaded: CyclicLR's
    constructor writes its base learning rate into the optimizer."""
    t = cfg.training
    if t.scheduler == "cyclic":
        # No scale_fn: a custom one (a lambda) would not survive a weights-only checkpoint.
        return torch.optim.lr_scheduler.CyclicLR(
            optimizer, base_lr=t.min_lr, max_lr=t.lr, step_size_up=t.cycle_epochs * t.steps_per_epoch,
            mode="triangular", cycle_momentum=False)
    if t.scheduler == "poly":
        return PolyLR(optimizer, target_epochs * t.steps_per_epoch)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
