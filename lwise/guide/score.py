"""Stage 5: difficulty scoring: the guide model's ground-truth-class logit per image.

Reimplements L-WISE `test_model_on_dirmap_get_gt_logit.py` and `calc_difficulty_from_logit.py`
with their known problems fixed: the label column is chosen for the model's class space, the
confusion-matrix labels match its rows, and inputs are never overwritten.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from lwise.core.atomic import atomic_path, write_csv
from lwise.data import dirmap
from lwise.data.loading import DirmapImages, eval_transform
from lwise.guide.attacks import FAST_DTYPES
from lwise.guide.checkpoints import load_model
from lwise.guide.models import ImageClassifier, prepare_fast

log = logging.getLogger(__name__)


def label_column_for(df: pd.DataFrame, num_classes: int, requested: str = "auto") -> str:
    """`class_num` when the model's classes are the dirmap's, else `orig_class_num` (the
    1000-way ImageNet index of an ImageNet-16 image); L-WISE's scorer needed this by hand."""
    if requested != "auto":
        if requested not in df.columns:
            raise ValueError(f"label column {requested!r} not in the dirmap")
        return requested
    if df["class_num"].max() < num_classes and df["class"].nunique() == num_classes:
        return "class_num"
    if "orig_class_num" in df.columns and df["orig_class_num"].max() < num_classes:
        return "orig_class_num"
    if df["class_num"].max() < num_classes:
        return "class_num"
    raise ValueError(
        f"no label column fits a {num_classes}-class model: class_num goes up to "
        f"{df['class_num'].max()} and there is no fitting orig_class_num"
    )


def min_max_difficulty(logit: pd.Series, groups: pd.Series | None = None) -> pd.Series:
    """difficulty = 1 − (L − min L)/(max L − min L) (L-WISE `calc_difficulty_from_logit.py`),
    over the whole file or within each group (the L-WISE website's per-class variant)."""

    def scale(s: pd.Series) -> pd.Series:
        span = s.max() - s.min()
        return 1 - (s - s.min()) / span if span > 0 else pd.Series(0.5, index=s.index)

    return scale(logit) if groups is None else logit.groupby(groups).transform(scale)


def model_outputs(
    model: ImageClassifier,
    loader: DataLoader,
    device: torch.device,
    fast: bool,
    fast_dtype: str = "float16",
) -> torch.Tensor:
    """Logits (float32, on the CPU) for every image of `loader`, in order.

    `fast` runs the `prepare_fast` model under autocast to `fast_dtype`.
    """
    net = prepare_fast(model) if fast else model.eval()
    autocast = torch.autocast(device.type, dtype=FAST_DTYPES[fast_dtype], enabled=fast)
    out = []
    with torch.no_grad(), autocast:
        for x, _, _ in tqdm(loader, desc="scoring"):
            x = x.to(device, non_blocking=True)
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(net(x).float().cpu())
    logits = torch.cat(out)
    bad = (~torch.isfinite(logits).all(1)).nonzero()[:, 0].tolist()
    if bad:
        hint = f" in {fast_dtype}: set fast_dtype bfloat16" if fast else ""
        raise FloatingPointError(
            f"non-finite logits for {len(bad)} image(s) (dirmap rows {bad[:10]}, 0-based){hint}"
        )
    return logits


def score(
    dirmap_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    out_csv: str | os.PathLike,
    out_accuracy: str | os.PathLike,
    out_confusion: str | os.PathLike,
    out_probabilities: str | os.PathLike | None = None,
    *,
    label_column: str = "auto",
    present_classes_only: bool = False,
    gt_logit_column: str = "robust_gt_logit",
    difficulty_scope: str = "dataset",
    image_size: int | None = None,
    batch_size: int = 256,
    workers: int = 4,
    trusted: bool = False,
    fast_dtype: str = "float16",
) -> pd.DataFrame:
    """Score every image; write a new dirmap with the score columns and `difficulty`.

    On a GPU the model runs fast (`lwise.guide.models.prepare_fast`, autocast to `fast_dtype`).
    """
    if difficulty_scope not in ("dataset", "class"):
        raise ValueError(f"difficulty_scope {difficulty_scope!r}: expected 'dataset' or 'class'")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_path, trusted=trusted).to(device)
    size = image_size or model_input_size(model)
    df = dirmap.read(dirmap_csv)
    label = label_column_for(df, model.num_classes, label_column)
    data = DirmapImages(df, Path(dirmap_csv).parent, eval_transform(size), label)
    loader = DataLoader(
        data, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda"
    )
    logits = model_outputs(model, loader, device, device.type == "cuda", fast_dtype)
    y = data.labels
    gt = logits.gather(1, y[:, None])[:, 0]  # over all classes, as the reference
    considered = logits
    ids = torch.arange(logits.shape[1])
    if present_classes_only:
        ids = torch.as_tensor(sorted(df[label].unique()))
        considered = logits[:, ids]
    logp = considered.log_softmax(1)
    position = {int(c): i for i, c in enumerate(ids)}
    target = torch.as_tensor([position.get(int(t), -1) for t in y])
    out = df.copy()
    out[gt_logit_column] = gt.numpy()
    out["predicted_class_num"] = ids[considered.argmax(1)].numpy()
    out["correct"] = out["predicted_class_num"] == out[label]
    out["entropy"] = -(logp.exp() * logp).sum(1).numpy()
    out["cross_entropy"] = np.where(
        target >= 0, -logp.gather(1, target.clamp(min=0)[:, None])[:, 0].numpy(), np.nan
    )
    out["difficulty"] = min_max_difficulty(
        out[gt_logit_column], out["class"] if difficulty_scope == "class" else None
    )
    out["im_path"] = dirmap.relative_to(
        df["im_path"].map(lambda p: str(Path(dirmap_csv).parent / p)), Path(out_csv).parent
    )
    dirmap.write(out, out_csv)
    if out_probabilities is not None:  # softmax over the considered classes, for VisAlign
        names = [class_name(model, out, label, int(i)) for i in ids]
        probs = pd.DataFrame(logp.exp().numpy(), columns=names)
        write_csv(pd.concat([out[["im_path"]], probs], axis=1), out_probabilities)
    write_csv(accuracy_table(out, label), out_accuracy)
    plot_confusion(out, label, model, out_confusion)
    log.info("scored %d images with %s: accuracy %.4f", len(out), model_path, out["correct"].mean())
    return out


def model_input_size(model: ImageClassifier) -> int:
    """The image size a model was trained at (224, L-WISE's, when its checkpoint does not say)."""
    return int(model.training_args.get("image_size", 224))


def accuracy_table(scored: pd.DataFrame, label: str) -> pd.DataFrame:
    """Accuracy overall and per class (and split)."""
    per_class = (
        scored.groupby(["split", label, "class"])["correct"].agg(["mean", "size"]).reset_index()
    )
    overall = scored.groupby("split")["correct"].agg(["mean", "size"]).reset_index()
    overall[label], overall["class"] = -1, "(all)"
    table = pd.concat([overall, per_class], ignore_index=True)
    return table.rename(columns={"mean": "accuracy", "size": "n", label: "label"})


def class_name(model: ImageClassifier, scored: pd.DataFrame, label: str, class_id: int) -> str:
    """The name of label id `class_id`: the model's own names for its class space, else the
    dirmap's (orig_class for orig_class_num), else the id."""
    if model.class_names and class_id < len(model.class_names):
        return str(model.class_names[class_id])
    name_col = "class" if label == "class_num" else "orig_class"
    if name_col in scored.columns:
        match = scored.loc[scored[label] == class_id, name_col]
        if len(match):
            return str(match.iloc[0])
    return str(class_id)


def plot_confusion(scored: pd.DataFrame, label: str, model: ImageClassifier, path) -> None:
    """Confusion matrix whose tick labels are the names of exactly the rows' and columns' ids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    ids = sorted(set(scored[label]) | set(scored["predicted_class_num"]))
    labels = [class_name(model, scored, label, int(i)) for i in ids]
    cm = confusion_matrix(scored[label], scored["predicted_class_num"], labels=ids)
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
