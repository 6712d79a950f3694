"""Datasets that ship with the workflow's dependencies, so the default run needs no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(
    dest: str | Path, *, size: int = 32, val_fraction: float = 0.2, seed: int = 0
) -> int:
    """Write scikit-learn's bundled handwritten digits (1,797 8×8 scans) as RGB PNGs.

    The layout is the one an ImageFolder archive would extract to:
    `<dest>/digits/<train|val>/<digit>/digit_<index>.png`, with a stratified, seeded split.
    Returns the number of images written.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    index = np.arange(len(data.target))
    train_idx, _ = train_test_split(
        index, test_size=val_fraction, random_state=seed, stratify=data.target
    )
    train = set(train_idx.tolist())
    root = Path(dest) / "digits"
    for i, (pixels, label) in enumerate(zip(data.images, data.target, strict=True)):
        split = "train" if i in train else "val"
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        # Scans hold ink levels 0..16; draw dark ink on white paper, as a person would see it.
        gray = (255 - pixels * (255 / 16)).round().astype(np.uint8)
        img = Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BILINEAR)
        img.convert("RGB").save(folder / f"digit_{i:04d}.png")
    return len(index)


BUILTIN_DATASETS = {"digits": write_digits}
