"""Stage 4: adversarial (robust) training or fine-tuning of a guide model.

Follows the robustness library as L-WISE uses it (`robust_transfer_learning.py`): PGD on the
cross-entropy from the clean image, best iterate kept, the model in eval mode while attacking,
SGD with momentum. Unlike the reference it really resumes (weights, optimizer, schedule, epoch,
RNG state), runs DistributedDataParallel when several GPUs are given, and offers a correct
cosine schedule (the reference's squares the learning rate; `cosine_reference` reproduces it).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from lwise.core.atomic import atomic_path, write_csv
from lwise.data import dirmap
from lwise.data.loading import DirmapImages, eval_transform, train_transform
from lwise.guide.attacks import FAST_DTYPES, pgd
from lwise.guide.checkpoints import load_model, save_checkpoint
from lwise.guide.models import ImageClassifier, build_model, head_name, replace_head

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCHEDULES = ("step", "cosine", "cosine_reference", "piecewise")
# Mixed precision of training steps and their attacks: bfloat16 has float32's range.
TRAIN_DTYPE = "bfloat16"


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; defaults are robustness's ImageNet ones as L-WISE fills them in
    (`defaults.check_and_fill_args`: momentum 0.9, wd 1e-4, step 50, gamma 0.1, eval every 5
    epochs) and its attack defaults (eps 3, 7 steps, attack lr 0.5, L2)."""

    arch: str = "resnet50"
    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    epochs: int = 50
    batch_size: int = 128
    val_batch_size: int = 256
    workers: int = 4
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"
    step_lr: int = 50
    step_gamma: float = 0.1
    warmup_epochs: int = 5  # cosine schedules (L-WISE's `cosine`: 5-epoch linear warm-up)
    milestones: tuple[tuple[int, float], ...] = ()  # piecewise: (epoch, lr multiplier)
    adversarial: bool = True
    constraint: str = "2"
    eps: float = 3.0
    attack_steps: int = 7
    attack_lr: float = 0.5
    eval_every: int = 5
    mixed_precision: bool = True  # bf16 autocast on CUDA; the CPU always runs fp32
    mixup: float = 0.0
    cutmix: float = 0.0
    freeze: str = "none"  # none | last_layer | first_k
    freeze_k: int = 0
    augment: str = "none"
    init_checkpoint: str | None = None
    trusted_checkpoint: bool = False
    label_column: str = "class_num"
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: expected one of {SCHEDULES}")
        if self.freeze not in ("none", "last_layer", "first_k"):
            raise ValueError(f"freeze {self.freeze!r}: expected none, last_layer or first_k")
        if self.constraint not in ("2", "inf"):
            raise ValueError(f"constraint {self.constraint!r}: expected '2' or 'inf'")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}")
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        if "milestones" in d:
            d["milestones"] = tuple(tuple(m) for m in d["milestones"])
        return cls(**d)

    def digest(self) -> str:
        """Identifies the run a resume state belongs to."""
        return hashlib.sha256(
            json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        ).hexdigest()


def lr_multiplier(cfg: TrainConfig, epoch: int) -> float:
    """Learning-rate factor for `epoch` (0-based); the optimizer's base lr is `cfg.lr`."""
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


# --- distributed helpers: one process per GPU under torchrun, a single process otherwise


def _world() -> tuple[int, int, int]:
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def _check_gpu_count(processes: int) -> None:
    """One process per GPU: on a CUDA machine, more processes than visible GPUs is a
    configuration error (without CUDA, the processes share the CPU instead)."""
    visible = torch.cuda.device_count()
    if processes > visible:
        raise ValueError(
            f"{processes} training processes (guide.gpus) but {visible} visible GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): give "
            "the rule as many GPUs as processes"
        )


def _setup_device() -> tuple[torch.device, int, int]:
    rank, local_rank, world = _world()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        _check_gpu_count(world)
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), rank, world
    return torch.device("cpu"), rank, world


def _sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


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


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, fast: bool
) -> torch.Tensor:
    was_training = model.training
    model.eval()  # robustness attacks with BatchNorm in eval mode
    # In the training step's precision: a model still training (from scratch: BatchNorm's initial
    # running statistics) can have eval-mode activations beyond float16's range, whose gradients
    # pgd would skip.
    adv = pgd(
        model, x, y, eps=cfg.eps, step_size=cfg.attack_lr, steps=cfg.attack_steps,
        constraint=cfg.constraint, objective="cross_entropy", direction="attack",
        mode="fast" if fast and cfg.mixed_precision else "reference", fast_dtype=TRAIN_DTYPE,
    )  # fmt: skip
    if was_training:
        model.train()
        _hold_frozen_norms(model)
    return adv


def evaluate(
    model: nn.Module, loader: DataLoader, cfg: TrainConfig, device: torch.device, fast: bool
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
    n, correct, loss, adv_correct = _sum(totals, device)
    out = {"val_clean_acc": correct / n, "val_loss": loss / n}
    if cfg.adversarial:
        out["val_adv_acc"] = adv_correct / n
    return out


def _autocast(device: torch.device, cfg: TrainConfig):
    if cfg.mixed_precision and device.type == "cuda":
        return torch.autocast("cuda", dtype=FAST_DTYPES[TRAIN_DTYPE])
    return nullcontext()


def train(
    dirmap_csv: str | os.PathLike,
    out_model: str | os.PathLike,
    out_metrics: str | os.PathLike,
    state_dir: str | os.PathLike,
    cfg: TrainConfig,
) -> pd.DataFrame:
    """Train on the dirmap's train split, validate on val (or test); resume from `state_dir`.

    `state_dir/last.pt` is written after every epoch; a rerun with the same settings continues
    from it. The best model (by adversarial validation accuracy for robust training, clean
    otherwise) is written to `out_model`, one metrics row per epoch to `out_metrics`.
    """
    device, rank, world = _setup_device()
    main = rank == 0
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    df = dirmap.read(dirmap_csv)
    names = df.drop_duplicates("class_num").sort_values("class_num")
    if cfg.label_column == "class_num" and list(names["class_num"]) != list(range(len(names))):
        raise ValueError(
            f"{dirmap_csv}: class_num must be 0..K-1 to train on it, got {list(names['class_num'])}"
        )
    class_names = names["class"].tolist()
    root = Path(dirmap_csv).parent
    val_split = "val" if (df["split"] == "val").any() else "test"
    train_set = DirmapImages(
        df[df["split"] == "train"].reset_index(drop=True),
        root,
        train_transform(cfg.image_size, cfg.augment),
        cfg.label_column,
    )
    val_set = DirmapImages(
        df[df["split"] == val_split].reset_index(drop=True),
        root,
        eval_transform(cfg.image_size),
        cfg.label_column,
    )
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"{dirmap_csv}: needs images in 'train' and 'val' (or 'test') splits")

    model = make_model(cfg, class_names).to(device)
    fast = device.type == "cuda"
    if fast:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_multiplier(cfg, e))

    state_dir = Path(state_dir)
    last = state_dir / "last.pt"
    rows, start, best_score = [], 0, -1.0
    if last.exists():
        # On the CPU: RNG states must stay CPU byte tensors; load_state_dict moves the rest.
        state = torch.load(last, map_location="cpu", weights_only=True)
        if state["digest"] == cfg.digest():
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            rows, start, best_score = state["rows"], state["epoch"], state["best_score"]
            _set_rng_state(state["rng"])
            log.info("resuming after epoch %d from %s", start, last)
        else:
            log.info("%s belongs to other settings; starting over", last)

    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    mixer = None
    if cfg.mixup or cfg.cutmix:
        from timm.data import Mixup

        # L-WISE: Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.3, switch_prob=0.5) when on.
        mixer = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            prob=0.3,
            switch_prob=0.5,
            num_classes=len(class_names),
        )
    val_loader = DataLoader(
        val_set, batch_size=cfg.val_batch_size, num_workers=cfg.workers, pin_memory=fast,
        sampler=DistributedSampler(val_set, shuffle=False) if world > 1 else None,
    )  # fmt: skip

    for epoch in range(start, cfg.epochs):
        began = time.time()
        if world > 1:
            sampler = DistributedSampler(train_set, seed=cfg.seed)
            sampler.set_epoch(epoch)
        else:  # the shuffle order depends on the epoch only, so a resumed run sees the same
            sampler = RandomSampler(
                train_set, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            )
        loader = DataLoader(
            train_set,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.workers,
            pin_memory=fast,
            drop_last=mixer is not None,
        )
        net.train()
        _hold_frozen_norms(model)
        totals = [0.0, 0.0, 0.0]  # n, loss sum, correct
        for x, y, _ in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not main):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            if cfg.adversarial:
                x = _attack(model, x, y, cfg, fast)
            target = y
            if mixer is not None:  # mix the adversarial images (attacked with hard labels)
                x, target = mixer(x, y)
            with _autocast(device, cfg):
                logits = net(x).float()
            if mixer is not None:
                loss = torch.sum(-target * logits.log_softmax(1), dim=1).mean()
            else:
                loss = nn.functional.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            totals[0] += len(y)
            totals[1] += loss.detach().item() * len(y)
            totals[2] += (logits.argmax(1) == y).sum().item()
        lr = opt.param_groups[0]["lr"]
        sched.step()
        n, loss_sum, correct = _sum(totals, device)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / n, "train_acc": correct / n}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            row |= evaluate(model, val_loader, cfg, device, fast)
            score = row["val_adv_acc" if cfg.adversarial else "val_clean_acc"]
            if main and score > best_score:
                best_score = score
                save_checkpoint(
                    state_dir / "best.pt",
                    model,
                    {"epoch": epoch + 1, "metrics": row},
                    training_args=dataclasses.asdict(cfg),
                )
        row["seconds"] = time.time() - began
        rows.append(row)
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in row.items()})
        if main:
            state_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(last) as tmp:
                torch.save(
                    {
                        "digest": cfg.digest(),
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "rows": rows,
                        "best_score": best_score,
                        "rng": _rng_state(),
                    },
                    tmp,
                )
    metrics = pd.DataFrame(rows)
    if main:
        best = load_model(state_dir / "best.pt")
        save_checkpoint(
            out_model,
            best,
            {"metrics": rows[-1], "best_score": best_score},
            training_args=dataclasses.asdict(cfg),
        )
        write_csv(metrics, out_metrics)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return metrics


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


def run_training(
    dirmap_csv, out_model, out_metrics, state_dir, cfg: TrainConfig, gpus: int
) -> None:
    """Train in this process, or under torchrun with one process per GPU when gpus > 1."""
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
