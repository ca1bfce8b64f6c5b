"""The optimizer and the learning-rate schedule of a run, from its train section."""

from __future__ import annotations

import math


def build_optimizer(cfg, params):
    import torch

    t = cfg.train
    if t.optimizer == "SGD":
        return torch.optim.SGD(params, lr=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "ADAMW" else torch.optim.Adam
    return cls(params, lr=t.learning_rate, weight_decay=t.weight_decay)


def build_scheduler(cfg, optimizer, steps_per_epoch: int):
    """Return (scheduler, per_step): per-step schedules advance every batch, reduce-on-plateau every epoch."""
    import torch

    t = cfg.train
    total = t.epochs * steps_per_epoch
    if t.scheduler == "reduce_on_plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(1, t.patience // 2)
        ), False
    if t.scheduler == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=t.learning_rate, total_steps=total), True
    if t.scheduler == "warmup_cosine":
        warm = t.warmup_epochs * steps_per_epoch

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True
    return None, False
