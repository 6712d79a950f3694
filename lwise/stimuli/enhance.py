"""Stage 6: enhancement: PGD that raises the ground-truth evidence, one image set per epsilon.

As L-WISE `enhance.py`: images are preprocessed (shorter side, centre crop) exactly like the
natural set (`lwise.stimuli.natural`), perturbed within an L2 (or L-inf) ball, and saved as
8-bit images under the same key (`im_path`) in every version, so one key names an image in all
its versions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from lwise.core.atomic import atomic_path
from lwise.core.config import Section
from lwise.data import dirmap
from lwise.data.loading import DirmapImages, eval_transform
from lwise.guide.attacks import pgd, steps_for_eps
from lwise.guide.augment import MultiView
from lwise.guide.load import Guide, load_guide
from lwise.stimuli._write import save_images, stimulus_dirmap, stimulus_keys

__all__ = ["EnhanceConfig", "enhance", "quantise"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnhanceConfig(Section):
    """One enhancement job's settings: the `enhance` config section but its list of epsilons
    and objectives (each job has one of each) and the contact sheet's size. Meanings and
    defaults are in the schema: `EnhanceConfig.from_config({"direction": "attack"})`."""

    SECTION = "enhance"

    step_size: float
    steps: int | None
    constraint: str
    direction: str
    diverge_from: list[str] | None
    views: dict | None
    format: str
    jpeg_quality: int
    batch_size: int
    fast_dtype: str


def quantise(x: torch.Tensor) -> torch.Tensor:
    """What an 8-bit file holds: round(255·x) (torchvision `save_image`), back in [0, 1]."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def _competitors(
    df: pd.DataFrame, guide: Guide, diverge_from: list[str] | None, csv: Path
) -> tuple[torch.Tensor, pd.DataFrame]:
    """The logit_diverge competitor mask over the model's classes, and the rows to enhance.

    As L-WISE `enhance.py --diverge_from`: the named classes compete, and their own rows go;
    without names, the other classes present in the dirmap compete.
    """
    label = guide.label_column
    competitors = torch.zeros(guide.num_classes, dtype=torch.bool, device=guide.device)
    if not diverge_from:
        competitors[torch.as_tensor(sorted(df[label].unique()), device=guide.device)] = True
        return competitors, df
    by_name = dict(zip(df["class"], df[label], strict=False))
    missing = sorted(set(diverge_from) - set(by_name))
    if missing:
        raise ValueError(f"diverge_from class(es) {missing} not in {csv}")
    competitors[[int(by_name[c]) for c in diverge_from]] = True
    return competitors, df[~df["class"].isin(diverge_from)].reset_index(drop=True)


def enhance(
    dirmap_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    key_root: str | os.PathLike,
    eps: float,
    objective: str,
    cfg: EnhanceConfig,
    workers: int,
    trusted: bool,
    label_column: str | None = None,
    mode: str | None = None,
) -> pd.DataFrame:
    """Enhance (or, with `cfg.direction` "attack", disrupt) every image of the dirmap.

    Steps default to max(1, round(2·eps)) with step 0.5, so step·steps = eps (L-WISE
    `scripts/batch_enhance/*.sh`). `mode` is "fast" or "reference" (default: fast on a GPU);
    `label_column` defaults to the one that fits the model (`lwise.guide.load`). The output
    dirmap records, per image, the L2 distance actually achieved between the saved natural and
    enhanced 8-bit images, and the ground-truth-logit gain between them.
    """
    csv = Path(dirmap_csv)
    df = dirmap.read(csv)
    guide = load_guide(
        model_path, trusted=trusted, fast=None if mode is None else mode == "fast",
        fast_dtype=cfg.fast_dtype, dirmap=df, label_column=label_column,
    )  # fmt: skip
    guide.model.requires_grad_(False)  # gradients for the input only
    steps = cfg.steps or steps_for_eps(eps)
    competitors = None
    if objective == "logit_diverge":
        competitors, df = _competitors(df, guide, cfg.diverge_from, csv)
    multiview = MultiView(**cfg.views) if cfg.views else None

    keys = stimulus_keys(df, csv, key_root, cfg.format)
    data = DirmapImages(df, csv.parent, eval_transform(guide.input_size), guide.label_column)
    loader = DataLoader(
        data, batch_size=cfg.batch_size, num_workers=workers,
        pin_memory=guide.device.type == "cuda",
    )  # fmt: skip
    stats = np.zeros((len(df), 3), dtype=np.float64)  # l2, gt logit natural, gt logit enhanced
    with atomic_path(out_dir, directory=True) as tmp:
        for x, y, idx in tqdm(loader, desc=f"{objective} eps={eps:g}"):
            x, y = x.to(guide.device, non_blocking=True), y.to(guide.device, non_blocking=True)
            adv = pgd(
                guide.net, x, y, eps=eps, step_size=cfg.step_size, steps=steps,
                constraint=cfg.constraint, objective=objective, direction=cfg.direction,
                competitors=competitors, views=multiview, mode=guide.mode,
                fast_dtype=cfg.fast_dtype,
            )  # fmt: skip
            stats[idx.numpy()] = _achieved(guide, x, adv, y)
            save_images(adv, [tmp / keys[int(i)] for i in idx], cfg.format, cfg.jpeg_quality)
        out = stimulus_dirmap(
            df,
            keys,
            eps=eps,
            objective=objective,
            direction=cfg.direction,
            l2_distance=stats[:, 0],
            gt_logit_natural=stats[:, 1],
            gt_logit_enhanced=stats[:, 2],
            logit_gain=stats[:, 2] - stats[:, 1],
        )
        dirmap.write(out, tmp / "dirmap.csv")
    log.info(
        "%s eps=%g (%d steps of %g): mean L2 %.3f, mean logit gain %.3f",
        objective, eps, steps, cfg.step_size, out["l2_distance"].mean(), out["logit_gain"].mean(),
    )  # fmt: skip
    return out


def _achieved(guide: Guide, x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per image: the L2 distance between the 8-bit natural and enhanced images, and the
    ground-truth logit of each (what the saved files give, not the float iterates)."""
    natural_q, adv_q = quantise(x), quantise(adv)
    with torch.no_grad():
        both = guide.net(
            torch.cat([natural_q, adv_q]).contiguous(memory_format=torch.channels_last)
        )
    gt = both.float().gather(1, torch.cat([y, y])[:, None])[:, 0].view(2, -1)
    l2 = (adv_q - natural_q).flatten(1).norm(dim=1)
    return torch.stack([l2, gt[0], gt[1]], 1).cpu().numpy()
