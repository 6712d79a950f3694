"""Stage 8 (experiments): the learning analysis of a study's responses.

Reads response CSVs in the trials format (`lwise.humans.trials`: participant, image,
condition, response, correct; the web page adds rt in milliseconds, trial, block, class, phase,
feedback, catch, set, t_onset_ms, t_response_ms) and writes, into one folder:

  test_accuracy.csv    per condition, test blocks only (catch trials excluded): trials, pooled
                       accuracy with its Wilson interval (scipy `binomtest(...).proportion_ci`),
                       the mean of participants' accuracies with a bootstrap interval over
                       participants, and the relative gain over Control,
                       mean(condition) / mean(control) - 1 (the L-WISE headline measure, reported
                       there as 33-72 %), with a bootstrap interval
  learning_curves.csv  accuracy per condition and block (training and test), Wilson intervals
  learning_curves.png  the same, plotted
  time.csv             per condition: time to finish the training blocks and the whole session
                       (from the page's timestamps), median and mean, relative to Control
  participants.csv     per participant: condition, test accuracy, training and total time,
                       catch-trial answer, calibration accuracy (recognition design)
  set_accuracy.csv     accuracy per stimulus set in the main block (recognition design) or in
                       training blocks (learning design), Wilson intervals
  alignment_trials.csv the responses as `evaluate_alignment` reads them: `condition` is the
                       stimulus set shown, the study condition moves to `group`; calibration
                       trials are left out

Responses simulated by `lwise.experiments.simulate` are marked `synthetic` in every table and
plot title.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from lwise.core.atomic import atomic_path  # noqa: E402
from lwise.core.config import Section  # noqa: E402
from lwise.experiments.conditions import CONDITIONS, CONTROL  # noqa: E402
from lwise.humans.trials import HumanDataError, validate_trials  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["AnalysisSettings", "read_responses", "analyse", "wilson", "relative_gain"]

NEEDED = ("block", "phase")
_FLAGS = ("feedback", "catch", "timed_out")


def read_responses(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Read and validate one or more response CSVs (a folder: every `*.csv` in it).

    Errors name the file, the column and the CSV lines (`lwise.humans.trials`).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.csv"))
            if not found:
                raise HumanDataError(f"{p}: no response CSV (*.csv) in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise HumanDataError(f"{p}: responses file not found")
    tables = []
    for f in files:
        raw = pd.read_csv(f, dtype=str, keep_default_na=False)
        missing = [c for c in NEEDED if c not in raw.columns]
        if missing:
            raise HumanDataError(
                f"{f}: missing column(s) {missing} (the study page writes them); "
                f"found {list(raw.columns)}"
            )
        df = validate_trials(raw, f)
        for col in _FLAGS:
            if col in df.columns:
                num = pd.to_numeric(df[col].replace("", "0"), errors="coerce")
                if num.isna().any() or not num.isin([0, 1]).all():
                    bad = df.index[num.isna() | ~num.isin([0, 1])][:5] + 2
                    raise HumanDataError(
                        f"{f}: column '{col}': expected 0/1 at line(s) {list(bad)}"
                    )
                df[col] = num.astype(int)
        for col in ("t_onset_ms", "t_response_ms", "eps", "source_block"):
            if col in df.columns:
                df[col] = pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
        if df["block"].isna().any():
            bad = df.index[df["block"].isna()][:5] + 2
            raise HumanDataError(f"{f}: column 'block': empty at line(s) {list(bad)}")
        df["source_file"] = str(f)
        tables.append(df)
    out = pd.concat(tables, ignore_index=True)
    if "catch" not in out.columns:
        out["catch"] = 0
    if "synthetic" not in out.columns:
        out["synthetic"] = False
    out["synthetic"] = out["synthetic"].fillna(False).astype(bool)
    clash = out.groupby("participant")["condition"].nunique()
    clash = clash[clash > 1]
    if len(clash):
        raise HumanDataError(
            f"participant(s) {list(clash.index[:5])} appear under several conditions"
        )
    return out


@dataclass(frozen=True)
class AnalysisSettings(Section):
    """The `experiments.analysis` config section (defaults in the schema)."""

    SECTION = "experiments.analysis"

    n_boot: int  # bootstrap resamples for the participant-level intervals
    seed: int
    confidence: float  # of every interval


def wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (NaN when n is 0)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _boot_means(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)


def relative_gain(
    treated: np.ndarray, control: np.ndarray, *, n_boot: int, seed: int, confidence: float
) -> tuple[float, float, float]:
    """mean(treated) / mean(control) - 1 over participants' accuracies, with a percentile
    bootstrap interval (participants resampled within each group)."""
    treated, control = np.asarray(treated, float), np.asarray(control, float)
    if len(treated) == 0 or len(control) == 0 or control.mean() == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    t, c = _boot_means(treated, rng, n_boot), _boot_means(control, rng, n_boot)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = t / c - 1
    boot = boot[np.isfinite(boot)]
    a = (1 - confidence) / 2
    return float(treated.mean() / control.mean() - 1), *map(float, np.quantile(boot, [a, 1 - a]))


def _order(conditions: Iterable[str]) -> list[str]:
    known = [c for c in CONDITIONS if c in set(conditions)]
    return known + sorted(set(conditions) - set(known))


def _label(condition: str) -> str:
    return CONDITIONS[condition].label if condition in CONDITIONS else condition


def _accuracy_rows(df: pd.DataFrame, by: list[str], confidence: float) -> pd.DataFrame:
    rows = []
    for key, g in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        k, n = int(g["correct"].sum()), len(g)
        lo, hi = wilson(k, n, confidence)
        rows.append({**dict(zip(by, key, strict=True)), "n_trials": n, "correct": k,
                     "accuracy": k / n, "ci_low": lo, "ci_high": hi})  # fmt: skip
    return pd.DataFrame(rows, columns=[*by, "n_trials", "correct", "accuracy", "ci_low", "ci_high"])


def _participants(df: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    out = df.groupby("participant", sort=True).agg(condition=("condition", "first"))
    out["test_trials"] = test.groupby("participant").size()
    out["test_accuracy"] = test.groupby("participant")["correct"].mean()
    if {"t_onset_ms", "t_response_ms"} <= set(df.columns):
        train = df[df["phase"] == "train"]
        first = df.groupby("participant")["t_onset_ms"].min()
        out["training_s"] = (train.groupby("participant")["t_response_ms"].max() - first) / 1000
        out["total_s"] = (df.groupby("participant")["t_response_ms"].max() - first) / 1000
    else:
        out["training_s"] = out["total_s"] = np.nan
    catch = df[df["catch"] == 1]
    out["catch_correct"] = catch.groupby("participant")["correct"].mean()
    calib = df[df["phase"] == "calibration"]
    out["calibration_accuracy"] = calib.groupby("participant")["correct"].mean()
    return out.reset_index()


def _test_table(per: pd.DataFrame, test: pd.DataFrame, n_boot, seed, confidence) -> pd.DataFrame:
    rows = []
    conds = _order(per["condition"])
    control = per.loc[per["condition"] == CONTROL, "test_accuracy"].dropna().to_numpy()
    rng = np.random.default_rng(seed)
    a = (1 - confidence) / 2
    for i, cond in enumerate(conds):
        t = test[test["condition"] == cond]
        accs = per.loc[per["condition"] == cond, "test_accuracy"].dropna().to_numpy()
        k, n = int(t["correct"].sum()), len(t)
        lo, hi = wilson(k, n, confidence)
        if len(accs):
            boot = _boot_means(accs, rng, n_boot)
            m_lo, m_hi = np.quantile(boot, [a, 1 - a])
        else:
            m_lo = m_hi = np.nan
        gain = (
            relative_gain(accs, control, n_boot=n_boot, seed=seed + i, confidence=confidence)
            if cond != CONTROL
            else (0.0, np.nan, np.nan)
        )
        rows.append({
            "condition": cond, "label": _label(cond), "n_participants": len(accs),
            "n_trials": n, "correct": k, "accuracy": k / n if n else np.nan,
            "ci_low": lo, "ci_high": hi,
            "participant_mean": accs.mean() if len(accs) else np.nan,
            "participant_ci_low": m_lo, "participant_ci_high": m_hi,
            "relative_gain_vs_control": gain[0], "gain_ci_low": gain[1], "gain_ci_high": gain[2],
        })  # fmt: skip
    return pd.DataFrame(rows)


def _time_table(per: pd.DataFrame) -> pd.DataFrame:
    rows = []
    ctrl = per.loc[per["condition"] == CONTROL, "training_s"].median()
    for cond in _order(per["condition"]):
        g = per[per["condition"] == cond]
        med = g["training_s"].median()
        rows.append({
            "condition": cond, "label": _label(cond), "n_participants": len(g),
            "training_s_median": med, "training_s_mean": g["training_s"].mean(),
            "total_s_median": g["total_s"].median(), "total_s_mean": g["total_s"].mean(),
            "training_time_vs_control": med / ctrl - 1 if ctrl and np.isfinite(ctrl) else np.nan,
        })  # fmt: skip
    return pd.DataFrame(rows)


def _plot(curves: pd.DataFrame, test_table: pd.DataFrame, path: Path, title: str) -> None:
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for cond in _order(curves["condition"]):
        c = curves[curves["condition"] == cond].sort_values("block")
        err = np.vstack([c["accuracy"] - c["ci_low"], c["ci_high"] - c["accuracy"]])
        ax.errorbar(c["block"], c["accuracy"], yerr=err, marker="o", capsize=3, label=_label(cond))
    train_blocks = curves.loc[curves["phase"] == "train", "block"]
    if len(train_blocks):
        ax.axvline(train_blocks.max() + 0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("block (dashed line: end of training)")
    ax.set_ylabel("accuracy (Wilson 95% CI)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("learning curves")
    if len(test_table):
        x = np.arange(len(test_table))
        err = np.vstack([
            test_table["accuracy"] - test_table["ci_low"],
            test_table["ci_high"] - test_table["accuracy"],
        ])  # fmt: skip
        bx.bar(x, test_table["accuracy"], yerr=err, capsize=3, color="#5a8bbf")
        bx.set_xticks(x, test_table["label"], rotation=30, ha="right", fontsize=8)
        bx.set_ylim(0, 1.02)
        bx.set_title("test accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyse(
    responses: pd.DataFrame | str | os.PathLike | Iterable,
    out_dir: str | os.PathLike,
    settings: AnalysisSettings | Mapping | None = None,
    *,
    title: str = "",
) -> pd.DataFrame:
    """Write the analysis folder (see the module docstring); return `test_accuracy`.

    `settings`: an `AnalysisSettings` or its config section (missing keys: the schema's
    defaults)."""
    if not isinstance(settings, AnalysisSettings):
        settings = AnalysisSettings.from_config(settings)
    n_boot, seed, confidence = settings.n_boot, settings.seed, settings.confidence
    df = responses if isinstance(responses, pd.DataFrame) else read_responses(responses)
    if "catch" not in df.columns:
        df = df.assign(catch=0)
    if "synthetic" not in df.columns:
        df = df.assign(synthetic=False)
    synthetic = bool(df["synthetic"].any())
    test = df[(df["phase"] == "test") & (df["catch"] != 1)]
    per = _participants(df, test)
    test_table = _test_table(per, test, n_boot, seed, confidence) if len(test) else pd.DataFrame()
    scored = df[df["catch"] != 1]
    curves = _accuracy_rows(scored[scored["phase"].isin(["train", "test"])],
                            ["condition", "block", "phase"], confidence)  # fmt: skip
    if "set" in df.columns:
        shown = scored[scored["phase"].isin(["main", "train"])]
        set_table = _accuracy_rows(shown, ["condition", "phase", "set"], confidence)
    else:
        set_table = pd.DataFrame()
    time_table = _time_table(per)
    align = df[df["phase"] != "calibration"].copy()
    if "set" in align.columns:
        align = align.rename(columns={"condition": "group"}).rename(columns={"set": "condition"})
    for table in (test_table, curves, set_table, time_table, per):
        table["synthetic"] = synthetic
    heading = (title + " " if title else "") + ("(SYNTHETIC responses)" if synthetic else "")
    with atomic_path(out_dir, directory=True) as tmp:
        test_table.to_csv(tmp / "test_accuracy.csv", index=False)
        curves.to_csv(tmp / "learning_curves.csv", index=False)
        set_table.to_csv(tmp / "set_accuracy.csv", index=False)
        time_table.to_csv(tmp / "time.csv", index=False)
        per.to_csv(tmp / "participants.csv", index=False)
        align.drop(columns=["source_file"], errors="ignore").to_csv(
            tmp / "alignment_trials.csv", index=False
        )
        _plot(curves, test_table, tmp / "learning_curves.png", heading.strip())
    if len(test_table):
        log.info(
            "test accuracy per condition%s: %s",
            " (synthetic)" if synthetic else "",
            test_table.set_index("condition")["accuracy"].round(3).to_dict(),
        )
    return test_table
