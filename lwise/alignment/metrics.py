"""Model-human alignment and difficulty-prediction metrics (pure functions on arrays/tables).

Sources of the definitions:
- difficulty prediction: L-WISE `notebooks/make_figs.ipynb` (per-trial logistic regression of
  correctness on the ground-truth logit, 3-SD outlier removal, stratified k-fold CV AUC,
  bootstrap 95 % CI);
- accuracy difference, observed and error consistency: Geirhos et al. 2020/2021,
  `bethgelab/model-vs-human` `plotting/analyses.py`;
- 11-d abstention-aware output and Hellinger distance: VisAlign (Lee et al. 2023)
  `evaluate_visual_alignment.py`;
- reliability score: Effective Reliability (Whitehead et al. ECCV 2022,
  `facebookresearch/reliable_vqa`) as adapted to abstention by VisAlign.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from lwise.humans.trials import ABSTAIN

# Bootstrap replicates are drawn in chunks of about this many trial weights, bounding memory.
_BOOT_CHUNK = 2_000_000


# --- input checks -------------------------------------------------------------------------------


def _binary(values, name: str) -> np.ndarray:
    """A 1-D bool array from bools or 0/1 numbers."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    try:
        num = arr.astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected 0/1 or booleans, got dtype {arr.dtype}") from err
    bad = ~np.isin(num, (0.0, 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: expected 0/1 or booleans; element {i} is {arr[i : i + 1].tolist()[0]!r}"
        )
    return num == 1.0


def _finite(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: expected finite numbers; element {i} is {arr[i]}")
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays differ in length: {lengths}")


def _distributions(values, name: str, atol: float = 1e-6) -> np.ndarray:
    """A 2-D array of probability rows (non-negative, each summing to 1 within `atol`)."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected rows of probabilities, got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1) | (arr < 0).any(axis=1)
    bad |= ~np.isclose(arr.sum(axis=1), 1.0, rtol=0, atol=atol)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: row {i} is not a probability distribution "
            f"(non-negative, summing to 1): {arr[i].tolist()}"
        )
    return arr


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


# --- accuracy with confidence intervals ---------------------------------------------------------


def accuracy_ci(correct, method: str = "wilson", confidence: float = 0.95) -> dict[str, float]:
    """Accuracy of a group of trials with a binomial confidence interval.

    `method`: "wilson" (Wilson score interval) or "exact" (Clopper-Pearson).
    """
    y = _binary(correct, "correct")
    n, k = len(y), int(y.sum())
    if n == 0:
        raise ValueError("accuracy_ci: no trials")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1 - confidence
    p = k / n
    if method == "wilson":
        z = stats.norm.ppf(1 - alpha / 2)
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
        low, high = centre - half, centre + half
    elif method == "exact":
        low = stats.beta.ppf(alpha / 2, k, n - k + 1) if k > 0 else 0.0
        high = stats.beta.ppf(1 - alpha / 2, k + 1, n - k) if k < n else 1.0
    else:
        raise ValueError(f"accuracy_ci: method {method!r}; expected 'wilson' or 'exact'")
    return {"n": n, "n_correct": k, "accuracy": p, "ci_low": float(low), "ci_high": float(high)}


def condition_accuracy(
    trials: pd.DataFrame,
    by: str | Sequence[str] = "condition",
    *,
    method: str = "wilson",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """`accuracy_ci` per group of a trials table (columns `by` and `correct`)."""
    keys = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*keys, "correct"] if c not in trials.columns]
    if missing:
        raise ValueError(f"trials table lacks column(s) {missing}; found {list(trials.columns)}")
    # Grouping by a list always yields tuple keys.
    rows = [
        dict(zip(keys, group, strict=True))
        | accuracy_ci(part["correct"].to_numpy(), method, confidence)
        for group, part in trials.groupby(keys, sort=True)
    ]
    return pd.DataFrame(rows)


# --- model vs human (Geirhos et al.) ------------------------------------------------------------


def accuracy_difference(model_correct, human_correct) -> float:
    """(accuracy_model - accuracy_human)^2; lower is better (model-vs-human `norm=np.square`)."""
    a, b = _binary(model_correct, "model_correct"), _binary(human_correct, "human_correct")
    if not len(a) or not len(b):
        raise ValueError("accuracy_difference: empty input")
    return float((a.mean() - b.mean()) ** 2)


def observed_consistency(correct_a, correct_b) -> float:
    """Fraction of trials (paired by image) where both observers are right or both are wrong."""
    a, b = _binary(correct_a, "correct_a"), _binary(correct_b, "correct_b")
    _same_length(correct_a=a, correct_b=b)
    if not len(a):
        raise ValueError("observed_consistency: empty input")
    return float((a == b).mean())


def error_consistency(correct_a, correct_b) -> float:
    """Cohen's kappa of trial-by-trial correctness (Geirhos, Meding & Wichmann 2020).

    kappa = (c_obs - c_exp) / (1 - c_exp), c_exp = p1 p2 + (1 - p1)(1 - p2) with p the two
    accuracies. c_exp = 1 only when both accuracies are 0 or both are 1, which forces c_obs = 1;
    model-vs-human defines kappa = 1 whenever c_obs = 1, and so does this function.
    """
    a, b = _binary(correct_a, "correct_a"), _binary(correct_b, "correct_b")
    c_obs = observed_consistency(a, b)
    if c_obs == 1.0:
        return 1.0
    p1, p2 = a.mean(), b.mean()
    c_exp = p1 * p2 + (1 - p1) * (1 - p2)
    return float((c_obs - c_exp) / (1 - c_exp))


def model_vs_human(
    human: pd.DataFrame,
    model: pd.DataFrame,
    *,
    by: str | Sequence[str] = "condition",
    on: str = "image",
    subject: str = "participant",
) -> pd.DataFrame:
    """Accuracy difference, observed and error consistency per (subject, condition).

    `human`: trials with columns `subject`, `on`, `by` and `correct`. `model`: one row per
    (`on`, `by`) with the model's `correct`. Each human trial is paired with the model's answer
    on the same image and condition. model-vs-human then averages each metric over conditions,
    then over subjects: `table.groupby(subject)[metrics].mean().mean()`.
    """
    keys = [on, *([by] if isinstance(by, str) else by)]
    for name, table, cols in (
        ("human", human, [subject, *keys, "correct"]),
        ("model", model, [*keys, "correct"]),
    ):
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise ValueError(f"{name} table lacks column(s) {missing}; found {list(table.columns)}")
    dup = model.duplicated(keys)
    if dup.any():
        raise ValueError(
            f"model table has several rows for {model.loc[dup, keys].iloc[0].tolist()}"
        )
    merged = human.merge(
        model[[*keys, "correct"]],
        on=keys,
        how="left",
        suffixes=("_human", "_model"),
        validate="many_to_one",
        indicator=True,
    )
    unmatched = merged["_merge"] != "both"
    if unmatched.any():
        raise ValueError(
            f"{int(unmatched.sum())} human trial(s) have no model answer, e.g. "
            f"{merged.loc[unmatched, keys].iloc[0].to_dict()}"
        )
    rows = []
    for group, part in merged.groupby([subject, *keys[1:]], sort=True):
        h, m = part["correct_human"].to_numpy(), part["correct_model"].to_numpy()
        rows.append(
            {
                **dict(zip([subject, *keys[1:]], group, strict=True)),
                "n": len(part),
                "human_accuracy": float(_binary(h, "correct_human").mean()),
                "model_accuracy": float(_binary(m, "correct_model").mean()),
                "accuracy_difference": accuracy_difference(m, h),
                "observed_consistency": observed_consistency(m, h),
                "error_consistency": error_consistency(m, h),
            }
        )
    return pd.DataFrame(rows)


# --- VisAlign ----------------------------------------------------------------------------------


def max_softmax_abstention(probs) -> np.ndarray:
    """Abstention probability a = 1 - max softmax (MSP).

    VisAlign's `evaluate_visual_alignment.py` (Lee et al., NeurIPS 2023) takes a = 1 - the
    min-max normalised softmax entropy for MSP-type methods, which inverts the direction
    (confident images abstain); 1 - MSP keeps it. It lies in [0, 1 - 1/K], so it never abstains
    fully.
    """
    return 1.0 - _distributions(probs, "probs").max(axis=1)


def visalign_output(probs, abstain) -> np.ndarray:
    """The (K+1)-d VisAlign output [softmax * (1 - a), a]; the last column is abstention."""
    p = _distributions(probs, "probs")
    a = np.atleast_1d(np.asarray(abstain, dtype=float))
    if a.shape != (len(p),):
        raise ValueError(f"abstain: expected {len(p)} values, got shape {a.shape}")
    bad = ~((a >= 0) & (a <= 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"abstain: expected values in [0, 1]; element {i} is {a[i]}")
    return np.column_stack([p * (1 - a)[:, None], a])


def visalign_decision(outputs) -> np.ndarray:
    """Argmax decision per row of a VisAlign output; index K (the last) means abstain.

    On a tie the class wins over abstention (first index).
    """
    return _distributions(outputs, "outputs").argmax(axis=1)


def hellinger(p, q) -> np.ndarray:
    """Hellinger distance per row, ||sqrt(p) - sqrt(q)||_2 / sqrt(2), in [0, 1] (VisAlign)."""
    p, q = _distributions(p, "p"), _distributions(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"hellinger: shapes differ, {p.shape} vs {q.shape}")
    return np.linalg.norm(np.sqrt(p) - np.sqrt(q), axis=1) / np.sqrt(2)


def reliability_score(pred, target, cost, *, abstain=ABSTAIN) -> dict[float, float]:
    """Mean effective reliability per sample for each cost c (Whitehead et al., VisAlign).

    `pred` and `target` are labels; the value `abstain` marks abstention (use
    `abstain=K` with `visalign_decision`). Per sample: +1 for the right class, -c for a wrong
    class, 0 for abstaining; where the target itself is abstention (VisAlign Must-Abstain), +1
    for abstaining and -c for any class. Multiply by n for the summed form.
    """
    pred, target = np.asarray(pred, dtype=object), np.asarray(target, dtype=object)
    if pred.ndim != 1 or pred.shape != target.shape or not len(pred):
        raise ValueError(
            f"pred/target: expected two equal-length 1-D arrays, got {pred.shape}"
            f" and {target.shape}"
        )
    costs = np.atleast_1d(np.asarray(cost, dtype=float))
    if (costs < 0).any() or not np.isfinite(costs).all():
        raise ValueError(f"cost: expected finite non-negative values, got {costs.tolist()}")
    right = pred == target
    abstained = (pred == abstain) & (target != abstain)
    wrong = ~right & ~abstained
    return {float(c): float((right.sum() - c * wrong.sum()) / len(pred)) for c in costs}
