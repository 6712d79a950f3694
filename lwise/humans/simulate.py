"""Simulated observers: synthetic human trials for a dataset without real responses.

The rule `simulate_observers` calls `simulate_observers` here: it reads the natural stimulus
set, derives each image's latent difficulty from image statistics alone (`image_statistics`,
`latent_difficulty`), and runs the psychometric observer model (`psychometric_trials`). The
guide model plays no part, so the alignment analyses run on these trials are not circular.
Every trial is marked `synthetic`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.special import expit

from lwise.core.config import Section
from lwise.core.keys import set_epsilon
from lwise.core.logs import progress
from lwise.data import dirmap
from lwise.data.imaging import load_rgb
from lwise.humans.trials import ABSTAIN, class_names, validate_trials, write_trials

__all__ = [
    "SimulationConfig",
    "image_statistics",
    "latent_difficulty",
    "psychometric_trials",
    "simulate_observers",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationConfig(Section):
    """The `simulation` section of the config; its defaults live in
    schemas/config.schema.yaml, so every field is given here (see `simulate_observers`)."""

    SECTION = "simulation"

    n_participants: int
    trials_per_participant: int | None  # None: every image once
    split: str | None  # None: images of every split
    seed: int
    boost_per_eps: float
    difficulty_offset: float
    difficulty_spread: float
    image_noise_sd: float
    slope: float
    ability_sd: float
    lapse: float
    abstain_max: float


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
    for path in progress(paths, desc="image statistics"):
        try:
            img, _ = load_rgb(path)
        except OSError as err:
            raise ValueError(f"{path}: cannot read image: {err}") from err
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
    image_stats: pd.DataFrame, *, offset: float, spread: float, noise_sd: float, seed: int
) -> np.ndarray:
    """Difficulty in logit units: offset − spread·signal + Normal(0, noise_sd) per image.

    signal = mean of the z-scored statistics (more foreground, contrast and edges = more visible
    = easier); the noise stands for item-specific difficulty that no statistic captures.
    """
    spread_of = image_stats.std(ddof=0).replace(0.0, 1.0)
    signal = ((image_stats - image_stats.mean()) / spread_of).mean(axis=1).to_numpy()
    noise = np.random.default_rng(seed).normal(0.0, noise_sd, len(signal))
    return offset - spread * signal + noise


def psychometric_trials(
    images: pd.DataFrame,
    conditions: Mapping[str, float],
    *,
    n_participants: int,
    trials_per_participant: int,
    slope: float,
    ability_sd: float,
    lapse: float,
    abstain_max: float,
    seed: int,
    classes: Sequence[str] | None = None,
    difficulty_col: str = "difficulty",
) -> pd.DataFrame:
    """Synthetic trials from a psychometric observer model (marked `synthetic=True`).

    `images` has columns `image`, `class` and `difficulty_col`, a latent difficulty in logit
    units that must not come from the guide model (e.g. an image-statistics proxy).
    `conditions` maps each condition name to its boost in the same units (e.g. larger
    enhancement epsilon, larger boost). `classes` is the response set (default: the classes
    present in `images`); K = len(classes).

    Model, per participant i (ability_i ~ Normal(0, ability_sd)) and trial on image j in
    condition c:
        p_correct = g + (1 - g - lapse) * sigmoid(slope * (ability_i + boost_c - difficulty_j)),
        g = 1/K (guessing), `lapse` = attention lapses.
    The response is the true class with probability p_correct. Otherwise it is an error: an
    abstention with probability abstain_max * (1 - sigmoid(...)), so abstaining is likeliest
    near chance and vanishes on easy trials, else a class drawn uniformly among the K - 1 wrong
    ones. P(correct) therefore stays exactly p_correct, which is returned per trial.

    Each participant sees images in a random order (reshuffled after every pass when
    `trials_per_participant` exceeds the number of images) with conditions balanced across
    trials in random order.
    """
    missing = [c for c in ("image", "class", difficulty_col) if c not in images.columns]
    if missing:
        raise ValueError(f"images table lacks column(s) {missing}; found {list(images.columns)}")
    if images.empty or images["image"].duplicated().any():
        raise ValueError("images table must list each image once and not be empty")
    difficulty = pd.to_numeric(images[difficulty_col], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(difficulty).all():
        raise ValueError(f"images column '{difficulty_col}' must hold finite numbers")
    classes = sorted(set(images["class"])) if classes is None else list(classes)
    k = len(classes)
    if k < 2 or len(set(classes)) != k or ABSTAIN in classes:
        raise ValueError(f"classes must be >= 2 distinct names other than '{ABSTAIN}': {classes}")
    stray = sorted(set(images["class"]) - set(classes))
    if stray:
        raise ValueError(f"image classes {stray} are not among the classes {classes}")
    if not conditions:
        raise ValueError("conditions: give at least one condition name with its boost")
    guess = 1.0 / k
    if not 0 <= lapse < 1 - guess:
        raise ValueError(f"lapse must be in [0, {1 - guess:g}), got {lapse}")
    if not 0 <= abstain_max <= 1:
        raise ValueError(f"abstain_max must be in [0, 1], got {abstain_max}")
    if n_participants < 1 or trials_per_participant < 1:
        raise ValueError("n_participants and trials_per_participant must be >= 1")

    rng = np.random.default_rng(seed)
    names = list(conditions)
    boosts = np.array([float(conditions[c]) for c in names])
    n_img, n_trials = len(images), trials_per_participant
    passes = -(-n_trials // n_img)
    img_idx = np.concatenate(
        [
            np.concatenate([rng.permutation(n_img) for _ in range(passes)])[:n_trials]
            for _ in range(n_participants)
        ]
    )
    cond_idx = np.concatenate(
        [rng.permutation(np.resize(np.arange(len(names)), n_trials)) for _ in range(n_participants)]
    )
    participant = np.repeat(np.arange(n_participants), n_trials)
    ability = rng.normal(0.0, ability_sd, n_participants)[participant]
    drive = expit(slope * (ability + boosts[cond_idx] - difficulty[img_idx]))
    p_correct = guess + (1 - guess - lapse) * drive

    true_class = images["class"].to_numpy()[img_idx]
    class_pos = pd.Index(classes).get_indexer(true_class)
    correct = rng.random(len(img_idx)) < p_correct
    abstains = ~correct & (rng.random(len(img_idx)) < abstain_max * (1 - drive))
    # A uniform draw among the K-1 other classes: skip over the true class's position.
    other = rng.integers(0, k - 1, len(img_idx))
    other = other + (other >= class_pos)
    response = np.where(correct, true_class, np.asarray(classes, dtype=object)[other])
    response = np.where(abstains, ABSTAIN, response)

    trials = pd.DataFrame(
        {
            "participant": [f"sim{i:03d}" for i in participant],
            "trial": np.tile(np.arange(1, n_trials + 1), n_participants),
            "image": images["image"].astype(str).to_numpy()[img_idx],
            "class": true_class,
            "condition": np.asarray(names, dtype=object)[cond_idx],
            "response": response,
            "correct": correct,
            "p_correct": p_correct,
            "synthetic": True,
        }
    )
    return validate_trials(trials, "simulated trials", classes=classes)


def simulate_observers(
    natural_dirmap_csv: str | os.PathLike,
    set_names: Sequence[str],
    out_csv: str | os.PathLike,
    config: SimulationConfig,
) -> pd.DataFrame:
    """Synthetic human trials for a dataset without human data; written to `out_csv`.

    Images: the natural stimulus set's images of `config.split` (None: all), read from the files
    next to `natural_dirmap_csv`; the trials name them by key (`im_path`).

    Observer model (`psychometric_trials`), independent of the guide model, so that the
    difficulty-prediction analysis is not circular:
      difficulty_j = difficulty_offset − difficulty_spread · signal_j + Normal(0, image_noise_sd),
        signal_j = mean z-score of ink fraction, RMS contrast and edge energy of the natural
        image (`image_statistics`, `latent_difficulty`);
      boost_c = boost_per_eps · eps_c, eps parsed from the set name
        (`lwise.core.keys.set_epsilon`: natural = 0, logit_eps2 = 2); enhancement thus helps
        more at larger epsilon, by an assumed amount;
      p_correct = 1/K + (1 − 1/K − lapse) · sigmoid(slope · (ability_i + boost_c − difficulty_j)),
        ability_i ~ Normal(0, ability_sd) per participant, K = number of classes; errors are
        abstentions (likeliest near chance, at most `abstain_max`) or uniform wrong classes.
    The schema's defaults give about two thirds correct on natural 10-class digits. Each
    participant sees `trials_per_participant` images (None: every image once) with the sets
    balanced.

    Returns the validated trials (`synthetic` = True, plus `p_correct` and the image's
    `latent_difficulty`), also written atomically to `out_csv`.
    """
    csv = Path(natural_dirmap_csv)
    df = dirmap.read(csv)
    split = config.split
    chosen = df if split is None else df[df["split"] == split]
    if chosen.empty:
        raise ValueError(
            f"{csv}: no images in split {split!r}; splits present: {sorted(set(df['split']))}"
        )
    names = list(dict.fromkeys(set_names))
    if not names:
        raise ValueError("set_names: give at least one stimulus set (e.g. 'natural')")
    boosts = {name: config.boost_per_eps * set_epsilon(name) for name in names}
    # Independent streams for the image noise and the observers.
    noise_seed, observer_seed = (
        int(s.generate_state(1)[0]) for s in np.random.SeedSequence(config.seed).spawn(2)
    )
    statistics = image_statistics([csv.parent / p for p in chosen["im_path"]])
    difficulty = latent_difficulty(
        statistics,
        offset=config.difficulty_offset,
        spread=config.difficulty_spread,
        noise_sd=config.image_noise_sd,
        seed=noise_seed,
    )
    images = pd.DataFrame(
        {
            "image": chosen["im_path"].astype(str).to_numpy(),
            "class": chosen["class"].astype(str).to_numpy(),
            "latent_difficulty": difficulty,
        }
    )
    classes = class_names(df)
    trials = psychometric_trials(
        images,
        boosts,
        n_participants=config.n_participants,
        trials_per_participant=config.trials_per_participant or len(images),
        classes=classes,
        difficulty_col="latent_difficulty",
        slope=config.slope,
        ability_sd=config.ability_sd,
        lapse=config.lapse,
        abstain_max=config.abstain_max,
        seed=observer_seed,
    )
    trials["latent_difficulty"] = trials["image"].map(
        images.set_index("image")["latent_difficulty"]
    )
    trials = write_trials(trials, out_csv, classes=classes)
    log.info(
        "simulated %d trials (%d participants, %d images, sets %s): accuracy per set %s",
        len(trials), config.n_participants, len(images), names,
        trials.groupby("condition")["correct"].mean().round(3).to_dict(),
    )  # fmt: skip
    return trials
