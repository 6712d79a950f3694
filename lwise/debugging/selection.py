"""Data debugging: debug-set selection methods, registered by name.

Every method scores the candidates of one class; the `budget` lowest scores are taken (ties in
pool order), NaN never. Scores (lower is taken first):

- `none`: every candidate NaN: no debug set (the control for the extra fine-tuning itself).
- `S-Random`: a random permutation position (AACA README, S-Random).
- `S-Similarity`: squared L2 distance of the embedding to the mean embedding of the class's
  misclassified images of the slice split (AACA README, S-Similarity, after Singla et al. 2022,
  arXiv 2204.08074); a class without errors uses its images' mean (`similarity_fallback`).
- `S-Active`: minus the predictive entropy (AACA README, S-Active Learning; Gal et al. 2017).
- `L-WISE`: the ground-truth logit of the (robust) model: hardest first, the L-WISE difficulty
  score used as a selection signal.
- `L-WISE-band`: the ground-truth logit of images whose difficulty lies in `band`, NaN outside:
  hardest first but skipping the extremes (often mislabelled or unreadable images).
- `G-<name>`: a random permutation position among the generated images of set G-<name>.

    @register_method("S-Margin")
    def margin(c: ClassCandidates) -> np.ndarray: ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "METHODS",
    "ClassCandidates",
    "anchors",
    "register_method",
    "scorer",
    "select",
    "source_of",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassCandidates:
    """The candidates of one class and what a method may use to score them.

    - `rows`: the candidate images (columns gt_logit, entropy, difficulty, ...), in pool order.
    - `embeddings`: (len(rows), D), row for row.
    - `anchor`: S-Similarity's target embedding for the class, or None.
    - `band`: L-WISE-band's [low, high] difficulty.
    - `rng`: this class's random generator (seeded by the run's seed and the class).
    """

    class_num: int
    rows: pd.DataFrame
    embeddings: np.ndarray
    anchor: np.ndarray | None
    band: tuple[float, float]
    rng: np.random.Generator


Scorer = Callable[[ClassCandidates], np.ndarray]
METHODS: dict[str, Scorer] = {}


def register_method(name: str):
    """Function decorator: `fn(candidates) -> scores` is the selection method `name`."""

    def add(fn: Scorer) -> Scorer:
        if name in METHODS:
            raise ValueError(f"selection method {name!r} is registered twice")
        METHODS[name] = fn
        return fn

    return add


@register_method("none")
def _none(c: ClassCandidates) -> np.ndarray:
    return np.full(len(c.rows), np.nan)


@register_method("S-Random")
def _random(c: ClassCandidates) -> np.ndarray:
    return c.rng.permutation(len(c.rows)).astype(float)


@register_method("S-Similarity")
def _similarity(c: ClassCandidates) -> np.ndarray:
    if c.anchor is None:
        return np.full(len(c.rows), np.nan)
    return ((c.embeddings - c.anchor[None, :]) ** 2).sum(1).astype(float)


@register_method("S-Active")
def _active(c: ClassCandidates) -> np.ndarray:
    return -c.rows["entropy"].to_numpy(dtype=float)


@register_method("L-WISE")
def _hardest(c: ClassCandidates) -> np.ndarray:
    return c.rows["gt_logit"].to_numpy(dtype=float)


@register_method("L-WISE-band")
def _band(c: ClassCandidates) -> np.ndarray:
    low, high = c.band
    difficulty = c.rows["difficulty"].to_numpy(dtype=float)
    inside = (difficulty >= low) & (difficulty <= high)
    return np.where(inside, c.rows["gt_logit"].to_numpy(dtype=float), np.nan)


def scorer(method: str) -> Scorer:
    """The scoring function of `method` (a G-* set scores as S-Random over its images)."""
    if method in METHODS:
        return METHODS[method]
    if method.startswith("G-"):
        return METHODS["S-Random"]
    raise ValueError(
        f"unknown selection method {method!r}; registered: {sorted(METHODS)}, or a G-* set "
        "of debugging.generated"
    )


def source_of(method: str) -> str:
    """The pool `source` a method chooses from: its own images for a G-* set, else the pool."""
    return method if method.startswith("G-") else "pool"


def anchors(
    scored: pd.DataFrame, embeddings: np.ndarray, fallback: str
) -> dict[int, tuple[np.ndarray, str]]:
    """Per class of `scored` (the slice split, with `correct`): S-Similarity's anchor, the mean
    embedding of its misclassified images ("errors"), or with fallback "class_mean" of all its
    images ("class_mean") when it has none; with fallback "skip" such a class has no anchor."""
    out = {}
    for class_num, group in scored.groupby("class_num", sort=True):
        wrong = group.index[~group["correct"].astype(bool)]
        if len(wrong):
            out[int(class_num)] = (embeddings[wrong].mean(0), "errors")
        elif fallback == "class_mean":
            out[int(class_num)] = (embeddings[group.index].mean(0), "class_mean")
    return out


def select(
    method: str,
    pool: pd.DataFrame,
    embeddings: np.ndarray,
    *,
    budget: int,
    seed: int,
    band: tuple[float, float] = (0.0, 1.0),
    class_anchors: dict[int, tuple[np.ndarray, str]] | None = None,
) -> pd.DataFrame:
    """The debug set of `method`: up to `budget` images per class of the pool (row for row with
    `embeddings`), with `selection_rank` (1 = taken first), `selection_score` and `anchor`."""
    score_fn = scorer(method)
    source = source_of(method)
    candidates = pool["source"] == source
    if not candidates.any():
        raise ValueError(f"method {method}: no candidate images with source {source!r}")
    picked = []
    for class_num in sorted(pool.loc[candidates, "class_num"].unique()):
        mask = (candidates & (pool["class_num"] == class_num)).to_numpy()
        rows = pool[mask]
        anchor, kind = (class_anchors or {}).get(int(class_num), (None, ""))
        group = ClassCandidates(
            class_num=int(class_num), rows=rows, embeddings=embeddings[mask], anchor=anchor,
            band=tuple(band), rng=np.random.default_rng([seed, int(class_num)]),
        )  # fmt: skip
        scores = np.asarray(score_fn(group), dtype=float)
        if scores.shape != (len(rows),):
            raise ValueError(f"method {method}: {scores.shape} scores for {len(rows)} images")
        order = [i for i in np.argsort(scores, kind="stable") if not np.isnan(scores[i])]
        take = order[:budget]
        if len(take) < budget and method != "none":
            log.warning(
                "%s: class %s has %d eligible images, fewer than the budget %d",
                method, rows["class"].iloc[0], len(order), budget,
            )  # fmt: skip
        chosen = rows.iloc[take].copy()
        chosen["selection_rank"] = np.arange(1, len(take) + 1)
        chosen["selection_score"] = scores[take]
        chosen["anchor"] = kind if method == "S-Similarity" else ""
        picked.append(chosen)
    out = pd.concat(picked) if picked else pool.iloc[:0]
    return out.assign(method=method)
