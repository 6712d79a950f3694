"""lwise.experiments: conditions, curricula and trial lists, the study folder, the analysis, and
the three rules run by Snakemake on a small results tree."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from experiments_data import make_dataset

from lwise.core.config import ConfigError, defaults
from lwise.core.keys import NATURAL
from lwise.experiments.analysis import analyse, read_responses, relative_gain, wilson
from lwise.experiments.conditions import CONDITIONS, assign_conditions
from lwise.experiments.curriculum import (
    CurriculumError,
    LearningDesign,
    map_taper,
)
from lwise.experiments.recognition import RecognitionDesign
from lwise.experiments.simulate import simulate_learners
from lwise.experiments.study import StudySettings, build_study, on_this_machine
from lwise.humans.trials import HumanDataError, read_trials

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    return make_dataset(root)


def study(dataset, out: Path, **settings) -> pd.DataFrame:
    args = {k: v for k, v in dataset.items() if k != "images"}
    return build_study(**args, out_dir=out, settings=settings, dataset="ds")


@pytest.fixture(scope="module")
def built(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "study"
    trials = study(dataset, out, participants=14, images="copy")
    return out, trials


# --- conditions ----------------------------------------------------------------------------------


REFERENCE = defaults("experiments")["conditions"]  # the schema's: L-WISE's 7 slots


def test_blocked_assignment_holds_the_reference_proportions():
    ids = [f"p{i}" for i in range(70)]
    got = Counter(assign_conditions(ids, REFERENCE, method="blocked", seed=0))
    assert got == {"control": 20, "select": 10, "select_shuffle": 10, "enhance": 10,
                   "enhance_shuffle": 10, "lwise": 10}  # fmt: skip
    # Every complete group of 7 has each slot once.
    first = assign_conditions(ids[:7], REFERENCE, method="blocked", seed=0)
    assert Counter(first)["control"] == 2 and len(set(first)) == 6


def test_random_assignment_follows_probabilities_and_seeds():
    ids = [f"p{i}" for i in range(4000)]
    weights = {"control": 0.25, "lwise": 0.75}
    got = Counter(assign_conditions(ids, weights, method="random", seed=0))
    assert abs(got["lwise"] / 4000 - 0.75) < 0.03
    assert assign_conditions(ids[:50], REFERENCE, method="random", seed=3) == assign_conditions(
        ids[:50], REFERENCE, method="random", seed=3
    )


def test_assignment_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown condition 'nope'"):
        assign_conditions(["a"], {"nope": 1}, method="blocked", seed=0)
    with pytest.raises(ValueError, match="whole-number weights"):
        assign_conditions(["a"], {"control": 0.5, "lwise": 1}, method="blocked", seed=0)


# --- settings: every default from the schema ------------------------------------------------------


def test_settings_take_every_default_from_the_schema():
    settings = StudySettings.from_config({"participants": 7, "learning": {"training_blocks": 3}})
    assert settings.participants == 7 and settings.images == "auto"
    assert settings.conditions == REFERENCE
    learning = settings.learning
    assert isinstance(learning, LearningDesign) and learning.training_blocks == 3
    assert learning.max_difficulty == (0.10, 0.25, 0.40, 0.55, 0.70, 0.85)  # the schema's
    assert learning.epsilon_taper == (8, 4, 2, 1, 0.5, 0.25)
    assert learning == LearningDesign.from_config({"training_blocks": 3})
    assert settings.recognition == RecognitionDesign.from_config()
    assert settings.recognition.duration_ms == 17 and settings.page.fixation_ms == 500
    assert "15 minutes" in settings.page.consent
    # The workflow-only keys of the section are validated and left out.
    plain = StudySettings.from_config()
    assert StudySettings.from_config({"enabled": False, "responses": {}}) == plain
    with pytest.raises(ConfigError, match=r"experiments\.learning .*'nope' was unexpected"):
        StudySettings.from_config({"learning": {"nope": 1}})
    with pytest.raises(ConfigError, match=r"experiments\.participants 0"):
        StudySettings.from_config({"participants": 0})
    with pytest.raises(ConfigError, match=r"experiments\.learning\.max_difficulty\.0 1\.5"):
        LearningDesign.from_config({"max_difficulty": [1.5]})


def test_auto_image_mode_copies_only_from_this_machine():
    for url in ("http://127.0.0.1:9900/b/k.png", "http://localhost/x", "http://[::1]:9/b/k"):
        assert on_this_machine(url), url
    assert not on_this_machine("https://lwise-ds-natural.s3.amazonaws.com/k.png")
    assert not on_this_machine("http://minio.lab.example:9000/b/k.png")


# --- the taper -----------------------------------------------------------------------------------


def test_taper_maps_to_largest_available_epsilon_not_above():
    assert map_taper([8, 4, 2, 1, 0.5, 0.25], [0.5, 1, 2, 4]) == [4, 4, 2, 1, 0.5, 0.0]
    assert map_taper([8, 4], [10, 20]) == [0.0, 0.0]
    assert map_taper([8, 3], [8, 0.25]) == [8, 0.25]


def test_enhanced_conditions_follow_the_taper(built):
    _, trials = built
    train = trials[trials["phase"] == "train"]
    for cond in ("enhance", "lwise"):
        per_block = train[train["condition"] == cond].groupby("block")["set"].unique()
        assert [list(v) for v in per_block] == [
            ["logit_eps4"], ["logit_eps4"], ["logit_eps2"], ["logit_eps1"], ["logit_eps0.5"],
            [NATURAL], [NATURAL], [NATURAL],
        ]  # fmt: skip
        targets = train[train["condition"] == cond].groupby("block")["target_eps"].first()
        assert list(targets) == [8, 4, 2, 1, 0.5, 0.25, 0, 0]
    for cond in ("control", "select"):
        assert set(train.loc[train["condition"] == cond, "set"]) == {NATURAL}
    # Shuffled: the per-source-block sets are those of the taper, in mixed shown blocks.
    shuf = train[train["condition"] == "enhance_shuffle"]
    assert set(shuf.groupby("source_block")["set"].nunique()) == {1}
    assert (shuf["block"] != shuf["source_block"]).any()


# --- trial-list properties -----------------------------------------------------------------------


def test_difficulty_bounds_per_block(built, dataset):
    _, trials = built
    design = LearningDesign.from_config()
    images = dataset["images"]
    train = trials[trials["phase"] == "train"]
    for cond in ("select", "select_shuffle", "lwise"):
        t = train[train["condition"] == cond]
        assert (t["difficulty_quantile"] <= t["max_difficulty"] + 1e-9).all()
        for src, g in t.groupby("source_block"):
            limit = design.max_difficulty[src - 1] if src <= len(design.max_difficulty) else 1.0
            for cls, gc in g.groupby("class"):
                pool = images[(images["class"] == cls) & (images["split"] == "train")]
                allowed = np.sort(pool["difficulty"])[: int(np.floor(limit * len(pool) + 1e-9))]
                assert gc["difficulty"].max() <= allowed.max() + 1e-12, (cond, src, cls)
    # Control and Enhance draw from every difficulty.
    assert (train.loc[train["condition"] == "control", "max_difficulty"] == 1.0).all()


def test_no_test_image_in_training_and_no_repeats(built):
    _, trials = built
    for pid, t in trials.groupby("participant"):
        train = t[t["phase"] == "train"]
        test = t[(t["phase"] == "test") & (t["catch"] == 0)]
        assert not set(test["image"]) & set(train["image"]), pid
        assert not train["image"].duplicated().any(), pid  # without replacement across blocks
        assert not test["image"].duplicated().any(), pid
        assert set(test["set"]) == {NATURAL}
        assert (test["feedback"] == 0).all() and (train["feedback"] == 1).all()
        catch = t[t["catch"] == 1]
        assert len(catch) == 1 and catch["image"].iloc[0] in set(train["image"])
        assert catch["block"].iloc[0] == t["block"].max() and catch["set"].iloc[0] == NATURAL


def test_class_balance_per_block(built):
    _, trials = built
    for (pid, block), g in trials[trials["catch"] == 0].groupby(["participant", "block"]):
        counts = g["class"].value_counts()
        expected = 4 if g["phase"].iloc[0] == "train" else 5
        assert set(counts) == {expected} and len(counts) == 3, (pid, block)


def test_seeded_per_participant(dataset, tmp_path, built):
    _, trials = built
    again = study(dataset, tmp_path / "again", participants=3, images="copy")
    for pid in ("p001", "p002", "p003"):
        a = trials[trials["participant"] == pid].reset_index(drop=True)
        b = again[again["participant"] == pid].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)
    tests = trials[trials["phase"] == "test"].groupby("participant")["image"].apply(frozenset)
    assert tests.nunique() == len(tests)  # no two participants share their test sample
    other = study(dataset, tmp_path / "other", participants=1, seed=1, images="copy")
    assert list(other["image"]) != list(trials.loc[trials["participant"] == "p001", "image"])


def test_repeats_option_and_exhaustion_error(dataset, tmp_path):
    design = {"training_blocks": 8, "trials_per_class": 5}
    with pytest.raises(CurriculumError, match=r"class 'cat', split 'train', training block 1"):
        study(dataset, tmp_path / "a", learning=design, conditions={"select": 1}, participants=1)
    ok = study(dataset, tmp_path / "b", participants=1, conditions={"control": 1},
               learning={"trials_per_class": 5, "repeats": True})  # fmt: skip
    train = ok[ok["phase"] == "train"]
    assert not train.duplicated(["block", "image"]).any()  # never twice within a block


def test_study_folder_and_trial_lists(built):
    out, trials = built
    assert (out / "web" / "index.html").is_file() and (out / "web" / "study.js").is_file()
    one = pd.read_csv(out / "trials" / "p001.csv", keep_default_na=False)
    assert list(one.columns)[:4] == ["participant", "condition", "trial", "block"]
    records = json.loads((out / "trials" / "p001.json").read_text())
    assert len(records) == len(one) and records[0]["stimulus"] == one["stimulus"][0]
    js = (out / "web" / "trials" / "p001.js").read_text()
    assert js.startswith("window.LWISE_TRIALS") and '"p001"' in js
    for stim in trials["stimulus"].unique():  # copied images resolve from the page's folder
        assert (out / "web" / stim).is_file(), stim
    design = json.loads((out / "design.json").read_text())
    assert design["taper_shown"]["0.25"] == 0.0 and design["available_eps"] == [0.5, 1, 2, 4]
    parts = pd.read_csv(out / "participants.csv")
    assert set(parts["condition"]) == set(CONDITIONS)


def test_url_mode_names_uploaded_urls(dataset, tmp_path):
    trials = study(dataset, tmp_path / "s", participants=2, images="url")
    assert trials["stimulus"].str.startswith("http://127.0.0.1:9900/").all()
    assert not (tmp_path / "s" / "web" / "images").exists()


def test_recognition_design(dataset, tmp_path):
    trials = study(
        dataset,
        tmp_path / "r",
        participants=2,
        design="recognition",
        recognition={"main_per_class": 8, "calibration_trials": 6},
        images="copy",
    )
    t = trials[trials["participant"] == "p001"]
    assert list(t.groupby("block")["phase"].first()) == ["screening", "warmup", "main"]
    main = t[t["phase"] == "main"]
    assert (main["duration_ms"] == 17).all() and (main["feedback"] == 0).all()
    assert set(main["set"]) == {NATURAL, "logit_eps0.5", "logit_eps1", "logit_eps2", "logit_eps4"}
    assert main.groupby("class").size().eq(8).all()
    calib = t[t["phase"] == "calibration"]
    assert len(calib) == 6 and set(calib["choices"]) == {"circle|triangle"}
    assert (t.loc[t["phase"] == "screening", "duration_ms"] == 200).all()
    assert not t.loc[t["phase"] != "calibration", "image"].duplicated().any()
    assert (tmp_path / "r" / "web" / "calibration" / "circle.svg").is_file()


def test_bad_inputs_name_file_and_field(dataset, tmp_path):
    bad = tmp_path / "difficulty.csv"
    df = pd.read_csv(dataset["difficulty_csv"], dtype=str)
    df.loc[3, "difficulty"] = "hard"
    df.to_csv(bad, index=False)
    args = {k: v for k, v in dataset.items() if k != "images"}
    with pytest.raises(CurriculumError, match=r"difficulty.csv: column 'difficulty'.*line\(s\) 5"):
        build_study(**{**args, "difficulty_csv": bad}, out_dir=tmp_path / "x", settings={})
    up = tmp_path / "upload.csv"
    pd.read_csv(dataset["uploads"][NATURAL]).drop(columns=["url"]).to_csv(up, index=False)
    with pytest.raises(CurriculumError, match=r"upload.csv: no 'url' column"):
        build_study(**{**args, "uploads": {**args["uploads"], NATURAL: up}},
                    out_dir=tmp_path / "y", settings={})  # fmt: skip
    with pytest.raises(ConfigError, match=r"experiments\.learning .*'nope' was unexpected"):
        build_study(**args, out_dir=tmp_path / "z", settings={"learning": {"nope": 1}})
    with pytest.raises(CurriculumError, match="objective 'cross_entropy'"):
        build_study(**args, out_dir=tmp_path / "w", settings={"objective": "cross_entropy"})


# --- analysis ------------------------------------------------------------------------------------


def test_wilson_and_relative_gain():
    lo, hi = wilson(7, 10, 0.95)
    assert 0.39 < lo < 0.40 and 0.89 < hi < 0.90
    gain, glo, ghi = relative_gain(
        np.array([0.8, 0.9]), np.array([0.5, 0.6]), n_boot=500, seed=0, confidence=0.95
    )
    assert gain == pytest.approx(0.85 / 0.55 - 1) and glo <= gain <= ghi


def test_analysis_of_simulated_learners(built, tmp_path):
    out, _ = built
    sim = simulate_learners(out / "trials.csv", tmp_path / "sim.csv", {"seed": 0})
    assert sim["synthetic"].all()
    read_trials(tmp_path / "sim.csv")  # the trials format the evaluation reads
    table = analyse(tmp_path / "sim.csv", tmp_path / "ana", {"n_boot": 300})
    assert list(table["condition"])[0] == "control" and set(table["condition"]) == set(CONDITIONS)
    assert (table["n_trials"] == table["n_participants"] * 30).all()  # catch trials left out
    assert table["synthetic"].all()
    curves = pd.read_csv(tmp_path / "ana" / "learning_curves.csv")
    assert set(curves["block"]) == set(range(1, 11))
    times = pd.read_csv(tmp_path / "ana" / "time.csv")
    assert (times["training_s_median"] > 0).all()
    align = read_trials(tmp_path / "ana" / "alignment_trials.csv")
    assert NATURAL in set(align["condition"]) and "group" in align.columns
    assert (tmp_path / "ana" / "learning_curves.png").stat().st_size > 1000


def test_analysis_reports_exact_accuracies(tmp_path):
    rows = []
    for pid, cond, right in (("a", "control", 3), ("b", "control", 5), ("c", "lwise", 8)):
        for i in range(10):
            ok, cls = i < right, "xy"[i % 2]
            rows.append({"participant": pid, "image": f"val/{cls}/{i}.png", "condition": cond,
                         "response": cls if ok else "yx"[i % 2], "correct": int(ok),
                         "trial": i + 1, "block": 9, "class": cls, "phase": "test",
                         "catch": 0})  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "r.csv", index=False)
    table = analyse(tmp_path / "r.csv", tmp_path / "out", {"n_boot": 200}).set_index("condition")
    assert table.loc["control", "accuracy"] == pytest.approx(0.4)
    assert table.loc["lwise", "accuracy"] == pytest.approx(0.8)
    assert table.loc["lwise", "relative_gain_vs_control"] == pytest.approx(1.0)
    assert not table["synthetic"].any()


def test_responses_errors_name_file_and_column(tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({"participant": ["a"], "image": ["i"], "condition": ["control"],
                  "response": ["x"], "correct": [1]}).to_csv(path, index=False)  # fmt: skip
    with pytest.raises(HumanDataError, match=r"r.csv: missing column\(s\) \['block', 'phase'\]"):
        read_responses(path)
    pd.DataFrame({"participant": ["a"], "image": ["i"], "condition": ["control"],
                  "response": ["x"], "correct": ["maybe"], "block": [1], "phase": ["test"]}
                 ).to_csv(path, index=False)  # fmt: skip
    with pytest.raises(HumanDataError, match=r"(?s)r.csv.*'correct'.*line\(s\) 2"):
        read_responses(path)
    with pytest.raises(HumanDataError, match="not found"):
        read_responses(tmp_path / "missing.csv")


# --- the rules -----------------------------------------------------------------------------------


def _snakefile(tmp_path: Path) -> Path:
    """The repository's Snakefile, with rules/experiments.smk included if it is not yet."""
    text = (REPO / "Snakefile").read_text()
    if "rules/experiments.smk" in text:
        return REPO / "Snakefile"
    text = text.replace('include: "rules/', f'include: "{REPO}/rules/')
    text = text.replace('report: "report/', f'report: "{REPO}/report/')
    text = text.replace('configfile: "config.yaml"', f'configfile: "{REPO}/config.yaml"')
    text += f'\n\ninclude: "{REPO}/rules/experiments.smk"\n'
    path = tmp_path / "Snakefile"
    path.write_text(text)
    return path


def test_rules_build_study_and_analysis(tmp_path):
    import subprocess
    import sys

    work = tmp_path / "work"
    make_dataset(work / "results" / "digits")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["experiments"]["participants"] = 7
    from lwise.publish.s3local import free_port

    config["upload"]["local_port"] = free_port()  # the run starts its local S3 server
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    targets = [
        "results/digits/experiments/study",
        "results/digits/experiments/analysis_synthetic",
        "results/digits/upload/study/manifest.csv",
    ]
    # Only these rules: the upstream files exist and stand in for the rest of the DAG.
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *targets,
        "--snakefile",
        str(_snakefile(tmp_path)),
        "--directory",
        str(work),
        "--configfile",
        str(cfg),
        "--cores",
        "1",
        "--allowed-rules",
        "experiment_study",
        "simulate_learners",
        "analyse_experiment",
        "publish_study",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study_dir = work / targets[0]
    assert (study_dir / "web" / "images" / NATURAL).is_dir()  # local upload server: copied
    table = pd.read_csv(work / targets[1] / "test_accuracy.csv")
    assert len(table) == 6 and table["synthetic"].all()
    assert (work / "results/logs/digits/experiment_study.log").is_file()
    assert (work / "results/benchmarks/digits/analyse_experiment_synthetic.tsv").is_file()
    # The study went up to the run's local S3 server, next to the image sets' buckets.
    manifest = pd.read_csv(work / targets[2]).set_index("path")
    listing = pd.read_csv(study_dir / "files.csv")
    assert sorted(manifest.index) == sorted(listing["path"])
    assert manifest.loc["web/index.html", "content_type"] == "text/html; charset=utf-8"
    assert manifest.loc["web/index.html", "url"].endswith("/lwise-digits-study/web/index.html")
    assert "uploaded" in (work / "results/logs/digits/publish_study.log").read_text()
