"""Visual explanations: the query beside its top exemplars, matched patch pairs in one colour.

As the reference's visualisation (anguyen8/visual-correspondence-XAI, `EMD-Corr/visualize.py`
and README "Visualize EMD-Corr explanations"): for each exemplar a copy of the query above it,
the patch pairs that drive its score boxed in the same colour on both (EMD-Corr: the 5 cells
with the largest transport mass; CHM-Corr: the 5 masked query cells with the largest cosine
and the exemplar cells they were matched to).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from lwise.core.atomic import atomic_path

COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


@dataclass
class Explanation:
    """One query under one method: images in [0, 1] (3, H, W), and per exemplar the matched
    (query cell, exemplar cell) pairs as flat row-major indices of the h×w grid."""

    method: str
    query: torch.Tensor
    query_label: str
    prediction: str
    exemplars: list[torch.Tensor]
    exemplar_labels: list[str]
    pairs: list[list[tuple[int, int]]]
    grid: tuple[int, int]
    scores: list[float] = field(default_factory=list)


TILE = 112  # pixels per image in the figure
CAPTION = 14  # pixels of text above each row


def _tile(img: torch.Tensor) -> Image.Image:
    arr = (img.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr).resize((TILE, TILE), Image.NEAREST)


def _box(draw: ImageDraw.ImageDraw, x0: int, y0: int, cell: int, grid, colour: str) -> None:
    h, w = grid
    row, col = divmod(int(cell), w)
    ch, cw = TILE / h, TILE / w
    draw.rectangle(
        [x0 + col * cw, y0 + row * ch, x0 + (col + 1) * cw - 1, y0 + (row + 1) * ch - 1],
        outline=colour,
        width=2,
    )


def plot_explanations(explanations: list[Explanation], path: str | os.PathLike) -> None:
    """Write the figure (PNG): per explanation a caption, a row of query copies and a row of
    exemplars, each exemplar captioned with its class and score."""
    if not explanations:
        raise ValueError("no explanations to draw")
    cols = max(len(e.exemplars) for e in explanations)
    block = CAPTION + TILE + CAPTION + TILE + 6
    sheet = Image.new("RGB", (cols * (TILE + 4) + 4, block * len(explanations)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, e in enumerate(explanations):
        y = i * block
        draw.text((4, y + 1), f"{e.method}: query {e.query_label} -> {e.prediction}", fill="black")
        query = _tile(e.query)
        for j, (img, label, pairs) in enumerate(
            zip(e.exemplars, e.exemplar_labels, e.pairs, strict=True)
        ):
            x = 4 + j * (TILE + 4)
            top, bottom = y + CAPTION, y + CAPTION + TILE + CAPTION
            sheet.paste(query, (x, top))
            sheet.paste(_tile(img), (x, bottom))
            for k, (qcell, ecell) in enumerate(pairs):
                colour = COLOURS[k % len(COLOURS)]
                _box(draw, x, top, qcell, e.grid, colour)
                _box(draw, x, bottom, ecell, e.grid, colour)
            score = f" {e.scores[j]:.3f}" if j < len(e.scores) else ""
            draw.text((x, bottom - CAPTION + 1), f"{label}{score}", fill="black")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def emd_pairs(cells: torch.Tensor, r: int) -> list[tuple[int, int]]:
    """(query cell m, exemplar cell s) of flat transport cells s·R + m."""
    return [(int(c) % r, int(c) // r) for c in cells.tolist()]


def chm_pairs(
    cos: torch.Tensor, matched: torch.Tensor, mask: torch.Tensor, top: int
) -> list[tuple[int, int]]:
    """The `top` masked query cells with the largest cosine and their matched exemplar cells."""
    values = torch.where(mask, cos, torch.full_like(cos, -np.inf))
    order = torch.argsort(values, descending=True)[:top]
    return [(int(m), int(matched[m])) for m in order.tolist() if bool(mask[m])]
