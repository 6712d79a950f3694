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
