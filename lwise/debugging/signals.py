"""Data debugging: what the model debugged says about each image.

Per image of the evaluation rows and of the pool: the prediction, the ground-truth-class logit
(for a robust guide, L-WISE's difficulty signal), the predictive entropy (S-Active) and an
embedding (S-Similarity): the penultimate layer, i.e. the input of the classifier head, of the
guide or of another model (`debugging.embedding`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from lwise.core.atomic import atomic_path
from lwise.core.logs import progress
from lwise.data import dirmap
from lwise.data.loading import DirmapImages, eval_transform
from lwise.debugging.settings import DebuggingConfig
from lwise.guide.load import Guide, load_guide
from lwise.guide.models import ImageClassifier, head_name
from lwise.guide.score import min_max_difficulty

__all__ = [
    "add_difficulty",
    "compute",
    "embedding_hook",
    "entropy",
    "load_embeddings",
    "load_model",
    "run_model",
]

log = logging.getLogger(__name__)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Predictive entropy −Σ p log p (nats) of softmax(logits), per row (Gal et al. 2017,
    arXiv 1703.02910, max entropy; AACA README, S-Active Learning)."""
    logp = logits.float().log_softmax(1)
    return -(logp.exp() * logp).sum(1)


def embedding_hook(model: ImageClassifier, layer: str | None, store: list) -> object:
    """Register a hook appending each batch's embedding to `store`: with `layer` None, the
    input of the classifier head (the penultimate layer); else the output of module `layer` of
    the network, averaged over space when it is a map. Returns the hook handle."""
    net = model.net
    if layer is None:
        head = net.get_submodule(head_name(net))
        return head.register_forward_hook(lambda mod, inp, out: store.append(inp[0].flatten(1)))
    try:
        module = net.get_submodule(layer)
    except AttributeError as err:
        raise ValueError(f"config debugging.embedding.layer {layer!r}: no such module") from err

    def grab(mod: nn.Module, inp, out) -> None:
        out = out[0] if isinstance(out, tuple) else out
        store.append(out.mean(dim=(2, 3)) if out.ndim == 4 else out.flatten(1))

    return module.register_forward_hook(grab)


@torch.no_grad()
def run_model(
    model: ImageClassifier,
    device: torch.device,
    df: pd.DataFrame,
    root: str | os.PathLike,
    size: int,
    *,
    layer: str | None = None,
    batch_size: int = 256,
    workers: int = 0,
    desc: str = "images",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, embeddings), float32 on the CPU, for the rows of `df` in order."""
    data = DirmapImages(df, root, eval_transform(size), "class_num")
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers)
    store: list[torch.Tensor] = []
    logits = []
    handle = embedding_hook(model, layer, store)
    try:
        for x, _, _ in progress(loader, desc=desc):
            logits.append(model(x.to(device)).float().cpu())
    finally:
        handle.remove()
    return torch.cat(logits), torch.cat([e.float().cpu() for e in store])


def load_model(model_path, base: pd.DataFrame, trusted: bool) -> Guide:
    """The model debugged: its classes must be the dataset's, since it is fine-tuned on them."""
    guide = load_guide(
        model_path, trusted=trusted, fast=False, dirmap=base, label_column="class_num"
    )
    n = int(base["class_num"].max()) + 1
    if guide.num_classes != n:
        raise ValueError(
            f"{model_path}: a {guide.num_classes}-class model, but the dataset has {n} classes: "
            "data debugging fine-tunes the model on the dataset's own classes"
        )
    return guide


def add_difficulty(pool: pd.DataFrame, scope: str) -> pd.Series:
    """L-WISE's difficulty, 1 − min-max scaled GT logit (`calc_difficulty_from_logit.py`), within
    each source (the pool, each G-* set) and, for scope "class", within each class."""
    keys = ["source"] + (["class_num"] if scope == "class" else [])
    groups = pool[keys].astype(str).agg("|".join, axis=1)
    return min_max_difficulty(pool["gt_logit"], groups)


def _describe(df: pd.DataFrame, logits: torch.Tensor) -> pd.DataFrame:
    y = torch.as_tensor(df["class_num"].to_numpy(dtype="int64", copy=True))
    out = df.copy()
    out["predicted_class_num"] = logits.argmax(1).numpy()
    out["correct"] = out["predicted_class_num"] == out["class_num"]
    out["gt_logit"] = logits.gather(1, y[:, None])[:, 0].numpy()
    out["entropy"] = entropy(logits).numpy()
    return out


def compute(
    base_csv: str | os.PathLike,
    pool_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    out_pool: str | os.PathLike,
    out_eval: str | os.PathLike,
    out_embeddings: str | os.PathLike,
    cfg: DebuggingConfig,
    *,
    trusted: bool,
    workers: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Signals of the evaluation rows (slice and evaluation splits) and of the pool; writes the
    two annotated dirmaps and the embeddings (`eval`, `pool`: arrays in the dirmaps' row order).
    """
    base = dirmap.read(base_csv)
    pool = dirmap.ordered(dirmap.read(pool_csv))  # the order the dirmaps are written in
    rows = dirmap.ordered(base[base["split"].isin({cfg.slice_split, cfg.eval_split})])
    guide = load_model(model_path, base, trusted)
    embed_path = cfg.embedding["checkpoint"]
    embedder = (
        guide if embed_path is None
        else load_guide(embed_path, trusted=cfg.embedding["trusted"], fast=False)
    )  # fmt: skip
    out, embeddings = {}, {}
    layer = cfg.embedding["layer"]
    for name, df, root in (
        ("eval", rows, Path(base_csv).parent),
        ("pool", pool, Path(pool_csv).parent),
    ):
        logits, emb = run_model(
            guide.model, guide.device, df, root, guide.input_size,
            layer=layer if embedder is guide else None,
            batch_size=cfg.batch_size, workers=workers, desc=f"{name} images",
        )  # fmt: skip
        if embedder is not guide:
            _, emb = run_model(
                embedder.model, embedder.device, df, root, embedder.input_size, layer=layer,
                batch_size=cfg.batch_size, workers=workers, desc=f"{name} embeddings",
            )  # fmt: skip
        out[name], embeddings[name] = _describe(df, logits), emb.numpy()
    out["pool"]["difficulty"] = add_difficulty(out["pool"], cfg.difficulty_scope)
    dirmap.write(out["eval"].assign(im_path=_rebased(rows, base_csv, out_eval)), out_eval)
    dirmap.write(out["pool"].assign(im_path=_rebased(pool, pool_csv, out_pool)), out_pool)
    with atomic_path(out_embeddings) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **embeddings)
    acc = out["eval"].groupby("split")["correct"].mean().round(4).to_dict()
    log.info("model %s: accuracy %s; pool of %d images", model_path, acc, len(pool))
    return out["eval"], out["pool"]


def _rebased(df: pd.DataFrame, csv, out) -> pd.Series:
    return dirmap.relative_to(
        df["im_path"].map(lambda p: str(Path(csv).parent / p)), Path(out).parent
    )


def load_embeddings(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
