"""Human attention targets on the CAM grid (GRADIA.py `resize_attention_label`): area resize,
3×3 blur, divided by the maximum; in float, or in GRADIA.py's 8-bit steps.

GRADIA: Gao, Sun, Zhao, Hong, CSCW 2022; repository file `GRADIA.py`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["area_resize", "blur3", "target_map"]


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of OpenCV's INTER_AREA: each output cell averages the input pixels
    it covers, partly covered pixels by the covered fraction."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
            weights[i, j] = min(hi, j + 1) - max(lo, j)
    return weights / weights.sum(1, keepdims=True)


def area_resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D array to `shape` (rows, columns) by area averaging, in float64."""
    rows = _area_weights(image.shape[0], shape[0])
    cols = _area_weights(image.shape[1], shape[1])
    return rows @ image.astype(np.float64) @ cols.T


def blur3(image: np.ndarray) -> np.ndarray:
    """OpenCV's `GaussianBlur(img, (3, 3), 0)`: the kernel [1, 2, 1]/4 in both directions
    (sigma 0 picks OpenCV's fixed 3-tap kernel), borders reflected without repeating the edge
    (BORDER_REFLECT_101)."""
    out = image.astype(np.float64)
    for axis in (0, 1):
        mode = "reflect" if out.shape[axis] > 1 else "edge"
        pad = [(0, 0), (0, 0)]
        pad[axis] = (1, 1)
        p = np.pad(out, pad, mode=mode)
        lo, mid, hi = (np.take(p, range(k, k + out.shape[axis]), axis=axis) for k in range(3))
        out = (lo + 2 * mid + hi) / 4
    return out


def target_map(mask: np.ndarray, shape: tuple[int, int], *, reference: bool = False) -> np.ndarray:
    """The human attention target on the CAM grid: `mask` (2-D, non-zero = attended) resized to
    `shape` by area, blurred 3×3 and divided by its maximum (GRADIA.py
    `resize_attention_label`, which uses a 7×7 grid for ResNet-50 at 224 px).

    `reference=True` reproduces GRADIA.py's 8-bit pipeline: the mask ×255 as uint8, rounded to
    uint8 after the resize (half to even, OpenCV's `saturate_cast`) and after the blur (halves
    up, OpenCV's fixed-point Gaussian blur).
    """
    binary = np.asarray(mask) > 0
    if not binary.any():
        raise ValueError("empty attention mask (no pixel > 0)")
    if reference:
        small = np.clip(np.rint(area_resize(binary.astype(np.uint8) * 255, shape)), 0, 255)
        blurred = np.floor(blur3(small) + 0.5)
    else:
        blurred = blur3(area_resize(binary.astype(np.float64), shape))
    peak = blurred.max()
    if peak <= 0:
        raise ValueError(
            f"attention mask of {int(binary.sum())} pixel(s) vanishes when rounded to 8 bits on "
            f"a {shape[0]}x{shape[1]} grid (reference mode)"
        )
    return (blurred / peak).astype(np.float32)
