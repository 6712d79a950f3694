"""summary.csv: every headline number of the alignment analyses in one long table."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from lwise.alignment.analysis import SummaryRow

__all__ = ["SUMMARY_COLUMNS", "row", "summary_table"]

SUMMARY_COLUMNS = ["metric", "group", "value", "ci_low", "ci_high", "synthetic"]


def row(metric: str, group: object, value, low=np.nan, high=np.nan) -> SummaryRow:
    """One summary row; `group` names what the value is about (a model, a set, a level)."""
    return (metric, str(group), float(value), float(low), float(high))


def summary_table(rows: Iterable[SummaryRow], *, synthetic: bool) -> pd.DataFrame:
    """The rows, in the order given, as summary.csv's table."""
    out = pd.DataFrame(list(rows), columns=SUMMARY_COLUMNS[:-1])
    out["synthetic"] = synthetic
    return out
