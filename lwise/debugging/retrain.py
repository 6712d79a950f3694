"""Data debugging: one method × seed: select its debug set, fine-tune the model with it added to
the training images, and measure the result overall, per class and on the failure slices.

Every method gets the same budget and the same training schedule (`debugging.finetune` over the
guide's training settings). Validation runs once, after the last epoch, so the model kept is the
last epoch's and no epoch is chosen on the evaluation images.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from lwise.core.atomic import write_csv
from lwise.core.threads import limit_threads
from lwise.data import dirmap
from lwise.debugging import selection, signals, slices
from lwise.debugging.settings import DebuggingConfig
from lwise.guide.load import load_guide
from lwise.guide.train import TrainConfig, run_training, train

__all__ = ["base_config", "finetune_config", "replayed", "run", "train_base"]

log = logging.getLogger(__name__)


def finetune_config(
    guide_train: dict, cfg: DebuggingConfig, model_path, *, trusted: bool, seed: int
) -> TrainConfig:
    """The guide's training settings, replaced key by key by `debugging.finetune`; starting
    from the model debugged (`retrain_from: guide`) or from scratch; validated after the last
    epoch only."""
    settings = {**guide_train, **cfg.finetune, "seed": seed, "label_column": "class_num"}
    if cfg.retrain_from == "guide":
        settings |= {"init_checkpoint": str(model_path), "trusted_checkpoint": trusted}
    else:
        settings |= {"init_checkpoint": None}
    try:
        tcfg = TrainConfig.from_config(settings)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config debugging.finetune: {err}") from err
    return dataclasses.replace(tcfg, eval_every=tcfg.epochs)


def base_config(guide_train: dict, cfg: DebuggingConfig) -> TrainConfig:
    """The base model's training settings: the guide's, replaced by `debugging.base_train`."""
    try:
        return TrainConfig.from_config({**guide_train, **cfg.base_train})
    except (TypeError, ValueError) as err:
        raise ValueError(f"config debugging.base_train: {err}") from err


def train_base(
    base_csv, out_model, out_metrics, state_dir, guide_train: dict, cfg: DebuggingConfig, gpus: int
) -> None:
    """Train the base model on the base dirmap (the training split without the pool)."""
    run_training(base_csv, out_model, out_metrics, state_dir, base_config(guide_train, cfg), gpus)


def _absolute(df: pd.DataFrame, csv) -> pd.Series:
    return df["im_path"].map(lambda p: os.path.abspath(Path(csv).parent / p))


def replayed(base: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """The training rows fine-tuned on: all, or `fraction` of each class drawn with `seed`
    (at least one image per class)."""
    rows = base[base["split"] == "train"]
    if fraction >= 1:
        return rows
    keep = [
        group.sample(n=max(1, round(fraction * len(group))), random_state=seed)
        for _, group in rows.groupby("class_num", sort=True)
    ]
    return pd.concat(keep).sort_index()


def _training_dirmap(base, base_csv, chosen, pool_csv, scored, eval_csv, split, out) -> None:
    """Training rows and the debug set as split train, the evaluation rows as split val."""
    keep = ["split", "class", "class_num", "im_path"]
    rows = scored[scored["split"] == split]
    parts = [
        base.assign(im_path=_absolute(base, base_csv)),
        chosen.assign(im_path=_absolute(chosen, pool_csv), split="train"),
        rows.assign(im_path=_absolute(rows, eval_csv), split="val"),
    ]
    df = pd.concat([p[keep] for p in parts], ignore_index=True)
    df["im_path"] = dirmap.relative_to(df["im_path"], Path(out).parent)
    dirmap.write(df, out)


@limit_threads
def run(
    *,
    base_csv,
    pool_csv,
    eval_csv,
    embeddings,
    slices_csv,
    model_path,
    method: str,
    seed: int,
    out_debug_set,
    out_predictions,
    out_metrics,
    work_dir,
    cfg: DebuggingConfig,
    guide_train: dict,
    trusted: bool,
    threads: int = 1,
) -> pd.DataFrame:
    """Select, fine-tune, measure; returns the metrics table (scope, name, n, accuracy)."""
    base, pool, scored = dirmap.read(base_csv), dirmap.read(pool_csv), dirmap.read(eval_csv)
    emb = signals.load_embeddings(embeddings)
    if len(emb["pool"]) != len(pool) or len(emb["eval"]) != len(scored):
        raise ValueError(f"{embeddings}: does not match {pool_csv} and {eval_csv}; rerun them")
    class_anchors = None
    if method == "S-Similarity":
        rows = scored[scored["split"] == cfg.slice_split]
        class_anchors = selection.anchors(rows, emb["eval"], cfg.similarity_fallback)
    chosen = selection.select(
        method, pool, emb["pool"], budget=cfg.budget, seed=seed, band=tuple(cfg.band),
        class_anchors=class_anchors,
    )  # fmt: skip
    log.info("%s, seed %d: %d debug images", method, seed, len(chosen))
    dirmap.write(
        chosen.assign(
            im_path=dirmap.relative_to(_absolute(chosen, pool_csv), Path(out_debug_set).parent)
        ),
        out_debug_set,
    )
    work = Path(work_dir)
    train_csv = work / "train.csv"
    replay = replayed(base, cfg.replay_fraction, seed)
    log.info("fine-tuning on %d training images and %d debug images", len(replay), len(chosen))
    _training_dirmap(
        replay, base_csv, chosen, pool_csv, scored, eval_csv, cfg.eval_split, train_csv
    )
    tcfg = finetune_config(guide_train, cfg, model_path, trusted=trusted, seed=seed)
    train(train_csv, work / "model.pt", work / "metrics.csv", work / "resume", tcfg)

    model = load_guide(work / "model.pt", trusted=False, fast=False)
    rows = scored[scored["split"] == cfg.eval_split].reset_index(drop=True)
    logits, _ = signals.run_model(
        model.model, model.device, rows, Path(eval_csv).parent, model.input_size,
        batch_size=cfg.batch_size, desc="evaluation",
    )  # fmt: skip
    predicted = rows.assign(
        before_correct=rows["correct"].astype(bool),
        predicted_class_num=logits.argmax(1).numpy(),
    )
    predicted["correct"] = predicted["predicted_class_num"] == predicted["class_num"]
    failing = pd.read_csv(slices_csv).query("failure")["slice"].tolist()
    table = slices.accuracy_table(predicted, failing, ~predicted["before_correct"])
    table.insert(0, "seed", seed)
    table.insert(0, "method", method)
    table["debug_images"] = len(chosen)
    keep = [
        "split",
        "class",
        "class_num",
        "im_path",
        "predicted_class_num",
        "correct",
        "before_correct",
    ]
    write_csv(
        predicted[keep].assign(
            im_path=dirmap.relative_to(_absolute(predicted, eval_csv), Path(out_predictions).parent)
        ),
        out_predictions,
    )
    write_csv(table, out_metrics)
    overall = table.loc[table["scope"] == "overall", "accuracy"].iloc[0]
    log.info("%s, seed %d: accuracy %.4f on %s", method, seed, overall, cfg.eval_split)
    if not cfg.keep_models:
        shutil.rmtree(work, ignore_errors=True)
    return table
