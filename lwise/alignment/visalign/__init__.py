"""VisAlign: the Hellinger distance between the model's abstention-aware output and the
per-image human response distribution, and effective-reliability scores.

Definitions from VisAlign (Lee et al., NeurIPS 2023; `jiyounglee-0523/VisAlign`,
`evaluate_visual_alignment.py`) and Effective Reliability (Whitehead et al., ECCV 2022;
`facebookresearch/reliable_vqa`), as implemented in `lwise.alignment.metrics`.

This module is the `visalign` analysis of the alignment evaluation (`evaluation.abstention`
names the method; one that needs more than the softmax runs the guide model over the natural
images with `scoring.model_outputs`, fitted on the ImageFolder's training split, with the
`visalign` section's method settings; the Deep Ensemble needs several models and runs in the
visalign rules only).
The VisAlign benchmark itself (rules/visalign.smk) lives in the submodules: `baselines` (the
five architectures), `testset` (the open test set or a synthetic one), `scoring` (the seven
methods' raw scores with the model), `report` (tables, figures, leaderboard files) and
`workflow` (what the rules ask of the config).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lwise.alignment import metrics, summary
from lwise.alignment.abstention import ABSTENTION, ModelOutputs, abstention_probability
from lwise.alignment.analysis import AlignmentContext, AnalysisResult, SummaryRow, register
from lwise.alignment.inputs import AlignmentDataError
from lwise.data.dirmap import csv_lines
from lwise.humans import trials as humans
from lwise.humans.trials import ABSTAIN

__all__ = ["summary_rows", "visalign"]

log = logging.getLogger(__name__)


def visalign(
    human: pd.DataFrame,
    probs: pd.DataFrame,
    images: pd.DataFrame,
    classes: Sequence[str],
    *,
    costs: Sequence[float],
    abstention: str,
    raw: Mapping[str, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """VisAlign alignment of the model's output with per-image human response distributions.

    `human`: `image`, the `classes` and `abstain` (fractions; optional `n_responses`);
    `probs`: the model's softmax over `classes`, indexed by image key; `images`: `class` and
    `split`, indexed by image key.

    Model output q = [p·(1 − a), a] with a the abstention probability of the registered method
    `abstention` (`lwise.alignment.abstention`; "msp": a = 1 − max p; a method that needs the
    model takes its raw scores from `raw`, rows in `human`'s order); per image the Hellinger
    distance H(human, q). Reliability (`metrics.reliability_score`) scores the model's argmax
    decision over q against the human majority answer (first maximum, so a class beats an
    equally frequent abstention): VisAlign scores its uncertain category against the human
    majority.

    Returns (per-image table, summary per `level` all / class / split with `mean_hellinger`,
    the model's abstention rate, mean human abstention mass and `reliability_c<cost>`).
    """
    classes = list(classes)
    labels = np.asarray([*classes, ABSTAIN], dtype=object)
    keys = human["image"].astype(str)
    h = human[[*classes, ABSTAIN]].to_numpy(dtype=float)
    p = probs.loc[keys, classes].to_numpy(dtype=float)
    p = p / p.sum(axis=1, keepdims=True)  # CSV rounding: rows must sum to 1 within 1e-6
    try:
        a = abstention_probability(abstention, ModelOutputs(p, raw=dict(raw or {})))
    except ValueError as err:
        raise AlignmentDataError(f"evaluation.abstention {abstention!r}: {err}") from None
    q = metrics.visalign_output(p, a)
    per_image = pd.DataFrame(
        {
            "image": keys.to_numpy(),
            "class": images.loc[keys, "class"].astype(str).to_numpy(),
            "split": images.loc[keys, "split"].astype(str).to_numpy(),
            "n_responses": human["n_responses"].to_numpy()
            if "n_responses" in human.columns
            else np.nan,
            "human_majority": labels[h.argmax(axis=1)],
            "human_abstain": h[:, -1],
            "model_prediction": labels[p.argmax(axis=1)],
            "model_abstain_probability": a,
            "model_decision": labels[metrics.visalign_decision(q)],
            "hellinger": metrics.hellinger(h, q),
        }
    )
    groups = [("all", "all", per_image)]
    for level in ("class", "split"):
        groups += [(level, str(g), part) for g, part in per_image.groupby(level, sort=True)]
    rows = []
    for level, group, part in groups:
        score = metrics.reliability_score(
            part["model_decision"].to_numpy(), part["human_majority"].to_numpy(), list(costs)
        )
        rows.append(
            {
                "level": level,
                "group": group,
                "n_images": len(part),
                "mean_responses": float(part["n_responses"].mean()),
                "mean_hellinger": float(part["hellinger"].mean()),
                "model_abstain_rate": float((part["model_decision"] == ABSTAIN).mean()),
                "human_abstain_mass": float(part["human_abstain"].mean()),
                **{f"reliability_c{c:g}": v for c, v in score.items()},
            }
        )
    return per_image, pd.DataFrame(rows)


def summary_rows(table: pd.DataFrame) -> list[SummaryRow]:
    """Mean Hellinger distance and reliability scores per level (all, class:<c>, split:<s>)."""
    rows = []
    for _, r in table.iterrows():
        group = "all" if r["level"] == "all" else f"{r['level']}:{r['group']}"
        rows.append(summary.row("visalign_hellinger", group, r["mean_hellinger"]))
        for column in [c for c in table.columns if c.startswith("reliability_")]:
            rows.append(summary.row(column, group, r[column]))
    return rows


def _human_distributions(ctx: AlignmentContext) -> pd.DataFrame:
    """The given per-image label distributions, else those of the natural trials."""
    data = ctx.inputs
    path = data.label_distributions_csv
    if path is None:
        return humans.response_distributions(data.natural_trials, data.classes)
    human = humans.read_label_distributions(path, classes=data.classes)
    stray = ~human["image"].isin(data.natural["im_path"])
    if stray.any():
        raise AlignmentDataError(
            f"{path}: column 'image': not natural-set keys at line(s) {csv_lines(human, stray)}"
        )
    return human


def _model_raw(ctx: AlignmentContext, keys: pd.Series) -> dict[str, np.ndarray]:
    """The raw scores of `evaluation.abstention` on the natural images `keys`, from the guide
    model (`scoring.model_outputs`, the same implementation the visalign rules run)."""
    method, guide = ctx.config.abstention, ctx.inputs.guide
    if guide is None:
        raise AlignmentDataError(
            f"evaluation.abstention {method!r} runs the guide model, but none was given: pass "
            "guide_model and train_dirmap_csv (the ImageFolder's dirmap.csv; the "
            "evaluate_alignment rule does when the config names such a method)"
        )
    # torch and the model only here: the softmax-only default stays cheap.
    from lwise.alignment.visalign import scoring
    from lwise.alignment.visalign.settings import VisAlignConfig

    settings = VisAlignConfig.from_config(dict(ctx.abstention_settings)).method_settings()
    log.info("evaluation.abstention %s: running %s on %d images", method, guide.model, len(keys))
    try:
        outputs, _ = scoring.model_outputs(
            guide.model, guide.train_dirmap_csv, guide.images.loc[keys.to_numpy()],
            guide.train_dirmap_csv.parent, methods=[method], settings=settings, rule="aligned",
            trusted=guide.trusted, workers=ctx.workers,
        )  # fmt: skip
    except ValueError as err:
        raise AlignmentDataError(f"evaluation.abstention {method!r}: {err}") from err
    return dict(outputs.raw)


@register("visalign")
def run(ctx: AlignmentContext) -> AnalysisResult:
    """visalign_images.csv and visalign.csv; nothing without the model's probabilities."""
    data, cfg = ctx.inputs, ctx.config
    if data.probabilities is None:
        log.info("no probabilities_csv: VisAlign (visalign.csv) skipped")
        return AnalysisResult()
    human = _human_distributions(ctx)
    raw = None
    if ABSTENTION[cfg.abstention].needs_model:
        raw = _model_raw(ctx, human["image"].astype(str))
    per_image, table = visalign(
        human,
        data.probabilities,
        data.natural.set_index("im_path"),
        data.classes,
        costs=cfg.costs,
        abstention=cfg.abstention,
        raw=raw,
    )
    return AnalysisResult(
        tables={"visalign_images": per_image, "visalign": table}, summary=summary_rows(table)
    )
