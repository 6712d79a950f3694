"""GRADIA's attention loss and its two fine-tuning phases (GRADIA.py `model_train` and
`model_train_with_map`).

GRADIA: Gao, Sun, Zhao, Hong, CSCW 2022; repository file `GRADIA.py`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lwise.guide.attention.cam import training_cams

log = logging.getLogger(__name__)

__all__ = ["EpochResult", "attention_loss", "train_phase1", "train_phase2"]


def attention_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    cams: torch.Tensor,
    targets: torch.Tensor,
    pred_weights: torch.Tensor,
    att_weights: torch.Tensor,
    *,
    reference: bool = False,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRADIA.py's phase-2 loss `task + attention`: (total, task, attention).

    task = mean over the batch of pred_weight · CE(logits, labels). The attention term is
    att_weight · mean |cam − target| (L1 over the grid) for the samples with att_weight > 0;
    `cams` and `targets` hold exactly those samples, in batch order. It is summed and divided
    by the batch size, or (`reference=True`, GRADIA.py) averaged over those samples only.
    `scale` multiplies the attention term (GRADIA.py's unused `--attention_weight`).
    """
    task = (pred_weights * F.cross_entropy(logits, labels, reduction="none")).mean()
    chosen = att_weights[att_weights > 0]
    if len(chosen) != len(cams) or cams.shape != targets.shape:
        raise ValueError(
            f"{len(cams)} CAMs and targets {tuple(targets.shape)} for {len(chosen)} samples "
            "with an attention weight"
        )
    if len(chosen) == 0:
        att = task.new_zeros(())
    else:
        per_sample = chosen * (cams - targets).abs().mean(dim=(-2, -1))
        att = per_sample.mean() if reference else per_sample.sum() / len(labels)
    return task + scale * att, task, att


@dataclass
class EpochResult:
    """One epoch's record for the history table."""

    phase: int
    epoch: int
    loss: float
    task_loss: float
    attention_loss: float
    score: float
    selected: bool = False


def _evaluate_accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y, _ in loader:
            pred = model(x.to(device)).argmax(1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    return correct / max(total, 1)


def _batches(loader: DataLoader, device: torch.device) -> Iterator:
    for x, y, idx in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), idx


def train_phase1(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    device: torch.device,
) -> tuple[nn.Module, list[EpochResult]]:
    """Phase 1 (GRADIA.py `model_train`): plain cross-entropy with Adam, keeping the epoch with
    the best validation accuracy (the starting model counts as epoch 0). Returns the best model
    (in eval mode) and the history."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best_acc = _evaluate_accuracy(model, val_loader, device)
    best_state = copy.deepcopy(model.state_dict())
    history = [EpochResult(1, 0, float("nan"), float("nan"), float("nan"), best_acc, True)]
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for x, y, _ in _batches(train_loader, device):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        acc = _evaluate_accuracy(model, val_loader, device)
        mean = float(np.mean(losses))
        history.append(EpochResult(1, epoch, mean, mean, 0.0, acc))
        log.info("phase 1 epoch %d: loss %.4f, val accuracy %.4f", epoch, mean, acc)
        if acc > best_acc:
            best_acc, best_state = acc, copy.deepcopy(model.state_dict())
            for h in history:
                h.selected = h.epoch == epoch
    model.load_state_dict(best_state)
    return model.eval(), history


def train_phase2(
    model: nn.Module,
    layer: nn.Module,
    loader: DataLoader,
    targets: torch.Tensor,
    pred_weights: torch.Tensor,
    att_weights: torch.Tensor,
    select: Callable[[nn.Module], float],
    *,
    epochs: int,
    lr: float,
    device: torch.device,
    attention_scale: float = 1.0,
    per_image_cams: bool = False,
    reference: bool = False,
) -> tuple[nn.Module, list[EpochResult]]:
    """Phase 2 (GRADIA.py `model_train_with_map`): Adam on the weighted cross-entropy plus the
    weighted attention loss, keeping the epoch with the highest `select(model)` (computed on
    held-out validation images, never on test).

    `loader` yields (image, label, index); `targets` [N, h, w], `pred_weights` [N] and
    `att_weights` [N] are looked up by that index. Reference mode (GRADIA.py) forwards each
    image with an attention weight alone in train mode and averages the attention term over
    those images only.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    per_image = per_image_cams or reference
    best_score, best_state, history = -np.inf, None, []
    for epoch in range(1, epochs + 1):
        totals = np.zeros(3)
        batches = 0
        for x, y, idx in _batches(loader, device):
            pw, aw = pred_weights[idx].to(device), att_weights[idx].to(device)
            model.train()
            logits = model(x)
            chosen = aw > 0
            if chosen.any():
                if not per_image:
                    model.eval()  # batched CAMs from running BatchNorm statistics
                cams = training_cams(model, layer, x[chosen], y[chosen], per_image=per_image)
                model.train()
                tgt = targets[idx][chosen.cpu()].to(device)
            else:
                cams = tgt = logits.new_zeros((0, *targets.shape[1:]))
            loss, task, att = attention_loss(
                logits, y, cams, tgt, pw, aw, reference=reference, scale=attention_scale
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals += (loss.item(), task.item(), att.item())
            batches += 1
        score = select(model)
        loss_m, task_m, att_m = totals / max(batches, 1)
        history.append(EpochResult(2, epoch, loss_m, task_m, att_m, score))
        log.info(
            "phase 2 epoch %d: loss %.4f (task %.4f, attention %.4f), selection score %.4f",
            epoch,
            loss_m,
            task_m,
            att_m,
            score,
        )
        if score > best_score:
            best_score, best_state = score, copy.deepcopy(model.state_dict())
            for h in history:
                h.selected = h.epoch == epoch
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), history
