"""lwise.report: the stimulus summary (a model trained in the test), the alignment table, the
difficulty histograms, the training curves, log-friendly progress bars, and the report rules."""

import io
import logging
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lwise.core.logs import progress, script_logging
from lwise.data import dirmap
from lwise.data.imagefolder import BuildOptions, build
from lwise.guide.score import ScoringConfig, score
from lwise.report import workflow
from lwise.report.alignment import alignment_table
from lwise.report.figures import ReportConfig, difficulty_histogram, training_curves
from lwise.report.stimuli import SummaryConfig, stimulus_summary, wilson
from lwise.stimuli.enhance import EnhanceConfig, enhance
from lwise.stimuli.natural import NaturalConfig, write_natural


@pytest.fixture(scope="module")
def scored_sets(digits_folder, digits_model, tmp_path_factory):
    """Held-out digits scored by a model trained in the test, their natural set and one
    enhanced set."""
    root = tmp_path_factory.mktemp("report")
    df = dirmap.read(digits_folder / "dirmap.csv")
    val = df[df["split"] == "val"].groupby("class_num").head(4).copy()
    val["im_path"] = dirmap.relative_to(val["im_path"].map(lambda p: str(digits_folder / p)), root)
    dirmap.write(val.drop(columns=["orig_im_path"]), root / "recipe.csv")
    build(root / "recipe.csv", root / "imagefolder", BuildOptions.from_config())
    folder = root / "imagefolder"
    scored = score(
        folder / "dirmap.csv", digits_model, root / "scored.csv", root / "acc.csv",
        root / "confusion.png", cfg=ScoringConfig.from_config(), workers=0, trusted=False,
    )  # fmt: skip
    common = dict(key_root=folder, workers=0, trusted=False)
    natural_cfg = NaturalConfig.from_config()
    write_natural(root / "scored.csv", digits_model, root / "natural", cfg=natural_cfg, **common)
    enhance(
        root / "scored.csv", digits_model, root / "logit_eps2", eps=2.0, objective="logit",
        cfg=EnhanceConfig.from_config(), **common,
    )  # fmt: skip
    return root, scored, digits_model


def test_stimulus_summary_agrees_with_scoring_and_enhancement(scored_sets):
    root, scored, model = scored_sets
    sets = {"natural": root / "natural", "logit_eps2": root / "logit_eps2"}
    out = stimulus_summary(
        sets, model, root / "summary.csv", root / "summary.html",
        cfg=SummaryConfig.from_config(), trusted=False, dataset="digits",
    ).set_index("set")  # fmt: skip
    # The natural set is the scored images, losslessly re-encoded: the same decisions.
    assert out.loc["natural", "accuracy"] == pytest.approx(scored["correct"].mean())
    assert out.loc["natural", "gt_logit_mean"] == pytest.approx(
        scored["robust_gt_logit"].mean(), abs=1e-5
    )
    enhanced = dirmap.read(root / "logit_eps2/dirmap.csv")
    achieved = enhanced["l2_distance"].mean()
    assert out.loc["logit_eps2", "l2_distance_mean"] == pytest.approx(achieved)
    assert out.loc["logit_eps2", "logit_gain_sd"] == pytest.approx(enhanced["logit_gain"].std())
    assert out.loc["logit_eps2", "gt_logit_mean"] == pytest.approx(
        enhanced["gt_logit_enhanced"].mean(), abs=1e-4
    )
    assert out.loc["logit_eps2", "logit_gain_mean"] > 0
    assert out.loc["natural", "l2_distance_mean"] == 0
    assert out.loc["logit_eps2", "accuracy"] >= out.loc["natural", "accuracy"]
    page = (root / "summary.html").read_text()
    assert "<table>" in page and "logit_eps2" in page and "achieved L2" in page
    assert not re.search(r"(src|href)=", page)  # self-contained
    assert pd.read_csv(root / "summary.csv")["set"].tolist() == ["natural", "logit_eps2"]


def test_stimulus_summary_names_a_set_without_achieved_values(scored_sets, tmp_path):
    root, _, model = scored_sets
    bad = dirmap.read(root / "logit_eps2/dirmap.csv").drop(columns=["l2_distance"])
    (tmp_path / "logit_eps2").symlink_to(root / "logit_eps2", target_is_directory=True)
    copy = tmp_path / "copy_eps2"
    copy.mkdir()
    for key in bad["im_path"]:
        (copy / key).parent.mkdir(parents=True, exist_ok=True)
        (copy / key).symlink_to(root / "logit_eps2" / key)
    dirmap.write(bad, copy / "dirmap.csv")
    with pytest.raises(ValueError, match=r"copy_eps2.*dirmap\.csv.*l2_distance"):
        stimulus_summary(
            {"natural": root / "natural", "logit_eps4": copy}, model, tmp_path / "s.csv",
            tmp_path / "s.html", cfg=SummaryConfig.from_config(), trusted=False,
        )  # fmt: skip
    assert not (tmp_path / "s.csv").exists()


def test_wilson_interval():
    low, high = wilson(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # Wilson (1927) score interval
    assert wilson(0, 10)[0] == 0 and wilson(10, 10)[1] == pytest.approx(1)


def _summary(synthetic: bool) -> pd.DataFrame:
    return pd.DataFrame(
        [
            ("difficulty_cv_auc", "robust", 0.61, 0.55, 0.67),
            ("human_accuracy", "natural", 0.6, 0.5, 0.7),
            ("human_accuracy", "logit_eps2", 0.8, 0.7, 0.9),
            ("accuracy_gain_vs_natural", "logit_eps2", 0.2, np.nan, np.nan),
            ("error_consistency", "pooled", 0.1, np.nan, np.nan),
            ("visalign_hellinger", "all", 0.3, np.nan, np.nan),
            ("reliability_c0", "all", 0.5, np.nan, np.nan),
            ("a_new_metric", "all", 1.5, np.nan, np.nan),
        ],
        columns=["metric", "group", "value", "ci_low", "ci_high"],
    ).assign(synthetic=synthetic)


@pytest.mark.parametrize("synthetic", [True, False])
def test_alignment_table_one_section_per_analysis(tmp_path, synthetic):
    _summary(synthetic).to_csv(tmp_path / "summary.csv", index=False)
    alignment_table(tmp_path / "summary.csv", tmp_path / "a.html", dataset="digits")
    page = (tmp_path / "a.html").read_text()
    assert ("SYNTHETIC" in page) is synthetic
    assert page.count("<table>") == 5  # difficulty, enhancement, consistency, VisAlign, other
    assert '0.800<br><span class="sub">[0.700, 0.900]</span>' in page  # value over interval
    enhancement = page.split("Enhancement effect")[1].split("</table>")[0]
    assert enhancement.count("<tr>") == 3  # header, natural, logit_eps2


def test_alignment_table_names_the_missing_column(tmp_path):
    _summary(True).drop(columns=["ci_low"]).to_csv(tmp_path / "summary.csv", index=False)
    with pytest.raises(ValueError, match=r"summary\.csv: missing column\(s\) \['ci_low'\]"):
        alignment_table(tmp_path / "summary.csv", tmp_path / "a.html")
    assert not (tmp_path / "a.html").exists()


def _scored(n_classes: int, per_class: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = n_classes * per_class
    return pd.DataFrame(
        {
            "split": np.where(np.arange(n) % 3, "train", "val"),
            "class": [f"class{c}" for c in np.repeat(np.arange(n_classes), per_class)],
            "class_num": np.repeat(np.arange(n_classes), per_class),
            "im_path": [f"{i}.png" for i in range(n)],
            "difficulty": rng.random(n),
        }
    )


def test_difficulty_histogram_per_class_then_boxes(tmp_path):
    dirmap.write(_scored(4), tmp_path / "few.csv", check_files=False)
    dirmap.write(_scored(60), tmp_path / "many.csv", check_files=False)
    cfg = ReportConfig.from_config({"max_class_panels": 10, "histogram_bins": 10})
    difficulty_histogram(tmp_path / "few.csv", tmp_path / "few.png", cfg=cfg)
    difficulty_histogram(tmp_path / "many.csv", tmp_path / "many.png", cfg=cfg)
    with Image.open(tmp_path / "few.png") as few, Image.open(tmp_path / "many.png") as many:
        assert few.size[0] == many.size[0] == 1100
        # 60 classes: one box per class (a row of 0.18 inch each), not 60 histograms.
        assert many.size[1] < 100 * (2.8 + 0.5 + 0.18 * 60) + 10


def test_difficulty_histogram_names_the_file_without_scores(tmp_path):
    dirmap.write(_scored(2).drop(columns=["difficulty"]), tmp_path / "d.csv", check_files=False)
    with pytest.raises(ValueError, match=r"d\.csv: no 'difficulty' column"):
        difficulty_histogram(tmp_path / "d.csv", tmp_path / "h.png", cfg=ReportConfig.from_config())


def test_training_curves(tmp_path):
    metrics = pd.DataFrame(
        {"epoch": [1, 2, 3], "lr": [0.1, 0.05, 0.0], "train_loss": [2.0, 1.0, 0.5],
         "train_acc": [0.2, 0.6, 0.8], "val_clean_acc": [np.nan, 0.7, 0.9],
         "val_loss": [np.nan, 0.9, 0.4], "val_adv_acc": [np.nan, 0.5, 0.6]}
    )  # fmt: skip
    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    training_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")
    training_curves(None, tmp_path / "none.png", checkpoint="robust.pt")
    with Image.open(tmp_path / "curves.png") as curves, Image.open(tmp_path / "none.png") as none:
        assert curves.size[0] > 1000 and none.size[1] < curves.size[1]
    metrics.drop(columns=["train_acc"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad\.csv: no column\(s\) \['train_acc'\]"):
        training_curves(tmp_path / "bad.csv", tmp_path / "bad.png")


def test_progress_in_a_log_writes_few_plain_lines(tmp_path):
    with script_logging(tmp_path / "job.log"):
        for _ in progress(range(100_000), desc="fast loop"):
            pass
        logging.getLogger("lwise.test").info("after the loop")
    lines = (tmp_path / "job.log").read_text().splitlines()
    bars = [line for line in lines if line.startswith("fast loop")]
    assert len(bars) <= 3, lines  # the start, the end and at most one update in between
    assert "100000/100000" in bars[-1]
    assert "\r" not in (tmp_path / "job.log").read_text()


def test_progress_on_a_terminal_is_plain_tqdm():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    for _ in progress(range(3), desc="t", file=stream):
        pass
    assert "\r" in stream.getvalue()


def test_training_curves_are_only_asked_of_a_trained_guide():
    assert workflow.training_metrics({"checkpoint": None}, "d") == ["results/d/guide/metrics.csv"]
    assert workflow.training_metrics({"checkpoint": "robust.pt"}, "d") == []
    assert "results/d/report/alignment_summary_human.html" in workflow.outputs("d", "human")


def _planned(proc) -> dict[str, int]:
    table = proc.stdout.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_the_report_rules_are_planned_and_a_ready_checkpoint_has_no_curves(tmp_path):
    from conftest import run_workflow, tiny_config

    config = tiny_config()
    jobs = _planned(run_workflow(tmp_path / "trained", config, "--dry-run"))
    report_rules = {"report_stimuli", "report_difficulty", "report_training", "report_alignment"}
    assert all(jobs.get(rule) == 1 for rule in report_rules), jobs
    (tmp_path / "ready").mkdir()
    (tmp_path / "ready/robust.pt").write_bytes(b"")  # a dry run never reads it
    config["guide"]["checkpoint"] = "robust.pt"
    target = "results/digits/report/training_curves.png"
    proc = run_workflow(tmp_path / "ready", config, "--dry-run", target)
    assert _planned(proc) == {"report_training": 1, "total": 1}


@pytest.mark.slow
# The session's default run (all families, 1,797 images) is set up by the first of these.
@pytest.mark.timeout(1800)
def test_the_html_report_shows_the_tables_and_figures(default_run):
    """The default run's `--report`: every new entry is in it, captioned."""
    work, config = default_run
    html = (work / "results/report.html").read_text()
    for name in [
        "stimulus_summary.html", "difficulty_histogram.png", "training_curves.png",
        "alignment_summary_synthetic.html", "contact_sheet.png",
    ]:  # fmt: skip
        assert f"results/digits/report/{name}" in html or f"stimuli/{name}" in html, name
    assert "SYNTHETIC" in html and "Achieved L2" in html and "per epoch" in html
    page = (work / "results/digits/report/stimulus_summary.html").read_text()
    sets = len(config["enhance"]["epsilons"]) * len(config["enhance"]["objectives"])
    assert page.count("<tr>") == 1 + 1 + sets  # header, natural, the enhanced sets


def test_every_progress_bar_of_the_library_goes_through_progress():
    """So every log gets the same few plain lines (lwise.core.logs.progress)."""
    from pathlib import Path

    import lwise

    root = Path(lwise.__file__).parent
    direct = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name != "logs.py" and re.search(r"\btqdm\(", path.read_text())
    ]
    assert direct == [], f"use lwise.core.logs.progress instead of tqdm in {direct}"
