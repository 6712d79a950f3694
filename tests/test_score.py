import hashlib

import numpy as np
import pandas as pd
import pytest

from lwise.data import dirmap
from lwise.guide.load import label_column_for
from lwise.guide.score import ScoringConfig, min_max_difficulty, score


def test_label_column_fits_the_model():
    i16 = pd.DataFrame({"class": ["dog", "fish"], "class_num": [0, 6], "orig_class_num": [151, 0]})
    assert label_column_for(i16, 1000) == "orig_class_num"  # the 1000-way ImageNet model
    own = pd.DataFrame({"class": ["a", "b"], "class_num": [0, 1], "orig_class_num": [5, 9]})
    assert label_column_for(own, 2) == "class_num"
    with pytest.raises(ValueError, match="no label column fits a 3-class model"):
        label_column_for(pd.DataFrame({"class": ["a"], "class_num": [7]}), 3)


def test_min_max_difficulty_over_dataset_and_per_class():
    logit = pd.Series([1.0, 3.0, 5.0, 2.0, 4.0])
    assert min_max_difficulty(logit).tolist() == [1.0, 0.5, 0.0, 0.75, 0.25]
    per = min_max_difficulty(logit, pd.Series(["a", "a", "a", "b", "b"]))
    assert per.tolist() == [1.0, 0.5, 0.0, 1.0, 0.0]


def test_scoring_writes_new_dirmap_and_reports(digits_folder, digits_model, tmp_path):
    source = digits_folder / "dirmap.csv"
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    out = tmp_path / "difficulty"
    scored = score(
        source, digits_model, out / "dirmap.csv", out / "accuracy.csv", out / "confusion.png",
        out / "probabilities.csv", cfg=ScoringConfig.from_config({"difficulty_scope": "class"}),
        workers=0, trusted=False,
    )  # fmt: skip
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before  # input untouched
    df = dirmap.read(out / "dirmap.csv")  # im_path resolves from the new folder
    assert df["im_path"].str.startswith("../").all()
    for col in ("robust_gt_logit", "predicted_class_num", "correct", "entropy", "cross_entropy"):
        assert col in df.columns
    assert scored["correct"].mean() > 0.6
    # The right answer's logit is larger on the images the model gets right.
    assert (
        df.loc[df["correct"], "robust_gt_logit"].mean()
        > df.loc[~df["correct"], "robust_gt_logit"].mean()
    )
    per_class = df.groupby("class")["difficulty"].agg(["min", "max"])
    assert (per_class["min"] == 0).all() and (per_class["max"] == 1).all()
    probs = pd.read_csv(out / "probabilities.csv")
    assert list(probs.columns) == ["im_path"] + [str(i) for i in range(10)]
    assert np.allclose(probs.iloc[:, 1:].sum(axis=1), 1, atol=1e-5)
    acc = pd.read_csv(out / "accuracy.csv")
    overall = acc[acc["class"] == "(all)"].set_index("split")["accuracy"]
    assert overall["val"] == pytest.approx(df.loc[df["split"] == "val", "correct"].mean())
    assert (out / "confusion.png").stat().st_size > 1000
