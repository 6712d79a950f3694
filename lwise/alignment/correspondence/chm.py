"""CHM-Corr: re-rank a kNN shortlist by patch correspondences from a dense matcher.

Reference: anguyen8/visual-correspondence-XAI, `CHM-Corr/src/classifier/CHMCorr.py`
(`CHMGridTransfer`, `ModifiableCHMResults.compute_score_using_cc`) and `Utils.py`, as described in
Nguyen, Taesiri & Nguyen (NeurIPS 2022). A 7×7 grid of query points is transferred into each
exemplar by CHMNet and quantised to the exemplar's 7×7 cells (int((x+1)/2·7)); each query cell
gets the cosine between its layer4 vector and that of its matched exemplar cell; the query-side
cross-correlation map, min-max normalised and binarised at T = 0.55, masks the cells; the score
is the mean of the 5 largest masked values (masked-out cells count as 0, as `np.multiply` with
the mask does).

The grid here is the backbone map's own h×w grid (7×7 for a ResNet at 224 px). CHMNet's trained
weights (`weights/pas_psi.pt`) are not available here, so the default matcher needs no training:
mutual nearest neighbours of the patch vectors (`MutualNearestNeighbours`); a query cell whose
nearest exemplar cell does not choose it back has no correspondence (NaN) and scores 0. A
CHM-style matcher can be loaded from a Python file (`load_matcher`).

Matcher interface: an object with `needs_images: bool` and
``match(query_maps, exemplar_maps, query_images, exemplar_images) -> points`` where the maps are
(B, C, h, w) and (B, N, C, h, w), the images (B, 3, H, W) and (B, N, 3, H, W) in [0, 1] (None
unless `needs_images`), and `points` (B, N, h·w, 2) holds, for each query cell centre in
row-major order (`grid_points`), the transferred point (x, y) in the exemplar, normalised to
[−1, 1] as CHMNet's `Geometry.transfer_kps` returns them; NaN where there is none.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch.nn import functional as F

from lwise.alignment.correspondence.emd import cc_weights, flat

THRESHOLD = 0.55  # CHM-Corr --T
TOP = 5  # CHMCorr.py: mean of the top-5 masked cosines


@runtime_checkable
class Matcher(Protocol):
    needs_images: bool

    def match(
        self,
        query_maps: torch.Tensor,
        exemplar_maps: torch.Tensor,
        query_images: torch.Tensor | None,
        exemplar_images: torch.Tensor | None,
    ) -> torch.Tensor: ...


def grid_points(h: int, w: int, device=None) -> torch.Tensor:
    """Centres (x, y) of an h×w grid's cells in [−1, 1], row-major, (h·w, 2)."""
    ys = (torch.arange(h, device=device) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device) + 0.5) / w * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=-1)


def quantise(points: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat cell index row·w + col of each (x, y) in [−1, 1] (int((x+1)/2·w), as CHMCorr.py),
    clamped to the grid, and whether the point exists (not NaN)."""
    valid = ~torch.isnan(points).any(-1)
    p = torch.nan_to_num(points, nan=0.0)
    col = ((p[..., 0] + 1) / 2 * w).long().clamp(0, w - 1)
    row = ((p[..., 1] + 1) / 2 * h).long().clamp(0, h - 1)
    return row * w + col, valid


class MutualNearestNeighbours:
    """Correspondences that need no training: query cell m matches exemplar cell s when s is
    m's most similar cell (cosine of patch vectors) and m is s's."""

    needs_images = False

    def match(self, query_maps, exemplar_maps, query_images=None, exemplar_images=None):
        h, w = query_maps.shape[-2:]
        q = F.normalize(flat(query_maps).float(), dim=1)
        g = F.normalize(flat(exemplar_maps).float(), dim=2)
        cos = torch.einsum("bcm,bncs->bnms", q, g)  # (B, N, query m, exemplar s)
        best_s = cos.argmax(-1)  # (B, N, M)
        best_m = cos.argmax(-2)  # (B, N, S)
        mutual = best_m.gather(-1, best_s) == torch.arange(cos.shape[-2], device=cos.device)
        centres = grid_points(h, w, cos.device)[best_s]  # (B, N, M, 2)
        return torch.where(mutual.unsqueeze(-1), centres, torch.nan)


def load_matcher(path: str | os.PathLike, options: dict | None = None) -> Matcher:
    """A matcher from a Python file defining ``build_matcher(**options)``.

    The file is executed: give only files you trust (it is your own configuration).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"matcher file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"lwise_user_matcher_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    build = getattr(module, "build_matcher", None)
    if not callable(build):
        raise ValueError(f"{path} defines no function build_matcher(**options)")
    matcher = build(**(options or {}))
    if not isinstance(matcher, Matcher):
        raise TypeError(
            f"{path}: build_matcher returned {type(matcher).__name__}, which lacks "
            "`needs_images` or `match(query_maps, exemplar_maps, query_images, exemplar_images)`"
        )
    return matcher


def get_matcher(name: str = "mnn", path: str | None = None, options: dict | None = None):
    """The configured matcher: a file's (`path`) or the built-in mutual nearest neighbours."""
    if path:
        return load_matcher(path, options)
    if name != "mnn":
        raise ValueError(f"CHM matcher {name!r}: expected 'mnn' or a matcher_file")
    return MutualNearestNeighbours()


def chm_corr_scores(
    query_maps: torch.Tensor,
    exemplar_maps: torch.Tensor,
    points: torch.Tensor,
    *,
    threshold: float = THRESHOLD,
    top: int = TOP,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CHM-Corr scores (B, N) from transferred points (B, N, R, 2).

    Returns (scores, matched exemplar cell per query cell (B, N, R), mask of the query cells
    that count (B, N, R): matched and in the binarised cross-correlation map, and the cosine of
    each query cell with its matched cell (B, N, R)).
    """
    b, n = exemplar_maps.shape[:2]
    h, w = query_maps.shape[-2:]
    r = h * w
    if points.shape != (b, n, r, 2):
        raise ValueError(
            f"the matcher returned points of shape {tuple(points.shape)}, expected "
            f"{(b, n, r, 2)} (batch, exemplars, query cells, xy)"
        )
    cells, valid = quantise(points.to(query_maps.device).float(), h, w)
    q = F.normalize(flat(query_maps).float(), dim=1)  # (B, C, R)
    g = F.normalize(flat(exemplar_maps).float(), dim=2)  # (B, N, C, R)
    matched = g.gather(-1, cells.unsqueeze(2).expand(-1, -1, g.shape[2], -1))
    cos = (q.unsqueeze(1) * matched).sum(2)  # (B, N, R): query cell m vs its matched cell
    query_w, _ = cc_weights(flat(query_maps).float(), flat(exemplar_maps).float())
    lo, hi = query_w.amin(-1, keepdim=True), query_w.amax(-1, keepdim=True)
    normalised = (query_w - lo) / (hi - lo).clamp(min=1e-12)  # Utils.normalize_array
    mask = (normalised >= threshold) & valid  # Utils.generate_mask: >= t
    masked = torch.where(mask, cos, torch.zeros_like(cos))
    scores = torch.topk(masked, min(top, r), dim=-1).values.mean(-1)
    return scores, cells, mask, cos
