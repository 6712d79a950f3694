"""The data of a training run: the train and validation splits of the dirmap, their loaders
(sharded across processes under DistributedDataParallel) and the optional mixup/cutmix."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from lwise.data import dirmap
from lwise.data.loading import DirmapImages, eval_transform, train_transform
from lwise.guide._distributed import Run

if TYPE_CHECKING:
    from lwise.guide.train import TrainConfig

log = logging.getLogger(__name__)


def datasets(dirmap_csv, cfg: TrainConfig) -> tuple[DirmapImages, DirmapImages, list[str]]:
    """The train split, the val split (test when there is no val) and the class names."""
    df = dirmap.read(dirmap_csv)
    names = df.drop_duplicates("class_num").sort_values("class_num")
    if cfg.label_column == "class_num" and list(names["class_num"]) != list(range(len(names))):
        raise ValueError(
            f"{dirmap_csv}: class_num must be 0..K-1 to train on it, got {list(names['class_num'])}"
        )
    root = Path(dirmap_csv).parent
    val_split = "val" if (df["split"] == "val").any() else "test"

    def split(name: str, transform) -> DirmapImages:
        rows = df[df["split"] == name].reset_index(drop=True)
        return DirmapImages(rows, root, transform, cfg.label_column)

    train_set = split("train", train_transform(cfg.image_size, cfg.augment))
    val_set = split(val_split, eval_transform(cfg.image_size))
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"{dirmap_csv}: needs images in 'train' and 'val' (or 'test') splits")
    return train_set, val_set, names["class"].tolist()


def fingerprint(
    dirmap_csv, train_set: DirmapImages, val_set: DirmapImages, class_names: list[str]
) -> str:
    """A hash of the training data: the class names and, per image of both splits, its path
    relative to the dirmap, its label, its file's size and modification time (a rebuilt
    ImageFolder therefore counts as new data, even with the same pixels)."""
    root = Path(dirmap_csv).parent
    h = hashlib.sha256(json.dumps(class_names).encode())
    n = 0
    for split, images in (("train", train_set), ("val", val_set)):
        for path, label in zip(images.paths, images.labels.tolist(), strict=True):
            st = path.stat()
            rel = os.path.relpath(path, root)
            h.update(f"{split}\0{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            n += 1
    log.info("fingerprinted the %d training and validation images", n)
    return h.hexdigest()


class SeededSampler(Sampler[tuple[int, int]]):
    """The positions `base` draws for the epoch set by `set_epoch`, each paired with a seed for
    its augmentation that depends on (seed, epoch, position) only. The order and every image's
    augmentation are therefore the same in a resumed run as in an uninterrupted one, whatever
    the number of loader workers, and the workers can live across epochs."""

    def __init__(self, base: Sampler[int], seed: int):
        self.base, self.seed, self.epoch = base, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if isinstance(self.base, DistributedSampler):
            self.base.set_epoch(epoch)
        else:  # RandomSampler: the shuffle order depends on the epoch only
            self.base.generator.manual_seed(self.seed * 100_003 + epoch)

    def __iter__(self):
        for i in self.base:
            seed = np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0]
            yield i, int(seed)

    def __len__(self) -> int:
        return len(self.base)


def val_loader(val_set: DirmapImages, cfg: TrainConfig, run: Run) -> DataLoader:
    return DataLoader(
        val_set, batch_size=cfg.val_batch_size, num_workers=cfg.workers, pin_memory=run.fast,
        sampler=DistributedSampler(val_set, shuffle=False) if run.world > 1 else None,
        persistent_workers=cfg.workers > 0,
    )  # fmt: skip


def train_loader(
    train_set: DirmapImages, cfg: TrainConfig, run: Run, drop_last: bool
) -> DataLoader:
    """The loader of every epoch (`loader.sampler.set_epoch(epoch)` before each): its worker
    processes start once, not once per epoch (about 1.4 s per epoch on 16 workers, an H200
    and ResNet-50: a first batch decoded by each worker before the GPU gets any)."""
    if run.world > 1:
        base = DistributedSampler(train_set, seed=cfg.seed)
    else:
        base = RandomSampler(train_set, generator=torch.Generator())
    return DataLoader(
        train_set, batch_size=cfg.batch_size, sampler=SeededSampler(base, cfg.seed),
        num_workers=cfg.workers, pin_memory=run.fast, drop_last=drop_last,
        persistent_workers=cfg.workers > 0,
    )  # fmt: skip


def mixer(cfg: TrainConfig, num_classes: int):
    """timm's Mixup when mixup or cutmix is on, else None."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    from timm.data import Mixup

    # L-WISE: Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.3, switch_prob=0.5) when on.
    return Mixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        prob=0.3,
        switch_prob=0.5,
        num_classes=num_classes,
    )
