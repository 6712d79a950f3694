"""The alignment summary (`summary.csv` of `lwise.alignment.evaluate`) as the report's tables:
one table per analysis, rows the groups a number is about (a model, an image set, a class),
columns the metrics, each value with its 95% interval where the analysis gives one; marked when
the human data are simulated."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from lwise.report.html import Table, format_number, page, write_page

__all__ = ["SECTIONS", "alignment_page", "alignment_table", "summary_csv_of"]

REQUIRED = ("metric", "group", "value", "ci_low", "ci_high")

# Which analysis a summary metric comes from (the names lwise.alignment's difficulty,
# enhancement, consistency and visalign modules give their summary rows); anything else lands
# in "Other metrics", so a new analysis still shows.
SECTIONS = (
    (
        "Difficulty prediction (AUC of human correctness from the GT logit)",
        r"^(difficulty_|cv_auc)",
    ),
    ("Enhancement effect (human accuracy per image set)", r"^(human_accuracy|accuracy_gain)"),
    (
        "Model-human consistency (natural images)",
        r"^(model_accuracy|accuracy_difference|observed_consistency|error_consistency)$",
    ),
    ("VisAlign (Hellinger distance, reliability score per cost)", r"^(visalign_|reliability_)"),
)


def _cell(value, low, high) -> str:
    text = format_number(float(value))
    if pd.isna(low) and pd.isna(high):
        return text
    return f"{text}\n[{format_number(float(low))}, {format_number(float(high))}]"


def _section(metric: str) -> str:
    for title, pattern in SECTIONS:
        if re.search(pattern, metric):
            return title
    return "Other metrics"


def _pivot(part: pd.DataFrame) -> pd.DataFrame:
    """Groups as rows, metrics as columns, both in the summary's order."""
    metrics = list(dict.fromkeys(part["metric"]))
    groups = list(dict.fromkeys(part["group"]))
    cells = {
        (r.group, r.metric): _cell(r.value, r.ci_low, r.ci_high)
        for r in part.itertuples(index=False)
    }
    return pd.DataFrame(
        [[g] + [cells.get((g, m), "") for m in metrics] for g in groups],
        columns=["group"] + metrics,
    )


def alignment_page(summary: pd.DataFrame, *, title: str, synthetic: bool) -> str:
    """The HTML page of a summary table: one table per analysis (`SECTIONS`)."""
    summary = summary.assign(
        metric=summary["metric"].astype(str), group=summary["group"].fillna("").astype(str)
    )
    section = summary["metric"].map(_section)
    tables = []
    for name in dict.fromkeys(section):  # in the summary's order
        shown = _pivot(summary[section == name])
        numeric = [c for c in shown.columns if c != "group"]
        tables.append(Table(name, shown, numeric=numeric))
    intro = "Each value with its 95% interval below it, where the analysis gives one."
    return page(title, tables, intro=intro, synthetic=synthetic)


def alignment_table(
    summary_csv: str | os.PathLike, out_html: str | os.PathLike, *, dataset: str = ""
) -> pd.DataFrame:
    """Read `summary.csv`, check its columns, write the report page; synthetic when the
    table's `synthetic` column says so."""
    summary = pd.read_csv(summary_csv)
    missing = [c for c in REQUIRED if c not in summary.columns]
    if missing:
        raise ValueError(f"{summary_csv}: missing column(s) {missing}; expected {list(REQUIRED)}")
    if summary.empty:
        raise ValueError(f"{summary_csv}: no rows")
    synthetic = bool(summary["synthetic"].any()) if "synthetic" in summary.columns else False
    source = "SYNTHETIC observers" if synthetic else "human responses"
    where = f" of {dataset}" if dataset else ""
    title = f"Model-human alignment{where}, from {source}"
    write_page(out_html, alignment_page(summary, title=title, synthetic=synthetic))
    return summary


def summary_csv_of(alignment_dir: str | os.PathLike) -> Path:
    """The summary table inside an alignment output folder."""
    path = Path(alignment_dir) / "summary.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{alignment_dir}: no summary.csv (lwise.alignment.evaluate)")
    return path
