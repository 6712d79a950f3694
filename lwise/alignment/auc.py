"""Difficulty prediction: how well a per-image score (the guide model's ground-truth logit)
predicts human correctness, as L-WISE `notebooks/make_figs.ipynb` measures it (per-trial
logistic regression of correctness on the logit, 3-SD outlier removal, stratified k-fold CV
AUC, bootstrap 95 % CI)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from lwise.alignment._checks import _binary, _finite, _same_length

# Bootstrap replicates are drawn in chunks of about this many trial weights, bounding memory.
_BOOT_CHUNK = 2_000_000


# --- AUC ------------------------------------------------------------------------------------------


def _weighted_auc(positive: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties count 1/2) for each row of per-trial `weights` (b, n).

    Integer weights are bootstrap counts, so one sort serves every replicate.
    """
    order = np.argsort(score, kind="stable")
    s, pos, w = score[order], positive[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_w = np.add.reduceat(w * pos, starts, axis=1)
    neg_w = np.add.reduceat(w * ~pos, starts, axis=1)
    below = np.cumsum(neg_w, axis=1) - neg_w
    pairs = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos_w * (below + 0.5 * neg_w)).sum(axis=1) / pairs


def roc_auc(positive, score) -> float:
    """ROC AUC of `score` for the binary labels `positive` (0.5 = chance, < 0.5 = reversed)."""
    y, s = _binary(positive, "positive"), _finite(score, "score")
    _same_length(positive=y, score=s)
    if y.all() or not y.any():
        raise ValueError("AUC needs both positive and negative labels")
    return float(_weighted_auc(y, s, np.ones((1, len(y))))[0])


def _bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Bootstrap resamples of n trials as count matrices (replicates x trials), in chunks."""
    chunk = max(1, _BOOT_CHUNK // n)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n)


def _outlier_mask(columns: Sequence[np.ndarray], sd: float | None) -> np.ndarray:
    """True for trials within `sd` standard deviations (population SD) on every column."""
    keep = np.ones(len(columns[0]), dtype=bool)
    if sd is None:
        return keep
    if sd <= 0:
        raise ValueError(f"outliers_sd must be positive or None, got {sd}")
    for x in columns:
        spread = x.std()
        if spread > 0:
            keep &= np.abs(x - x.mean()) <= sd * spread
    return keep


def _prepare(
    correct, logits: dict[str, object], outliers_sd: float | None, folds: int, n_boot: int
):
    """Checked arrays with outliers removed, and the number removed."""
    if folds < 2 or n_boot < 1:
        raise ValueError(f"need folds >= 2 and n_boot >= 1, got folds={folds}, n_boot={n_boot}")
    y = _binary(correct, "correct")
    xs = {name: _finite(x, name) for name, x in logits.items()}
    _same_length(correct=y, **xs)
    keep = _outlier_mask(list(xs.values()), outliers_sd)
    y = y[keep]
    xs = {name: x[keep] for name, x in xs.items()}
    minority = int(min(y.sum(), (~y).sum()))
    if minority < folds:
        raise ValueError(
            f"{folds}-fold stratified CV needs at least {folds} correct and {folds} incorrect "
            f"trials; got {int(y.sum())} correct and {int((~y).sum())} incorrect "
            f"(after removing {int((~keep).sum())} outlier(s))"
        )
    return y, xs, int((~keep).sum())


def _standardised(x: np.ndarray) -> np.ndarray:
    spread = x.std()
    return ((x - x.mean()) / (spread if spread > 0 else 1.0))[:, None]


def _cv_folds(y: np.ndarray, x: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    """(held-out trial indices, logistic-regression decision values on them) for each fold."""
    feature = _standardised(x)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = []
    for train, test in splitter.split(feature, y):
        model = LogisticRegression().fit(feature[train], y[train])
        out.append((test, model.decision_function(feature[test])))
    return out


def _cv_auc(y: np.ndarray, cv: list[tuple[np.ndarray, ...]], weights: np.ndarray) -> np.ndarray:
    """Mean over folds of the held-out AUC, for each row of trial weights (b, n).

    Per-fold AUCs, as sklearn `cross_val_score(scoring="roc_auc")` reports them: pooling
    held-out scores across folds would mix the folds' different fitted intercepts.
    """
    per_fold = np.stack([_weighted_auc(y[test], score, weights[:, test]) for test, score in cv])
    return np.nanmean(per_fold, axis=0)


def _percentile_ci(values: np.ndarray) -> tuple[float, float]:
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float(low), float(high)


def difficulty_auc(
    correct,
    logit,
    *,
    folds: int,
    n_boot: int,
    seed: int,
    outliers_sd: float | None,
) -> dict[str, float]:
    """How well a per-trial model score (e.g. `robust_gt_logit`) predicts human correctness.

    As in L-WISE `make_figs.ipynb`: trials whose logit lies beyond `outliers_sd` SDs are dropped,
    then correctness is regressed on the (standardised) logit with a logistic regression.

    Returns:
      auc: in-sample AUC of the fitted regression. The regression picks the sign, so a score that
        predicts *errors* also gets a high AUC; `coef` < 0 and `raw_auc` < 0.5 reveal that.
      cv_auc: mean held-out AUC over the folds of a `folds`-fold stratified CV (shuffled with
        `seed`).
      cv_auc_ci_low/high: percentile 95 % CI of cv_auc over `n_boot` bootstrap resamples of the
        trials, rescoring the held-out predictions (the CV is not refit per replicate, which
        keeps it fast).
      raw_auc: AUC of the logit itself, direction kept.
      coef: logistic slope per SD of the logit; n_trials, n_outliers.
    """
    y, xs, n_out = _prepare(correct, {"logit": logit}, outliers_sd, folds, n_boot)
    x = xs["logit"]
    feature = _standardised(x)
    model = LogisticRegression().fit(feature, y)
    ones = np.ones((1, len(y)))
    cv = _cv_folds(y, x, folds, seed)
    rng = np.random.default_rng(seed)
    boot = np.concatenate([_cv_auc(y, cv, w) for w in _bootstrap_weights(len(y), n_boot, rng)])
    low, high = _percentile_ci(boot)
    return {
        "n_trials": len(y),
        "n_outliers": n_out,
        "coef": float(model.coef_[0, 0]),
        "auc": float(_weighted_auc(y, model.decision_function(feature), ones)[0]),
        "cv_auc": float(_cv_auc(y, cv, ones)[0]),
        "cv_auc_ci_low": low,
        "cv_auc_ci_high": high,
        "raw_auc": float(_weighted_auc(y, x, ones)[0]),
    }


def compare_auc(
    correct,
    logit_a,
    logit_b,
    *,
    folds: int,
    n_boot: int,
    seed: int,
    outliers_sd: float | None,
) -> dict[str, float]:
    """CV AUC of score A minus CV AUC of score B on the same trials, with a paired bootstrap CI.

    For L-WISE's robust-vs-vanilla comparison pass `robust_gt_logit` as A and `vanilla_gt_logit`
    as B. A trial that is an outlier on either score is dropped from both, so the two AUCs are
    computed on identical trials and folds; each bootstrap replicate resamples trials once and
    rescores both scores' held-out predictions on that resample.
    """
    y, xs, n_out = _prepare(
        correct, {"logit_a": logit_a, "logit_b": logit_b}, outliers_sd, folds, n_boot
    )
    # Same seed, same labels: both scores get the same folds.
    cv_a = _cv_folds(y, xs["logit_a"], folds, seed)
    cv_b = _cv_folds(y, xs["logit_b"], folds, seed)
    ones = np.ones((1, len(y)))
    auc_a, auc_b = float(_cv_auc(y, cv_a, ones)[0]), float(_cv_auc(y, cv_b, ones)[0])
    rng = np.random.default_rng(seed)
    diffs = np.concatenate(
        [_cv_auc(y, cv_a, w) - _cv_auc(y, cv_b, w) for w in _bootstrap_weights(len(y), n_boot, rng)]
    )
    low, high = _percentile_ci(diffs)
    return {
        "n_trials": len(y),
        "n_outliers": n_out,
        "cv_auc_a": auc_a,
        "cv_auc_b": auc_b,
        "difference": auc_a - auc_b,
        "ci_low": low,
        "ci_high": high,
    }


def spearman_accuracy(per_image_accuracy, logit) -> tuple[float, float]:
    """Spearman rank correlation (rho, two-sided p) between per-image accuracy and a model score.

    Arrays are paired by position: compute per-image accuracy and the score in the same image
    order (e.g. both indexed by image and aligned with `reindex`).
    """
    acc = _finite(per_image_accuracy, "per_image_accuracy")
    x = _finite(logit, "logit")
    _same_length(per_image_accuracy=acc, logit=x)
    if len(acc) < 3:
        raise ValueError(f"Spearman correlation needs at least 3 images, got {len(acc)}")
    result = stats.spearmanr(acc, x)
    return float(result.statistic), float(result.pvalue)
