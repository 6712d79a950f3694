from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lwise.alignment import auc, metrics

# L-WISE's settings (`notebooks/make_figs.ipynb`), the evaluation section's defaults.
LWISE = {"folds": 10, "seed": 0, "outliers_sd": 3.0}


def logistic_trials(n: int, slope: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Trials whose correctness follows a logistic function of the logit."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(0, 1, n)
    correct = rng.random(n) < 1 / (1 + np.exp(-slope * logit))
    return correct, logit


# --- AUC and difficulty prediction ------------------------------------------------------------


def test_roc_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.4
    score = rng.integers(0, 8, 300).astype(float)  # many ties
    pos, neg = score[y], score[~y]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auc.roc_auc(y, score) == pytest.approx(pairwise)
    assert auc.roc_auc(y, score) == pytest.approx(roc_auc_score(y, score))
    assert auc.roc_auc(y, -score) == pytest.approx(1 - pairwise)


def test_difficulty_auc_perfect_and_reversed_predictor():
    logit = np.linspace(-2, 2, 200)
    perfect = auc.difficulty_auc(logit > 0, logit, n_boot=200, **LWISE)
    assert perfect["auc"] == 1 and perfect["cv_auc"] == 1 and perfect["raw_auc"] == 1
    assert perfect["cv_auc_ci_low"] == perfect["cv_auc_ci_high"] == 1
    assert perfect["coef"] > 0 and perfect["n_trials"] == 200 and perfect["n_outliers"] == 0

    # The regression picks the sign, so a score that predicts errors also separates perfectly;
    # the slope and the direction-keeping raw AUC say which way round it is.
    reversed_ = auc.difficulty_auc(logit < 0, logit, n_boot=200, **LWISE)
    assert reversed_["auc"] == 1 and reversed_["cv_auc"] == 1
    assert reversed_["coef"] < 0 and reversed_["raw_auc"] == 0


def test_difficulty_auc_on_logistic_data():
    correct, logit = logistic_trials(3000, slope=1.5, seed=2)
    result = auc.difficulty_auc(correct, logit, n_boot=300, **LWISE)
    assert 0.7 < result["cv_auc"] < 0.85
    assert result["cv_auc_ci_low"] < result["cv_auc"] < result["cv_auc_ci_high"]
    assert result["cv_auc_ci_high"] - result["cv_auc_ci_low"] < 0.06
    assert result["auc"] == pytest.approx(result["raw_auc"])  # positive slope, same ranking
    assert result == auc.difficulty_auc(correct, logit, n_boot=300, **LWISE)  # seeded

    noise = auc.difficulty_auc(
        correct, np.random.default_rng(3).normal(size=3000), n_boot=300, **LWISE
    )
    assert noise["cv_auc_ci_low"] < 0.55 and abs(noise["raw_auc"] - 0.5) < 0.05


def test_difficulty_auc_removes_outliers():
    correct, logit = logistic_trials(500, slope=1.0, seed=4)
    logit[7] = 50.0
    assert auc.difficulty_auc(correct, logit, n_boot=10, **LWISE)["n_outliers"] == 1
    keep_all = LWISE | {"outliers_sd": None}
    assert auc.difficulty_auc(correct, logit, n_boot=10, **keep_all)["n_outliers"] == 0


def test_difficulty_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 10 correct and 10 incorrect"):
        auc.difficulty_auc(np.ones(50, bool), np.arange(50.0), n_boot=1000, **LWISE)
    with pytest.raises(ValueError, match="correct: expected 0/1 or booleans; element 1 is 2"):
        auc.difficulty_auc([0, 2, 1], [0.1, 0.2, 0.3], n_boot=1000, **LWISE)
    with pytest.raises(ValueError, match="logit: expected finite numbers; element 2"):
        auc.difficulty_auc([0, 1, 1], [0.1, 0.2, np.nan], n_boot=1000, **LWISE)
    with pytest.raises(ValueError, match="differ in length"):
        auc.difficulty_auc([0, 1, 1], [0.1, 0.2], n_boot=1000, **LWISE)


def test_compare_auc_paired_difference():
    correct, logit = logistic_trials(2000, slope=2.0, seed=5)
    noisy = logit + np.random.default_rng(6).normal(0, 1.5, len(logit))
    result = auc.compare_auc(correct, logit, noisy, n_boot=300, **LWISE)
    assert result["difference"] == pytest.approx(result["cv_auc_a"] - result["cv_auc_b"])
    assert 0 < result["ci_low"] < result["difference"] < result["ci_high"]

    same = auc.compare_auc(correct, logit, logit, n_boot=50, **LWISE)
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0


def test_spearman_accuracy():
    rho, p = auc.spearman_accuracy([0.2, 0.5, 0.6, 0.9], [-1.0, 0.0, 2.0, 3.0])
    assert rho == pytest.approx(1.0) and p < 0.1
    with pytest.raises(ValueError, match="at least 3 images"):
        auc.spearman_accuracy([0.1, 0.2], [1, 2])


# --- accuracy with confidence intervals --------------------------------------------------------


def test_wilson_interval_by_hand():
    # 8/10, z = 1.959964: centre = (0.8 + z^2/20) / (1 + z^2/10) = 0.716740,
    # half-width = z / (1 + z^2/10) * sqrt(0.8 * 0.2 / 10 + z^2 / 400) = 0.226576.
    ci = metrics.accuracy_ci([1] * 8 + [0] * 2)
    assert (ci["n"], ci["n_correct"], ci["accuracy"]) == (10, 8, 0.8)
    assert ci["ci_low"] == pytest.approx(0.490164, abs=1e-5)
    assert ci["ci_high"] == pytest.approx(0.943316, abs=1e-5)


def test_exact_interval_all_wrong():
    ci = metrics.accuracy_ci(np.zeros(10), method="exact")
    assert ci["ci_low"] == 0 and ci["ci_high"] == pytest.approx(1 - 0.025 ** (1 / 10))
    with pytest.raises(ValueError, match="method 'wald'"):
        metrics.accuracy_ci([1, 0], method="wald")


def test_condition_accuracy_table():
    trials = pd.DataFrame(
        {"condition": ["a", "a", "b", "b", "b"], "correct": [True, False, True, True, True]}
    )
    table = metrics.condition_accuracy(trials)
    assert table["condition"].tolist() == ["a", "b"]
    assert table["accuracy"].tolist() == [0.5, 1.0]
    assert (table["ci_low"] <= table["accuracy"]).all() and (table["ci_high"] <= 1).all()


# --- model vs human -----------------------------------------------------------------------------


def test_consistency_by_hand_2x2():
    # both right 4, both wrong 3, only A right 2, only B right 1 (n = 10):
    # p_A = 0.6, p_B = 0.5, c_obs = 0.7, c_exp = 0.6*0.5 + 0.4*0.5 = 0.5, kappa = 0.2/0.5 = 0.4.
    a = [1, 1, 1, 1, 0, 0, 0, 1, 1, 0]
    b = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    assert metrics.observed_consistency(a, b) == pytest.approx(0.7)
    assert metrics.error_consistency(a, b) == pytest.approx(0.4)
    assert metrics.accuracy_difference(a, b) == pytest.approx(0.01)


def test_error_consistency_limits():
    rng = np.random.default_rng(7)
    a = rng.random(200_000) < 0.7
    assert metrics.error_consistency(a, a) == 1
    independent = rng.random(200_000) < 0.6
    assert abs(metrics.error_consistency(a, independent)) < 0.01
    assert metrics.error_consistency([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1)
    # c_exp = 1 only when both are always right (or always wrong): kappa is defined as 1.
    assert metrics.error_consistency(np.ones(5), np.ones(5)) == 1
    assert metrics.error_consistency(np.ones(5), np.zeros(5)) == 0


def test_model_vs_human_table():
    human = pd.DataFrame(
        {
            "participant": ["p1"] * 4 + ["p2"] * 4,
            "image": ["i1", "i2", "i3", "i4"] * 2,
            "condition": ["c"] * 8,
            "correct": [1, 1, 0, 0, 1, 0, 1, 0],
        }
    )
    model = pd.DataFrame(
        {"image": ["i1", "i2", "i3", "i4"], "condition": "c", "correct": [1, 1, 0, 0]}
    )
    table = metrics.model_vs_human(human, model)
    assert table["participant"].tolist() == ["p1", "p2"]
    assert table["error_consistency"].tolist() == [1.0, 0.0]
    assert table["observed_consistency"].tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="no model answer"):
        metrics.model_vs_human(human, model.iloc[:3])


# --- VisAlign -----------------------------------------------------------------------------------


def test_hellinger_identical_disjoint_and_by_hand():
    p = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    assert metrics.hellinger(p, p) == pytest.approx([0.0, 0.0])
    assert metrics.hellinger([[1, 0, 0]], [[0, 0.5, 0.5]]) == pytest.approx([1.0])
    # sqrt(((1 - sqrt(.5))^2 + .5) / 2) = 0.541196
    assert metrics.hellinger([1, 0], [0.5, 0.5]) == pytest.approx([0.541196], abs=1e-6)
    with pytest.raises(ValueError, match="q: row 0 is not a probability distribution"):
        metrics.hellinger([1, 0], [0.5, 0.6])


def test_visalign_output_and_msp():
    probs = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    a = metrics.max_softmax_abstention(probs)
    assert a == pytest.approx([0.3, 2 / 3])
    out = metrics.visalign_output(probs, a)
    assert out.shape == (2, 4) and out.sum(axis=1) == pytest.approx([1, 1])
    assert out[0] == pytest.approx([0.49, 0.14, 0.07, 0.3])
    assert metrics.visalign_decision(out).tolist() == [0, 3]
    with pytest.raises(ValueError, match=r"abstain: expected values in \[0, 1\]; element 1"):
        metrics.visalign_output(probs, [0.5, 1.5])


def test_reliability_score_by_hand():
    pred = ["cat", "dog", "abstain", "abstain", "cat"]
    target = ["cat", "cat", "cat", "abstain", "abstain"]
    # +1, -c, 0, +1, -c  ->  (2 - 2c) / 5
    assert metrics.reliability_score(pred, target, [0, 1, 10]) == pytest.approx(
        {0.0: 0.4, 1.0: 0.0, 10.0: -3.6}
    )
    # Integer decisions from the 11-d output: index K is abstention.
    assert metrics.reliability_score([0, 10, 3], [0, 1, 10], 2, abstain=10) == {2.0: -1 / 3}


# --- issue 13: mutants that survived the first mutation run (mutmut, tests/test_metrics.py) ----


def test_exact_interval_is_clopper_pearson_with_closed_ends():
    # Clopper & Pearson (1934): Beta(α/2; k, n-k+1) and Beta(1-α/2; k+1, n-k).
    from scipy import stats

    got = metrics.accuracy_ci([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], "exact", 0.9)
    assert got["ci_low"] == pytest.approx(stats.beta.ppf(0.05, 3, 8))
    assert got["ci_high"] == pytest.approx(stats.beta.ppf(0.95, 4, 7))
    assert metrics.accuracy_ci([0, 0, 0], "exact")["ci_low"] == 0.0
    assert metrics.accuracy_ci([1, 1, 1], "exact")["ci_high"] == 1.0
    one = metrics.accuracy_ci([1], "exact")  # a single trial is an interval, not an error
    assert (one["ci_low"], one["ci_high"]) == (pytest.approx(0.025), 1.0)


@pytest.mark.parametrize("confidence", [0, 1, 1.5])
def test_accuracy_ci_rejects_confidence_outside_the_open_unit_interval(confidence):
    with pytest.raises(ValueError, match=rf"confidence must be in \(0, 1\), got {confidence}"):
        metrics.accuracy_ci([1, 0], confidence=confidence)
    with pytest.raises(ValueError, match=r"^accuracy_ci: no trials$"):
        metrics.accuracy_ci([])
    with pytest.raises(ValueError, match=r"^correct: expected 0/1 or booleans; element 1 is 2"):
        metrics.accuracy_ci([1, 2])


def test_condition_accuracy_by_several_keys_sorted_with_the_given_confidence():
    trials = pd.DataFrame(
        {"condition": ["b", "a", "b", "a", "a"], "split": ["x", "y", "x", "x", "x"],
         "correct": [1, 0, 1, 1, 1]}
    )  # fmt: skip
    table = metrics.condition_accuracy(trials, ["condition", "split"], confidence=0.5)
    assert table[["condition", "split"]].values.tolist() == [["a", "x"], ["a", "y"], ["b", "x"]]
    assert table["n"].tolist() == [2, 1, 2]
    narrow = metrics.accuracy_ci([1, 1], confidence=0.5)
    assert table.loc[0, "ci_low"] == pytest.approx(narrow["ci_low"])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['split'\]; found \['condition', "):
        metrics.condition_accuracy(trials.drop(columns="split"), ["condition", "split"])


def test_model_vs_human_checks_name_the_argument():
    with pytest.raises(ValueError, match=r"^model_correct: expected 0/1"):
        metrics.accuracy_difference([2], [1])
    with pytest.raises(ValueError, match=r"^human_correct: expected 0/1"):
        metrics.accuracy_difference([1], [2])
    with pytest.raises(ValueError, match="accuracy_difference: empty input"):
        metrics.accuracy_difference([1], [])
    for fn in (metrics.observed_consistency, metrics.error_consistency):
        with pytest.raises(ValueError, match=r"^correct_a: expected 0/1"):
            fn([2, 1], [1, 1])
        with pytest.raises(ValueError, match=r"^correct_b: expected 0/1"):
            fn([1, 1], [1, 3])
        with pytest.raises(ValueError, match=r"correct_a.*correct_b|correct_b.*correct_a"):
            fn([1, 1, 0], [1, 1])
    with pytest.raises(ValueError, match="observed_consistency: empty input"):
        metrics.observed_consistency([], [])


def test_model_vs_human_table_by_several_keys_and_its_errors():
    human = pd.DataFrame(
        {"participant": ["p2", "p2", "p1", "p1"], "image": ["i1", "i2", "i1", "i2"],
         "condition": ["n", "n", "n", "e"], "block": [1, 1, 1, 1], "correct": [1, 0, 1, 1]}
    )  # fmt: skip
    model = pd.DataFrame(
        {"image": ["i1", "i2", "i2"], "condition": ["n", "n", "e"], "block": [1, 1, 1],
         "correct": [1, 1, 0]}
    )  # fmt: skip
    table = metrics.model_vs_human(human, model, by=["condition", "block"])
    assert table[["participant", "condition"]].values.tolist() == [
        ["p1", "e"], ["p1", "n"], ["p2", "n"]
    ]  # fmt: skip
    assert list(table.columns) == [
        "participant", "condition", "block", "n", "human_accuracy", "model_accuracy",
        "accuracy_difference", "observed_consistency", "error_consistency",
    ]  # fmt: skip
    assert table["n"].tolist() == [1, 1, 2] and table["human_accuracy"].tolist() == [1, 1, 0.5]
    assert table["model_accuracy"].tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match=r"^human table lacks column\(s\) \['participant'\]"):
        metrics.model_vs_human(human.drop(columns="participant"), model)
    with pytest.raises(ValueError, match=r"^model table lacks column\(s\) \['correct'\]"):
        metrics.model_vs_human(human, model.drop(columns="correct"))
    twice = pd.concat([model, model.iloc[[2]]])
    with pytest.raises(ValueError, match=r"model table has several rows for \['i2', 'e'\]"):
        metrics.model_vs_human(human, twice)
    with pytest.raises(ValueError) as err:  # the first unmatched trial is the example
        metrics.model_vs_human(human, model.iloc[2:])
    assert str(err.value) == (
        "3 human trial(s) have no model answer, e.g. {'image': 'i1', 'condition': 'n'}"
    )


def test_visalign_checks_name_the_argument_and_accept_the_closed_range():
    probs = np.array([[0.6, 0.4], [0.5, 0.5]])
    out = metrics.visalign_output(probs, [0, 1])  # both ends of [0, 1] are valid
    assert out.tolist() == [[0.6, 0.4, 0.0], [0.0, 0.0, 1.0]]
    assert metrics.visalign_output(probs, np.array([0, 1], dtype=int)).dtype == float
    for call, name in (
        (lambda bad: metrics.max_softmax_abstention(bad), "probs"),
        (lambda bad: metrics.visalign_output(bad, [0]), "probs"),
        (lambda bad: metrics.visalign_decision(bad), "outputs"),
        (lambda bad: metrics.hellinger(bad, [[1.0]]), "p"),
        (lambda bad: metrics.hellinger([[1.0]], bad), "q"),
    ):
        with pytest.raises(ValueError, match=rf"^{name}: "):
            call([[0.5, 0.7]])
    with pytest.raises(ValueError, match=r"hellinger: shapes differ, \(1, 2\) vs \(1, 3\)"):
        metrics.hellinger([[0.5, 0.5]], [[0.2, 0.3, 0.5]])


def test_reliability_counts_wrong_answers_and_checks_its_input():
    # Right, wrong, abstained: (1 - c·1 + 0) / 3.
    assert metrics.reliability_score(["a", "b", "x"], ["a", "a", "b"], [0, 3], abstain="x") == {
        0.0: pytest.approx(1 / 3), 3.0: pytest.approx(-2 / 3)
    }  # fmt: skip
    assert metrics.reliability_score([1, 2], [1, 1], 2, abstain=9) == {2.0: -0.5}
    with pytest.raises(ValueError, match=r"equal-length 1-D arrays, got \(2,\) and \(1,\)"):
        metrics.reliability_score([1, 2], [1], 1)
    with pytest.raises(ValueError, match=r"got \(2, 1\) and \(2, 1\)"):
        metrics.reliability_score([[1], [2]], [[1], [2]], 1)
    with pytest.raises(ValueError, match=r"got \(0,\) and \(0,\)"):
        metrics.reliability_score([], [], 1)
    with pytest.raises(ValueError, match=r"cost: expected finite non-negative values, got \[nan\]"):
        metrics.reliability_score([1], [1], float("nan"))


def test_second_mutation_run_survivors():
    # Two right, one wrong, one abstained: (2 - c) / 4; a mutant counting right as wrong gives
    # (2 - 2c) / 4.
    got = metrics.reliability_score(["a", "a", "b", "x"], ["a", "a", "a", "b"], 2, abstain="x")
    assert got == {2.0: 0.0}
    # Labels of mixed types compare as themselves, not as their strings.
    assert metrics.reliability_score([1, "x"], [1, 2], 1, abstain="x") == {1.0: 0.5}
    assert metrics.reliability_score([2, "x"], [2, "x"], 1, abstain="x") == {1.0: 1.0}
    with pytest.raises(ValueError, match=r"^accuracy_difference: empty input$"):
        metrics.accuracy_difference([], [1])
    with pytest.raises(ValueError, match=r"^observed_consistency: empty input$"):
        metrics.observed_consistency([], [])
    with pytest.raises(ValueError, match=r"^abstain: expected 2 values, got shape \(3,\)$"):
        metrics.visalign_output([[0.5, 0.5], [0.5, 0.5]], [0, 0, 0])
    human = pd.DataFrame(
        {"participant": ["p1"], "image": ["i1"], "condition": ["n"], "correct": [2]}
    )
    model = pd.DataFrame({"image": ["i1"], "condition": ["n"], "correct": [1]})
    with pytest.raises(ValueError, match=r"^correct_human: expected 0/1"):
        metrics.model_vs_human(human, model)
    with pytest.raises(ValueError, match=r"^correct_model: expected 0/1"):
        metrics.model_vs_human(human.assign(correct=1), model.assign(correct=3))
    # Two rows for one image and condition that disagree are still duplicates.
    twice = pd.concat([model, model.assign(correct=0)])
    with pytest.raises(ValueError, match=r"model table has several rows for \['i1', 'n'\]"):
        metrics.model_vs_human(human.assign(correct=1), twice)
