"""The contact sheet of a dataset's stimuli: a few images per class in every version, side by
side (natural, then each enhanced set), for the report."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from lwise.core.atomic import atomic_path
from lwise.data import dirmap

__all__ = ["contact_sheet"]


def contact_sheet(
    versions: dict[str, str | os.PathLike], out_png: str | os.PathLike, *, per_class: int
) -> None:
    """A grid: rows are a few images per class, columns the versions (natural, each epsilon)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = dirmap.read(Path(next(iter(versions.values()))) / "dirmap.csv")
    rows = first.sort_values(["class_num", "im_path"]).groupby("class_num").head(per_class)
    fig, axes = plt.subplots(
        len(rows), len(versions), figsize=(1.6 * len(versions), 1.6 * len(rows)), squeeze=False
    )
    for r, (_, row) in enumerate(rows.iterrows()):
        for c, (name, folder) in enumerate(versions.items()):
            ax = axes[r][c]
            path = Path(folder) / row["im_path"]
            if path.exists():
                with Image.open(path) as img:
                    ax.imshow(img.convert("RGB"))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(str(row["class"]), fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
