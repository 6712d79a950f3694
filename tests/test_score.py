import hashlib
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lwise.data import dirmap
from lwise.data.loading import DirmapImages, eval_transform
from lwise.guide.checkpoints import save_checkpoint
from lwise.guide.load import label_column_for, load_guide
from lwise.guide.models import build_model
from lwise.guide.score import (
    ScoringConfig,
    class_name,
    min_max_difficulty,
    plot_confusion,
    score,
)


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


# --- issue 13 item 16: survivors of the mutmut 3.8.1 run over lwise/guide/score.py ---------------


def _subset(digits_folder, tmp_path, digits=range(10), per_class=2, **columns) -> Path:
    """A dirmap in tmp_path over `per_class` images per split of each of `digits`."""
    df = pd.read_csv(digits_folder / "dirmap.csv", dtype={"class": str})
    df = df[df["class_num"].isin(list(digits))]
    df = df.groupby(["split", "class_num"]).head(per_class).reset_index(drop=True)
    absolute = df["im_path"].map(lambda p: str(digits_folder / p))
    df["im_path"] = dirmap.relative_to(absolute, tmp_path)
    for name, make in columns.items():
        df[name] = make(df)
    tmp_path.mkdir(parents=True, exist_ok=True)
    df.to_csv(tmp_path / "dirmap.csv", index=False)
    return tmp_path / "dirmap.csv"


def _logits(model_path, csv) -> torch.Tensor:
    """The model's float32 logits for every row of `csv`, computed here image by image."""
    model = load_guide(model_path, trusted=False, device="cpu").model
    df = dirmap.read(csv)
    data = DirmapImages(df, csv.parent, eval_transform(32))
    with torch.no_grad():
        return model(torch.stack([data[i][0] for i in range(len(df))]))


def _score(csv, model_path, out, settings=None, **kwargs):
    kwargs = {"workers": 0, "trusted": False, **kwargs}
    cfg = ScoringConfig.from_config(settings or {})
    return score(csv, model_path, out / "dirmap.csv", out / "accuracy.csv", out / "confusion.png",
                 out / "probabilities.csv", cfg=cfg, **kwargs)  # fmt: skip


class _Figures:
    """Catches the figures `plot_confusion` closes, to read what it drew."""

    def __init__(self, monkeypatch):
        import matplotlib.pyplot as plt

        self.closed, real = [], plt.close
        monkeypatch.setattr(plt, "close", lambda fig=None: (self.closed.append(fig), real(fig)))

    def matrix(self):
        ax = self.closed[-1].axes[0]
        ticks = [[t.get_text() for t in f()] for f in (ax.get_xticklabels, ax.get_yticklabels)]
        return ax.images[0].get_array(), ticks, ax.get_xlabel(), ax.get_ylabel()


def test_score_columns_tables_and_names_follow_from_the_logits(
    digits_folder, digits_model, tmp_path, caplog, capsys, monkeypatch
):
    # Class names of the dirmap differ from the model's ("0".."9"): the model's are shown.
    csv = _subset(digits_folder, tmp_path / "in", **{"class": lambda d: "digit " + d["class"]})
    figures = _Figures(monkeypatch)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="lwise.guide.score"):
        scored = _score(csv, digits_model, out, {"batch_size": 16})
    z, y = _logits(digits_model, csv), torch.tensor(scored["class_num"].to_numpy())
    logp = z.log_softmax(1)
    assert np.allclose(scored["robust_gt_logit"], z.gather(1, y[:, None])[:, 0], atol=1e-4)
    assert (scored["predicted_class_num"] == z.argmax(1).numpy()).all()
    assert np.allclose(scored["entropy"], -(logp.exp() * logp).sum(1), atol=1e-4)
    assert np.allclose(scored["cross_entropy"], -logp.gather(1, y[:, None])[:, 0], atol=1e-4)
    gt = scored["robust_gt_logit"]  # dataset scope (the default): one min-max over all rows
    assert np.allclose(scored["difficulty"], 1 - (gt - gt.min()) / (gt.max() - gt.min()))
    probs = pd.read_csv(out / "probabilities.csv")
    assert list(probs.columns) == ["im_path"] + [str(i) for i in range(10)]
    assert np.allclose(probs.iloc[:, 1:].to_numpy(), logp.exp().numpy(), atol=1e-5)
    acc = pd.read_csv(out / "accuracy.csv", dtype={"class": str})
    assert sorted(acc.columns) == ["accuracy", "class", "label", "n", "split"]
    overall = acc[acc["class"] == "(all)"].set_index("split")
    assert (overall["label"] == -1).all() and overall["n"].to_dict() == {"train": 20, "val": 20}
    per_class = acc[acc["class"] != "(all)"]
    assert len(per_class) == 20 and (per_class["n"] == 2).all()
    assert set(per_class["class"]) == {f"digit {i}" for i in range(10)}
    cm, ticks, xlabel, ylabel = figures.matrix()
    assert ticks == [[str(i) for i in range(10)]] * 2 and (xlabel, ylabel) == ("predicted", "true")
    assert cm.sum() == 40 and np.trace(cm) == scored["correct"].sum()
    accuracy = scored["correct"].mean()
    assert f"scored 40 images with {digits_model}: accuracy {accuracy:.4f}" in caplog.text
    err = capsys.readouterr().err
    assert "scoring: 100%" in err and "3/3" in err and "batch" in err


def test_plot_confusion_counts_every_true_and_predicted_pair(tmp_path, monkeypatch):
    from types import SimpleNamespace

    figures = _Figures(monkeypatch)
    scored = pd.DataFrame({"class_num": [0, 0, 1, 2], "predicted_class_num": [0, 1, 1, 0],
                           "class": ["ant", "ant", "bee", "cat"]})  # fmt: skip
    plot_confusion(scored, "class_num", None, tmp_path / "c.png")
    cm, ticks, _, _ = figures.matrix()
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]  # rows true, columns predicted
    assert ticks == [["ant", "bee", "cat"]] * 2
    assert (tmp_path / "c.png").stat().st_size > 1000
    named = SimpleNamespace(class_names=["A", "B", "C"])
    plot_confusion(scored, "class_num", named, tmp_path / "d.png")
    assert figures.matrix()[1] == [["A", "B", "C"]] * 2


def test_class_name_prefers_the_models_names_then_the_dirmaps_then_the_id():
    from types import SimpleNamespace

    scored = pd.DataFrame(
        {"class_num": [0, 1], "class": ["cat", "dog"], "orig_class_num": [281, 162],
         "orig_class": ["tabby", "beagle"]}
    )  # fmt: skip
    model = SimpleNamespace(class_names=["c0", "c1"])
    assert class_name(model, scored, "class_num", 1) == "c1"
    assert class_name(model, scored, "class_num", 2) == "2"  # beyond the model's names
    assert class_name(None, scored, "class_num", 1) == "dog"
    assert class_name(None, scored, "orig_class_num", 162) == "beagle"
    assert class_name(None, scored, "class_num", 7) == "7"
    assert class_name(None, scored.drop(columns="orig_class"), "orig_class_num", 281) == "281"


def test_min_max_difficulty_of_a_constant_or_narrow_group():
    logit = pd.Series([2.0, 2.0, 0.1, 0.3, 0.6], index=[10, 11, 12, 13, 14])
    groups = pd.Series(["a", "a", "b", "b", "b"], index=logit.index)
    per = min_max_difficulty(logit, groups)
    assert per.index.tolist() == logit.index.tolist()
    assert np.allclose(per.to_numpy(), [0.5, 0.5, 1.0, 0.6, 0.0])  # a span of 0.5 still scales
    assert min_max_difficulty(pd.Series([3.0, 3.0], index=[5, 6])).to_dict() == {5: 0.5, 6: 0.5}


def test_present_classes_only_decides_among_the_dirmaps_classes(
    digits_folder, digits_model, tmp_path
):
    csv = _subset(digits_folder, tmp_path / "in", digits=range(5))
    scored = _score(csv, digits_model, tmp_path / "out", {"present_classes_only": True})
    z = _logits(digits_model, csv)[:, :5]
    assert (scored["predicted_class_num"] == z.argmax(1).numpy()).all()
    probs = pd.read_csv(tmp_path / "out/probabilities.csv")
    assert list(probs.columns) == ["im_path", "0", "1", "2", "3", "4"]
    assert np.allclose(probs.iloc[:, 1:].to_numpy(), z.softmax(1).numpy(), atol=1e-5)


# Digits as a two-class dataset: class_num 0 "low" (0-4), 1 "high" (5-9); the digit is kept in
# orig_class_num, as ImageNet-16 keeps the 1000-way index. (Applied in this order.)
LOW_HIGH = {
    "orig_class_num": lambda d: d["class_num"],
    "class_num": lambda d: (d["class_num"] >= 5).astype(int),
    "class": lambda d: np.where(d["class_num"] == 1, "high", "low"),
}


def test_a_finer_model_with_present_classes_only_predicts_among_the_present_fine_classes(
    digits_folder, digits_model, tmp_path
):
    csv = _subset(digits_folder, tmp_path / "in", digits=[0, 1, 2, 7, 8], **LOW_HIGH)
    scored = _score(csv, digits_model, tmp_path / "out", {"present_classes_only": True})
    z = _logits(digits_model, csv)
    present = torch.tensor([0, 1, 2, 7, 8])
    fine = present[z[:, present].argmax(1)].numpy()
    assert (scored["predicted_orig_class_num"] == fine).all()
    pooled = torch.stack([z[:, :3].amax(1), z[:, 7:9].amax(1)], 1)
    assert (scored["predicted_class_num"] == pooled.argmax(1).numpy()).all()


def test_an_explicit_label_column_is_used_as_given(digits_folder, digits_model, tmp_path):
    # "auto" would take orig_class_num here (two dataset classes, a ten-way model).
    csv = _subset(digits_folder, tmp_path / "in", **LOW_HIGH)
    scored = _score(csv, digits_model, tmp_path / "out", {"label_column": "class_num"})
    z, y = _logits(digits_model, csv), torch.tensor(scored["class_num"].to_numpy())
    assert np.allclose(scored["robust_gt_logit"], z.gather(1, y[:, None])[:, 0], atol=1e-4)
    assert "predicted_orig_class_num" not in scored.columns  # no pooling


def test_a_trusted_checkpoint_with_pickled_objects_is_scored(digits_folder, digits_model,
                                                              tmp_path):  # fmt: skip
    import dill

    record = torch.load(digits_model, weights_only=True)
    record["schedule"] = {"lr_lambda": lambda epoch: 0.1**epoch}  # as robustness files hold
    path = tmp_path / "pickled.pt"
    torch.save(record, path, pickle_module=dill)
    csv = _subset(digits_folder, tmp_path / "in", per_class=1)
    scored = _score(csv, path, tmp_path / "out", trusted=True)
    expected = _score(csv, digits_model, tmp_path / "plain")
    assert np.allclose(scored["robust_gt_logit"], expected["robust_gt_logit"])


def _scaled_model(path, scale):
    """A ten-way small_cnn whose logits are multiplied by `scale`."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, [0.5] * 3, [0.25] * 3).eval()
    with torch.no_grad():
        model.net.fc.weight.mul_(scale)
        model.net.fc.bias.mul_(scale)
    save_checkpoint(path, model, training_args={"image_size": 32})
    return path


def test_float16_overflow_is_counted_over_every_batch(digits_folder, tmp_path, caplog):
    csv = _subset(digits_folder, tmp_path / "in", per_class=1)  # 20 images, 3 batches of 8
    big = _scaled_model(tmp_path / "big.pt", 1e8)  # every logit far beyond float16's 65504
    settings = {"batch_size": 8, "fast_dtype": "float16"}
    with caplog.at_level(logging.WARNING, logger="lwise.guide.score"):
        _score(csv, big, tmp_path / "ref", settings, mode="reference")
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="lwise.guide.score"):
        fast = _score(csv, big, tmp_path / "fast", settings, mode="fast")
    assert [r.getMessage() for r in caplog.records] == [
        "20 image(s) overflowed float16 (non-finite logits): computed again in float32"
    ]
    assert np.isfinite(fast["robust_gt_logit"]).all()


def test_a_model_non_finite_in_float32_names_the_first_ten_rows(digits_folder, tmp_path):
    csv = _subset(digits_folder, tmp_path / "in", per_class=1)
    broken = _scaled_model(tmp_path / "inf.pt", float("inf"))
    rows = list(range(10))
    with pytest.raises(FloatingPointError, match=re.escape(f"20 image(s) of a batch (dirmap "
                                                           f"rows {rows}, 0-based)")):  # fmt: skip
        _score(csv, broken, tmp_path / "out", mode="reference")
