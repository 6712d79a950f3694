from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lwise.alignment.metrics import condition_accuracy
from lwise.humans import simulate as simulation
from lwise.humans import trials as humans

CLASSES = ["bear", "cat", "dog", "horse"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GOOD = """participant,image,condition,response,correct,rt,trial,class
p1,a.png,natural,cat,1,0.61,1,cat
p1,b.png,eps1,abstain,false,1.20,2,dog
p1,c.png,natural,dog,TRUE,,3,dog
"""


def test_read_trials_types(tmp_path):
    trials = humans.read_trials(write(tmp_path / "t.csv", GOOD))
    assert trials["correct"].tolist() == [True, False, True]
    assert trials["rt"].isna().tolist() == [False, False, True]
    assert trials["trial"].tolist() == [1, 2, 3]
    humans.write_trials(trials, tmp_path / "copy.csv")
    assert humans.read_trials(tmp_path / "copy.csv")["correct"].tolist() == [True, False, True]


def test_missing_column_names_file_and_column(tmp_path):
    path = write(tmp_path / "t.csv", "participant,image,response,correct\np1,a,cat,1\n")
    with pytest.raises(
        humans.HumanDataError, match=r"(?s)t\.csv: .*missing required column\(s\) \['condition'\]"
    ):
        humans.read_trials(path)


def test_bad_values_name_column_and_lines(tmp_path):
    text = GOOD + "p2,a.png,natural,hrose,0,0.5,1,cat\np2,b.png,natural,dog,yes,0.5,2,dog\n"
    with pytest.raises(humans.HumanDataError) as err:
        humans.read_trials(write(tmp_path / "t.csv", text))
    message = str(err.value)
    assert "t.csv" in message
    assert (
        "column 'response': expected a class name or 'abstain', got ['hrose'] at line(s) 5"
        in message
    )
    assert "column 'correct': expected 0/1 or true/false, got ['yes'] at line(s) 6" in message


def test_correct_must_agree_with_class_and_classes_are_checked(tmp_path):
    path = write(
        tmp_path / "t.csv", GOOD.replace("p1,a.png,natural,cat,1", "p1,a.png,natural,cat,0")
    )
    with pytest.raises(
        humans.HumanDataError, match=r"disagrees with response == class at line\(s\) 2"
    ):
        humans.read_trials(path)
    with pytest.raises(humans.HumanDataError, match=r"unknown class\(es\) \['dog'\]"):
        humans.read_trials(write(tmp_path / "u.csv", GOOD), classes=["cat"])


def test_bad_numbers_and_duplicate_trials(tmp_path):
    text = (
        GOOD.replace(",0.61,1,", ",-1,1,").replace(",1.20,2,", ",1.20,1.5,").replace(",,3,", ",,1,")
    )
    with pytest.raises(humans.HumanDataError) as err:
        humans.read_trials(write(tmp_path / "t.csv", text))
    message = str(err.value)
    assert "column 'rt': expected a non-negative number, got ['-1'] at line(s) 2" in message
    assert "column 'trial': expected a non-negative integer, got ['1.5'] at line(s) 3" in message
    assert "'participant'+'trial': duplicated at line(s) 2, 4" in message


def test_label_distributions_counts_and_probabilities(tmp_path):
    path = write(
        tmp_path / "labels.csv",
        "image,cat,dog,abstain\nx.png,3,1,0\ny.png,0.25,0.25,0.5\n",
    )
    labels = humans.read_label_distributions(path)
    assert labels[["cat", "dog", "abstain"]].to_numpy().tolist() == [
        [0.75, 0.25, 0],
        [0.25, 0.25, 0.5],
    ]


def test_label_distributions_errors_name_lines(tmp_path):
    path = write(tmp_path / "labels.csv", "image,cat,dog,abstain\nx.png,0.5,0.6,0\ny.png,a,0,1\n")
    with pytest.raises(humans.HumanDataError) as err:
        humans.read_label_distributions(path)
    assert "column 'cat': expected a non-negative number, got ['a'] at line(s) 3" in str(err.value)
    path = write(tmp_path / "labels.csv", "image,cat,dog,abstain\nx.png,0.5,0.6,0\n")
    with pytest.raises(humans.HumanDataError, match=r"rows must sum to 1 .* at line\(s\) 2"):
        humans.read_label_distributions(path)
    path = write(tmp_path / "labels.csv", "image,cat,dog\nx.png,1,0\n")
    with pytest.raises(humans.HumanDataError, match=r"missing column\(s\) \['abstain'\]"):
        humans.read_label_distributions(path, classes=["cat", "dog"])


def test_response_distributions(tmp_path):
    trials = humans.read_trials(write(tmp_path / "t.csv", GOOD))
    dist = humans.response_distributions(trials, ["cat", "dog"])
    assert dist.columns.tolist() == ["image", "cat", "dog", "abstain", "n_responses"]
    assert dist.set_index("image").loc["b.png", "abstain"] == 1.0
    humans.validate_label_distributions(dist, classes=["cat", "dog"])


# --- simulated observers ------------------------------------------------------------------------

# The observer of the schema's defaults (schemas/config.schema.yaml, `simulation`).
OBSERVER = {"slope": 1.0, "ability_sd": 0.5, "lapse": 0.02, "abstain_max": 0.1}



def images(n: int = 40, difficulty: float | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "image": [f"im{i}.png" for i in range(n)],
            "class": [CLASSES[i % 4] for i in range(n)],
            "difficulty": rng.normal(0, 1, n) if difficulty is None else difficulty,
        }
    )


def simulate(**overrides) -> pd.DataFrame:
    options = {"images": images(), "conditions": {"natural": 0.0, "eps1": 1.0, "eps4": 3.0},
               "n_participants": 30, "trials_per_participant": 60, "seed": 1}  # fmt: skip
    return simulation.psychometric_trials(**(options | OBSERVER | overrides))


def test_simulation_is_reproducible_and_valid(tmp_path):
    first = simulate()
    assert first.equals(simulate())
    assert not first["response"].equals(simulate(seed=2)["response"])
    assert first["synthetic"].all() and len(first) == 30 * 60
    humans.write_trials(first, tmp_path / "sim.csv", classes=CLASSES)
    assert humans.read_trials(tmp_path / "sim.csv")["synthetic"].dtype == bool
    assert set(first["response"]) <= set(CLASSES) | {"abstain"}
    assert (first["correct"] == (first["response"] == first["class"])).all()
    # every participant sees each condition equally often
    assert (first.groupby(["participant", "condition"]).size() == 20).all()


def test_accuracy_rises_with_condition_boost():
    table = condition_accuracy(simulate()).set_index("condition")
    assert (
        table.loc["natural", "accuracy"]
        < table.loc["eps1", "accuracy"]
        < table.loc["eps4", "accuracy"]
    )
    assert table.loc["natural", "ci_high"] < table.loc["eps4", "ci_low"]


def test_chance_level_at_huge_difficulty():
    trials = simulate(images=images(difficulty=1e3), n_participants=50, trials_per_participant=200)
    accuracy = trials["correct"].mean()
    se = np.sqrt(0.25 * 0.75 / len(trials))
    assert abs(accuracy - 1 / len(CLASSES)) < 4 * se
    assert (trials["response"] == "abstain").mean() == pytest.approx(0.1 * 0.75, abs=0.01)


def test_simulation_rejects_bad_images():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['difficulty'\]"):
        simulate(images=images().drop(columns="difficulty"))
    with pytest.raises(ValueError, match="not among the classes"):
        simulate(classes=["cat", "dog"])


def test_the_shipped_trials_example_is_valid():
    from pathlib import Path

    from lwise.core import keys

    example = Path(__file__).resolve().parents[1] / "configs" / "trials-example.csv"
    trials = humans.read_trials(example, classes=[str(d) for d in range(10)])
    assert len(trials) == 6 and set(trials["response"]) <= {*map(str, range(10)), "abstain"}
    for condition in set(trials["condition"]):
        keys.parse_set(condition)  # every condition is a stimulus-set name
