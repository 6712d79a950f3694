"""Human-AI team trials: the study-summary importer, our layout's checks, and the metrics on a
small hand-made table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lwise.alignment.correspondence import teams

# The published layout (Human-Study/data/*-Human-Study-Summary.csv), trimmed to a few columns.
STUDY = (
    (
        "UID,Query,Method,Correctness,ClassifierCorrectness,GroundTruth,ConfidenceScore,"
        "ResNet-Prediction,KNN-Prediction,EMD-Prediction,CHM-Prediction\n"
    )
    + """1,a.JPEG,No-XAI,1,1,n1,0.9,cat,cat,cat,cat
1,b.JPEG,No-XAI,0,1,n2,0.4,dog,fox,dog,dog
1,c.JPEG,No-XAI,1,0,n3,0.3,cow,cow,yak,cow
1,d.JPEG,No-XAI,0,0,n4,0.8,hen,hen,hen,owl
2,a.JPEG,EMD-Corr,1,1,n1,0.95,cat,cat,cat,cat
2,b.JPEG,EMD-Corr,1,1,n2,0.6,dog,fox,dog,dog
2,c.JPEG,EMD-Corr,1,0,n3,0.2,cow,cow,yak,cow
2,d.JPEG,EMD-Corr,1,0,n4,0.7,hen,hen,hen,owl
"""
)


@pytest.fixture
def study_csv(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text(STUDY)
    return path


def test_study_summary_importer(study_csv):
    trials = teams.read_trials(study_csv)
    assert list(trials["participant"]) == ["1"] * 4 + ["2"] * 4
    # Accepted exactly when the decision's correctness equals the classifier's.
    assert trials["accept"].tolist() == [True, False, False, True, True, True, False, False]
    assert trials["ai_prediction"].tolist()[:4] == ["cat", "dog", "cow", "hen"]  # ResNet's
    assert trials["ai_prediction"].tolist()[4:] == ["cat", "dog", "yak", "hen"]  # EMD's
    assert trials["confidence"].tolist()[0] == 0.9


def test_metrics_on_a_hand_made_table(study_csv):
    table = teams.team_metrics(teams.read_trials(study_csv), team_threshold=0.5)
    get = table.set_index(["method", "metric"])
    assert get.loc[("No-XAI", "human_accuracy"), "value"] == 0.5
    assert get.loc[("EMD-Corr", "human_accuracy"), "value"] == 1.0
    assert get.loc[("No-XAI", "accept_rate_ai_right"), "value"] == 0.5
    assert get.loc[("No-XAI", "accept_rate_ai_wrong"), "value"] == 0.5
    assert get.loc[("EMD-Corr", "accept_rate_ai_wrong"), "value"] == 0.0
    assert get.loc[("EMD-Corr", "ai_accuracy"), "value"] == 0.5
    # Team: AI alone above 0.5 (a: right, d: wrong), the participant below (b wrong, c right).
    assert get.loc[("No-XAI", "team_accuracy"), "value"] == 0.5
    # EMD-Corr: a (AI, right), b (AI 0.6, right), c (human, right), d (AI 0.7, wrong).
    assert get.loc[("EMD-Corr", "team_accuracy"), "value"] == 0.75
    low, high = get.loc[("No-XAI", "human_accuracy"), ["ci_low", "ci_high"]]
    ci = stats.binomtest(2, 4).proportion_ci(method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high))
    row = get.loc[("EMD-Corr", "human_accuracy")]
    assert row["diff_vs_baseline"] == 0.5
    assert row["diff_low"] < 0.5 < row["diff_high"]
    assert row["p_value"] == pytest.approx(stats.fisher_exact([[4, 0], [2, 2]])[1])
    assert np.isnan(get.loc[("No-XAI", "human_accuracy"), "diff_vs_baseline"])


def test_team_accuracy_needs_confidence():
    trials = pd.DataFrame(
        {"participant": [1, 2], "image": ["a", "b"], "method": ["kNN", "kNN"],
         "ai_correct": [1, 0], "accept": [1, 1]}
    )  # fmt: skip
    table = teams.team_metrics(teams.normalise(trials))
    assert np.isnan(table.set_index("metric").loc["team_accuracy", "value"])


def test_bad_tables_name_file_line_and_field(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("participant,image,method,ai_correct,accept\n1,a,kNN,1,maybe\n")
    with pytest.raises(teams.TrialsError, match=r"t\.csv: field 'accept' .* line\(s\) 2"):
        teams.read_trials(path)
    path.write_text("participant,image,method,ai_correct,accept,human_correct\n1,a,kNN,1,1,0\n")
    with pytest.raises(teams.TrialsError, match="'human_correct' contradicts .* line"):
        teams.read_trials(path)
    path.write_text("participant,image,ai_correct\n1,a,1\n")
    with pytest.raises(teams.TrialsError, match=r"missing column\(s\) \['method', 'accept'\]"):
        teams.read_trials(path)
    path.write_text("participant,image,method,ai_correct,accept,confidence\n1,a,kNN,1,1,7\n")
    with pytest.raises(teams.TrialsError, match="'confidence' not in"):
        teams.read_trials(path)
    path.write_text("UID,Query,Method,Correctness\n1,a,kNN,1\n")
    with pytest.raises(teams.TrialsError, match="ClassifierCorrectness"):
        teams.read_trials(path, layout="study_summary")


def test_simulated_trials_are_marked_and_reported(tmp_path, study_csv):
    pred = pd.DataFrame(
        {"im_path": ["x", "y", "z"], "label": [0, 1, 1]}
        | {f"{m}_pred": [0, 1, 0] for m in ("guide", "knn", "emd_corr", "chm_corr")}
        | {f"{m}_correct": [True, True, False] for m in ("guide", "knn", "emd_corr", "chm_corr")}
        | {f"{m}_confidence": [1.0, 0.0, 0.5] for m in ("guide", "knn", "emd_corr", "chm_corr")}
    )
    pred.to_csv(tmp_path / "pred.csv", index=False)
    trials = teams.simulate_trials(
        tmp_path / "pred.csv", tmp_path / "trials.csv", n_participants=8, trials_per_participant=3
    )
    assert trials["synthetic"].all() and trials["participant"].nunique() == 8
    assert set(trials["method"]) == set(teams.SIMULATED_METHODS)
    assert trials.loc[trials["confidence"] == 1.0, "accept"].all()
    assert not trials.loc[trials["confidence"] == 0.0, "accept"].any()
    table = teams.report(
        tmp_path / "trials.csv", tmp_path / "teams.csv", tmp_path / "teams.png", synthetic=True
    )
    assert (table["data"] == "synthetic").all()
    assert (tmp_path / "teams.png").stat().st_size > 1000
