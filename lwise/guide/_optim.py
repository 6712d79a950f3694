"""The trainer's optimizers and learning-rate schedules (`lwise.guide.train`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from lwise.guide.train import TrainConfig

__all__ = ["lr_multiplier", "make_optimizer", "step_schedule"]


def lr_multiplier(cfg: TrainConfig, epoch: int) -> float:
    """Learning-rate factor for `epoch` (0-based); the optimizer's base lr is `cfg.lr`."""
    if cfg.schedule == "plateau":
        raise ValueError("schedule plateau: the learning rate follows the validation loss")
    if cfg.schedule == "step":
        return cfg.step_gamma ** (epoch // cfg.step_lr)
    if cfg.schedule == "piecewise":
        factor = 1.0
        for start, mult in cfg.milestones:
            if epoch >= start:
                factor = mult
        return factor
    if epoch < cfg.warmup_epochs:
        factor = (epoch + 1) / cfg.warmup_epochs
    else:
        span = max(1, cfg.epochs - cfg.warmup_epochs)
        factor = 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    # L-WISE's cosine lambda returns lr·factor, which LambdaLR multiplies by lr again.
    return factor * cfg.lr if cfg.schedule == "cosine_reference" else factor


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    """The optimizer over the trainable parameters (SGD with momentum, robustness's; or AdamW
    with torch's defaults but lr and weight decay, as `jiyounglee-0523/VisAlign` pl_model.py
    configure_optimizers builds it, so with torch's weight decay 0.01) and its schedule:
    ReduceLROnPlateau on the validation loss (pl_model.py: mode min, factor 0.5, patience 10,
    cooldown 10, min_lr 1e-6, monitor val_loss; the schema's defaults) or a LambdaLR."""
    params = [p for p in model.parameters() if p.requires_grad]
    common = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, **common)
    else:
        opt = torch.optim.SGD(params, momentum=cfg.momentum, **common)
    if cfg.schedule == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
            cooldown=cfg.plateau_cooldown, min_lr=cfg.plateau_min_lr,
        )  # fmt: skip
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_multiplier(cfg, e))
    return opt, sched


def step_schedule(sched, row: dict) -> None:
    """After an epoch: a plateau looks at its validation loss, if validated; others count it."""
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if "val_loss" in row:
            sched.step(row["val_loss"])
    else:
        sched.step()
