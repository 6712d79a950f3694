from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy import stats

from lwise.alignment import abstention, consistency, enhancement, evaluate, plots
from lwise.alignment.analysis import ANALYSES, EvaluationConfig
from lwise.alignment.inputs import AlignmentDataError
from lwise.alignment.summary import SUMMARY_COLUMNS
from lwise.alignment.visalign import visalign
from lwise.core import keys
from lwise.data import dirmap
from lwise.humans import simulate as simulation
from lwise.humans import trials as humans

CLASSES = ["ant", "bee", "cow"]
N_VAL, N_TRAIN = 10, 2  # per class
SETS = ["natural", "logit_eps1", "logit_eps2"]
LOGIT = "robust_gt_logit"  # the scoring stage's default gt_logit_column
ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "config.schema.yaml"


def config_section(name: str) -> dict:
    """A section of config.yaml with the schema's defaults filled in, as the rules get it."""
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate(config, str(SCHEMA))
    return config[name]


def evaluation(**overrides) -> EvaluationConfig:
    return EvaluationConfig.from_config(config_section("evaluation") | overrides)


def simulation_config(**overrides) -> simulation.SimulationConfig:
    return simulation.SimulationConfig.from_config(config_section("simulation") | overrides)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_dataset(root: Path, seed: int = 0) -> dict[str, Path]:
    """A scored dataset laid out like results/<ds>/: imagefolder (JPEG), difficulty/ (scored
    dirmap, probabilities, a vanilla model's dirmap) and stimuli/ (natural PNGs + two sets)."""
    rng = np.random.default_rng(seed)
    rows = []
    for class_num, cls in enumerate(CLASSES):
        for i in range(N_VAL + N_TRAIN):
            split = "val" if i < N_VAL else "train"
            stem = f"{split}/{cls}/{cls}_{i:02d}"
            # Dark squares of varied size and ink on white paper: the image statistics vary.
            arr = np.full((24, 24), 255, np.uint8)
            side = 3 + (i * 7 + class_num * 3) % 15
            arr[4 : 4 + side, 4 : 4 + side] = 40 + (i * 37) % 150
            for folder, ext, fmt in (
                ("imagefolder", ".jpg", "JPEG"),
                ("stimuli/natural", ".png", None),
            ):
                path = root / folder / f"{stem}{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).convert("RGB").save(path, format=fmt)
            rows.append({"split": split, "class": cls, "class_num": class_num, "stem": stem})
    df = pd.DataFrame(rows)
    n = len(df)
    logits = rng.normal(0, 2, (n, len(CLASSES)))
    logits[np.arange(n), df["class_num"]] += 2.0
    probs = softmax(logits)
    df["robust_gt_logit"] = logits[np.arange(n), df["class_num"]]
    df["predicted_class_num"] = probs.argmax(axis=1)
    df["correct"] = df["predicted_class_num"] == df["class_num"]
    df["entropy"] = -(probs * np.log(probs)).sum(axis=1)
    df["cross_entropy"] = -np.log(probs[np.arange(n), df["class_num"]])
    gt = df["robust_gt_logit"]
    df["difficulty"] = 1 - (gt - gt.min()) / (gt.max() - gt.min())
    scored = df.drop(columns="stem").assign(im_path="../imagefolder/" + df["stem"] + ".jpg")
    natural = df.drop(columns="stem").assign(im_path=df["stem"] + ".png")

    paths = {"root": root, "key_root": root / "imagefolder"}
    paths["scored"] = root / "difficulty" / "dirmap.csv"
    dirmap.write(scored, paths["scored"])
    paths["natural"] = root / "stimuli" / "natural" / "dirmap.csv"
    dirmap.write(natural, paths["natural"])
    for eps in (1, 2):
        gain = eps * (1 + 0.1 * rng.random(n))
        enhanced = natural.assign(
            eps=float(eps), objective="logit", direction="enhance",
            l2_distance=eps * (0.95 + 0.05 * rng.random(n)),
            gt_logit_natural=gt, gt_logit_enhanced=gt + gain, logit_gain=gain,
        )  # fmt: skip
        paths[f"logit_eps{eps}"] = root / "stimuli" / f"logit_eps{eps}" / "dirmap.csv"
        dirmap.write(enhanced, paths[f"logit_eps{eps}"], check_files=False)
    table = pd.DataFrame(probs, columns=CLASSES)
    table.insert(0, "im_path", scored["im_path"])
    paths["probabilities"] = root / "difficulty" / "probabilities.csv"
    table.round(7).to_csv(paths["probabilities"], index=False)
    vanilla = scored.assign(
        im_path="../imagefolder/" + df["stem"] + ".jpg",
        vanilla_gt_logit=gt + rng.normal(0, 3, n),
    ).drop(columns="robust_gt_logit")
    paths["vanilla"] = root / "difficulty_vanilla" / "dirmap.csv"
    paths["vanilla"].parent.mkdir()
    vanilla.to_csv(paths["vanilla"], index=False)
    return paths


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    return make_dataset(tmp_path)


def set_dirmaps(data) -> dict[str, Path]:
    return {name: data[name] for name in SETS if name != "natural"}


def simulate(data, out: Path, **kwargs) -> pd.DataFrame:
    options = dict(n_participants=60, boost_per_eps=1.5, seed=3) | kwargs
    return simulation.simulate_observers(data["natural"], SETS, out, simulation_config(**options))


# --- helpers -----------------------------------------------------------------------------------


def test_set_epsilon():
    assert keys.set_epsilon("natural") == 0
    assert keys.set_epsilon("logit_eps2") == 2
    assert keys.set_epsilon("logit_eps0.5") == 0.5
    assert keys.set_epsilon("cross_entropy_eps10") == 10
    with pytest.raises(ValueError, match="'clahe_2': cannot read an epsilon"):
        keys.set_epsilon("clahe_2")


def test_image_key(tmp_path):
    csv = tmp_path / "difficulty" / "dirmap.csv"
    key = keys.image_key(csv, "../imagefolder/val/3/d.png", tmp_path / "imagefolder")
    assert key == "val/3/d.png"
    assert keys.image_key(csv, "val/3/d.png") == "val/3/d.png"


def test_image_statistics(tmp_path):
    blank, square = tmp_path / "blank.png", tmp_path / "square.png"
    Image.new("RGB", (32, 32), "white").save(blank)
    arr = np.full((32, 32), 255, np.uint8)
    arr[8:24, 8:24] = 0  # a quarter of the image is ink
    Image.fromarray(arr).save(square)
    table = simulation.image_statistics([blank, square])
    assert table.loc[0].tolist() == [0.0, 0.0, 0.0]
    assert table.loc[1, "ink_fraction"] == pytest.approx(0.25, abs=0.03)
    assert table.loc[1, "rms_contrast"] > 0.3 and table.loc[1, "edge_energy"] > 0


# --- simulation ----------------------------------------------------------------------------------


def test_simulate_trials_marks_synthetic_and_ignores_the_model(data, tmp_path):
    out = tmp_path / "trials.csv"
    trials = simulate(data, out)
    read = humans.read_trials(out, classes=CLASSES)
    assert read["synthetic"].all() and len(read) == 60 * 3 * N_VAL
    assert set(read["image"]) == set(
        f"val/{c}/{c}_{i:02d}.png" for c in CLASSES for i in range(N_VAL)
    )
    assert set(read["condition"]) == set(SETS)
    assert {"p_correct", "latent_difficulty"} <= set(read.columns)
    assert not list(tmp_path.glob(".trials.csv.tmp-*"))

    # Accuracy grows with epsilon: boost 0, 1.5, 3 logits.
    acc = trials.groupby("condition")["correct"].mean()
    assert acc["natural"] + 0.05 < acc["logit_eps1"] < acc["logit_eps2"] - 0.03

    # The guide model's scores play no part: shuffling them leaves the trials unchanged.
    shuffled = dirmap.read(data["natural"])
    for column in ("robust_gt_logit", "difficulty", "correct"):
        shuffled[column] = shuffled[column].sample(frac=1, random_state=1).to_numpy()
    dirmap.write(shuffled, data["natural"])
    again = simulate(data, tmp_path / "again.csv")
    pd.testing.assert_frame_equal(trials, again)


def test_simulate_trials_rejects_unknown_split_and_set_names(data, tmp_path):
    with pytest.raises(
        ValueError, match=r"no images in split 'test'; splits present: \['train', 'val'\]"
    ):
        simulate(data, tmp_path / "t.csv", split="test")
    with pytest.raises(ValueError, match="'clahe': cannot read an epsilon"):
        simulation.simulate_observers(
            data["natural"], ["natural", "clahe"], tmp_path / "t.csv", simulation_config()
        )
    assert not (tmp_path / "t.csv").exists()


# --- the whole analysis ---------------------------------------------------------------------------


def test_evaluate_alignment_on_simulated_observers(data, tmp_path):
    trials_csv = tmp_path / "trials.csv"
    simulate(data, trials_csv)
    out = tmp_path / "alignment"
    tables = evaluate.evaluate_alignment(
        data["natural"], set_dirmaps(data), trials_csv, out, evaluation(folds=5, n_boot=100),
        logit_column=LOGIT, key_root=data["key_root"], vanilla_dirmap_csv=data["vanilla"],
        probabilities_csv=data["probabilities"],
    )  # fmt: skip
    expected = {
        "difficulty_prediction.csv", "enhancement_effect.csv", "consistency.csv", "visalign.csv",
        "visalign_images.csv", "summary.csv", "difficulty_curve.png", "enhancement_effect.png",
        "consistency.png",
    }  # fmt: skip
    assert {p.name for p in out.iterdir()} == expected
    for name in expected - {p for p in expected if p.endswith(".png")}:
        table = pd.read_csv(out / name)
        assert table["synthetic"].all(), name
        returned = tables.get(name.removesuffix(".csv"))
        if returned is not None:  # the file is the table the call returned
            assert list(table.columns) == list(returned.columns) and len(table) == len(returned)
    for name in ("difficulty_curve", "enhancement_effect", "consistency"):
        with Image.open(out / f"{name}.png") as img:
            assert img.format == "PNG"

    diff = pd.read_csv(out / "difficulty_prediction.csv")
    assert diff["model"].tolist() == ["robust", "vanilla", "robust_minus_vanilla"]
    assert diff["logit_column"].tolist()[:2] == ["robust_gt_logit", "vanilla_gt_logit"]
    assert diff["n_trials"].iloc[0] + diff["n_outliers"].iloc[0] == 60 * N_VAL * 3 / 3
    for column in ("auc", "cv_auc", "ci_low", "ci_high"):
        assert diff[column].iloc[:2].between(0, 1).all()
    assert (diff["ci_low"] <= diff["cv_auc"]).all() and (diff["cv_auc"] <= diff["ci_high"]).all()
    robust, vanilla, delta = diff.itertuples()
    assert delta.cv_auc == pytest.approx(robust.cv_auc - vanilla.cv_auc)

    effect = pd.read_csv(out / "enhancement_effect.csv")
    assert effect["condition"].tolist() == SETS  # ordered by epsilon
    assert effect["eps"].tolist() == [0, 1, 2]
    assert effect["accuracy"].is_monotonic_increasing
    assert (effect["ci_low"] < effect["accuracy"]).all()
    assert effect["mean_l2_distance"].iloc[0] == 0
    assert effect["mean_l2_distance"].iloc[1:].tolist() == pytest.approx([1, 2], rel=0.06)
    assert effect["chi2_p_vs_natural"].iloc[2] < 0.01

    agree = pd.read_csv(out / "consistency.csv")
    assert (agree["level"] == "participant").sum() == 60
    assert set(agree["condition"]) == {"natural"}
    assert agree["error_consistency"].between(-1, 1).all()
    mean = agree[agree["level"] == "mean_over_participants"].iloc[0]
    assert mean["error_consistency_ci_low"] <= mean["error_consistency"]

    va = pd.read_csv(out / "visalign.csv")
    assert va["level"].tolist() == ["all", "class", "class", "class", "split"]
    assert va["mean_hellinger"].between(0, 1).all()
    assert {"reliability_c0", "reliability_c1", "reliability_c5", "reliability_c10"} <= set(va)
    # Larger costs can only lower the reliability.
    assert (va["reliability_c0"] >= va["reliability_c10"]).all()
    images = pd.read_csv(out / "visalign_images.csv")
    assert len(images) == N_VAL * len(CLASSES) and images["hellinger"].between(0, 1).all()

    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert summary["synthetic"].all()
    metrics = set(summary["metric"])
    assert {"difficulty_cv_auc", "cv_auc_difference", "human_accuracy", "error_consistency",
            "visalign_hellinger", "reliability_c1"} <= metrics  # fmt: skip
    assert set(tables) == {p.removesuffix(".csv") for p in expected if p.endswith(".csv")}

    # The numbers themselves, recomputed here from the trials and the dirmaps.
    trials = pd.read_csv(trials_csv)
    trials["correct"] = trials["correct"].astype(bool)
    by_set = trials.groupby("condition")["correct"].agg(["sum", "count"])
    effect = effect.set_index("condition")
    for name in SETS:
        k, n = int(by_set.loc[name, "sum"]), int(by_set.loc[name, "count"])
        z = 1.959963984540054  # Wilson score interval, 95 %
        centre = (k / n + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z / (1 + z**2 / n) * np.sqrt(k / n * (1 - k / n) / n + z**2 / (4 * n**2))
        row = effect.loc[name]
        assert (row["n"], row["n_correct"]) == (n, k) and row["accuracy"] == pytest.approx(k / n)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((centre - half, centre + half))
        if name != "natural":
            k0, n0 = int(by_set.loc["natural", "sum"]), int(by_set.loc["natural", "count"])
            table = [[k, n - k], [k0, n0 - k0]]
            assert row["chi2_p_vs_natural"] == pytest.approx(stats.chi2_contingency(table).pvalue)
            shown = dirmap.read(data[name], check_files=False).set_index("im_path")
            images = sorted(set(trials.loc[trials["condition"] == name, "image"]))
            assert row["mean_l2_distance"] == pytest.approx(shown.loc[images, "l2_distance"].mean())

    natural_trials = trials[trials["condition"] == "natural"]
    model = dirmap.read(data["natural"]).set_index("im_path")
    model_correct = model.loc[natural_trials["image"], "correct"].astype(bool).to_numpy()

    def kappa(a, b):  # Cohen's kappa of correctness (Geirhos, Meding & Wichmann 2020)
        c_obs = (a == b).mean()
        c_exp = a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean())
        return 1.0 if c_obs == 1 else (c_obs - c_exp) / (1 - c_exp)

    human = natural_trials["correct"].to_numpy()
    per_participant = [
        kappa(human[rows], model_correct[rows])
        for rows in natural_trials.groupby("participant").indices.values()
    ]
    levels = agree.set_index("level")
    assert levels.loc["mean_over_participants", "error_consistency"] == pytest.approx(
        np.mean(per_participant)
    )
    assert levels.loc["pooled", "error_consistency"] == pytest.approx(kappa(human, model_correct))
    assert sorted(agree.loc[agree["level"] == "participant", "error_consistency"]) == (
        pytest.approx(sorted(per_participant))
    )
    per_image = natural_trials.groupby("image")["correct"].mean()
    rho = stats.spearmanr(per_image, model.loc[per_image.index, LOGIT]).statistic
    assert diff["spearman_rho"].iloc[0] == pytest.approx(rho)
    accuracy = summary.set_index(["metric", "group"]).loc[("human_accuracy", "natural"), "value"]
    assert accuracy == pytest.approx(natural_trials["correct"].mean())


def deterministic_trials(data, path: Path) -> pd.DataFrame:
    """Four participants who answer every natural image right exactly when its logit is high."""
    natural = dirmap.read(data["natural"])
    val = natural[natural["split"] == "val"]
    high = val["robust_gt_logit"] > val["robust_gt_logit"].median()
    rows = []
    for p in range(4):
        for (_, img), good in zip(val.iterrows(), high, strict=True):
            wrong = CLASSES[(CLASSES.index(img["class"]) + 1) % len(CLASSES)]
            for condition in ("natural", "logit_eps2"):
                rows.append(
                    {
                        "participant": f"p{p}", "image": img["im_path"], "condition": condition,
                        "class": img["class"], "response": img["class"] if good else wrong,
                        "correct": bool(good),
                    }
                )  # fmt: skip
    return humans.write_trials(pd.DataFrame(rows), path)


def test_deterministic_correctness_gives_perfect_prediction(data, tmp_path):
    # The model is right exactly on the high-logit images too: perfectly consistent with humans.
    natural = dirmap.read(data["natural"])
    natural["correct"] = (
        natural["robust_gt_logit"]
        > natural.loc[natural["split"] == "val", "robust_gt_logit"].median()
    )
    dirmap.write(natural, data["natural"])
    trials_csv = tmp_path / "trials.csv"
    deterministic_trials(data, trials_csv)
    out = tmp_path / "alignment"
    tables = evaluate.evaluate_alignment(
        data["natural"], {"logit_eps2": data["logit_eps2"]}, trials_csv, out,
        evaluation(folds=5, n_boot=50, outliers_sd=None), logit_column=LOGIT,
    )  # fmt: skip
    row = tables["difficulty_prediction"].iloc[0]
    assert row["n_trials"] == 4 * N_VAL * len(CLASSES)
    assert row["cv_auc"] == pytest.approx(1) and row["auc"] == pytest.approx(1)
    assert row["spearman_rho"] > 0.8
    pooled = tables["consistency"].set_index("level").loc["pooled"]
    assert pooled["observed_consistency"] == 1 and pooled["error_consistency"] == 1
    assert pooled["accuracy_difference"] == pytest.approx(0, abs=0.01)
    # Real data: nothing says synthetic, and no VisAlign without model probabilities.
    assert not (out / "visalign.csv").exists()
    summary = pd.read_csv(out / "summary.csv")
    assert not summary["synthetic"].any()


# --- errors ------------------------------------------------------------------------------------


def run(data, trials_csv, out, **kwargs):
    return evaluate.evaluate_alignment(
        data["natural"], set_dirmaps(data), trials_csv, out, evaluation(folds=5, n_boot=20),
        logit_column=LOGIT, **kwargs,
    )  # fmt: skip


def test_bad_trials_csv_gives_the_validator_error(data, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("participant,image,response,correct\np1,val/ant/ant_00.png,ant,1\n")
    with pytest.raises(humans.HumanDataError, match=r"(?s)bad\.csv: .*missing required column"):
        run(data, bad, tmp_path / "out")
    bad.write_text(
        "participant,image,condition,response,correct\np1,val/ant/ant_00.png,natural,hippo,0\n"
    )
    with pytest.raises(humans.HumanDataError, match=r"column 'response'.*\['hippo'\]"):
        run(data, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_trials_must_match_the_stimulus_sets(data, tmp_path):
    trials_csv = tmp_path / "trials.csv"
    trials = deterministic_trials(data, trials_csv)
    bad = tmp_path / "bad.csv"
    humans.write_trials(trials.assign(condition="logit_eps9"), bad)
    with pytest.raises(AlignmentDataError, match=r"bad\.csv: column 'condition'"):
        run(data, bad, tmp_path / "out")
    humans.write_trials(trials.assign(image="val/ant/nope.png"), bad)
    with pytest.raises(AlignmentDataError, match=r"\['val/ant/nope\.png'\] not in stimulus set"):
        run(data, bad, tmp_path / "out")
    humans.write_trials(trials[trials["condition"] != "natural"], bad)
    with pytest.raises(AlignmentDataError, match="no trials in condition 'natural'"):
        run(data, bad, tmp_path / "out")
    # Synthetic trials cannot be passed off as human data.
    humans.write_trials(trials.assign(synthetic=True), bad)
    with pytest.raises(AlignmentDataError, match="marked synthetic"):
        run(data, bad, tmp_path / "out", synthetic=False)


def test_probabilities_must_cover_classes_and_images(data, tmp_path):
    trials_csv = tmp_path / "trials.csv"
    deterministic_trials(data, trials_csv)
    probs = pd.read_csv(data["probabilities"])
    bad = tmp_path / "difficulty" / "bad.csv"
    probs.drop(columns="cow").to_csv(bad, index=False)
    with pytest.raises(AlignmentDataError, match=r"missing class column\(s\) \['cow'\]"):
        run(data, trials_csv, tmp_path / "out", probabilities_csv=bad, key_root=data["key_root"])
    probs.iloc[1:].to_csv(bad, index=False)
    with pytest.raises(AlignmentDataError, match="no row for 1 natural image"):
        run(data, trials_csv, tmp_path / "out", probabilities_csv=bad, key_root=data["key_root"])


def test_a_method_that_runs_the_model_needs_the_guide_model(data, tmp_path):
    trials_csv = tmp_path / "trials.csv"
    deterministic_trials(data, trials_csv)
    inputs = dict(key_root=data["key_root"], probabilities_csv=data["probabilities"])
    cfg = evaluation(folds=5, n_boot=20, analyses=["visalign"], abstention="odin")
    args = (data["natural"], set_dirmaps(data), trials_csv, tmp_path / "out", cfg)
    with pytest.raises(AlignmentDataError, match=r"'odin' runs the guide model, but none was"):
        evaluate.evaluate_alignment(*args, logit_column=LOGIT, **inputs)
    with pytest.raises(AlignmentDataError, match=r"nope\.pt: guide model not found"):
        evaluate.evaluate_alignment(
            *args, logit_column=LOGIT, guide_model=tmp_path / "nope.pt", **inputs,
            train_dirmap_csv=data["key_root"] / "dirmap.csv",
        )  # fmt: skip
    assert not (tmp_path / "out").exists()
    # msp needs no model: a guide model given is not even read.
    cfg = evaluation(folds=5, n_boot=20, analyses=["visalign"])
    tables = evaluate.evaluate_alignment(
        *args[:4], cfg, logit_column=LOGIT, guide_model=tmp_path / "nope.pt", **inputs
    )
    assert len(tables["visalign_images"]) == len(CLASSES) * N_VAL


# --- pure pieces --------------------------------------------------------------------------------


def test_visalign_zero_distance_and_reliability():
    probs = pd.DataFrame([[0.9, 0.1], [0.5, 0.5]], columns=["x", "y"], index=["i1", "i2"])
    # Model outputs q = [p * max p, 1 - max p]: (0.81, 0.09, 0.1) and (0.25, 0.25, 0.5).
    human = pd.DataFrame(
        {"image": ["i1", "i2"], "x": [0.81, 0.0], "y": [0.09, 0.0], "abstain": [0.1, 1.0]}
    )
    images = pd.DataFrame({"class": ["x", "y"], "split": ["val", "val"]}, index=["i1", "i2"])
    per_image, summary = visalign(human, probs, images, ["x", "y"], costs=(0, 2), abstention="msp")
    assert per_image["hellinger"].iloc[0] == pytest.approx(0, abs=1e-12)
    assert 0 < per_image["hellinger"].iloc[1] < 1
    assert per_image["model_decision"].tolist() == ["x", "abstain"]
    assert per_image["human_majority"].tolist() == ["x", "abstain"]
    # Both decisions match the human majority: +1 each whatever the cost.
    assert summary.iloc[0][["reliability_c0", "reliability_c2"]].tolist() == [1, 1]


def test_plots_say_synthetic(data, tmp_path):
    trials = simulate(data, tmp_path / "t.csv", n_participants=10)
    natural_trials = trials[trials["condition"] == "natural"]
    logit = dirmap.read(data["natural"]).set_index("im_path")["robust_gt_logit"]
    for synthetic in (True, False):
        fig = plots.plot_difficulty_curve(
            natural_trials, logit, logit_column=LOGIT, synthetic=synthetic
        )
        assert ("(synthetic observers)" in fig.axes[0].get_title()) is synthetic
        sets = {n: dirmap.read(data[n], check_files=False) for n in SETS}
        effect = enhancement.enhancement_effect(trials, sets)
        fig = plots.plot_enhancement_effect(effect, synthetic=synthetic)
        assert ("(synthetic observers)" in fig.axes[0].get_title()) is synthetic
        model = pd.Series(dirmap.read(data["natural"]).set_index("im_path")["correct"])
        fig = plots.plot_consistency(
            consistency.consistency(natural_trials, model, n_boot=20, seed=0), synthetic=synthetic
        )
        assert ("(synthetic observers)" in fig._suptitle.get_text()) is synthetic


# --- registries and config --------------------------------------------------------------------


def test_registries_match_the_schema():
    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["evaluation"]["properties"]
    assert sorted(schema["analyses"]["items"]["enum"]) == sorted(ANALYSES)
    assert sorted(schema["analyses"]["default"]) == sorted(ANALYSES)
    assert sorted(schema["abstention"]["enum"]) == sorted(abstention.ABSTENTION)
    assert schema["abstention"]["default"] in abstention.ABSTENTION


@pytest.mark.parametrize(
    "method", [name for name, m in abstention.ABSTENTION.items() if m.raw_from_softmax]
)
def test_abstention_methods_from_the_softmax_give_probabilities(method):
    # The others need the model itself (tests/test_visalign*.py cover every method).
    probs = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    a = abstention.abstention_probability(method, abstention.ModelOutputs(probs))
    assert a.shape == (3,) and ((a >= 0) & (a <= 1)).all()
    assert a[1] >= a[0] >= a[2]  # the uniform output abstains most, the certain one least


def test_config_sections_refuse_unknown_keys_and_fill_defaults_from_the_schema():
    section = config_section("evaluation")
    section["fold"] = section.pop("folds")
    with pytest.raises(ValueError, match=r"'fold' was unexpected"):
        EvaluationConfig.from_config(section)
    section = config_section("simulation")
    del section["slope"]
    assert simulation.SimulationConfig.from_config(section).slope == 1.0


@pytest.mark.parametrize("name", list(ANALYSES))
def test_each_analysis_runs_alone(data, tmp_path, name):
    """An analysis run alone writes what it writes in the full run, and only that."""
    trials_csv = tmp_path / "trials.csv"
    deterministic_trials(data, trials_csv)
    inputs = dict(key_root=data["key_root"], probabilities_csv=data["probabilities"])
    run(data, trials_csv, tmp_path / "all", **inputs)
    alone = evaluate.evaluate_alignment(
        data["natural"], set_dirmaps(data), trials_csv, tmp_path / name,
        evaluation(folds=5, n_boot=20, analyses=[name]), logit_column=LOGIT, **inputs,
    )  # fmt: skip
    files = {p.name for p in (tmp_path / name).iterdir()}
    assert "summary.csv" in files and files < {p.name for p in (tmp_path / "all").iterdir()}
    for file in files - {"summary.csv"}:
        assert (tmp_path / name / file).read_bytes() == (tmp_path / "all" / file).read_bytes()
    own = (tmp_path / name / "summary.csv").read_text().splitlines()
    everything = (tmp_path / "all" / "summary.csv").read_text().splitlines()
    assert len(own) > 1 and set(own) <= set(everything)
    assert set(alone) == {f.removesuffix(".csv") for f in files if f.endswith(".csv")}


def test_participant_identifiers_never_reach_the_outputs(data, tmp_path, monkeypatch):
    monkeypatch.setenv("LWISE_PARTICIPANT_SALT", "test-salt")
    trials_csv = tmp_path / "trials.csv"
    trials = deterministic_trials(data, trials_csv)
    names = {f"jane.doe.{p}@example.org" for p in range(4)}
    trials["participant"] = trials["participant"].map(lambda p: f"jane.doe.{p[1:]}@example.org")
    humans.write_trials(trials, trials_csv)
    out = tmp_path / "alignment"
    tables = run(data, trials_csv, out, synthetic=False)
    written = "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())
    assert not any(name in written for name in names)
    per = tables["consistency"].query("level == 'participant'")["participant"]
    assert len(set(per)) == 4 and per.str.fullmatch(r"p-[0-9a-f]{12}").all()
    again = run(data, trials_csv, tmp_path / "again", synthetic=False)["consistency"]
    assert again.query("level == 'participant'")["participant"].tolist() == per.tolist()


def test_participant_salt_is_created_once_outside_results(tmp_path, monkeypatch):
    from lwise.core import privacy

    monkeypatch.delenv("LWISE_PARTICIPANT_SALT", raising=False)
    path = tmp_path / ".lwise" / "participant-salt"
    salt = privacy.participant_salt(path)
    assert len(salt) == 64 and privacy.participant_salt(path) == salt
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert privacy.pseudonyms(["a"], salt) != privacy.pseudonyms(["a"], b"other")
