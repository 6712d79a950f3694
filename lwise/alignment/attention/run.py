"""The attention stage's entry points: fine-tune (GRADIA's two phases), evaluate, reasonability.

`finetune` splits the validation images into feedback images (their masks join phase 2's
training set, as GRADIA's `p2_train` holds the train images plus selected validation images),
selection images (held out: phase 2 keeps the epoch scoring best on them) and, when the dataset
has no test split, evaluation images. `evaluate` compares the phase-1 model ("before") with the
fine-tuned one ("after") on the evaluation images: accuracy, Grad-CAM IoU against the human
masks at a CAM threshold (0.75 in GRADIA.py, `model_test`), per-image values and an overlay grid.
`reasonability_matrix` counts GRADIA's 2×2 table on test from a human assessment of the
fine-tuned model's attention.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from lwise.alignment.attention.masks import (
    ImageIndex,
    MaskError,
    fit_masks,
    load_masks,
    read_reasonability,
)
from lwise.core.atomic import write_csv
from lwise.core.config import Section
from lwise.core.threads import limit_threads
from lwise.data import dirmap
from lwise.data.loading import DirmapImages, eval_transform
from lwise.guide import attention as gradia
from lwise.guide.checkpoints import save_checkpoint
from lwise.guide.load import default_device, load_guide

log = logging.getLogger(__name__)

__all__ = [
    "AttentionConfig",
    "ROLES",
    "assign_roles",
    "cam_iou",
    "finetune",
    "sample_weights",
]

ROLES = ("train", "feedback", "selection", "evaluation")
WEIGHT_KEYS = {
    "Unreasonable Inaccurate": "unreasonable_inaccurate",
    "Unreasonable Accurate": "unreasonable_accurate",
    "Reasonable Inaccurate": "reasonable_inaccurate",
    "Reasonable Accurate": "reasonable_accurate",
}


@dataclass(frozen=True)
class AttentionConfig(Section):
    """Settings of the attention stage (the `attention` config section; defaults and meanings
    in the schema): `AttentionConfig.from_config({"phase2_epochs": 3})`."""

    SECTION = "attention"

    layer: str | None
    label_column: str
    phase1_epochs: int
    phase2_epochs: int
    lr: float
    batch_size: int
    attention_scale: float
    weights: dict
    feedback_fraction: float
    selection_fraction: float
    select_on: str
    cam_threshold: float
    cam_class: str
    per_image_cams: bool
    reference: bool
    overlay_images: int
    seed: int


def assign_roles(
    df: pd.DataFrame, *, feedback_fraction: float, selection_fraction: float, seed: int
) -> pd.Series:
    """Each row's role: train rows "train"; test rows "evaluation"; validation rows, per class
    in a seeded order, "feedback" (the first `feedback_fraction`), then "selection" (the next
    `selection_fraction`, or all the rest when there is a test split), then "evaluation"."""
    has_test = (df["split"] == "test").any()
    if not has_test and feedback_fraction + selection_fraction >= 1:
        raise ValueError(
            "without a test split, feedback_fraction + selection_fraction must leave validation "
            f"images for evaluation (they sum to {feedback_fraction + selection_fraction})"
        )
    roles = pd.Series("train", index=df.index, dtype=object)
    roles[df["split"] == "test"] = "evaluation"
    rng = np.random.default_rng(seed)
    for _, group in df[df["split"] == "val"].groupby("class_num", sort=True):
        order = group.index[rng.permutation(len(group))]
        n_feedback = int(round(feedback_fraction * len(order)))
        n_select = len(order) if has_test else int(round(selection_fraction * len(order)))
        roles[order[:n_feedback]] = "feedback"
        roles[order[n_feedback : n_feedback + n_select]] = "selection"
        roles[order[n_feedback + n_select :]] = "evaluation"
    for role in ROLES:
        if not (roles == role).any():
            raise ValueError(f"no image has the role {role!r}: too few validation images")
    return roles


def sample_weights(
    rows: Sequence[int],
    has_mask: set[int],
    reasonability: Mapping[int, str],
    weights: Mapping[str, Sequence[float]],
    *,
    reference: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred_weights, att_weights) for dirmap rows, as GRADIA.py's
    `ImageFolderWithMapsAndWeights`: a row without a mask gets (1, 0); a row with one the pair
    of its reasonability label, or of `no_label` (reference mode: GRADIA.py's (1, 0), so no
    attention loss without a reasonability table)."""
    pred, att = [], []
    for row in rows:
        if row not in has_mask:
            pair = (1.0, 0.0)
        elif row in reasonability:
            pair = weights[WEIGHT_KEYS[reasonability[row]]]
        else:
            pair = weights["reasonable_accurate" if reference else "no_label"]
        pred.append(float(pair[0]))
        att.append(float(pair[1]))
    return torch.tensor(pred), torch.tensor(att)


def cam_iou(cams: torch.Tensor, masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """IoU of (CAM > threshold) with the human mask, per image (GRADIA.py `compute_iou`)."""
    model = cams > threshold
    inter = (model & masks).sum(dim=(-2, -1)).double()
    union = (model | masks).sum(dim=(-2, -1)).double()
    return inter / union


class _Stage:
    """What finetune and evaluate share: dirmap, human masks, model input geometry."""

    def __init__(
        self,
        dirmap_csv,
        model_path,
        masks,
        updates,
        removals,
        cfg: AttentionConfig,
        trusted: bool,
        threads: int,
    ):
        self.cfg = cfg
        self.device = default_device()
        # On the CPU the threads compute (see _threads) and images load in the main process;
        # on a GPU they load images.
        self.workers = threads if self.device.type == "cuda" else 0
        self.df = dirmap.read(dirmap_csv)
        self.root = Path(dirmap_csv).parent
        self.index = ImageIndex(self.df)
        guide = load_guide(
            model_path, trusted=trusted, fast=False, dirmap=self.df, label_column=cfg.label_column
        )
        self.model = guide.model
        self.size = guide.input_size
        self.label = guide.label_column
        self.raw_masks = load_masks(masks, self.index, updates=updates, removals=removals)
        self.masks = fit_masks(self.raw_masks, self.df, self.root, self.size)
        name = cfg.layer or gradia.default_layer(self.model, self.size)
        self.layer_name = name
        log.info("Grad-CAM layer %s; %d masks; input %d px", name, len(self.masks), self.size)

    def layer(self, model):
        return gradia.find_layer(model, self.layer_name)

    def data(self, rows) -> DirmapImages:
        return DirmapImages(
            self.df.loc[list(rows)], self.root, eval_transform(self.size), self.label
        )

    def loader(self, rows, *, shuffle=False, seed=0) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            self.data(rows),
            batch_size=self.cfg.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
        )

    def score(self, model, rows, keep=()) -> tuple[pd.DataFrame, dict[int, torch.Tensor]]:
        """Prediction, correctness and CAM IoU (NaN without a mask) of each row; the CAMs of
        the rows in `keep`."""
        rows = list(rows)
        layer = self.layer(model)
        preds, ious, kept = [], [], {}
        for x, y, pos in self.loader(rows):
            classes = y if self.cfg.cam_class == "true" else None
            cams, logits = gradia.gradcam(model, layer, x.to(self.device), classes)
            cams = cams.cpu()
            preds.extend(logits.argmax(1).cpu().tolist())
            for j, p in enumerate(pos.tolist()):
                row = rows[p]
                mask = self.masks.get(row)
                iou = np.nan
                if mask is not None:
                    iou = float(cam_iou(cams[j], mask, self.cfg.cam_threshold))
                ious.append(iou)
                if row in keep:
                    kept[row] = cams[j]
        labels = self.df.loc[rows, self.label].to_numpy()
        table = pd.DataFrame({"row": rows, "pred": preds, "iou": ious})
        table["correct"] = table["pred"].to_numpy() == labels
        return table, kept


@limit_threads
def finetune(
    dirmap_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    masks: str | os.PathLike,
    out_phase1: str | os.PathLike,
    out_model: str | os.PathLike,
    out_history: str | os.PathLike,
    out_roles: str | os.PathLike,
    *,
    updates: Sequence[str | os.PathLike] = (),
    removals: Sequence[str | os.PathLike] = (),
    reasonability: str | os.PathLike | None = None,
    settings: Mapping | None = None,
    trusted: bool = False,
    threads: int = 2,
) -> pd.DataFrame:
    """GRADIA's two phases on the guide model at `model_path`; writes the phase-1 model, the
    fine-tuned model, the per-epoch history and each image's role. Returns the history."""
    cfg = AttentionConfig.from_config(settings)
    torch.manual_seed(cfg.seed)
    stage = _Stage(dirmap_csv, model_path, masks, updates, removals, cfg, trusted, threads)
    df, device = stage.df, stage.device
    roles = assign_roles(
        df,
        feedback_fraction=cfg.feedback_fraction,
        selection_fraction=cfg.selection_fraction,
        seed=cfg.seed,
    )
    model = stage.model.to(device).requires_grad_(True)
    rows = {r: list(df.index[roles == r]) for r in ROLES}

    # Phase 1: plain cross-entropy on train, best validation accuracy (GRADIA.py `model_train`).
    model, history = gradia.train_phase1(
        model,
        stage.loader(rows["train"], shuffle=True, seed=cfg.seed),
        stage.loader(rows["feedback"] + rows["selection"]),
        epochs=cfg.phase1_epochs,
        lr=cfg.lr,
        device=device,
    )
    extra = {"attention": {"phase": 1, "layer": stage.layer_name, **asdict(cfg)}}
    save_checkpoint(out_phase1, model, extra, training_args=model.training_args)

    # Phase 2: train + feedback images, attention loss where a mask and a weight say so.
    p2_rows = rows["train"] + rows["feedback"]
    labels = {}
    if reasonability is not None:
        labels = read_reasonability(reasonability, stage.index)
    elif cfg.reference:
        log.warning(
            "reference mode without a reasonability table: GRADIA.py's weights give "
            "no image an attention loss, so phase 2 is plain cross-entropy"
        )
    pred_w, att_w = sample_weights(
        p2_rows, set(stage.masks), labels, cfg.weights, reference=cfg.reference
    )
    grid = _grid(model, stage.layer(model), stage.size, device)
    targets = torch.zeros((len(p2_rows), *grid))
    for i, row in enumerate(p2_rows):
        if att_w[i] > 0:
            try:
                target = gradia.target_map(stage.masks[row].numpy(), grid, reference=cfg.reference)
            except ValueError as err:
                raise MaskError(f"{stage.raw_masks.origins[row]}: {err}") from err
            targets[i] = torch.from_numpy(target)
    log.info(
        "phase 2: %d images, %d with an attention weight (grid %dx%d)",
        len(p2_rows),
        int((att_w > 0).sum()),
        *grid,
    )
    select_rows = rows["selection"]
    if cfg.select_on == "iou" and not any(r in stage.masks for r in select_rows):
        raise MaskError(
            f"{masks}: no selection image (held-out validation) has a mask; "
            "give masks for more validation images or set attention.select_on: accuracy"
        )

    def select(m) -> float:
        table, _ = stage.score(m, select_rows)
        return float(table["iou"].mean() if cfg.select_on == "iou" else table["correct"].mean())

    model, history2 = gradia.train_phase2(
        model,
        stage.layer(model),
        stage.loader(p2_rows, shuffle=True, seed=cfg.seed + 1),
        targets,
        pred_w,
        att_w,
        select,
        epochs=cfg.phase2_epochs,
        lr=cfg.lr,
        device=device,
        attention_scale=cfg.attention_scale,
        per_image_cams=cfg.per_image_cams,
        reference=cfg.reference,
    )
    extra = {"attention": {"phase": 2, "layer": stage.layer_name, **asdict(cfg)}}
    save_checkpoint(out_model, model, extra, training_args=model.training_args)
    table = pd.DataFrame([asdict(h) for h in history + history2])
    table["score_name"] = np.where(
        table["phase"] == 1, "val_accuracy", f"selection_{cfg.select_on}"
    )
    write_csv(table, out_history)
    role_table = df[["split", "class", "class_num", "im_path"]].assign(
        role=roles, has_mask=[r in stage.masks for r in df.index]
    )
    write_csv(role_table, out_roles)
    return table


def _grid(model, layer, size, device) -> tuple[int, int]:
    was_training = model.training
    model.eval()
    with gradia.ActivationTap(layer) as tap, torch.no_grad():
        model(torch.zeros(1, 3, size, size, device=device))
    model.train(was_training)
    return tuple(tap.output.shape[-2:])
