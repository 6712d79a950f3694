"""VisAlign: abstention rules, metrics, the report and the VisAlign-layout definer (no model)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from lwise.alignment import abstention
from lwise.alignment.abstention import ModelOutputs
from lwise.alignment.analysis import EvaluationConfig
from lwise.alignment.visalign import report, workflow
from lwise.alignment.visalign.settings import VisAlignConfig, check_training
from lwise.core.config import SCHEMA, ConfigError
from lwise.data import definers, dirmap
from lwise.data.visalign_layout import CLASSES, GOLD_COLUMNS, VisAlignLayoutError, read_gold

SEVEN = ["deepensemble", "knn", "mcdropout", "mds", "msp", "odin", "tapudd"]


def test_the_seven_methods_are_registered_and_in_the_schema():
    assert sorted(abstention.ABSTENTION) == SEVEN
    props = yaml.safe_load(SCHEMA.read_text())["properties"]
    assert sorted(props["visalign"]["properties"]["methods"]["default"]) == SEVEN
    assert sorted(props["evaluation"]["properties"]["abstention"]["enum"]) == SEVEN
    assert "visalign" in definers.DEFINERS


def test_reference_rule_reproduces_the_hand_computed_abstention():
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]])
    # Entropies 0.3251, 0.6931, 0.6109 nats; min-max -> 0, 1, 0.7766; a = 1 - that.
    a = abstention.abstention_probability("msp", ModelOutputs(probs), "reference")
    h = -(probs * np.log(probs)).sum(1)
    expected = 1 - (h - h.min()) / (h.max() - h.min())
    assert a == pytest.approx(expected)
    assert a[0] == 1.0 and a[1] == 0.0  # the most confident image abstains fully
    # Aligned: a rises with uncertainty (1 - MSP), no normalisation.
    aligned = abstention.abstention_probability("msp", ModelOutputs(probs), "aligned")
    assert aligned == pytest.approx([0.1, 0.5, 0.3])


def test_reference_exact_keeps_the_float32_quirks():
    # KNN scores (higher: in-distribution). float32(0.1) > 0.1 and float32(0.7) < 0.7, so the
    # reference's float32 min-max gives s~ < 0 (a > 1, unclipped) and s~ > 1 (a = 1).
    outputs = ModelOutputs(np.full((2, 2), 0.5), raw={"knn": np.array([0.1, 0.7])})
    exact = abstention.abstention_probability("knn", outputs, "reference_exact")
    assert exact[0] > 1 and exact[1] == 1.0
    assert abstention.abstention_probability("knn", outputs, "reference") == pytest.approx([1, 0])
    assert abstention.abstention_probability("knn", outputs, "aligned") == pytest.approx([1, 0])
    q = abstention.raw_output(np.array([[0.6, 0.4], [0.5, 0.5]]), exact)
    assert q[0, :2].tolist() == [0, 0] and q[0, 2] == exact[0] and q[1].tolist() == [0, 0, 1]


def test_probability_methods_collapse_as_the_reference_and_as_aligned():
    # Two images, 3 passes/members of a 2-class softmax.
    stack = np.array([[[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]], [[0.5, 0.5], [0.6, 0.4], [0.4, 0.6]]])
    out = ModelOutputs(stack[:, 0], raw={"mcdropout": stack, "deepensemble": stack})
    mean = stack.mean(1)
    assert abstention.collapse("mcdropout", out, "aligned") == pytest.approx(1 - mean.max(1))
    double = np.exp(mean) / np.exp(mean).sum(1, keepdims=True)  # the reference's double softmax
    ref = -(double * np.log(double)).sum(1)
    assert abstention.collapse("mcdropout", out, "reference") == pytest.approx(ref)
    member_h = -(stack * np.log(stack)).sum(2).mean(1)
    assert abstention.collapse("deepensemble", out, "reference") == pytest.approx(member_h)
    a = abstention.abstention_probability("deepensemble", out, "aligned")
    assert a[1] > a[0]  # the split ensemble abstains more
    with pytest.raises(ValueError, match="needs the model's raw knn scores"):
        abstention.collapse("knn", out)


def test_all_equal_scores_and_unknown_names():
    out = ModelOutputs(np.full((3, 2), 0.5), raw={"mds": np.zeros(3)})
    assert abstention.abstention_probability("mds", out).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="unknown abstention method"):
        abstention.collapse("nope", out)
    with pytest.raises(ValueError, match="unknown abstention rule"):
        abstention.collapse("msp", out, "strict")


def test_hellinger_and_submission_by_hand():
    g = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    q = np.array([[0.25, 0.25, 0.5], [0.0, 0.0, 1.2]])  # the second as the reference leaves it
    h = report.hellinger(g, q)
    assert h[0] == pytest.approx(np.sqrt((0.5**2 + 0.25 + 0.5) / 2))
    assert h[1] == pytest.approx(abs(np.sqrt(1.2) - 1) / np.sqrt(2))
    sub = report.submission(["a.jpg", "b.jpg"], q)
    assert sub["a.jpg"] == pytest.approx([0.25, 0.25, 0.5]) and sub["b.jpg"] is None


def _tiny_test(tmp_path):
    """Four test images, classes x/y: Must-Act x, Must-Act y, Must-Abstain, Uncertain."""
    rows = []
    golds = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.2, 0.3]]
    for i, (g, cat, grp) in enumerate(
        zip(golds, [1, 1, 4, 8], ["Must-Act", "Must-Act", "Must-Abstain", "Uncertain"], strict=True)
    ):
        Image.new("RGB", (4, 4)).save(tmp_path / f"t{i}.png")
        label = ["x", "y", "abstain"][int(np.argmax(g))]
        rows.append({"split": "test", "class": label, "class_num": int(np.argmax(g)),
                     "im_path": f"t{i}.png", "category": cat, "group": grp,
                     "file_name": f"t{i}.png", "gold_x": g[0], "gold_y": g[1],
                     "gold_abstain": g[2], "synthetic": True})  # fmt: skip
    dirmap.write(pd.DataFrame(rows), tmp_path / "dirmap.csv")
    return tmp_path / "dirmap.csv"


def _scores(path, probs, knn):
    t = pd.DataFrame({"image": [f"t{i}.png" for i in range(4)]})
    t["p_x"], t["p_y"] = probs[:, 0], probs[:, 1]
    t["msp_aligned"] = 1 - probs.max(1)
    t["msp_reference"] = -(probs * np.log(probs)).sum(1)
    t["knn_aligned"], t["knn_reference"] = -knn, knn
    t.to_csv(path, index=False)
    return path


def test_report_tables_by_hand(tmp_path):
    test_csv = _tiny_test(tmp_path)
    p1 = np.array([[0.8, 0.2], [0.7, 0.3], [0.5, 0.5], [0.6, 0.4]])
    p2 = np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.5, 0.5]])
    knn = np.array([0.0, -1.0, -4.0, -2.0])
    scores = {"m": {"1": _scores(tmp_path / "s1.csv", p1, knn),
                    "2": _scores(tmp_path / "s2.csv", p2, knn)}}  # fmt: skip
    out = tmp_path / "out"
    table = report.evaluate(
        test_csv, scores, out, methods=["msp", "knn", "deepensemble"], rule="aligned", costs=[0, 2]
    )
    row = table[(table["seed"] == "1") & (table["method"] == "msp") & (table["subset"] == "all")]
    a = 1 - p1.max(1)
    q = np.column_stack([p1 * (1 - a)[:, None], a])
    gold = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.2, 0.3]])
    h = np.linalg.norm(np.sqrt(gold) - np.sqrt(q), axis=1) / np.sqrt(2)
    assert row["mean_hellinger"].item() == pytest.approx(h.mean())
    # q: (.64 .16 .2), (.49 .21 .3), (.25 .25 .5), (.36 .24 .4): decisions x, x, abstain,
    # abstain against gold majorities x, y, abstain, x: +1, -c, +1, 0.
    assert row["reliability_c0"].item() == pytest.approx(2 / 4)
    assert row["reliability_c2"].item() == pytest.approx((2 - 2) / 4)
    knn_row = table[(table["seed"] == "1") & (table["method"] == "knn") & (table["subset"] == "4")]
    assert knn_row["abstain_rate"].item() == 1.0  # the farthest image abstains fully
    assert set(table["seed"]) == {"1", "2", "ensemble"}
    seeds = pd.read_csv(out / "visalign_seeds.csv")
    both = table[(table["method"] == "msp") & (table["subset"] == "all")]["mean_hellinger"]
    got = seeds[(seeds["method"] == "msp") & (seeds["subset"] == "all")]
    assert got["mean_hellinger_mean"].item() == pytest.approx(both.mean())
    assert got["mean_hellinger_sd"].item() == pytest.approx(both.std(ddof=1))
    assert (table["synthetic"]).all()
    sub = json.loads((out / "submissions" / "m_knn_1.json").read_text())
    assert sub["t2.png"] is None and sum(sub["t0.png"]) == pytest.approx(1)
    for name in ("visalign.csv", "visalign_images.csv", "visalign_heatmap.png",
                 "visalign_reliability.png"):  # fmt: skip
        assert (out / name).is_file()


def test_report_refuses_scores_that_miss_images(tmp_path):
    test_csv = _tiny_test(tmp_path)
    path = _scores(tmp_path / "s.csv", np.full((4, 2), 0.5), np.zeros(4))
    pd.read_csv(path).iloc[1:].to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"s.csv: no scores for 1 test image"):
        report.evaluate(test_csv, {"m": {"1": path}}, tmp_path / "o", methods=["msp"],
                        rule="aligned", costs=[0])  # fmt: skip


def test_settings_fill_nested_defaults_and_check_names():
    cfg = VisAlignConfig.from_config({"odin": {"noise": 0}})
    assert cfg.odin == {"temperature": 1000, "noise": 0}  # odin.yaml's T; our noise
    assert cfg.knn["k"] == 50 and cfg.mcdropout["passes"] == 5
    with pytest.raises(ConfigError, match="visalign.methods"):
        VisAlignConfig.from_config({"methods": ["msp", "energy"]})
    with pytest.raises(ConfigError, match="'seeds' is a dependency of 'arch'"):
        VisAlignConfig.from_config({"models": {"vit": {"arch": "vit_30_16"}}})


def test_baselines_train_with_the_sections_settings_then_their_own():
    config = {
        "visalign": {
            "train": {"optimizer": "adamw", "lr": 1e-5, "schedule": "plateau", "epochs": 9},
            "models": {"vit": {"arch": "vit_30_16", "seeds": [45], "train": {"epochs": 3}}},
        }
    }
    guide = {"arch": "small_cnn", "lr": 0.05, "adversarial": True, "image_size": 32}
    got = workflow.train_settings(config, "vit", 45, guide)
    assert got == {
        "arch": "vit_30_16", "lr": 1e-5, "adversarial": False, "image_size": 32,
        "optimizer": "adamw", "schedule": "plateau", "epochs": 3, "seed": 45,
    }  # fmt: skip
    check_training(config["visalign"])
    config["visalign"]["train"]["optimiser"] = "adamw"
    with pytest.raises(ConfigError, match=r"visalign.train: .*'optimiser' was unexpected"):
        check_training(config["visalign"])
    del config["visalign"]["train"]["optimiser"]
    config["visalign"]["models"]["vit"]["train"]["schedule"] = "reduce"
    with pytest.raises(ConfigError, match=r"visalign.models.vit.train: .*schedule 'reduce'"):
        check_training(config["visalign"])


def test_evaluation_reads_only_its_methods_settings():
    section = VisAlignConfig.from_config({}).method_settings()
    assert workflow.evaluation_settings({"visalign": section}, "knn") == {
        "knn": {"k": 50}, "batch_size": 64,
    }  # fmt: skip
    assert workflow.evaluation_settings({"visalign": section}, "mcdropout").keys() == {
        "mcdropout", "batch_size",
    }  # fmt: skip


def test_an_ensemble_in_the_alignment_evaluation_is_a_config_error():
    with pytest.raises(
        ConfigError,
        match=r"evaluation.abstention 'deepensemble': a Deep Ensemble averages the softmaxes of "
        r"several models, and the alignment evaluation has one",
    ):
        EvaluationConfig.from_config({"abstention": "deepensemble"})
    assert not EvaluationConfig.from_config({}).needs_model  # msp: the softmax only
    assert EvaluationConfig.from_config({"abstention": "odin"}).needs_model
    assert not EvaluationConfig.from_config(
        {"abstention": "odin", "analyses": ["difficulty"]}
    ).needs_model


# --- the VisAlign-layout definer ---------------------------------------------------------------


def _layout(root, gold: dict, fmt: str = "json"):
    """A tiny VisAlign folder: 2 train and 1 eval image per class, one test image per category."""
    for folder, n in (("final_train", 2), ("final_eval", 1)):
        d = root / "train_split_filenames" / folder
        d.mkdir(parents=True, exist_ok=True)
        for cls in CLASSES:
            names = [f"{cls}_{folder}_{i}.jpg" for i in range(n)]
            (d / f"{cls}.txt").write_text("".join(f"imagenet21k/{x}\n" for x in names))
            for x in names:
                (root / "train_files").mkdir(exist_ok=True)
                Image.new("RGB", (8, 8)).save(root / "train_files" / x)
    (root / "open_test_set" / "label").mkdir(parents=True)
    for cat in range(1, 9):
        name = f"img{cat}.jpg"
        (root / "open_test_set" / "label" / f"category{cat}.txt").write_text(f"src{cat}/{name}\n")
        (root / "open_test_set" / f"src{cat}").mkdir()
        Image.new("RGB", (8, 8)).save(root / "open_test_set" / f"src{cat}" / name)
    if fmt == "json":
        (root / "open_test_set" / "labels.json").write_text(json.dumps(gold))
    elif fmt == "pk":
        with open(root / "open_test_set" / "labels.pk", "wb") as f:
            pickle.dump({k: np.asarray(v) for k, v in gold.items()}, f)
    else:
        df = pd.DataFrame.from_dict(gold, orient="index", columns=[*CLASSES, "abstain"])
        df.rename_axis("file_name").reset_index().to_csv(root / "open_test_set" / "labels.csv")


def _gold():
    eye = np.eye(11)
    gold = {f"img{c}.jpg": eye[c - 1].tolist() for c in (1, 2, 3)}
    gold |= {f"img{c}.jpg": eye[10].tolist() for c in (4, 5, 6, 7)}
    gold["img8.jpg"] = [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]  # counts: normalised to 0.4 / 0.6
    return gold


@pytest.mark.parametrize("fmt", ["json", "csv", "pk"])
def test_definer_reads_the_layout(tmp_path, fmt):
    _layout(tmp_path / "raw", _gold(), fmt)
    train = definers.define("visalign", tmp_path / "raw", tmp_path / "train.csv")
    assert train.groupby("split").size().to_dict() == {"train": 20, "val": 10}
    assert train.drop_duplicates("class").set_index("class")["class_num"]["human"] == 9
    options = {"part": "open_test", "trusted": fmt == "pk"}
    test = definers.define("visalign", tmp_path / "raw", tmp_path / "test.csv", **options)
    test = test.set_index("file_name")
    assert test.loc["img1.jpg", "class"] == "tiger" and test.loc["img1.jpg", "group"] == "Must-Act"
    assert test.loc["img5.jpg", ["class", "class_num"]].tolist() == ["abstain", 10]
    assert test.loc["img8.jpg", "group"] == "Uncertain"
    assert test.loc["img8.jpg", ["gold_tiger", "gold_abstain"]].tolist() == pytest.approx(
        [0.4, 0.6]
    )
    assert list(GOLD_COLUMNS) == [c for c in test.columns if c.startswith("gold_")]


def test_definer_refuses_an_untrusted_pickle_and_bad_rows(tmp_path):
    raw = tmp_path / "raw"
    _layout(raw, _gold(), "pk")
    with pytest.raises(VisAlignLayoutError, match=r"labels.pk: a pickle runs code.*trusted: true"):
        definers.define("visalign", raw, tmp_path / "t.csv", part="open_test")
    bad = _gold() | {"img3.jpg": [1, 2]}
    (raw / "open_test_set" / "labels.json").write_text(json.dumps(bad))
    with pytest.raises(VisAlignLayoutError, match=r"labels.json: 'img3.jpg': expected 11"):
        read_gold(raw / "open_test_set" / "labels.json")
    (raw / "open_test_set" / "src2" / "img2.jpg").unlink()
    (raw / "open_test_set" / "labels.json").write_text(json.dumps(_gold()))
    with pytest.raises(VisAlignLayoutError, match=r"category2.txt:1: image 'src2/img2.jpg'"):
        definers.define("visalign", raw, tmp_path / "t.csv", part="open_test", labels=None)
    (raw / "train_split_filenames" / "final_eval" / "zebra.txt").write_text("imagenet21k/no.jpg\n")
    with pytest.raises(VisAlignLayoutError, match=r"final_eval/zebra.txt:1: image"):
        definers.define("visalign", raw, tmp_path / "t.csv")


def _raw_for(method: str, probs: np.ndarray) -> ModelOutputs:
    """Raw scores where image 0 is confident/near, 1 uncertain/far, 2 certain/nearest."""
    stack = np.stack([probs, probs, probs], axis=1)
    raw = {
        "odin": probs,
        "mcdropout": stack,
        "deepensemble": stack,
        "mds": np.array([-2.0, -9.0, -0.5]),
        "knn": np.array([-0.2, -1.5, -0.1]),
        "tapudd": np.array([-3.0, -20.0, -1.0]),
    }
    return ModelOutputs(probs, raw={method: raw[method]} if method in raw else {})


@pytest.mark.parametrize("method", sorted(abstention.ABSTENTION))
@pytest.mark.parametrize("rule", abstention.RULES)
def test_every_method_gives_abstention_in_the_right_direction(method, rule):
    probs = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [0.98, 0.01, 0.01]])
    a = abstention.abstention_probability(method, _raw_for(method, probs), rule)
    top = 1 + 1e-6 if rule == "reference_exact" else 1  # float32 min-max: a may pass 1
    assert a.shape == (3,) and ((a >= 0) & (a <= top)).all()
    if rule == "reference_exact":
        return  # its float32 quirk can make the top score abstain (see the test above)
    if rule == "aligned" or abstention.ABSTENTION[method].kind == "distance":
        assert a[1] >= a[0] >= a[2]  # the uncertain / far image abstains most
    else:  # the reference's entropy rule inverts probability-type methods
        assert a[1] <= a[0] <= a[2]
