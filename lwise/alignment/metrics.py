"""Model-human alignment and difficulty-prediction metrics (pure functions on arrays/tables).

Sources of the definitions:
- difficulty prediction: see `lwise.alignment.auc`;
- accuracy difference, observed and error consistency: Geirhos et al. 2020/2021,
  `bethgelab/model-vs-human` `plotting/analyses.py`;
- 11-d abstention-aware output and Hellinger distance: VisAlign (Lee et al. 2023)
  `evaluate_visual_alignment.py`;
- reliability score: Effective Reliability (Whitehead et al. ECCV 2022,
  `facebookresearch/reliable_vqa`) as adapted to abstention by VisAlign.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from lwise.alignment._checks import _binary, _distributions, _same_length
from lwise.humans.trials import ABSTAIN

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
