"""Data debugging: failure slices of the model, and accuracy on slices.

A slice is a set of images named by conditions: each class (`class=3`), each value of a dirmap
column the user names (`site=b`), and each value within each class (`class=3 & site=b`). The
failure slices are the slices of the slice split with the highest error rate that have at least
`min_slice_errors` errors; the fine-tuned models are measured on the same conditions in the
evaluation split, and on the images the model debugged got wrong there.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["accuracy_table", "failure_images", "find_slices", "in_slice", "slice_name"]

# Condition values are compared as text, as the CSV files store them.
_SEP = " & "


def slice_name(conditions: dict[str, str]) -> str:
    return _SEP.join(f"{k}={v}" for k, v in conditions.items())


def _conditions(name: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in name.split(_SEP))


def in_slice(df: pd.DataFrame, name: str) -> pd.Series:
    """Which rows of `df` belong to the slice called `name`."""
    mask = pd.Series(True, index=df.index)
    for column, value in _conditions(name).items():
        if column not in df.columns:
            raise ValueError(f"slice {name!r}: no column {column!r} in the images")
        mask &= df[column].astype(str) == value
    return mask


def _candidate_names(df: pd.DataFrame, columns: list[str]) -> list[str]:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"config debugging.slice_columns {missing}: not columns of the dataset's dirmap "
            f"({sorted(df.columns)})"
        )
    names = [slice_name({"class": c}) for c in sorted(df["class"].astype(str).unique())]
    for column in columns:
        values = sorted(df[column].dropna().astype(str).unique())
        names += [slice_name({column: v}) for v in values]
        pairs = df[["class", column]].dropna().astype(str).drop_duplicates()
        names += [
            slice_name({"class": c, column: v})
            for c, v in sorted(pairs.itertuples(index=False, name=None))
        ]
    return names


def find_slices(
    scored: pd.DataFrame, columns: list[str], *, top: int, min_errors: int
) -> pd.DataFrame:
    """Every slice of `scored` (rows with `correct`) with its size, errors and error rate, the
    `top` worst with at least `min_errors` errors flagged `failure` (ties: more errors first,
    then by name)."""
    rows = []
    for name in _candidate_names(scored, columns):
        mask = in_slice(scored, name)
        n = int(mask.sum())
        errors = int((~scored.loc[mask, "correct"].astype(bool)).sum())
        kind = "class" if list(_conditions(name)) == ["class"] else "column"
        rows.append({"slice": name, "kind": kind, "n": n, "errors": errors})
    table = pd.DataFrame(rows)
    table["error_rate"] = table["errors"] / table["n"]
    table = table.sort_values(
        ["error_rate", "errors", "slice"], ascending=[False, False, True], kind="stable"
    ).reset_index(drop=True)
    eligible = table.index[table["errors"] >= min_errors][:top]
    table["failure"] = table.index.isin(eligible)
    return table


def failure_images(scored: pd.DataFrame, slices: pd.DataFrame, names: dict[int, str]):
    """The misclassified images, with their predicted class and the failure slices they are in."""
    wrong = scored[~scored["correct"].astype(bool)].copy()
    wrong["predicted_class"] = wrong["predicted_class_num"].map(names)
    failing = slices.loc[slices["failure"], "slice"].tolist()
    wrong["failure_slices"] = [
        "; ".join(s for s in failing if in_slice(wrong.loc[[i]], s).iloc[0]) for i in wrong.index
    ]
    return wrong.sort_values(["class_num", "im_path"], kind="stable").reset_index(drop=True)


def accuracy_table(
    predicted: pd.DataFrame, failure_slices: list[str], model_errors: pd.Series
) -> pd.DataFrame:
    """Accuracy of `predicted` (rows with `correct`) overall, per class, on each failure slice and
    on the images flagged in `model_errors` (those the model debugged got wrong): columns scope,
    name, n, accuracy (NaN for an empty set)."""
    correct = predicted["correct"].astype(bool)

    def row(scope: str, name: str, mask: pd.Series) -> dict:
        n = int(mask.sum())
        return {
            "scope": scope,
            "name": name,
            "n": n,
            "accuracy": float(correct[mask].mean()) if n else float("nan"),
        }

    rows = [row("overall", "all", pd.Series(True, index=predicted.index))]
    for name in sorted(predicted["class"].astype(str).unique(), key=_natural):
        rows.append(row("class", name, predicted["class"].astype(str) == name))
    for name in failure_slices:
        rows.append(row("failure_slice", name, in_slice(predicted, name)))
    rows.append(row("model_errors", "misclassified before", model_errors.astype(bool)))
    return pd.DataFrame(rows)


def _natural(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)
