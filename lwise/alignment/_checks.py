"""Input checks shared by the alignment metrics: each names the argument and the problem."""

from __future__ import annotations

import numpy as np

# --- input checks -------------------------------------------------------------------------------


def _binary(values, name: str) -> np.ndarray:
    """A 1-D bool array from bools or 0/1 numbers."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    try:
        num = arr.astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected 0/1 or booleans, got dtype {arr.dtype}") from err
    bad = ~np.isin(num, (0.0, 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: expected 0/1 or booleans; element {i} is {arr[i : i + 1].tolist()[0]!r}"
        )
    return num == 1.0


def _finite(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: expected finite numbers; element {i} is {arr[i]}")
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays differ in length: {lengths}")


def _distributions(values, name: str, atol: float = 1e-6) -> np.ndarray:
    """A 2-D array of probability rows (non-negative, each summing to 1 within `atol`)."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected rows of probabilities, got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1) | (arr < 0).any(axis=1)
    bad |= ~np.isclose(arr.sum(axis=1), 1.0, rtol=0, atol=atol)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: row {i} is not a probability distribution "
            f"(non-negative, summing to 1): {arr[i].tolist()}"
        )
    return arr
