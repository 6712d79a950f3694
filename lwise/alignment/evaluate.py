"""Stage 7: model-human alignment of the guide model and the effect of its enhanced stimuli.

Analyses (definitions and sources in `lwise.alignment.metrics`):
- difficulty prediction: does the guide model's ground-truth logit predict whether a person
  answers a *natural* image correctly (L-WISE `make_figs.ipynb`: per-trial logistic regression,
  3-SD outliers removed, stratified k-fold CV AUC with a bootstrap CI), and does it beat a
  non-robust ("vanilla") model's logit;
- enhancement effect: human accuracy per stimulus set (natural, each epsilon), Wilson CIs, with
  L-WISE's chi-square test against natural;
- model-vs-human consistency on natural images (Geirhos et al.);
- VisAlign: Hellinger distance between the model's abstention-aware output and the per-image
  human response distribution, and effective-reliability scores.

Image keys: every stimulus set's dirmap lists its images by *key* (`im_path`, e.g.
`val/3/digit_0012.png`, the same in every set), and human trials name images by that key. Tables
listed relative to another folder (the scored dirmap and `probabilities.csv` say
`../imagefolder/<key>`) are matched through `key_root`, the folder keys are relative to, ignoring
the file extension (the stimuli may be re-encoded, e.g. JPEG sources saved as PNG).

The default dataset has no human data, so `simulate_trials` makes synthetic observers from image
statistics alone; every output then says so (`synthetic` column, plot titles).
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import stats
from tqdm import tqdm

from lwise.alignment import metrics
from lwise.core.atomic import atomic_path, write_csv
from lwise.data import dirmap
from lwise.data.dirmap import csv_lines
from lwise.data.imaging import load_rgb
from lwise.humans import trials as humans
from lwise.humans.trials import ABSTAIN

log = logging.getLogger(__name__)

NATURAL = "natural"
SYNTHETIC_NOTE = "(synthetic observers)"
# `<objective>_eps<number>`, the enhance rule's folder names (logit_eps0.5, cross_entropy_eps10).
_EPS_NAME = re.compile(r"(?:^|_)eps(\d+(?:\.\d*)?|\.\d+)$")
SUMMARY_COLUMNS = ["metric", "group", "value", "ci_low", "ci_high", "synthetic"]


class AlignmentDataError(ValueError):
    """Inputs of the alignment analysis do not fit together; the message names file and column."""


# --- stimulus sets and image keys ---------------------------------------------------------------


def set_epsilon(name: str) -> float:
    """The enhancement epsilon encoded in a stimulus-set name: `natural` is 0, `logit_eps2` is 2."""
    if name == NATURAL:
        return 0.0
    match = _EPS_NAME.search(name)
    if match is None:
        raise ValueError(
            f"stimulus set {name!r}: cannot read an epsilon from its name "
            f"(expected '{NATURAL}' or '<objective>_eps<number>', e.g. 'logit_eps2')"
        )
    return float(match.group(1))


def image_key(
    dirmap_csv: str | os.PathLike, im_path: str, key_root: str | os.PathLike | None = None
) -> str:
    """The key of an image listed as `im_path` in `dirmap_csv`: its path relative to `key_root`
    ('/'-separated), or `im_path` itself when `key_root` is None (a stimulus set's dirmap)."""
    if key_root is None:
        return Path(im_path).as_posix()
    # Resolve folders only: files may be hard or symbolic links into the raw download.
    full = os.path.normpath(os.path.join(Path(dirmap_csv).parent.resolve(), im_path))
    return Path(os.path.relpath(full, Path(key_root).resolve())).as_posix()


def _stem(key: str) -> str:
    return posixpath.splitext(key)[0]


def _match_keys(
    table: pd.DataFrame, source: object, wanted: Sequence[str], key_root, what: str
) -> pd.Series:
    """Row label of `table` (column `im_path`) for each wanted key, matched without extension."""
    if "im_path" not in table.columns:
        raise AlignmentDataError(f"{source}: missing column 'im_path'; found {list(table.columns)}")
    stems = table["im_path"].astype(str).map(lambda p: _stem(image_key(source, p, key_root)))
    dup = stems.duplicated(keep=False)
    if dup.any():
        raise AlignmentDataError(
            f"{source}: several rows name the same image (ignoring the extension) at "
            f"line(s) {csv_lines(table, dup)}"
        )
    row_of = pd.Series(table.index, index=stems.to_numpy())
    wanted_stems = pd.Index([_stem(k) for k in wanted])
    missing = ~wanted_stems.isin(row_of.index)
    if missing.any():
        example = list(pd.Index(wanted)[missing][:3])
        hint = f" relative to key_root {key_root}" if key_root is not None else ""
        raise AlignmentDataError(
            f"{source}: no row for {int(missing.sum())} {what} image(s), e.g. {example} "
            f"(im_path matched{hint}, extension ignored)"
        )
    return pd.Series(row_of.loc[wanted_stems].to_numpy(), index=pd.Index(wanted, name="image"))


def _finite_column(table: pd.DataFrame, column: str, source: object) -> pd.Series:
    if column not in table.columns:
        raise AlignmentDataError(
            f"{source}: missing column '{column}'; found {list(table.columns)}"
        )
    values = pd.to_numeric(table[column], errors="coerce").astype(float)
    bad = ~np.isfinite(values)
    if bad.any():
        raise AlignmentDataError(
            f"{source}: column '{column}' must hold finite numbers; not at line(s) "
            f"{csv_lines(table, bad)}"
        )
    return values


def _bool_column(table: pd.DataFrame, column: str, source: object) -> pd.Series:
    if column not in table.columns:
        raise AlignmentDataError(
            f"{source}: missing column '{column}'; found {list(table.columns)}"
        )
    text = table[column].astype(str).str.strip().str.lower()
    bad = ~text.isin(["true", "false", "1", "0", "1.0", "0.0"])
    if bad.any():
        raise AlignmentDataError(
            f"{source}: column '{column}' must be true/false or 0/1; not at line(s) "
            f"{csv_lines(table, bad)}"
        )
    return text.isin(["true", "1", "1.0"])


def _classes(df: pd.DataFrame) -> list[str]:
    """Class names in class_num order."""
    return df.drop_duplicates("class").sort_values("class_num")["class"].astype(str).tolist()


# --- simulated observers -----------------------------------------------------------------------


def image_statistics(
    paths: Sequence[str | os.PathLike], *, size: int = 64, ink_threshold: float = 0.2
) -> pd.DataFrame:
    """Low-level visibility statistics of each image (no model involved).

    On the luminance (PIL "L", in [0, 1]) resized to `size`×`size`, so images of different
    resolutions are comparable:
      ink_fraction: fraction of pixels differing from the background, the median of the
        outer `size`/16 border, by more than `ink_threshold` (foreground area);
      rms_contrast: standard deviation of luminance;
      edge_energy: mean gradient magnitude (central differences, `np.gradient`).
    """
    rows = []
    for path in tqdm(paths, desc="image statistics"):
        try:
            img, _ = load_rgb(path)
        except OSError as err:
            raise AlignmentDataError(f"{path}: cannot read image: {err}") from err
        lum = img.convert("L").resize((size, size), Image.Resampling.BILINEAR)
        lum = np.asarray(lum, dtype=float) / 255.0
        ring = max(1, size // 16)
        border = np.concatenate(
            [lum[:ring].ravel(), lum[-ring:].ravel(), lum[:, :ring].ravel(), lum[:, -ring:].ravel()]
        )
        gy, gx = np.gradient(lum)
        rows.append(
            {
                "ink_fraction": float((np.abs(lum - np.median(border)) > ink_threshold).mean()),
                "rms_contrast": float(lum.std()),
                "edge_energy": float(np.hypot(gx, gy).mean()),
            }
        )
    return pd.DataFrame(rows, columns=["ink_fraction", "rms_contrast", "edge_energy"])


def latent_difficulty(
    image_stats: pd.DataFrame,
    *,
    offset: float = -0.75,
    spread: float = 1.0,
    noise_sd: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """Difficulty in logit units: offset − spread·signal + Normal(0, noise_sd) per image.

    signal = mean of the z-scored statistics (more foreground, contrast and edges = more visible
    = easier); the noise stands for item-specific difficulty that no statistic captures.
    """
    spread_of = image_stats.std(ddof=0).replace(0.0, 1.0)
    signal = ((image_stats - image_stats.mean()) / spread_of).mean(axis=1).to_numpy()
    noise = np.random.default_rng(seed).normal(0.0, noise_sd, len(signal))
    return offset - spread * signal + noise


def simulate_trials(
    natural_dirmap_csv: str | os.PathLike,
    set_names: Sequence[str],
    out_csv: str | os.PathLike,
    *,
    n_participants: int = 20,
    trials_per_participant: int | None = None,
    split: str | None = "val",
    seed: int = 0,
    boost_per_eps: float = 0.5,
    difficulty_offset: float = -0.75,
    difficulty_spread: float = 1.0,
    image_noise_sd: float = 0.5,
    slope: float = 1.0,
    ability_sd: float = 0.5,
    lapse: float = 0.02,
    abstain_max: float = 0.1,
) -> pd.DataFrame:
    """Synthetic human trials for a dataset without human data; written to `out_csv`.

    Images: the natural stimulus set's images of `split` (None: all), read from the files next to
    `natural_dirmap_csv`; the trials name them by key (`im_path`).

    Observer model (`lwise.humans.trials.simulate_observers`), independent of the guide model,
    so that
    the difficulty-prediction analysis is not circular:
      difficulty_j = difficulty_offset − difficulty_spread · signal_j + Normal(0, image_noise_sd),
        signal_j = mean z-score of ink fraction, RMS contrast and edge energy of the natural
        image (`image_statistics`, `latent_difficulty`);
      boost_c = boost_per_eps · eps_c, eps parsed from the set name (`set_epsilon`: natural = 0,
        logit_eps2 = 2); enhancement thus helps more at larger epsilon, by an assumed amount;
      p_correct = 1/K + (1 − 1/K − lapse) · sigmoid(slope · (ability_i + boost_c − difficulty_j)),
        ability_i ~ Normal(0, ability_sd) per participant, K = number of classes; errors are
        abstentions (likeliest near chance, at most `abstain_max`) or uniform wrong classes.
    The defaults give about two thirds correct on natural 10-class digits. Each participant sees
    `trials_per_participant` images (default: every image once) with the sets balanced.

    Returns the validated trials (`synthetic` = True, plus `p_correct` and the image's
    `latent_difficulty`), also written atomically to `out_csv`.
    """
    csv = Path(natural_dirmap_csv)
    df = dirmap.read(csv)
    chosen = df if split is None else df[df["split"] == split]
    if chosen.empty:
        raise AlignmentDataError(
            f"{csv}: no images in split {split!r}; splits present: {sorted(set(df['split']))}"
        )
    names = list(dict.fromkeys(set_names))
    if not names:
        raise ValueError("set_names: give at least one stimulus set (e.g. 'natural')")
    boosts = {name: boost_per_eps * set_epsilon(name) for name in names}
    # Independent streams for the image noise and the observers.
    noise_seed, observer_seed = (
        int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2)
    )
    statistics = image_statistics([csv.parent / p for p in chosen["im_path"]])
    difficulty = latent_difficulty(
        statistics,
        offset=difficulty_offset,
        spread=difficulty_spread,
        noise_sd=image_noise_sd,
        seed=noise_seed,
    )
    images = pd.DataFrame(
        {
            "image": chosen["im_path"].astype(str).to_numpy(),
            "class": chosen["class"].astype(str).to_numpy(),
            "latent_difficulty": difficulty,
        }
    )
    classes = _classes(df)
    trials = humans.simulate_observers(
        images,
        boosts,
        n_participants=n_participants,
        trials_per_participant=trials_per_participant or len(images),
        classes=classes,
        difficulty_col="latent_difficulty",
        slope=slope,
        ability_sd=ability_sd,
        lapse=lapse,
        abstain_max=abstain_max,
        seed=observer_seed,
    )
    trials["latent_difficulty"] = trials["image"].map(
        images.set_index("image")["latent_difficulty"]
    )
    trials = humans.write_trials(trials, out_csv, classes=classes)
    log.info(
        "simulated %d trials (%d participants, %d images, sets %s): accuracy per set %s",
        len(trials), n_participants, len(images), names,
        trials.groupby("condition")["correct"].mean().round(3).to_dict(),
    )  # fmt: skip
    return trials


# --- analyses (pure functions on tables) ----------------------------------------------------------


def _per_trial(trials: pd.DataFrame, per_image: pd.Series, name: str) -> np.ndarray:
    values = trials["image"].map(per_image)
    if values.isna().any():
        missing = sorted(set(trials.loc[values.isna(), "image"]))[:3]
        raise AlignmentDataError(f"{name}: no value for trial image(s) {missing}")
    return values.to_numpy(dtype=float)


def difficulty_prediction(
    trials: pd.DataFrame,
    logit: pd.Series,
    *,
    logit_column: str = "robust_gt_logit",
    vanilla: pd.Series | None = None,
    vanilla_column: str | None = None,
    folds: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
    outliers_sd: float | None = 3.0,
) -> pd.DataFrame:
    """How well each model's per-image logit predicts per-trial human correctness.

    `trials`: natural trials (`image`, `correct`); `logit`, `vanilla`: per-image scores indexed
    by image key. One row per model (`robust`, and `vanilla` plus `robust_minus_vanilla`, the
    paired CV-AUC difference, when `vanilla` is given), with `metrics.difficulty_auc` (CI over
    `n_boot` bootstrap resamples of trials) and the Spearman correlation between per-image human
    accuracy and the logit (L-WISE: the logit predicts the proportion correct per image).
    """
    correct = trials["correct"].to_numpy(dtype=bool)
    per_image = trials.groupby("image")["correct"].mean()
    scores = {"robust": (logit_column, logit)}
    if vanilla is not None:
        scores["vanilla"] = (vanilla_column or logit_column, vanilla)
    rows, per_trial = [], {}
    for model, (column, score) in scores.items():
        x = per_trial[model] = _per_trial(trials, score, f"{model} logit '{column}'")
        try:
            auc = metrics.difficulty_auc(
                correct, x, folds=folds, n_boot=n_boot, seed=seed, outliers_sd=outliers_sd
            )
        except ValueError as err:
            raise AlignmentDataError(f"difficulty prediction from '{column}': {err}") from err
        rho, p = metrics.spearman_accuracy(per_image.to_numpy(), score.loc[per_image.index])
        rows.append(
            {
                "model": model,
                "logit_column": column,
                "n_trials": auc["n_trials"],
                "n_outliers": auc["n_outliers"],
                "coef": auc["coef"],
                "auc": auc["auc"],
                "raw_auc": auc["raw_auc"],
                "cv_auc": auc["cv_auc"],
                "ci_low": auc["cv_auc_ci_low"],
                "ci_high": auc["cv_auc_ci_high"],
                "n_images": len(per_image),
                "spearman_rho": rho,
                "spearman_p": p,
            }
        )
    if vanilla is not None:
        diff = metrics.compare_auc(
            correct,
            per_trial["robust"],
            per_trial["vanilla"],
            folds=folds,
            n_boot=n_boot,
            seed=seed,
            outliers_sd=outliers_sd,
        )
        rows.append(
            {
                "model": "robust_minus_vanilla",
                "logit_column": f"{logit_column} - {vanilla_column or logit_column}",
                "n_trials": diff["n_trials"],
                "n_outliers": diff["n_outliers"],
                "cv_auc": diff["difference"],
                "ci_low": diff["ci_low"],
                "ci_high": diff["ci_high"],
                "n_images": len(per_image),
            }
        )
    out = pd.DataFrame(rows)
    out["folds"], out["n_boot"] = folds, n_boot
    return out


def _chi_square_p(k1: int, n1: int, k0: int, n0: int) -> float:
    """p of L-WISE's chi-square test (scipy default, Yates-corrected) of two proportions."""
    table = np.array([[k1, n1 - k1], [k0, n0 - k0]])
    if (table.sum(axis=0) == 0).any():  # everyone right (or wrong) in both: no test possible
        return float("nan")
    return float(stats.chi2_contingency(table).pvalue)


def enhancement_effect(trials: pd.DataFrame, sets: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Human accuracy per stimulus set with Wilson 95 % CIs, ordered by epsilon.

    `sets` maps each set name to its dirmap (im_path = key). Per set also: the gain and
    chi-square p against natural, and the mean achieved L2 distance and ground-truth-logit gain
    (`l2_distance`, `logit_gain`; 0 for natural) over the images shown in that set's trials.
    """
    table = metrics.condition_accuracy(trials, "condition")
    natural = (
        table.set_index("condition").loc[NATURAL] if NATURAL in set(table["condition"]) else None
    )
    rows = []
    for _, row in table.iterrows():
        name = row["condition"]
        df = sets[name].set_index("im_path")
        shown = df.loc[sorted(set(trials.loc[trials["condition"] == name, "image"]))]
        extra = {
            "eps": _eps_of(name, df),
            "objective": str(df["objective"].iloc[0]) if "objective" in df.columns else name,
            "n_images": len(shown),
        }
        for column in ("l2_distance", "logit_gain"):
            if column in shown.columns:
                extra[f"mean_{column}"] = float(pd.to_numeric(shown[column]).mean())
            else:
                extra[f"mean_{column}"] = 0.0 if name == NATURAL else float("nan")
        if natural is not None:
            extra["accuracy_gain_vs_natural"] = row["accuracy"] - natural["accuracy"]
            extra["chi2_p_vs_natural"] = (
                float("nan")
                if name == NATURAL
                else _chi_square_p(row["n_correct"], row["n"], natural["n_correct"], natural["n"])
            )
        rows.append(row.to_dict() | extra)
    out = pd.DataFrame(rows)
    order = out.assign(_nan=out["eps"].isna()).sort_values(["_nan", "eps", "condition"]).index
    return out.loc[order].reset_index(drop=True)


def _eps_of(name: str, df: pd.DataFrame) -> float:
    """A set's epsilon: its dirmap's `eps` column when constant, else parsed from its name,
    NaN for sets with neither (e.g. a CLAHE control)."""
    if "eps" in df.columns:
        values = pd.to_numeric(df["eps"], errors="coerce").unique()
        if len(values) == 1 and np.isfinite(values[0]):
            return float(values[0])
    try:
        return set_epsilon(name)
    except ValueError:
        return float("nan")


def _bootstrap_mean_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator):
    """Percentile 95 % CI of the mean over resamples of `values` (here: participants)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


CONSISTENCY_METRICS = ("accuracy_difference", "observed_consistency", "error_consistency")


def consistency(
    trials: pd.DataFrame, model_correct: pd.Series, *, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Model-vs-human accuracy difference, observed and error consistency on natural trials.

    `trials`: natural trials (`participant`, `image`, `condition`, `correct`); `model_correct`:
    the guide model's correctness per image key. Only natural images are compared: the model's
    decision on an enhanced image is unknown (only its ground-truth logit is recorded), and the
    guide model trivially "agrees" with stimuli optimised for it.

    Rows: `level` = `participant` (one per participant, the unit of Geirhos et al.),
    `mean_over_participants` (their mean, as model-vs-human aggregates, with a percentile
    bootstrap CI over participants in `*_ci_low/high`), and `pooled` (all trials as one
    observer).
    """
    model = pd.DataFrame(
        {
            "image": model_correct.index.astype(str),
            "condition": NATURAL,
            "correct": model_correct.to_numpy(dtype=bool),
        }
    )
    per = metrics.model_vs_human(trials[["participant", "image", "condition", "correct"]], model)
    per.insert(0, "level", "participant")
    rng = np.random.default_rng(seed)
    mean = {"level": "mean_over_participants", "participant": "", "condition": NATURAL}
    mean["n"] = int(per["n"].sum())
    for column in ("human_accuracy", "model_accuracy", *CONSISTENCY_METRICS):
        mean[column] = float(per[column].mean())
        mean[f"{column}_ci_low"], mean[f"{column}_ci_high"] = _bootstrap_mean_ci(
            per[column].to_numpy(), n_boot, rng
        )
    h = trials["correct"].to_numpy(dtype=bool)
    m = _per_trial(trials, model_correct.astype(float), "model 'correct'").astype(bool)
    pooled = {
        "level": "pooled",
        "participant": "",
        "condition": NATURAL,
        "n": len(h),
        "human_accuracy": float(h.mean()),
        "model_accuracy": float(m.mean()),
        "accuracy_difference": metrics.accuracy_difference(m, h),
        "observed_consistency": metrics.observed_consistency(m, h),
        "error_consistency": metrics.error_consistency(m, h),
    }
    return pd.concat([per, pd.DataFrame([mean, pooled])], ignore_index=True)


def visalign(
    human: pd.DataFrame,
    probs: pd.DataFrame,
    images: pd.DataFrame,
    classes: Sequence[str],
    *,
    costs: Sequence[float] = (0, 1, 5, 10),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """VisAlign alignment of the model's output with per-image human response distributions.

    `human`: `image`, the `classes` and `abstain` (fractions; optional `n_responses`);
    `probs`: the model's softmax over `classes`, indexed by image key; `images`: `class` and
    `split`, indexed by image key.

    Model output q = [p·(1 − a), a] with a = 1 − max p (`metrics.max_softmax_abstention`: the
    fix VisAlign suggests for its inverted entropy rule); per image the Hellinger distance
    H(human, q). Reliability (`metrics.reliability_score`) scores the model's argmax decision
    over q against the human majority answer (first maximum, so a class beats an equally
    frequent abstention): VisAlign scores its uncertain category against the human majority.

    Returns (per-image table, summary per `level` all / class / split with `mean_hellinger`,
    the model's abstention rate, mean human abstention mass and `reliability_c<cost>`).
    """
    classes = list(classes)
    labels = np.asarray([*classes, ABSTAIN], dtype=object)
    keys = human["image"].astype(str)
    h = human[[*classes, ABSTAIN]].to_numpy(dtype=float)
    p = probs.loc[keys, classes].to_numpy(dtype=float)
    p = p / p.sum(axis=1, keepdims=True)  # CSV rounding: rows must sum to 1 within 1e-6
    a = metrics.max_softmax_abstention(p)
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


def summary_table(
    difficulty: pd.DataFrame,
    enhancement: pd.DataFrame,
    agreement: pd.DataFrame,
    visalign_summary: pd.DataFrame | None,
    *,
    synthetic: bool,
) -> pd.DataFrame:
    """Every headline number in one long table: metric, group, value, ci_low, ci_high."""
    rows = []

    def add(metric, group, value, low=np.nan, high=np.nan):
        rows.append((metric, str(group), float(value), float(low), float(high)))

    for _, r in difficulty.iterrows():
        if r["model"] == "robust_minus_vanilla":
            add("cv_auc_difference", r["model"], r["cv_auc"], r["ci_low"], r["ci_high"])
            continue
        add("difficulty_cv_auc", r["model"], r["cv_auc"], r["ci_low"], r["ci_high"])
        add("difficulty_auc", r["model"], r["auc"])
        add("difficulty_spearman_rho", r["model"], r["spearman_rho"])
    for _, r in enhancement.iterrows():
        add("human_accuracy", r["condition"], r["accuracy"], r["ci_low"], r["ci_high"])
        if "accuracy_gain_vs_natural" in r and r["condition"] != NATURAL:
            add("accuracy_gain_vs_natural", r["condition"], r["accuracy_gain_vs_natural"])
    for _, r in agreement[agreement["level"] != "participant"].iterrows():
        for column in ("model_accuracy", *CONSISTENCY_METRICS):
            add(
                column,
                r["level"],
                r[column],
                r.get(f"{column}_ci_low", np.nan),
                r.get(f"{column}_ci_high", np.nan),
            )
    if visalign_summary is not None:
        for _, r in visalign_summary.iterrows():
            group = "all" if r["level"] == "all" else f"{r['level']}:{r['group']}"
            add("visalign_hellinger", group, r["mean_hellinger"])
            for column in [c for c in visalign_summary.columns if c.startswith("reliability_")]:
                add(column, group, r[column])
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS[:-1])
    out["synthetic"] = synthetic
    return out


# --- plots ---------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(text: str, synthetic: bool) -> str:
    return f"{text} {SYNTHETIC_NOTE}" if synthetic else text


def plot_difficulty_curve(
    trials: pd.DataFrame,
    logit: pd.Series,
    *,
    logit_column: str = "robust_gt_logit",
    cv_auc: float | None = None,
    n_bins: int = 10,
    synthetic: bool = False,
):
    """Human accuracy (Wilson 95 % CI) in quantile bins of the logit, with the logistic fit."""
    from sklearn.linear_model import LogisticRegression

    plt = _pyplot()
    x = _per_trial(trials, logit, logit_column)
    y = trials["correct"].to_numpy(dtype=bool)
    bins = pd.qcut(x, q=min(n_bins, len(np.unique(x))), duplicates="drop")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    centres, acc, err = [], [], [[], []]
    for _, idx in pd.Series(np.arange(len(x))).groupby(bins, observed=True):
        ci = metrics.accuracy_ci(y[idx.to_numpy()])
        centres.append(x[idx.to_numpy()].mean())
        acc.append(ci["accuracy"])
        err[0].append(max(0.0, ci["accuracy"] - ci["ci_low"]))  # rounding at 0 % or 100 %
        err[1].append(max(0.0, ci["ci_high"] - ci["accuracy"]))
    ax.errorbar(centres, acc, yerr=err, fmt="o", capsize=3, label="human accuracy (binned)")
    if len(set(y)) == 2:
        # The model metrics.difficulty_auc fits (logistic on the standardised logit), for display.
        mean, sd = x.mean(), x.std() or 1.0
        fit = LogisticRegression().fit(((x - mean) / sd)[:, None], y)
        grid = np.linspace(x.min(), x.max(), 200)
        ax.plot(grid, fit.predict_proba(((grid - mean) / sd)[:, None])[:, 1], label="logistic fit")
    ax.set_xlabel(f"{logit_column} (guide model)")
    ax.set_ylabel("proportion correct")
    ax.set_ylim(0, 1.02)
    auc = f", CV AUC {cv_auc:.3f}" if cv_auc is not None else ""
    ax.set_title(_title(f"Natural trials (n={len(y)}){auc}", synthetic), fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_enhancement_effect(table: pd.DataFrame, *, synthetic: bool = False):
    """Accuracy ± Wilson 95 % CI per stimulus set, in epsilon order, with mean achieved L2."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(table) + 1.5), 4))
    pos = np.arange(len(table))
    err = np.clip([table["accuracy"] - table["ci_low"], table["ci_high"] - table["accuracy"]], 0, 1)
    ax.errorbar(pos, table["accuracy"], yerr=err, fmt="o-", capsize=4)
    labels = [
        f"{r.condition}\nL2 {r.mean_l2_distance:.2f}"
        if np.isfinite(r.mean_l2_distance)
        else r.condition
        for r in table.itertuples()
    ]
    ax.set_xticks(pos, labels, fontsize=8)
    ax.set_ylabel("human accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(_title("Accuracy per stimulus set (95 % Wilson CI)", synthetic), fontsize=9)
    fig.tight_layout()
    return fig


def plot_consistency(table: pd.DataFrame, *, synthetic: bool = False):
    """Per-participant human accuracy, observed and error consistency with the guide model."""
    plt = _pyplot()
    per = table[table["level"] == "participant"]
    mean = table[table["level"] == "mean_over_participants"].iloc[0]
    panels = [
        ("human_accuracy", "human accuracy"),
        ("observed_consistency", "observed consistency"),
        ("error_consistency", "error consistency (kappa)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.6))
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(per))
    for ax, (column, label) in zip(axes, panels, strict=True):
        ax.scatter(jitter, per[column], s=12, alpha=0.6)
        low, high = mean[f"{column}_ci_low"], mean[f"{column}_ci_high"]
        yerr = np.clip([[mean[column] - low], [high - mean[column]]], 0, None)  # NaN: no bar
        ax.errorbar([0.4], [mean[column]], yerr=yerr, fmt="D", color="k", capsize=4)
        if column == "human_accuracy":
            ax.axhline(mean["model_accuracy"], color="C3", ls="--", label="model")
            ax.legend(fontsize=7)
        if column == "error_consistency":
            ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks([])
        ax.set_xlim(-0.5, 0.7)
        ax.set_title(label, fontsize=9)
    fig.suptitle(_title("Guide model vs each participant, natural images", synthetic), fontsize=10)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    _pyplot().close(fig)


# --- the stage -----------------------------------------------------------------------------------


def _read_sets(
    natural_csv: Path, natural: pd.DataFrame, set_dirmaps: Mapping[str, str | os.PathLike]
) -> dict[str, pd.DataFrame]:
    given = Path(set_dirmaps.get(NATURAL, natural_csv))
    if given.resolve() != natural_csv.resolve():
        raise AlignmentDataError(
            f"set_dirmaps['{NATURAL}'] is {given} but the natural dirmap is {natural_csv}"
        )
    sets = {}
    for name, path in {NATURAL: natural_csv, **dict(set_dirmaps)}.items():
        # Tables only: the image files are not needed here (and need not be on this machine).
        df = natural if name == NATURAL else dirmap.read(path, check_files=False)
        df = df.assign(im_path=df["im_path"].astype(str))
        sets[name] = df
    return sets


def _check_trials(trials: pd.DataFrame, source, natural: pd.DataFrame, sets) -> None:
    """Every trial's condition is a stimulus set that holds its image, of the right class."""
    unknown = ~trials["condition"].isin(list(sets))
    if unknown.any():
        raise AlignmentDataError(
            f"{source}: column 'condition': {sorted(set(trials.loc[unknown, 'condition']))[:5]} "
            f"are not stimulus sets ({sorted(sets)}) at line(s) {csv_lines(trials, unknown)}"
        )
    for name, df in sets.items():
        in_set = trials["condition"] == name
        missing = in_set & ~trials["image"].isin(df["im_path"])
        if missing.any():
            raise AlignmentDataError(
                f"{source}: column 'image': {sorted(set(trials.loc[missing, 'image']))[:3]} not "
                f"in stimulus set '{name}' at line(s) {csv_lines(trials, missing)}"
            )
    if "class" in trials.columns:
        truth = trials["image"].map(natural.set_index("im_path")["class"].astype(str))
        wrong = truth.notna() & (trials["class"] != truth)
        if wrong.any():
            raise AlignmentDataError(
                f"{source}: column 'class' disagrees with the natural dirmap's class at "
                f"line(s) {csv_lines(trials, wrong)}"
            )


def _synthetic_flag(trials: pd.DataFrame, synthetic: bool | None, source) -> bool:
    marked = bool("synthetic" in trials.columns and trials["synthetic"].any())
    if synthetic is None:
        return marked
    if marked and not synthetic:
        raise AlignmentDataError(
            f"{source}: trials are marked synthetic; refusing to report them as human data"
        )
    return bool(synthetic)


def _read_probabilities(
    path: str | os.PathLike, classes: Sequence[str], keys: Sequence[str], key_root
) -> pd.DataFrame:
    """Model softmax over the dataset's classes per natural image key (rows renormalised when
    the model has extra classes: a decision among the task's classes, as present_classes_only)."""
    table = pd.read_csv(path, dtype={"im_path": str})
    table.columns = [str(c) for c in table.columns]
    missing = [c for c in classes if c not in table.columns]
    if missing:
        raise AlignmentDataError(
            f"{path}: missing class column(s) {missing[:5]}; found {list(table.columns)[:12]}"
        )
    values = pd.DataFrame({c: _finite_column(table, c, path) for c in classes})
    bad = (values < 0).any(axis=1) | (values.sum(axis=1) <= 0)
    if bad.any():
        raise AlignmentDataError(
            f"{path}: probabilities must be non-negative with a positive sum over the classes "
            f"{list(classes)[:5]}...; not at line(s) {csv_lines(table, bad)}"
        )
    rows = _match_keys(table, path, keys, key_root, "natural")
    values = values.loc[rows.to_numpy()].set_axis(rows.index)
    return values.div(values.sum(axis=1), axis=0)


def _vanilla_logits(path, column, keys, key_root) -> tuple[pd.Series, str]:
    table = dirmap.read(path, check_files=False)
    if column is None:
        column = next(
            (c for c in ("vanilla_gt_logit", "robust_gt_logit") if c in table.columns),
            "vanilla_gt_logit",
        )
    values = _finite_column(table, column, path)
    rows = _match_keys(table, path, keys, key_root, "natural")
    return pd.Series(values.loc[rows.to_numpy()].to_numpy(), index=rows.index), column


def evaluate_alignment(
    natural_dirmap_csv: str | os.PathLike,
    set_dirmaps: Mapping[str, str | os.PathLike],
    trials_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    logit_column: str = "robust_gt_logit",
    key_root: str | os.PathLike | None = None,
    vanilla_dirmap_csv: str | os.PathLike | None = None,
    vanilla_logit_column: str | None = None,
    probabilities_csv: str | os.PathLike | None = None,
    label_distributions_csv: str | os.PathLike | None = None,
    costs: Sequence[float] = (0, 1, 5, 10),
    folds: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
    outliers_sd: float | None = 3.0,
    synthetic: bool | None = None,
) -> dict[str, pd.DataFrame]:
    """Run every alignment analysis; write tables and plots into `out_dir` (replaced atomically).

    Inputs: the natural stimulus set's dirmap (im_path = key; `logit_column`, `correct`, `class`,
    `split` per image), the other sets' dirmaps by name (`natural` may be included or not), and a
    trials CSV (`lwise.humans.trials` schema; `condition` = set name, `image` = key). Optional: a
    non-robust model's scored dirmap (logit column `vanilla_logit_column`, default
    `vanilla_gt_logit` else `robust_gt_logit`), the model's `probabilities_csv` (im_path + one
    softmax column per class; needed for VisAlign) and per-image human label distributions
    (default: built from the natural trials). Scored dirmaps and probabilities are matched to keys
    through `key_root` (see the module docstring). `synthetic` defaults to the trials' own
    `synthetic` marking.

    Writes: difficulty_prediction.csv, enhancement_effect.csv, consistency.csv, summary.csv,
    difficulty_curve.png, enhancement_effect.png, consistency.png, and with probabilities
    visalign.csv and visalign_images.csv (without them VisAlign is skipped, with a log line).
    Returns the tables by file stem.
    """
    natural_csv = Path(natural_dirmap_csv)
    natural = dirmap.read(natural_csv, check_files=False)
    natural["im_path"] = natural["im_path"].astype(str)
    classes = _classes(natural)
    keys = natural["im_path"].tolist()
    logits = pd.Series(_finite_column(natural, logit_column, natural_csv).to_numpy(), index=keys)
    model_correct = pd.Series(_bool_column(natural, "correct", natural_csv).to_numpy(), index=keys)
    sets = _read_sets(natural_csv, natural, set_dirmaps)
    trials = humans.read_trials(trials_csv, classes=classes)
    _check_trials(trials, trials_csv, natural, sets)
    synthetic = _synthetic_flag(trials, synthetic, trials_csv)
    natural_trials = trials[trials["condition"] == NATURAL].reset_index(drop=True)
    if natural_trials.empty:
        raise AlignmentDataError(
            f"{trials_csv}: no trials in condition '{NATURAL}'; difficulty prediction and "
            "consistency are measured on natural images"
        )
    vanilla, vanilla_column = None, None
    if vanilla_dirmap_csv is not None:
        vanilla, vanilla_column = _vanilla_logits(
            vanilla_dirmap_csv, vanilla_logit_column, keys, key_root
        )
    probs = None
    if probabilities_csv is not None:
        probs = _read_probabilities(probabilities_csv, classes, keys, key_root)
    else:
        log.info("no probabilities_csv: VisAlign (visalign.csv) skipped")

    tables: dict[str, pd.DataFrame] = {}
    with tqdm(total=5, desc="alignment") as bar:
        bar.set_postfix_str("difficulty prediction")
        tables["difficulty_prediction"] = difficulty_prediction(
            natural_trials, logits, logit_column=logit_column, vanilla=vanilla,
            vanilla_column=vanilla_column, folds=folds, n_boot=n_boot, seed=seed,
            outliers_sd=outliers_sd,
        )  # fmt: skip
        bar.update()
        bar.set_postfix_str("enhancement effect")
        tables["enhancement_effect"] = enhancement_effect(trials, sets)
        bar.update()
        bar.set_postfix_str("consistency")
        tables["consistency"] = consistency(natural_trials, model_correct, n_boot=n_boot, seed=seed)
        bar.update()
        bar.set_postfix_str("visalign")
        visalign_summary = None
        if probs is not None:
            if label_distributions_csv is not None:
                human = humans.read_label_distributions(label_distributions_csv, classes=classes)
                stray = ~human["image"].isin(keys)
                if stray.any():
                    raise AlignmentDataError(
                        f"{label_distributions_csv}: column 'image': not natural-set keys at "
                        f"line(s) {csv_lines(human, stray)}"
                    )
            else:
                human = humans.response_distributions(natural_trials, classes)
            tables["visalign_images"], visalign_summary = visalign(
                human, probs, natural.set_index("im_path"), classes, costs=costs
            )
            tables["visalign"] = visalign_summary
        bar.update()
        bar.set_postfix_str("summary and plots")
        tables["summary"] = summary_table(
            tables["difficulty_prediction"],
            tables["enhancement_effect"],
            tables["consistency"],
            visalign_summary,
            synthetic=synthetic,
        )
        for name, table in tables.items():
            if name != "summary":
                table["synthetic"] = synthetic
        robust_auc = tables["difficulty_prediction"].iloc[0]["cv_auc"]
        figures = {
            "difficulty_curve": plot_difficulty_curve(
                natural_trials,
                logits,
                logit_column=logit_column,
                cv_auc=robust_auc,
                synthetic=synthetic,
            ),  # fmt: skip
            "enhancement_effect": plot_enhancement_effect(
                tables["enhancement_effect"], synthetic=synthetic
            ),
            "consistency": plot_consistency(tables["consistency"], synthetic=synthetic),
        }
        with atomic_path(out_dir, directory=True) as tmp:
            for name, table in tables.items():
                write_csv(table, tmp / f"{name}.csv")
            for name, fig in figures.items():
                _save(fig, tmp / f"{name}.png")
        bar.update()
    log.info(
        "alignment%s: difficulty CV AUC %.3f; accuracy per set %s",
        " " + SYNTHETIC_NOTE if synthetic else "",
        robust_auc,
        dict(
            zip(
                tables["enhancement_effect"]["condition"],
                tables["enhancement_effect"]["accuracy"].round(3),
                strict=True,
            )
        ),
    )
    return tables
