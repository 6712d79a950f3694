"""Data debugging: the methods side by side, with their spread over seeds.

One row per method, scope (overall, class, failure_slice, model_errors) and name: the mean,
standard deviation (over seeds, ddof 1), minimum and maximum accuracy, the number of seeds,
the gain over the model before fine-tuning, and the gain over the `none` control (the same
fine-tuning without a debug set) when it ran. The model before fine-tuning is the row
`before`.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from lwise.core.atomic import write_csv
from lwise.data import dirmap
from lwise.debugging import figures, slices

__all__ = ["before_table", "run", "summarise"]

log = logging.getLogger(__name__)

BEFORE = "before"
CONTROL = "none"


def before_table(eval_csv, slices_csv, split: str) -> pd.DataFrame:
    """The accuracy table of the model debugged itself on the evaluation split."""
    scored = dirmap.read(eval_csv)
    rows = scored[scored["split"] == split].reset_index(drop=True)
    failing = pd.read_csv(slices_csv).query("failure")["slice"].tolist()
    table = slices.accuracy_table(rows, failing, ~rows["correct"].astype(bool))
    table.insert(0, "seed", np.nan)
    table.insert(0, "method", BEFORE)
    return table


def summarise(runs: pd.DataFrame, before: pd.DataFrame) -> pd.DataFrame:
    """Mean, spread and gains per method × scope × name (methods in the order they come)."""
    order = {m: i for i, m in enumerate(runs["method"].drop_duplicates())}
    keys = ["method", "scope", "name"]
    stats = (
        runs.groupby(keys, sort=False)["accuracy"]
        .agg(mean="mean", sd="std", min="min", max="max", seeds="count")
        .reset_index()
    )
    n = runs.groupby(keys, sort=False)["n"].first().reset_index()
    stats = stats.merge(n, on=keys)
    ref = before.set_index(["scope", "name"])["accuracy"]
    stats["gain_vs_before"] = (
        stats["mean"] - ref.reindex(pd.MultiIndex.from_frame(stats[["scope", "name"]])).to_numpy()
    )
    if CONTROL in order:
        control = stats[stats["method"] == CONTROL].set_index(["scope", "name"])["mean"]
        stats["gain_vs_none"] = (
            stats["mean"]
            - control.reindex(pd.MultiIndex.from_frame(stats[["scope", "name"]])).to_numpy()
        )
    first = before.assign(mean=before["accuracy"], sd=np.nan, min=before["accuracy"])
    first = first.assign(max=before["accuracy"], seeds=0)[
        ["method", *keys[1:], "mean", "sd", "min", "max", "seeds", "n"]
    ]
    scope_rank = {"overall": 0, "failure_slice": 1, "model_errors": 2, "class": 3}
    table = pd.concat([first, stats], ignore_index=True)
    table["_m"] = table["method"].map(lambda m: -1 if m == BEFORE else order[m])
    table["_s"] = table["scope"].map(scope_rank)
    table = table.sort_values(["_s", "name", "_m"], kind="stable").drop(columns=["_m", "_s"])
    return table.reset_index(drop=True)


def run(
    metrics: list[str | os.PathLike],
    eval_csv,
    slices_csv,
    out_csv,
    out_plot,
    *,
    eval_split: str,
    dataset: str = "",
) -> pd.DataFrame:
    """Read every method × seed's metrics; write the comparison table and its plot."""
    if not metrics:
        raise ValueError("no runs to compare: debugging.methods and debugging.seeds are empty")
    runs = pd.concat([pd.read_csv(p) for p in metrics], ignore_index=True)
    before = before_table(eval_csv, slices_csv, eval_split)
    table = summarise(runs, before)
    write_csv(table, out_csv)
    figures.comparison_plot(runs, before, out_plot, title=f"{dataset} data debugging".strip())
    overall = table[table["scope"] == "overall"].set_index("method")["mean"].round(4).to_dict()
    log.info("overall accuracy by method (mean over seeds): %s", overall)
    return table
