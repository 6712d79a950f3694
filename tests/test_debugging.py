"""Data debugging: each selection method against a hand-computed case, slices, the pool, the
settings and what the workflow asks of the config. The planted-bug run is in
test_debugging_bug.py."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, make_image, run_workflow, tiny_config

from lwise.core.config import ConfigError, subschema
from lwise.data import dirmap
from lwise.data.loading import DirmapImages, eval_transform
from lwise.debugging import data, selection, signals, slices, workflow
from lwise.debugging.retrain import base_config, finetune_config, replayed, train_base
from lwise.debugging.settings import DebuggingConfig
from lwise.guide.models import build_model


def pool_of(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {
        "split": ["train"] * n,
        "class": ["a"] * n,
        "class_num": [0] * n,
        "im_path": [f"p{i}.png" for i in range(n)],
        "source": ["pool"] * n,
    }
    return pd.DataFrame(base | columns)


def chosen_paths(method, pool, embeddings=None, **kw) -> list[str]:
    embeddings = np.zeros((len(pool), 2)) if embeddings is None else embeddings
    return selection.select(method, pool, embeddings, **kw)["im_path"].tolist()


def test_the_registry_is_the_schemas_list_of_methods():
    names = subschema("debugging")["properties"]["methods"]["items"]["enum"]
    assert sorted(names) == sorted(selection.METHODS)
    with pytest.raises(ValueError, match="registered twice"):
        selection.register_method("S-Random")(lambda c: c)


def test_s_similarity_takes_the_closest_to_the_mean_error_embedding():
    # Errors of class 0 at (1, 1) and (1, -1): anchor (1, 0); squared distances of the
    # candidates (0,0), (1,0), (3,0), (0,2) are 1, 0, 4, 5.
    scored = pd.DataFrame({"class_num": [0, 0, 0], "correct": [False, False, True]})
    emb = np.array([[1.0, 1.0], [1.0, -1.0], [9.0, 9.0]])
    anchors = selection.anchors(scored, emb, "class_mean")
    assert np.allclose(anchors[0][0], [1, 0]) and anchors[0][1] == "errors"
    pool = pool_of(gt_logit=[0.0] * 4)
    cand = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    out = selection.select("S-Similarity", pool, cand, budget=2, seed=0, class_anchors=anchors)
    assert out["im_path"].tolist() == ["p1.png", "p0.png"]
    assert out["selection_score"].tolist() == [0.0, 1.0]
    assert set(out["anchor"]) == {"errors"}


def test_s_similarity_without_errors_falls_back_or_skips():
    scored = pd.DataFrame({"class_num": [0, 0, 1], "correct": [True, True, False]})
    emb = np.array([[0.0, 2.0], [2.0, 0.0], [5.0, 5.0]])
    fallback = selection.anchors(scored, emb, "class_mean")
    assert np.allclose(fallback[0][0], [1, 1]) and fallback[0][1] == "class_mean"
    skipped = selection.anchors(scored, emb, "skip")
    assert 0 not in skipped and np.allclose(skipped[1][0], [5, 5])
    pool = pool_of(gt_logit=[0.0, 0.0])
    out = selection.select(
        "S-Similarity", pool, np.zeros((2, 2)), budget=2, seed=0, class_anchors=skipped
    )
    assert out.empty


def test_s_active_takes_the_highest_entropy():
    logits = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [1.0, 1.0, -1e9]])
    h = signals.entropy(logits)
    # [10, 0, 0]: p = (1, e, e)/(1 + 2e) with e = exp(-10), H = log(1 + 2e) + 20e/(1 + 2e).
    e = np.exp(-10)
    expected = [np.log(3), np.log(1 + 2 * e) + 20 * e / (1 + 2 * e), np.log(2)]
    assert h.tolist() == pytest.approx(expected, rel=1e-4)
    pool = pool_of(entropy=h.tolist())
    assert chosen_paths("S-Active", pool, budget=2, seed=0) == ["p0.png", "p2.png"]


def test_l_wise_takes_the_lowest_ground_truth_logit_first():
    pool = pool_of(gt_logit=[2.0, -1.0, 0.5, 3.0])
    assert chosen_paths("L-WISE", pool, budget=3, seed=0) == ["p1.png", "p2.png", "p0.png"]


def test_l_wise_band_keeps_the_band_hardest_first():
    # GT logits 4..0 in one class: difficulty 1 - (L - 0)/4 = 0, .25, .5, .75, 1.
    pool = pool_of(gt_logit=[4.0, 3.0, 2.0, 1.0, 0.0])
    pool["difficulty"] = signals.add_difficulty(pool, "class")
    assert pool["difficulty"].tolist() == [0, 0.25, 0.5, 0.75, 1]
    out = chosen_paths("L-WISE-band", pool, budget=5, seed=0, band=(0.4, 0.8))
    assert out == ["p3.png", "p2.png"]  # difficulty .75 then .5; 1.0 is outside the band


def test_difficulty_scope_pool_spans_classes_and_sources_apart():
    pool = pd.DataFrame(
        {
            "class_num": [0, 0, 1, 1, 1],
            "source": ["pool", "pool", "pool", "pool", "G-x"],
            "gt_logit": [0.0, 4.0, 2.0, 1.0, 7.0],
        }
    )
    assert signals.add_difficulty(pool, "pool").tolist() == [1, 0, 0.5, 0.75, 0.5]
    assert signals.add_difficulty(pool, "class").tolist() == [1, 0, 0, 1, 0.5]


def test_s_random_is_a_seeded_uniform_draw_per_class():
    pool = pool_of(gt_logit=[0.0] * 6)
    # Hand-computed: the candidates whose permutation positions are lowest.
    perm = np.random.default_rng([3, 0]).permutation(6)
    expected = [f"p{i}.png" for i in np.argsort(perm)[:2]]
    assert chosen_paths("S-Random", pool, budget=2, seed=3) == expected
    counts = pd.Series(
        [p for s in range(300) for p in chosen_paths("S-Random", pool, budget=2, seed=s)]
    ).value_counts()
    assert len(counts) == 6 and counts.between(70, 130).all()  # 100 each when uniform


def test_none_and_generated_sets():
    pool = pool_of(gt_logit=[0.0] * 4)
    pool.loc[2:, "source"] = "G-sd"
    assert chosen_paths("none", pool, budget=3, seed=0) == []
    assert sorted(chosen_paths("G-sd", pool, budget=5, seed=0)) == ["p2.png", "p3.png"]
    assert set(chosen_paths("S-Random", pool, budget=5, seed=0)) == {"p0.png", "p1.png"}
    with pytest.raises(ValueError, match="no candidate images with source 'G-other'"):
        chosen_paths("G-other", pool, budget=1, seed=0)
    with pytest.raises(ValueError, match="unknown selection method 'S-Nope'"):
        chosen_paths("S-Nope", pool, budget=1, seed=0)


def test_budget_is_per_class_and_a_short_class_is_logged(caplog):
    pool = pd.concat([pool_of(gt_logit=[1.0, 0.0, 2.0]), pool_of(gt_logit=[5.0])])
    pool = pool.reset_index(drop=True)
    pool.loc[3, ["class", "class_num", "im_path"]] = ["b", 1, "q0.png"]
    with caplog.at_level(logging.WARNING, logger="lwise"):
        out = selection.select("L-WISE", pool, np.zeros((4, 2)), budget=2, seed=0)
    assert out["im_path"].tolist() == ["p1.png", "p0.png", "q0.png"]
    assert out["selection_rank"].tolist() == [1, 2, 1]
    assert "class b has 1 eligible images, fewer than the budget 2" in caplog.text


def test_slices_per_class_and_column():
    scored = pd.DataFrame(
        {
            "class": ["a", "a", "a", "b", "b", "b"],
            "site": ["x", "x", "y", "x", "y", "y"],
            "correct": [True, False, False, True, True, False],
        }
    )
    table = slices.find_slices(scored, ["site"], top=2, min_errors=2).set_index("slice")
    assert table.loc["class=a", "error_rate"] == pytest.approx(2 / 3)
    assert table.loc["site=y", ["n", "errors"]].tolist() == [3, 2]
    assert table.loc["class=b & site=y", "error_rate"] == 0.5
    # Worst with >= 2 errors: class=a (2/3), then site=y (2/3; same rate, same errors, by name).
    assert sorted(table.index[table["failure"]]) == ["class=a", "site=y"]
    assert not table.loc["class=a & site=y", "failure"]  # 1/1 errors, below min_errors
    with pytest.raises(ValueError, match=r"slice_columns \['nope'\]"):
        slices.find_slices(scored, ["nope"], top=1, min_errors=1)
    acc = slices.accuracy_table(scored, ["site=y"], ~scored["correct"]).set_index(["scope", "name"])
    assert acc.loc[("overall", "all"), "accuracy"] == pytest.approx(0.5)
    assert acc.loc[("failure_slice", "site=y"), "accuracy"] == pytest.approx(1 / 3)
    assert acc.loc[("model_errors", "misclassified before"), ["n", "accuracy"]].tolist() == [3, 0]


def write_dataset(root, classes=("a", "b"), per=(6, 4)) -> None:
    rows = []
    for split, n in zip(("train", "val"), per, strict=True):
        for k, name in enumerate(classes):
            for i in range(n):
                path = make_image(root / split / name / f"{i}.png")
                rows.append([split, name, k, path.relative_to(root).as_posix()])
    dirmap.write(pd.DataFrame(rows, columns=list(dirmap.REQUIRED)), root / "dirmap.csv")


def test_hold_out_is_stratified_and_keeps_one_per_class(tmp_path):
    write_dataset(tmp_path)
    cfg = DebuggingConfig.from_config({"pool": {"holdout_split": "val", "holdout_fraction": 0.5}})
    out = tmp_path / "o"
    base, pool = data.prepare(tmp_path / "dirmap.csv", out / "base.csv", out / "pool.csv", cfg)
    assert pool.groupby("class")["orig_split"].agg(["size", "first"]).values.tolist() == [
        [2, "val"],
        [2, "val"],
    ]
    assert (base["split"] == "train").sum() == 12 and (base["split"] == "val").sum() == 4
    written = dirmap.read(tmp_path / "o/pool.csv")  # paths rebased and checked
    assert set(written["split"]) == {"train"} and set(written["source"]) == {"pool"}
    base2, pool2 = data.hold_out(dirmap.read(tmp_path / "dirmap.csv"), "val", 0.99, seed=0)
    assert pool2.groupby("class").size().tolist() == [3, 3]  # one of 4 stays


def test_pool_and_generated_sets_are_checked(tmp_path):
    write_dataset(tmp_path / "ds")
    cfg = DebuggingConfig.from_config({})
    extra = pd.DataFrame(
        [["test", "a", 7, "x/1.png"], ["train", "zebra", 1, "x/2.png"]],
        columns=list(dirmap.REQUIRED),
    )
    make_image(tmp_path / "x/1.png"), make_image(tmp_path / "x/2.png")
    dirmap.write(extra, tmp_path / "pool.csv")
    outs = (tmp_path / "o/b.csv", tmp_path / "o/p.csv")
    # The written pool lists train rows first: zebra is on line 2.
    bad_class = r"pool.csv: pool dirmap: class\(es\) \['zebra'\].*line\(s\) 2"
    with pytest.raises(ValueError, match=bad_class):
        data.prepare(tmp_path / "ds/dirmap.csv", *outs, cfg, pool_csv=tmp_path / "pool.csv")
    dirmap.write(extra.iloc[:1], tmp_path / "pool.csv")
    make_image(tmp_path / "gen/b/one.jpg")
    make_image(tmp_path / "gen/b/two.png")
    base, pool = data.prepare(
        tmp_path / "ds/dirmap.csv", tmp_path / "o/b.csv", tmp_path / "o/p.csv", cfg,
        pool_csv=tmp_path / "pool.csv", generated={"G-sd": str(tmp_path / "gen")},
    )  # fmt: skip
    assert pool["source"].value_counts().to_dict() == {"G-sd": 2, "pool": 1}
    assert pool.loc[pool["source"] == "pool", "class_num"].tolist() == [0]  # renumbered
    assert pool.loc[pool["source"] == "pool", "orig_split"].tolist() == ["test"]
    make_image(tmp_path / "gen/zebra/z.png")
    with pytest.raises(ValueError, match=r"gen/zebra: .*'zebra', which is not a class"):
        data.read_generated(tmp_path / "gen", {"a": 0, "b": 1})
    again = pd.DataFrame([["train", "a", 0, "ds/train/a/0.png"]], columns=list(dirmap.REQUIRED))
    dirmap.write(again, tmp_path / "again.csv")
    with pytest.raises(ValueError, match=r"1 pool image\(s\) are already images of the dataset"):
        data.prepare(tmp_path / "ds/dirmap.csv", *outs, cfg, pool_csv=tmp_path / "again.csv")


def test_settings_fill_nested_defaults_and_name_bad_keys():
    cfg = DebuggingConfig.from_config({"embedding": {"layer": "net.features"}, "pool": {"seed": 3}})
    assert cfg.embedding == {"checkpoint": None, "trusted": False, "layer": "net.features"}
    assert cfg.pool["holdout_split"] == "train" and cfg.pool["seed"] == 3
    with pytest.raises(ConfigError, match=r"debugging.methods.0 'S-Magic'"):
        DebuggingConfig.from_config({"methods": ["S-Magic"]})
    with pytest.raises(ValueError, match=r"debugging.band \[0.9, 0.5\]"):
        DebuggingConfig.from_config({"band": [0.9, 0.5]})
    train = yaml.safe_load((REPO / "config.yaml").read_text())["guide"]["train"]
    tcfg = finetune_config(train, cfg, "m.pt", trusted=True, seed=4)
    assert (tcfg.init_checkpoint, tcfg.trusted_checkpoint, tcfg.seed) == ("m.pt", True, 4)
    assert tcfg.eval_every == tcfg.epochs  # one validation, after the last epoch
    scratch = DebuggingConfig.from_config({"retrain_from": "scratch", "finetune": {"epochs": 3}})
    tcfg = finetune_config(train, scratch, "m.pt", trusted=False, seed=0)
    assert tcfg.init_checkpoint is None and tcfg.eval_every == 3
    bad = DebuggingConfig.from_config({"finetune": {"epochz": 3}})
    with pytest.raises(ValueError, match="config debugging.finetune: .*epochz"):
        finetune_config(train, bad, "m.pt", trusted=False, seed=0)


def workflow_config(**debugging) -> dict:
    section = DebuggingConfig.from_config(debugging)
    return {"debugging": {k: getattr(section, k) for k in section.__dataclass_fields__}}


def test_workflow_lists_jobs_and_outputs(tmp_path):
    config = workflow_config(
        datasets=["digits"], methods=["none", "S-Random"], seeds=[0, 5],
        generated={"digits": {"G-sd": str(tmp_path)}},
    )  # fmt: skip
    assert workflow.datasets(config, ["digits", "other"]) == ["digits"]
    assert workflow.methods(config, "digits") == ["none", "S-Random", "G-sd"]
    assert workflow.methods(config, "other") == ["none", "S-Random"]
    assert len(workflow.run_metrics(config, "digits")) == 6
    assert workflow.outputs(config, ["digits", "other"], "other") == []
    assert workflow.base_trained(config, "digits")  # holdout from train by default
    assert workflow.model_path(config, "digits", "g.pt").endswith("debugging/base/model.pt")
    assert workflow.data_inputs(config, "digits") == {"generated": [str(tmp_path)]}
    assert not {"seeds", "methods", "datasets"} & set(workflow.job_settings(config))
    missing = copy.deepcopy(config)
    missing["debugging"]["pool"]["dirmaps"] = {"digits": str(tmp_path / "nope.csv")}
    assert workflow.model_path(missing, "digits", "g.pt") == "g.pt"
    with pytest.raises(FileNotFoundError, match="dataset 'digits', pool .*nope.csv"):
        workflow.data_inputs(missing, "digits")


def test_the_workflow_plans_one_job_per_method_and_seed(tmp_path):
    config = tiny_config()
    make_image(tmp_path / "gen/3/a.png")
    config["debugging"] |= {
        "datasets": ["digits"], "methods": ["none", "S-Similarity"], "seeds": [0, 1, 2],
        "generated": {"digits": {"G-sd": str(tmp_path / "gen")}},
        "pool": {"holdout_split": "train", "holdout_fraction": 0.3},
    }  # fmt: skip
    proc = run_workflow(tmp_path, config, "--dry-run", "results/digits/debugging/comparison.csv")
    planned = " ".join(proc.stdout.split())
    for rule, n in (("debug_retrain", 9), ("debug_failures", 1), ("debug_base", 1)):
        assert f"{rule} {n}" in planned, proc.stdout
    assert "results/digits/debugging/runs/G-sd/seed2/metrics.csv" in proc.stdout


@pytest.mark.slow
def test_the_debugging_stage_runs_and_a_new_seed_adds_only_its_jobs(tmp_path):
    config = tiny_config()
    config["debugging"] |= {"methods": ["none", "S-Similarity", "L-WISE"], "seeds": [0]}
    target = "results/digits/debugging/comparison.csv"
    run_workflow(tmp_path, config, target)
    out = tmp_path / "results/digits/debugging"
    table = pd.read_csv(out / "comparison.csv")
    assert {"before", "none", "S-Similarity", "L-WISE"} == set(table["method"])
    assert (out / "comparison.png").stat().st_size and (out / "failures/grid.png").stat().st_size
    assert not (out / "runs/none/seed0/training").exists()
    config["debugging"]["seeds"] = [0, 1]
    proc = run_workflow(tmp_path, config, "--dry-run", target)
    planned = " ".join(proc.stdout.split())
    assert "debug_retrain 3" in planned and "debug_compare 1" in planned, proc.stdout
    assert "debug_failures" not in planned and "debug_data" not in planned


def test_replay_is_a_stratified_seeded_part_of_the_training_split():
    base = pd.DataFrame(
        {
            "split": ["train"] * 6 + ["val"],
            "class_num": [0, 0, 0, 0, 1, 1, 0],
            "im_path": [f"{i}.png" for i in range(7)],
        }
    )
    half = replayed(base, 0.5, seed=1)
    assert half.groupby("class_num").size().tolist() == [2, 1] and set(half["split"]) == {"train"}
    assert replayed(base, 0.5, seed=1).equals(half)  # the same for every method at one seed
    assert len(replayed(base, 1.0, seed=1)) == 6
    assert replayed(base, 0.01, seed=1).groupby("class_num").size().tolist() == [1, 1]


def test_the_base_model_trains_without_the_pool(tmp_path):
    write_dataset(tmp_path, per=(8, 4))
    cfg = DebuggingConfig.from_config(
        {"pool": {"holdout_fraction": 0.5}, "base_train": {"epochs": 1, "adversarial": False}}
    )
    out = tmp_path / "o"
    base, pool = data.prepare(tmp_path / "dirmap.csv", out / "base.csv", out / "pool.csv", cfg)
    assert (base["split"] == "train").sum() == 8 and len(pool) == 8
    assert set(pool["orig_split"]) == {"train"}
    guide_train = {"arch": "small_cnn", "image_size": 16, "batch_size": 4, "workers": 0}
    train_base(out / "base.csv", out / "m.pt", out / "m.csv", out / "state", guide_train, cfg, 1)
    metrics = pd.read_csv(out / "m.csv")
    assert list(metrics["epoch"]) == [1] and "val_clean_acc" in metrics
    assert base_config(guide_train, cfg).adversarial is False


def test_embeddings_are_the_penultimate_layer_or_a_named_one(tmp_path):
    write_dataset(tmp_path, per=(2, 1))
    df = dirmap.read(tmp_path / "dirmap.csv")
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, (0.5,) * 3, (0.25,) * 3).eval()
    logits, emb = signals.run_model(model, torch.device("cpu"), df, tmp_path, 16)
    x = torch.stack([img for img, _, _ in DirmapImages(df, tmp_path, eval_transform(16))])
    with torch.no_grad():
        pooled = model.net.pool(model.net.features(model.normalize(x))).flatten(1)
        assert torch.allclose(emb, pooled, atol=1e-5) and emb.shape == (6, 64)
        assert torch.allclose(logits, model(x), atol=1e-5)
    _, named = signals.run_model(model, torch.device("cpu"), df, tmp_path, 16, layer="features")
    assert torch.allclose(named, pooled, atol=1e-5)  # SmallCNN's pool is the spatial mean
    with pytest.raises(ValueError, match="embedding.layer 'nope': no such module"):
        signals.run_model(model, torch.device("cpu"), df, tmp_path, 16, layer="nope")
