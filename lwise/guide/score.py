"""Stage 5: difficulty scoring: the guide model's ground-truth-class logit per image.

Reimplements L-WISE `test_model_on_dirmap_get_gt_logit.py` and `calc_difficulty_from_logit.py`
with their known problems fixed: the label column is chosen for the model's class space, the
confusion-matrix labels match its rows, and inputs are never overwritten.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from lwise.core.atomic import atomic_path, write_csv
from lwise.core.config import Section
from lwise.core.logs import progress
from lwise.data import dirmap
from lwise.data.loading import (
    EncodedImages,
    collate_encoded,
    decode_images,
    to_unit,
)
from lwise.data.pixels import decoded_batches
from lwise.guide.checkpoints import load_model
from lwise.guide.load import (
    Guide,
    default_device,
    label_column_for,
    model_input_size,
    pool_logits,
    pooled_members,
    ready_guide,
)
from lwise.guide.models import ImageClassifier

__all__ = [
    "ScoringConfig",
    "accuracy_table",
    "class_name",
    "image_batches",
    "min_max_difficulty",
    "model_outputs",
    "plot_confusion",
    "score",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringConfig(Section):
    """The `scoring` config section; meanings and defaults in its schema
    (`ScoringConfig.from_config({"difficulty_scope": "class"})` fills in the rest)."""

    SECTION = "scoring"

    label_column: str
    present_classes_only: bool
    gt_logit_column: str
    difficulty_scope: str
    batch_size: int
    fast_dtype: str
    decode: str


def min_max_difficulty(logit: pd.Series, groups: pd.Series | None = None) -> pd.Series:
    """difficulty = 1 − (L − min L)/(max L − min L) (L-WISE `calc_difficulty_from_logit.py`),
    over the whole file or within each group (the L-WISE website's per-class variant)."""

    def scale(s: pd.Series) -> pd.Series:
        span = s.max() - s.min()
        return 1 - (s - s.min()) / span if span > 0 else pd.Series(0.5, index=s.index)

    return scale(logit) if groups is None else logit.groupby(groups).transform(scale)


def image_batches(
    df: pd.DataFrame,
    root: Path,
    *,
    size: int,
    device: torch.device,
    batch: int,
    workers: int,
    decode: str,
    label: str,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images in [0, 1] on `device`, dirmap row positions) per batch, in order. The loader's
    workers start at the call, so a job calls this before it moves its model to the device.

    With `decode` "auto" on a GPU, JPEGs are decoded there (`lwise.data.loading.decode_images`:
    nvjpeg, with the CPU path for other formats and as fallback), the DataLoader workers only
    reading files; otherwise the workers decode on the CPU (PIL).
    """
    if decode == "auto" and device.type == "cuda":
        data = EncodedImages(df, root, size, label)
        loader = DataLoader(
            data, batch_size=batch, num_workers=workers, collate_fn=collate_encoded
        )  # fmt: skip
        return _decoded_on(device, size, iter(loader))
    # Made float on the device: the values of `eval_transform` (see `preprocess_transform`).
    return (
        (to_unit(u8.to(device, non_blocking=True)), torch.from_numpy(pos))
        for pos, u8 in decoded_batches(df, root, size, batch, workers, device.type == "cuda")
    )


def _decoded_on(
    device: torch.device, size: int, loader: Iterator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's encoded batches decoded on `device` (`decode_images`), fallbacks counted."""
    fallbacks = 0
    for encoded, _, rows in loader:
        x, fell_back = decode_images(encoded, size, device)
        fallbacks += fell_back
        yield x, torch.from_numpy(rows)
    if fallbacks:
        log.info("%d image(s) decoded on the CPU (not decodable on the GPU)", fallbacks)


def model_outputs(
    guide: Guide, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], total: int | None = None
) -> torch.Tensor:
    """Logits (float32, on the CPU) for every image of `batches` ((images, row positions)
    pairs, as `image_batches` makes them), in order.

    A fast guide runs its fast copy under autocast to its `fast_dtype`. Rows whose logits
    overflow it are computed again in float32 by the reference model (logged); a FloatingPointError
    names the rows only when float32 is not finite either (the model itself is at fault).
    """
    out, recomputed = [], 0
    with torch.no_grad():
        for x, rows in progress(batches, desc="scoring", total=total, unit="batch"):
            if guide.fast:
                x = x.contiguous(memory_format=torch.channels_last)
            with guide.autocast():
                logits = guide.net(x).float()
            bad = ~torch.isfinite(logits).all(1)
            if guide.fast and bool(bad.any()):  # one host sync per batch, as .cpu() below
                logits[bad] = guide.model(x[bad].contiguous()).float()
                recomputed += int(bad.sum())
            logits = logits.cpu()
            bad = (~torch.isfinite(logits).all(1)).nonzero()[:, 0]
            if len(bad):
                where = rows[bad].tolist()
                raise FloatingPointError(
                    f"the guide model itself produces non-finite logits (float32) for "
                    f"{len(where)} image(s) of a batch (dirmap rows {where[:10]}, 0-based)"
                )
            out.append(logits)
    if recomputed:
        log.warning(
            "%d image(s) overflowed %s (non-finite logits): computed again in float32",
            recomputed, guide.fast_dtype,
        )  # fmt: skip
    return torch.cat(out)


def score(
    dirmap_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    out_csv: str | os.PathLike,
    out_accuracy: str | os.PathLike,
    out_confusion: str | os.PathLike,
    out_probabilities: str | os.PathLike | None = None,
    *,
    cfg: ScoringConfig,
    workers: int,
    trusted: bool,
    mode: str | None = None,
) -> pd.DataFrame:
    """Score every image; write a new dirmap with the score columns and `difficulty`.

    On a GPU the model runs fast (`lwise.guide.fast.prepare_fast`, autocast to
    `cfg.fast_dtype`) and JPEGs are decoded there (`cfg.decode`). `mode` "fast" or
    "reference" overrides the choice (default: fast on a GPU). `trusted` allows full
    unpickling of the checkpoint.
    """
    if cfg.difficulty_scope not in ("dataset", "class"):
        raise ValueError(
            f"difficulty_scope {cfg.difficulty_scope!r}: expected 'dataset' or 'class'"
        )
    df = dirmap.read(dirmap_csv)
    model = load_model(model_path, trusted=trusted)
    label = label_column_for(df, model.num_classes, cfg.label_column or "auto")
    device = default_device()
    batches = image_batches(
        df, Path(dirmap_csv).parent, size=model_input_size(model), device=device,
        batch=cfg.batch_size, workers=workers, decode=cfg.decode, label=label,
    )  # fmt: skip
    # Eager, not compiled: on an H200 eager ResNet-50 scores 26,700 images/s (compiled 33,800),
    # above what decoding feeds it, and compiling or loading compiled code costs 10-30 s a job.
    guide = ready_guide(
        model, device=device, fast=None if mode is None else mode == "fast",
        fast_dtype=cfg.fast_dtype, dirmap=df, label_column=label, compile=False,
    )  # fmt: skip
    logits = model_outputs(guide, batches, total=-(-len(df) // cfg.batch_size))
    y = torch.as_tensor(df[label].astype(int).to_numpy().copy())
    gt = logits.gather(1, y[:, None])[:, 0]  # over all classes, as the reference
    considered = logits
    ids = torch.arange(logits.shape[1])
    decide, names_of = label, guide.model  # the decision's label column and class names
    members = pooled_members(df, label)
    if members is not None:  # a finer model (1000-way on an ImageNet subset): K-way decision
        fine_ids = torch.arange(logits.shape[1])
        if cfg.present_classes_only:
            fine_ids = torch.as_tensor(sorted({i for m in members.values() for i in m}))
        fine_prediction = fine_ids[logits[:, fine_ids].argmax(1)].numpy()
        considered, ids = pool_logits(logits, members), torch.as_tensor(sorted(members))
        decide, names_of = "class_num", None
    elif cfg.present_classes_only:
        ids = torch.as_tensor(sorted(df[label].unique()))
        considered = logits[:, ids]
    logp = considered.log_softmax(1)
    position = {int(c): i for i, c in enumerate(ids)}
    target = torch.as_tensor([position.get(int(t), -1) for t in df[decide]])
    out = df.copy()
    out[cfg.gt_logit_column] = gt.numpy()
    out["predicted_class_num"] = ids[considered.argmax(1)].numpy()
    out["correct"] = out["predicted_class_num"] == out[decide]
    if members is not None:  # the model's own (finer) prediction too
        out[f"predicted_{label}"] = fine_prediction
    out["entropy"] = -(logp.exp() * logp).sum(1).numpy()
    out["cross_entropy"] = np.where(
        target >= 0, -logp.gather(1, target.clamp(min=0)[:, None])[:, 0].numpy(), np.nan
    )
    out["difficulty"] = min_max_difficulty(
        out[cfg.gt_logit_column], out["class"] if cfg.difficulty_scope == "class" else None
    )
    parent = os.path.dirname(os.fspath(dirmap_csv))
    out["im_path"] = dirmap.relative_to(
        pd.Series([os.path.join(parent, p) for p in df["im_path"]], index=df.index),
        Path(out_csv).parent,
    )
    dirmap.write(out, out_csv)
    if out_probabilities is not None:  # softmax over the considered classes, for VisAlign
        names = [class_name(names_of, out, decide, int(i)) for i in ids]
        probs = pd.DataFrame(logp.exp().numpy(), columns=names)
        write_csv(pd.concat([out[["im_path"]], probs], axis=1), out_probabilities)
    write_csv(accuracy_table(out, decide), out_accuracy)
    plot_confusion(out, decide, names_of, out_confusion)
    log.info("scored %d images with %s: accuracy %.4f", len(out), model_path, out["correct"].mean())
    return out


def accuracy_table(scored: pd.DataFrame, label: str) -> pd.DataFrame:
    """Accuracy overall and per class (and split)."""
    per_class = (
        scored.groupby(["split", label, "class"])["correct"].agg(["mean", "size"]).reset_index()
    )
    overall = scored.groupby("split")["correct"].agg(["mean", "size"]).reset_index()
    overall[label], overall["class"] = -1, "(all)"
    table = pd.concat([overall, per_class], ignore_index=True)
    return table.rename(columns={"mean": "accuracy", "size": "n", label: "label"})


def class_name(
    model: ImageClassifier | None, scored: pd.DataFrame, label: str, class_id: int
) -> str:
    """The name of label id `class_id`: the model's own names for its class space (None: the
    ids are not the model's, e.g. pooled classes), else the dirmap's (orig_class for
    orig_class_num), else the id."""
    if model is not None and model.class_names and class_id < len(model.class_names):
        return str(model.class_names[class_id])
    name_col = "class" if label == "class_num" else "orig_class"
    if name_col in scored.columns:
        match = scored.loc[scored[label] == class_id, name_col]
        if len(match):
            return str(match.iloc[0])
    return str(class_id)


def plot_confusion(scored: pd.DataFrame, label: str, model: ImageClassifier | None, path) -> None:
    """Confusion matrix whose tick labels are the names of exactly the rows' and columns' ids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = sorted(set(scored[label]) | set(scored["predicted_class_num"]))
    labels = [class_name(model, scored, label, int(i)) for i in ids]
    # Rows true ids, columns predicted ids, in `ids` order (sklearn costs 3 s to import).
    where = {c: i for i, c in enumerate(ids)}
    true = scored[label].map(where).to_numpy(int)
    predicted = scored["predicted_class_num"].map(where).to_numpy(int)
    cm = np.bincount(true * len(ids) + predicted, minlength=len(ids) ** 2).reshape(len(ids), -1)
    side = max(4, 0.35 * len(ids))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(ids)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(ids)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
