"""Stage 8 (experiments): synthetic learners, so a study without human responses can still run
its analysis end to end. Every row is marked `synthetic`; nothing here is evidence about people.

Model (an assumption chosen to exercise the analysis, not a fitted model of human learning),
per participant i (ability a_i ~ Normal(0, ability_sd)) with knowledge k (start
`initial_knowledge`):
    drive  = a_i + k + boost_per_eps * eps - difficulty_weight * (difficulty - 0.5)
    P(correct) = 1/K + (1 - 1/K - lapse) * sigmoid(drive)
and after each trial with feedback k grows by learning_rate * sigmoid(drive): an observer
learns from an image in proportion to how clearly it can see the category in it. K is the
number of response choices; `difficulty` is the guide model's score carried in the trial list
(0.5 when missing). Reaction times are log-normal, faster when P(correct) is high; the clock
adds the page's fixation and feedback times (the study's `design.json`, beside `trials.csv`).
The parameters are the `experiments.simulation` config section (`LearnerSimulation`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit

from lwise.core.atomic import write_csv
from lwise.core.config import Section
from lwise.experiments.curriculum import TRIAL_COLUMNS
from lwise.experiments.page import PageSettings
from lwise.humans.trials import validate_trials

__all__ = ["LearnerSimulation", "simulate_learners"]


@dataclass(frozen=True)
class LearnerSimulation(Section):
    """The synthetic learners' parameters (`experiments.simulation`; defaults in the schema)."""

    SECTION = "experiments.simulation"

    seed: int
    ability_sd: float
    initial_knowledge: float
    learning_rate: float
    boost_per_eps: float
    difficulty_weight: float
    lapse: float


def _page(trials: pd.DataFrame | str | os.PathLike) -> PageSettings:
    """The page settings of the study the trials come from (its design.json), else defaults."""
    if not isinstance(trials, pd.DataFrame):
        design = Path(trials).parent / "design.json"
        if design.is_file():
            page = json.loads(design.read_text()).get("settings", {}).get("page")
            if page is not None:
                return PageSettings.from_config(page)
    return PageSettings.from_config()


def simulate_learners(
    trials: pd.DataFrame | str | os.PathLike,
    out_csv: str | os.PathLike | None = None,
    settings: LearnerSimulation | Mapping | None = None,
    *,
    classes: list[str] | None = None,
    page: PageSettings | None = None,
) -> pd.DataFrame:
    """Responses of synthetic learners to a study's trial lists (`trials.csv` of the study
    folder), in the page's response format; written to `out_csv` when given. `settings`: a
    `LearnerSimulation` or its config section (missing keys take the schema's defaults);
    `page`: the page's timing (default: the study's, read from design.json beside the file)."""
    if not isinstance(settings, LearnerSimulation):
        settings = LearnerSimulation.from_config(settings)
    page = page or _page(trials)
    fixation_ms, feedback_ms = float(page.fixation_ms), float(page.feedback_ms)
    if not isinstance(trials, pd.DataFrame):
        trials = pd.read_csv(trials, dtype={"class": str, "choices": str}, keep_default_na=False)
    missing = [c for c in TRIAL_COLUMNS if c not in trials.columns]
    if missing:
        raise ValueError(f"trial list lacks column(s) {missing}")
    classes = classes or sorted(set(trials.loc[trials["choices"] == "", "class"]))
    rng = np.random.default_rng(settings.seed)
    rows = []
    for pid, g in trials.groupby("participant", sort=True):
        ability = rng.normal(0.0, settings.ability_sd)
        k, clock = settings.initial_knowledge, 0.0
        for t in g.sort_values("trial").to_dict("records"):
            choices = t["choices"].split("|") if t["choices"] else classes
            diff = pd.to_numeric(t["difficulty"], errors="coerce")
            diff = 0.5 if pd.isna(diff) else float(diff)
            eps = float(pd.to_numeric(t["eps"], errors="coerce") or 0.0)
            drive = (
                ability + k + settings.boost_per_eps * eps
                - settings.difficulty_weight * (diff - 0.5)
            )  # fmt: skip
            if t["phase"] == "calibration":
                drive = 4.0
            guess = 1 / len(choices)
            p = guess + (1 - guess - settings.lapse) * expit(drive)
            correct = rng.random() < p
            wrong = [c for c in choices if c != t["class"]]
            response = t["class"] if correct or not wrong else wrong[rng.integers(len(wrong))]
            rt = float(np.exp(rng.normal(np.log(900 + 900 * (1 - p)), 0.3)))
            onset = clock + fixation_ms
            clock = onset + rt + (feedback_ms if int(t["feedback"]) else 0.0)
            if int(t["feedback"]):
                k += settings.learning_rate * expit(drive)
            rows.append({
                "participant": pid, "image": t["image"], "condition": t["condition"],
                "response": response, "correct": response == t["class"], "rt": round(rt, 1),
                "trial": t["trial"], "block": t["block"], "class": t["class"],
                "source_block": t["source_block"], "phase": t["phase"],
                "feedback": int(t["feedback"]), "catch": int(t["catch"]), "set": t["set"],
                "eps": eps, "stimulus": t["stimulus"], "timed_out": 0,
                "t_onset_ms": round(onset, 1), "t_response_ms": round(onset + rt, 1),
                "synthetic": True,
            })  # fmt: skip
    out = validate_trials(pd.DataFrame(rows), "simulated learners")
    if out_csv is not None:
        write_csv(out, out_csv)
    return out
