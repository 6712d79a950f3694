"""Stage 4: adversarial (robust) training or fine-tuning of a guide model.

Follows the robustness library as L-WISE uses it (`robust_transfer_learning.py`): PGD on the
cross-entropy from the clean image, best iterate kept, the model in eval mode while attacking,
SGD with momentum. Unlike the reference it really resumes (weights, optimizer, schedule, epoch,
RNG state), runs DistributedDataParallel when several GPUs are given, and offers a correct
cosine schedule (the reference's squares the learning rate; `cosine_reference` reproduces it).
VisAlign's baselines train with AdamW and ReduceLROnPlateau on the validation loss
(`optimizer: adamw`, `schedule: plateau`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from lwise.core.atomic import write_csv
from lwise.core.config import Section
from lwise.core.logs import progress
from lwise.guide import _distributed, _train_data
from lwise.guide._distributed import Run, all_sum, finish, setup_run
from lwise.guide._optim import make_optimizer, step_schedule
from lwise.guide._resume import load_state, run_key, save_state
from lwise.guide.attacks import pgd
from lwise.guide.checkpoints import load_model, save_checkpoint
from lwise.guide.compiling import should_compile
from lwise.guide.fast import FAST_DTYPES, LiveFolded
from lwise.guide.models import ImageClassifier, build_model, head_name, replace_head

__all__ = [
    "TRAIN_DTYPE",
    "TrainConfig",
    "main",
    "make_model",
    "run_training",
    "train",
    "validate",
]

log = logging.getLogger(__name__)

# Mixed precision of training steps and their attacks: bfloat16 has float32's range.
TRAIN_DTYPE = "bfloat16"


@dataclass(frozen=True)
class TrainConfig(Section):
    """Training settings: the config's `guide.train` section, whose defaults and checks live in
    `schemas/config.schema.yaml` (robustness's ImageNet defaults as L-WISE fills them in:
    `robustness/defaults.py`, SGD momentum 0.9, wd 1e-4, step 50, gamma 0.1, eval every 5
    epochs; attack eps 3, 7 steps, attack lr 0.5, L2). Build it with `TrainConfig.from_config`."""

    SECTION: ClassVar[str] = "guide.train"

    arch: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    epochs: int
    batch_size: int
    val_batch_size: int
    workers: int
    optimizer: str  # sgd | adamw
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    grad_clip_norm: float | None
    step_lr: int
    step_gamma: float
    warmup_epochs: int
    milestones: tuple[tuple[int, float], ...]
    plateau_factor: float
    plateau_patience: int
    plateau_cooldown: int
    plateau_min_lr: float
    adversarial: bool
    constraint: str
    eps: float
    attack_steps: int
    attack_lr: float
    eval_every: int
    mixed_precision: bool
    compile: bool | str
    mixup: float
    cutmix: float
    freeze: str
    freeze_k: int
    augment: str
    init_checkpoint: str | None
    trusted_checkpoint: bool
    label_column: str
    seed: int

    def __post_init__(self):  # YAML and JSON give lists; tuples keep the settings hashable
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))
        object.__setattr__(self, "milestones", tuple(tuple(m) for m in self.milestones))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The same as `from_config` (kept for existing callers)."""
        return cls.from_config(d)


def _freeze(model: ImageClassifier, cfg: TrainConfig) -> None:
    if cfg.freeze == "last_layer":
        head = head_name(model.net)
        for name, p in model.net.named_parameters():
            p.requires_grad_(name.startswith(head + "."))
    elif cfg.freeze == "first_k":
        convs = [m for m in model.net.modules() if isinstance(m, nn.Conv2d)]
        if cfg.freeze_k > len(convs):
            raise ValueError(f"freeze_k={cfg.freeze_k} but {cfg.arch} has {len(convs)} conv layers")
        seen = 0
        for m in model.net.modules():  # freeze the first k convs and the norms between them
            if isinstance(m, nn.Conv2d):
                seen += 1
                if seen > cfg.freeze_k:
                    break
            if isinstance(m, nn.Conv2d | nn.BatchNorm2d):
                m.requires_grad_(False)


def _hold_frozen_norms(model: nn.Module) -> None:
    """Keep frozen BatchNorm layers in eval mode: their running statistics belong to the
    frozen features (robustness's requires_grad-only freezing lets them drift)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in m.parameters()
        ):
            m.eval()


def make_model(cfg: TrainConfig, class_names: list[str]) -> ImageClassifier:
    if cfg.init_checkpoint:
        model = load_model(
            cfg.init_checkpoint, arch=cfg.arch, num_classes=None, mean=cfg.mean, std=cfg.std,
            trusted=cfg.trusted_checkpoint,
        )  # fmt: skip
        if model.num_classes != len(class_names):
            log.info(
                "replacing the %d-class head with a %d-class one",
                model.num_classes,
                len(class_names),
            )
            model = replace_head(model, len(class_names))
        model.class_names = class_names
    else:
        model = build_model(cfg.arch, len(class_names), cfg.mean, cfg.std, class_names=class_names)
    _freeze(model, cfg)
    return model


def _folded(model: ImageClassifier, cfg: TrainConfig, run: Run, images: int) -> LiveFolded | None:
    """What fast-mode attacks run on (a GPU, mixed precision, robust training): a folded copy of
    the model, refreshed before each attack, compiled for full batches when `cfg.compile` says
    so for `images` training images; else None (the live model in fp32, as robustness)."""
    if not (run.fast and cfg.mixed_precision and cfg.adversarial):
        return None
    compile = should_compile(cfg.compile, images * cfg.epochs, cfg.attack_steps) is not False
    return LiveFolded(model, compile_batch=cfg.batch_size if compile else None)


def _attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, fast: LiveFolded | None
) -> torch.Tensor:
    was_training = model.training
    model.eval()  # robustness attacks with BatchNorm in eval mode
    # In the training step's precision: a model still training (from scratch: BatchNorm's initial
    # running statistics) can have eval-mode activations beyond float16's range, whose gradients
    # pgd would skip.
    adv = pgd(
        model if fast is None else fast.refresh(model, len(x)), x, y, eps=cfg.eps,
        step_size=cfg.attack_lr, steps=cfg.attack_steps, constraint=cfg.constraint,
        objective="cross_entropy", direction="attack",
        mode="reference" if fast is None else "fast", fast_dtype=TRAIN_DTYPE,
        compile_update=fast is not None and fast.compiled_for(len(x)),
    )  # fmt: skip
    if was_training:
        model.train()
        _hold_frozen_norms(model)
    return adv


def validate(
    model: nn.Module,
    loader: DataLoader,
    cfg: TrainConfig,
    device: torch.device,
    fast: LiveFolded | None,
) -> dict:
    """Clean (and, for robust training, adversarial) accuracy and loss over `loader`."""
    model.eval()
    totals = [0.0, 0.0, 0.0, 0.0]  # n, clean correct, clean loss sum, adversarial correct
    for x, y, _ in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.no_grad(), _autocast(device, cfg):
            logits = model(x).float()
        totals[0] += len(y)
        totals[1] += (logits.argmax(1) == y).sum().item()
        totals[2] += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        if cfg.adversarial:
            adv = _attack(model, x, y, cfg, fast)
            with torch.no_grad(), _autocast(device, cfg):
                totals[3] += (model(adv).argmax(1) == y).sum().item()
    n, correct, loss, adv_correct = all_sum(totals, device)
    out = {"val_clean_acc": correct / n, "val_loss": loss / n}
    if cfg.adversarial:
        out["val_adv_acc"] = adv_correct / n
    return out


def _autocast(device: torch.device, cfg: TrainConfig):
    if cfg.mixed_precision and device.type == "cuda":
        return torch.autocast("cuda", dtype=FAST_DTYPES[TRAIN_DTYPE])
    return nullcontext()


def _train_epoch(
    net: nn.Module,
    model: ImageClassifier,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    run: Run,
    mixer,
    desc: str,
    fast: LiveFolded | None = None,
) -> dict:
    """One pass over `loader` (adversarial examples first, for robust training); returns the
    mean training loss and accuracy over every process."""
    net.train()
    _hold_frozen_norms(model)
    # n, loss sum, correct: summed on the device, so that no step waits for the host
    totals = torch.zeros(3, dtype=torch.float64, device=run.device)
    for x, y, _ in progress(loader, desc=desc, disable=not run.main):
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        if run.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        if cfg.adversarial:
            x = _attack(model, x, y, cfg, fast)
        target = y
        if mixer is not None:  # mix the adversarial images (attacked with hard labels)
            x, target = mixer(x, y)
        with _autocast(run.device, cfg):
            logits = net(x).float()
        if mixer is not None:
            loss = torch.sum(-target * logits.log_softmax(1), dim=1).mean()
        else:
            loss = nn.functional.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip_norm is not None:  # VisAlign main.py: Trainer(gradient_clip_val=0.5)
            nn.utils.clip_grad_norm_(
                [p for p in net.parameters() if p.grad is not None], cfg.grad_clip_norm
            )
        opt.step()
        totals[0] += len(y)
        totals[1] += loss.detach() * len(y)
        totals[2] += (logits.argmax(1) == y).sum()
    n, loss_sum, correct = all_sum(totals.tolist(), run.device)
    return {"train_loss": loss_sum / n, "train_acc": correct / n}


def train(
    dirmap_csv: str | os.PathLike,
    out_model: str | os.PathLike,
    out_metrics: str | os.PathLike,
    state_dir: str | os.PathLike,
    cfg: TrainConfig,
) -> pd.DataFrame:
    """Train on the dirmap's train split, validate on val (or test); resume from `state_dir`.

    `state_dir/last.pt` is written after every epoch; a rerun of the same run (the same
    settings, data and initial checkpoint: `_resume.run_key`) continues from it, any other
    starts over. The best model (by adversarial validation accuracy for robust training, clean
    otherwise) is written to `out_model`, one metrics row per epoch to `out_metrics`.
    """
    run = setup_run()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_set, val_set, class_names = _train_data.datasets(dirmap_csv, cfg)
    model = make_model(cfg, class_names).to(run.device)
    if run.fast:
        model = model.to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, cfg)
    state_dir = Path(state_dir)
    last = state_dir / "last.pt"
    data = _train_data.fingerprint(dirmap_csv, train_set, val_set, class_names)
    key = run_key(dataclasses.asdict(cfg), data)
    rows, start, best_score = load_state(last, key, model, opt, sched)
    if start == 0 and run.main:  # another run's best model must not stand for this one's
        (state_dir / "best.pt").unlink(missing_ok=True)
    net = nn.parallel.DistributedDataParallel(model) if run.world > 1 else model
    mixer = _train_data.mixer(cfg, len(class_names))
    val_loader = _train_data.val_loader(val_set, cfg, run)
    loader = _train_data.train_loader(train_set, cfg, run, drop_last=mixer is not None)
    folded = _folded(model, cfg, run, len(train_set))

    for epoch in range(start, cfg.epochs):
        began = time.time()
        loader.sampler.set_epoch(epoch)
        desc = f"epoch {epoch + 1}/{cfg.epochs}"
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"]}
        row |= _train_epoch(net, model, loader, opt, cfg, run, mixer, desc, folded)
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            _distributed.sync_buffers(model)
            row |= validate(model, val_loader, cfg, run.device, folded)
            score = row["val_adv_acc" if cfg.adversarial else "val_clean_acc"]
            if run.main and score > best_score:
                best_score = score
                save_checkpoint(
                    state_dir / "best.pt",
                    model,
                    {"epoch": epoch + 1, "metrics": row},
                    training_args=dataclasses.asdict(cfg),
                )
        step_schedule(sched, row)
        row["seconds"] = time.time() - began
        rows.append(row)
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in row.items()})
        if run.main:
            save_state(last, key, epoch + 1, model, opt, sched, rows, best_score)
    _distributed.check_replicas(model, run)
    if run.main:
        _write_outputs(state_dir / "best.pt", out_model, out_metrics, cfg, rows, best_score)
    finish()
    return pd.DataFrame(rows)


def _write_outputs(best_pt, out_model, out_metrics, cfg, rows, best_score) -> None:
    """The best epoch's model, with the last epoch's metrics, and the metrics table."""
    best = load_model(best_pt)
    save_checkpoint(
        out_model,
        best,
        {"metrics": rows[-1], "best_score": best_score},
        training_args=dataclasses.asdict(cfg),
    )
    write_csv(pd.DataFrame(rows), out_metrics)


def run_training(
    dirmap_csv, out_model, out_metrics, state_dir, cfg: TrainConfig, gpus: int
) -> None:
    """Train in this process, or under torchrun with one process per GPU when gpus > 1
    (`python -m lwise.guide.train`, below)."""
    if gpus <= 1:
        train(dirmap_csv, out_model, out_metrics, state_dir, cfg)
        return
    import subprocess
    import sys

    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir / "config.json"
    config.write_text(json.dumps(dataclasses.asdict(cfg)))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
        "-m", "lwise.guide.train", "--dirmap", str(dirmap_csv), "--out-model", str(out_model),
        "--out-metrics", str(out_metrics), "--state-dir", str(state_dir), "--config", str(config),
    ]  # fmt: skip
    log.info("launching DistributedDataParallel on %d processes: %s", gpus, " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=sys.stderr, stderr=sys.stderr)


def main() -> None:
    """Entry point for torchrun: `python -m lwise.guide.train --config cfg.json ...`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dirmap", required=True)
    parser.add_argument("--out-model", required=True)
    parser.add_argument("--out-metrics", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--config", required=True, help="JSON file of TrainConfig fields")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    train(args.dirmap, args.out_model, args.out_metrics, args.state_dir, cfg)


if __name__ == "__main__":
    main()
