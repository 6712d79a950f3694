"""Human-AI team trials: a participant sees a query, the AI's prediction and an explanation (or
none) and accepts or rejects the prediction (Nguyen, Taesiri & Nguyen, NeurIPS 2022, human
study; anguyen8/visual-correspondence-XAI `Human-Study/`).

Trial tables, one row per trial, in either layout:

- ours: `participant, image, method, ai_correct` and `accept` or `human_correct` (or both, which
  must agree), optionally `ai_prediction`, `ground_truth`, `confidence`;
- the published study's summary CSV (`Human-Study/data/*-Human-Study-Summary.csv`): `UID`,
  `Query`, `Method`, `Correctness` (the participant's decision was right),
  `ClassifierCorrectness` (the AI was right), `GroundTruth`, `ConfidenceScore`, the four
  `*-Prediction` columns, …; a participant accepted exactly when `Correctness` equals
  `ClassifierCorrectness`.

Per method (`team_metrics`): human-alone accuracy (the accept/reject decisions that were right,
the study's "user accuracy"), accept rate when the AI is right and when it is wrong, the AI's
accuracy on the trials, team accuracy (the AI decides alone when its confidence exceeds
`team_threshold`, the participant otherwise; `Human-Study/src/Threshold-Analysis.ipynb` sweeps
that threshold), each with a Wilson 95 % interval, and the differences from the no-explanation
method with a Newcombe interval and Fisher's exact test. Intervals treat trials as independent;
trials of one participant are not, so they are narrower than a participant-level analysis.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
from scipy import stats

from lwise.core.atomic import atomic_path, write_csv

log = logging.getLogger(__name__)

STUDY_COLUMNS = ("UID", "Query", "Method", "Correctness", "ClassifierCorrectness")
REQUIRED = ("participant", "image", "method", "ai_correct")
# Which prediction column the study showed with each method (ResNet for no explanation).
STUDY_PREDICTIONS = {"no-xai": "ResNet", "knn": "KNN", "emd": "EMD", "chm": "CHM"}
BASELINE = "No-XAI"  # the study's no-explanation condition
TRUE = {"1", "1.0", "true", "yes", "accept", "accepted", "t", "y"}
FALSE = {"0", "0.0", "false", "no", "reject", "rejected", "f", "n"}


class TrialsError(ValueError):
    """A trial table that cannot be read; the message names the file, rows and field."""


def proportion_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (NaN, NaN when n is 0)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def _lines(mask: pd.Series) -> str:
    rows = [str(i + 2) for i in np.flatnonzero(mask.to_numpy())[:5]]  # header is line 1
    more = int(mask.sum()) - len(rows)
    return ", ".join(rows) + (f" (+{more} more)" if more > 0 else "")


def _boolean(df: pd.DataFrame, column: str, path) -> pd.Series:
    text = df[column].astype(str).str.strip().str.lower()
    bad = ~text.isin(TRUE | FALSE)
    if bad.any():
        values = sorted(set(df.loc[bad, column].astype(str)))[:5]
        raise TrialsError(
            f"{path}: field {column!r} must be 0/1 (or true/false, accept/reject); got "
            f"{values} at line(s) {_lines(bad)}"
        )
    return text.isin(TRUE)


def from_study_summary(raw: pd.DataFrame, path="<table>") -> pd.DataFrame:
    """Our layout from the published study's summary CSV layout."""
    missing = [c for c in STUDY_COLUMNS if c not in raw.columns]
    if missing:
        raise TrialsError(f"{path}: study summary layout lacks column(s) {missing}")
    out = pd.DataFrame(
        {
            "participant": raw["UID"].astype(str),
            "image": raw["Query"].astype(str),
            "method": raw["Method"].astype(str),
            "ai_correct": _boolean(raw, "ClassifierCorrectness", path),
            "human_correct": _boolean(raw, "Correctness", path),
        }
    )
    out["accept"] = out["human_correct"] == out["ai_correct"]
    if "GroundTruth" in raw.columns:
        out["ground_truth"] = raw["GroundTruth"].astype(str)
    if "ConfidenceScore" in raw.columns:
        out["confidence"] = pd.to_numeric(raw["ConfidenceScore"], errors="coerce")
    shown = []
    for i, method in enumerate(out["method"].str.lower()):
        key = next((v for k, v in STUDY_PREDICTIONS.items() if method.startswith(k)), None)
        column = f"{key}-Prediction" if key else None
        shown.append(raw[column].iloc[i] if column in raw.columns else np.nan)
    out["ai_prediction"] = shown
    return out


def normalise(raw: pd.DataFrame, path="<table>") -> pd.DataFrame:
    """Check and convert a table in our layout."""
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing or not {"accept", "human_correct"} & set(raw.columns):
        need = missing + ([] if {"accept", "human_correct"} & set(raw.columns) else ["accept"])
        raise TrialsError(
            f"{path}: missing column(s) {need}; expected {list(REQUIRED)} and accept or "
            f"human_correct (or the study layout {list(STUDY_COLUMNS)}); found {list(raw.columns)}"
        )
    out = raw.copy()
    for col in ("participant", "image", "method"):
        empty = out[col].isna() | (out[col].astype(str).str.strip() == "")
        if empty.any():
            raise TrialsError(f"{path}: empty field {col!r} at line(s) {_lines(empty)}")
        out[col] = out[col].astype(str)
    out["ai_correct"] = _boolean(out, "ai_correct", path)
    if "accept" in out.columns:
        out["accept"] = _boolean(out, "accept", path)
    if "human_correct" in out.columns:
        out["human_correct"] = _boolean(out, "human_correct", path)
    if "accept" not in out.columns:
        out["accept"] = out["human_correct"] == out["ai_correct"]
    implied = out["accept"] == out["ai_correct"]
    if "human_correct" in out.columns:
        bad = out["human_correct"] != implied
        if bad.any():
            raise TrialsError(
                f"{path}: field 'human_correct' contradicts accept and ai_correct (a decision is "
                f"right when it accepts a right or rejects a wrong prediction) at line(s) "
                f"{_lines(bad)}"
            )
    out["human_correct"] = implied
    if "confidence" in out.columns:
        conf = pd.to_numeric(out["confidence"], errors="coerce")
        bad = out["confidence"].notna() & (conf.isna() | (conf < 0) | (conf > 1))
        if bad.any():
            raise TrialsError(f"{path}: field 'confidence' not in [0, 1] at line(s) {_lines(bad)}")
        out["confidence"] = conf
    return out


def read_trials(path: str | os.PathLike, layout: str = "auto") -> pd.DataFrame:
    """A trial table in our layout from `path` (`layout`: auto, lwise or study_summary)."""
    if layout not in ("auto", "lwise", "study_summary"):
        raise ValueError(f"trials layout {layout!r}: expected auto, lwise or study_summary")
    try:
        raw = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise TrialsError(f"{path}: cannot read the trial table ({err})") from err
    if raw.empty:
        raise TrialsError(f"{path}: no trials")
    study = layout == "study_summary" or (
        layout == "auto" and all(c in raw.columns for c in STUDY_COLUMNS)
    )
    return normalise(from_study_summary(raw, path) if study else raw, path)


def team_decisions(trials: pd.DataFrame, threshold: float | None) -> pd.Series:
    """Whether the team's decision was right: the AI accepts its own prediction when its
    confidence exceeds `threshold` (right iff it is right); below it, the participant's
    decision. NaN where the confidence is missing or `threshold` is None."""
    if threshold is None or "confidence" not in trials.columns:
        return pd.Series(np.nan, index=trials.index)
    conf = trials["confidence"]
    team = np.where(conf > threshold, trials["ai_correct"], trials["human_correct"])
    return pd.Series(np.where(conf.isna(), np.nan, team.astype(float)), index=trials.index)


def _rate(values: pd.Series) -> tuple[int, int]:
    values = values.dropna()
    return int(values.sum()), len(values)


def team_metrics(
    trials: pd.DataFrame, baseline: str = BASELINE, team_threshold: float | None = 0.5
) -> pd.DataFrame:
    """One row per method and metric: value, 95 % interval, counts; for methods other than
    `baseline` also the difference from it (human and team accuracy) with a Newcombe interval
    and Fisher's exact p."""
    trials = trials.assign(team_correct=team_decisions(trials, team_threshold))
    metrics = {
        "human_accuracy": lambda t: t["human_correct"],
        "accept_rate_ai_right": lambda t: t.loc[t["ai_correct"], "accept"],
        "accept_rate_ai_wrong": lambda t: t.loc[~t["ai_correct"], "accept"],
        "ai_accuracy": lambda t: t["ai_correct"],
        "team_accuracy": lambda t: t["team_correct"],
    }
    rows = []
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    for method, group in trials.groupby("method", sort=True):
        for name, select in metrics.items():
            k, n = _rate(select(group).astype(float))
            counts[method, name] = (k, n)
            low, high = proportion_interval(k, n)
            rows.append(
                {
                    "method": method,
                    "metric": name,
                    "value": k / n if n else np.nan,
                    "ci_low": low,
                    "ci_high": high,
                    "k": k,
                    "n": n,
                    "participants": group["participant"].nunique(),
                }
            )
    table = pd.DataFrame(rows)
    for col in ("diff_vs_baseline", "diff_low", "diff_high", "p_value"):
        table[col] = np.nan
    if baseline not in set(trials["method"]):
        log.warning("no trials of the no-explanation method %r: no comparison", baseline)
        return table
    for i, row in table.iterrows():
        if row["method"] == baseline or row["metric"] not in ("human_accuracy", "team_accuracy"):
            continue
        (k1, n1), (k0, n0) = counts[row["method"], row["metric"]], counts[baseline, row["metric"]]
        if not (n1 and n0):
            continue
        p1, p0 = k1 / n1, k0 / n0
        l1, h1 = proportion_interval(k1, n1)
        l0, h0 = proportion_interval(k0, n0)
        d = p1 - p0  # Newcombe (1998) method 10: from the two Wilson intervals
        table.loc[i, "diff_vs_baseline"] = d
        table.loc[i, "diff_low"] = d - np.sqrt((p1 - l1) ** 2 + (h0 - p0) ** 2)
        table.loc[i, "diff_high"] = d + np.sqrt((h1 - p1) ** 2 + (p0 - l0) ** 2)
        table.loc[i, "p_value"] = stats.fisher_exact([[k1, n1 - k1], [k0, n0 - k0]])[1]
    return table


def plot_metrics(table: pd.DataFrame, path: str | os.PathLike, title: str) -> None:
    """Bars per method and metric with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["human_accuracy", "team_accuracy", "accept_rate_ai_right", "accept_rate_ai_wrong"]
    methods = sorted(table["method"].unique())
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(methods), 3.6))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        sub = table[table["metric"] == name].set_index("method").reindex(methods)
        x = np.arange(len(methods)) + (j - (len(names) - 1) / 2) * width
        err = np.nan_to_num(
            np.vstack([sub["value"] - sub["ci_low"], sub["ci_high"] - sub["value"]]), nan=0.0
        )
        ax.bar(x, sub["value"].fillna(0), width, yerr=err, capsize=2, label=name)
    ax.set_xticks(np.arange(len(methods)), methods)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def report(
    trials_csv: str | os.PathLike,
    out_csv: str | os.PathLike,
    out_png: str | os.PathLike,
    *,
    layout: str = "auto",
    baseline: str = BASELINE,
    team_threshold: float | None = 0.5,
    synthetic: bool = False,
) -> pd.DataFrame:
    """Read a trial table, write the metrics table and figure."""
    table = team_metrics(read_trials(trials_csv, layout), baseline, team_threshold)
    table.insert(0, "data", "synthetic" if synthetic else "human")
    write_csv(table, out_csv)
    kind = "SYNTHETIC (simulated) participants" if synthetic else "human participants"
    plot_metrics(table, out_png, f"Human-AI team trials, {kind}")
    return table


# The study's names for the conditions our per-image predictions stand for.
SIMULATED_METHODS = {
    "No-XAI": "guide",
    "kNN": "knn",
    "EMD-Corr": "emd_corr",
    "CHM-Corr": "chm_corr",
}


def simulate_trials(
    predictions_csv: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    n_participants: int = 20,
    trials_per_participant: int = 30,
    seed: int = 0,
) -> pd.DataFrame:
    """Synthetic trials from the per-image predictions of `classify.evaluate`: participants are
    spread over the methods (between subjects, as the study) and each accepts a prediction with
    probability equal to the AI's confidence. These observers look at no image and no
    explanation, so differences between methods come only from the classifiers; the output is
    marked synthetic."""
    pred = pd.read_csv(predictions_csv)
    rng = np.random.default_rng(seed)
    rows = []
    methods = list(SIMULATED_METHODS)
    for p in range(n_participants):
        method = methods[p % len(methods)]
        key = SIMULATED_METHODS[method]
        shown = rng.choice(len(pred), min(trials_per_participant, len(pred)), replace=False)
        for i in shown:
            conf = float(pred[f"{key}_confidence"].iloc[i])
            rows.append(
                {
                    "participant": f"synthetic-{p:03d}",
                    "image": pred["im_path"].iloc[i],
                    "method": method,
                    "ai_prediction": int(pred[f"{key}_pred"].iloc[i]),
                    "ground_truth": int(pred["label"].iloc[i]),
                    "ai_correct": bool(pred[f"{key}_correct"].iloc[i]),
                    "accept": bool(rng.random() < conf),
                    "confidence": conf,
                }
            )
    out = pd.DataFrame(rows)
    out["human_correct"] = out["accept"] == out["ai_correct"]
    out["synthetic"] = True
    write_csv(out, out_csv)
    return out
