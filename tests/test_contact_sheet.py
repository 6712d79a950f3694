"""lwise.stimuli.contact_sheet: rows across the difficulty range, capped, with an amplified
difference column and the ground-truth logit of every image (sets made here, no model)."""

import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lwise.core.config import ConfigError
from lwise.data import dirmap
from lwise.stimuli.contact_sheet import (
    ContactSheetConfig,
    choose_rows,
    contact_sheet,
    difference_sets,
)


def _sets(root, n_classes=4, per_class=5, size=16, shift=0.1):
    """A natural set with difficulty scores and two enhanced sets (images brightened)."""
    rng = np.random.default_rng(0)
    rows = []
    for c in range(n_classes):
        for i in range(per_class):
            rows.append(
                {"split": "val", "class": f"c{c}", "class_num": c, "im_path": f"c{c}/{i}.png",
                 "difficulty": rng.random()}
            )  # fmt: skip
    natural = pd.DataFrame(rows)
    versions = {}
    for name, eps in [("natural", 0), ("logit_eps1", 1), ("logit_eps2", 2)]:
        folder = root / name
        df = natural.copy()
        for key in df["im_path"]:
            pixels = np.random.default_rng(abs(hash(key)) % 2**32).random((size, size, 3)) * 0.5
            pixels = np.clip(pixels + shift * eps, 0, 1)
            (folder / key).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((pixels * 255).round().astype(np.uint8)).save(folder / key)
        if eps:
            df = df.assign(
                eps=float(eps), objective="logit", l2_distance=0.1 * eps, gt_logit_natural=1.0,
                gt_logit_enhanced=1.0 + eps, logit_gain=float(eps),
            )  # fmt: skip
        dirmap.write(df, folder / "dirmap.csv")
        versions[name] = folder
    return natural, versions


def test_rows_span_the_difficulty_range_per_class():
    natural = pd.DataFrame(
        {"class_num": [0] * 5 + [1] * 5, "difficulty": [0.5, 0.1, 0.9, 0.3, 0.7] * 2}
    )
    rows = choose_rows(natural["difficulty"], natural, per_class=3, max_rows=30)
    assert list(natural.loc[rows, "difficulty"]) == [0.1, 0.5, 0.9, 0.1, 0.5, 0.9]
    assert list(natural.loc[rows, "class_num"]) == [0, 0, 0, 1, 1, 1]


def test_rows_are_capped_by_spreading_the_classes():
    natural = pd.DataFrame({"class_num": np.repeat(np.arange(100), 4), "difficulty": 0.5})
    rows = choose_rows(natural["difficulty"], natural, per_class=2, max_rows=10)
    assert len(rows) == 10
    classes = sorted(set(natural.loc[rows, "class_num"]))
    assert classes[0] == 0 and classes[-1] == 99 and len(classes) == 5
    # More images per class than rows: one class, max_rows images.
    assert len(choose_rows(natural["difficulty"], natural, per_class=50, max_rows=3)) == 3


def test_difference_column_uses_the_largest_epsilon_of_each_objective():
    names = ["logit_eps1", "logit_eps4", "logit_eps2", "cross_entropy_eps0.5"]
    assert difference_sets(names) == ["logit_eps4", "cross_entropy_eps0.5"]


def test_sheet_scales_with_the_row_cap(tmp_path, caplog):
    _, versions = _sets(tmp_path / "sets")
    with caplog.at_level(logging.INFO, logger="lwise"):
        contact_sheet(versions, tmp_path / "all.png", per_class=3)
    assert "12 rows, 4 columns" in caplog.text  # 4 classes x 3; natural, 2 sets, 1 difference
    # The difference column: 0.5 + gain x (0.2 brighter), the gain filling the grey range.
    assert "difference ×2.5" in caplog.text
    contact_sheet(
        versions, tmp_path / "capped.png", per_class=3,
        cfg=ContactSheetConfig.from_config({"max_rows": 3, "amplify": 2}),
    )  # fmt: skip
    with Image.open(tmp_path / "all.png") as full, Image.open(tmp_path / "capped.png") as capped:
        assert full.size[0] == capped.size[0]
        assert capped.size[1] < full.size[1] / 2


def test_sheet_without_difficulty_orders_by_the_measured_logit(tmp_path, caplog):
    natural, versions = _sets(tmp_path / "sets", n_classes=2)
    dirmap.write(natural.drop(columns=["difficulty"]), versions["natural"] / "dirmap.csv")
    with caplog.at_level(logging.INFO, logger="lwise"):
        contact_sheet(versions, tmp_path / "sheet.png", per_class=2)
    assert (tmp_path / "sheet.png").stat().st_size > 0
    assert "4 rows" in caplog.text


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"report\.contact_sheet\.max_rows"):
        ContactSheetConfig.from_config({"max_rows": 0})
