"""Targeted rebuilds, reruns after a parameter change, interruptions, and the DAG's scale."""

import copy
import os
import re
import signal
import subprocess
import time

import pandas as pd
import pytest
from conftest import core_config, run_workflow, workflow_command


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count ({} when nothing is to be done)."""
    if "Job stats:" not in proc.stdout:
        assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        return {}
    table = proc.stdout.split("Job stats:")[1].split("\n\n")[0]
    return {
        m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"
    }


@pytest.mark.slow
def test_full_tiny_run_then_nothing_to_do(finished):
    work, config = finished
    assert planned_jobs(run_workflow(work, config, "--dry-run")) == {}
    assert (work / "results/digits/alignment_synthetic/summary.csv").exists()
    urls = pd.read_csv(work / "results/digits/upload/logit_eps2/dirmap.csv")["url"]
    assert urls.str.startswith(
        f"http://127.0.0.1:{config['upload']['local_port']}/lwise-digits-logit-eps2/"
    ).all()


@pytest.mark.slow
def test_changing_one_epsilon_reruns_only_what_depends_on_it(finished):
    work, config = finished
    changed = copy.deepcopy(config)
    changed["enhance"]["epsilons"] = [1, 3]
    jobs = planned_jobs(run_workflow(work, changed, "--dry-run"))
    assert jobs["enhance"] == 1 and jobs["upload"] == 1  # eps 3 only; eps 1 is reused
    assert (
        "train_guide" not in jobs and "score_difficulty" not in jobs and "imagefolder" not in jobs
    )
    assert {"contact_sheet", "simulate_observers", "evaluate_alignment"} <= set(jobs)


@pytest.mark.slow
def test_changing_a_training_parameter_reruns_training_and_its_dependents(finished):
    work, config = finished
    changed = copy.deepcopy(config)
    changed["guide"]["train"]["lr"] = 0.01
    jobs = planned_jobs(run_workflow(work, changed, "--dry-run"))
    assert jobs["train_guide"] == 1 and jobs["enhance"] == 2
    assert "download" not in jobs and "imagefolder" not in jobs


@pytest.mark.slow
def test_changing_the_png_strategy_rewrites_the_stimulus_sets_only(finished):
    work, config = finished
    changed = copy.deepcopy(config)
    changed["enhance"]["png_strategy"] = "default"
    jobs = planned_jobs(run_workflow(work, changed, "--dry-run"))
    assert jobs["natural_stimuli"] == 1 and jobs["enhance"] == 2
    assert "train_guide" not in jobs and "score_difficulty" not in jobs


def test_naming_one_file_builds_only_it_and_its_inputs(tmp_path):
    config = core_config()
    run_workflow(tmp_path, config, "results/digits/dirmap.csv")
    assert (tmp_path / "results/digits/dirmap.csv").exists()
    assert not (tmp_path / "results/digits/imagefolder").exists()
    jobs = planned_jobs(
        run_workflow(tmp_path, config, "--dry-run", "results/digits/guide/model.pt")
    )
    assert jobs == {"imagefolder": 1, "train_guide": 1}


@pytest.mark.slow
def test_interrupted_job_is_not_taken_as_complete(tmp_path):
    config = core_config()
    config["guide"]["train"]["epochs"] = 8  # killed once epoch 1's state exists
    run_workflow(tmp_path, config, "results/digits/imagefolder")
    cmd = workflow_command(tmp_path, config, "results/digits/guide/model.pt")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    state = tmp_path / "results/digits/guide/resume/last.pt"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, as a power cut would
    proc.wait()
    assert not (tmp_path / "results/digits/guide/model.pt").exists()
    # Nothing the killed job wrote passes for its output: the job is planned again.
    dry = run_workflow(tmp_path, config, "--dry-run", "results/digits/guide/model.pt")
    assert planned_jobs(dry) == {"train_guide": 1}
    run_workflow(tmp_path, config, "--unlock")  # the killed run left its lock behind
    run_workflow(tmp_path, config, "--rerun-incomplete", "results/digits/guide/model.pt")
    log = (tmp_path / "results/logs/digits/train_guide.log").read_text()
    assert "resuming after epoch" in log
    assert len(pd.read_csv(tmp_path / "results/digits/guide/metrics.csv")) == 8


def test_a_hundred_thousand_images_do_not_mean_more_jobs(tmp_path):
    root = tmp_path / "big"
    rows = []
    for i in range(100_000):
        rel = f"train/c{i % 100}/im{i}.png"
        rows.append(("train" if i % 10 else "val", f"c{i % 100}", i % 100, rel))
    for c in range(100):
        (root / "train" / f"c{c}").mkdir(parents=True)
    for _, _, _, rel in rows:
        (root / rel).touch()
    pd.DataFrame(rows, columns=["split", "class", "class_num", "im_path"]).to_csv(
        root / "recipe.csv", index=False
    )
    config = core_config()
    config["datasets"] = {
        "big": {
            "sources": [{"url": str(root)}],
            "definer": {"type": "recipe", "options": {"path": "big/recipe.csv"}},
        }
    }
    began = time.time()
    jobs = planned_jobs(run_workflow(tmp_path / "work", config, "--dry-run"))
    took = time.time() - began
    print(f"dry run over a 100,000-image dataset: {took:.1f} s, {sum(jobs.values())} jobs")
    small = planned_jobs(run_workflow(tmp_path / "work2", core_config(), "--dry-run"))
    assert jobs == small  # one job per stage (and per epsilon), never per image


@pytest.mark.slow
def test_real_human_trials_replace_the_simulation(finished, tmp_path):
    work, config = finished
    trials = tmp_path / "trials.csv"
    synthetic = pd.read_csv(work / "results/digits/humans/trials_synthetic.csv")
    synthetic.drop(columns=["synthetic", "p_correct", "latent_difficulty"]).to_csv(
        trials, index=False
    )
    real = copy.deepcopy(config)
    real["datasets"]["digits"]["humans"] = {"trials": str(trials)}
    jobs = planned_jobs(run_workflow(work, real, "--dry-run"))
    # alignment_human and its report table; nothing simulated
    assert jobs == {"evaluate_alignment": 1, "report_alignment": 1, "all": 1}
    run_workflow(work, real)
    assert (work / "results/digits/alignment_human/summary.csv").exists()


# --- issue 13: the training section is checked, and a changed dataset is trained anew ----------


def test_training_config_error_names_the_key_before_any_job(tmp_path):
    config = core_config()
    config["guide"]["train"]["epochs"] = "two"
    proc = run_workflow(tmp_path, config, "--dry-run", check=False)
    out = proc.stdout + proc.stderr
    # Snakemake's own check of the whole config (rules/common.smk) names the key as a path.
    assert proc.returncode != 0 and "Job stats" not in out
    assert "'two' is not of type 'integer'" in out and "['guide']['train']['epochs']" in out
    config["guide"]["train"] = {"eps": -3}
    proc = run_workflow(tmp_path, config, "--dry-run", check=False)
    out = proc.stdout + proc.stderr
    assert "-3 is less than the minimum of 0" in out and "['guide']['train']['eps']" in out


@pytest.mark.slow
def test_changed_classes_train_a_new_model_instead_of_resuming(tmp_path):
    import torch

    from lwise.guide.checkpoints import load_model

    config = core_config()
    target = "results/digits/guide/model.pt"
    log = tmp_path / "results/logs/digits/train_guide.log"
    model = tmp_path / target
    for classes in (["0", "1", "2"], ["3", "4", "5"], ["3", "4", "5", "6"]):
        config["datasets"]["digits"]["build"]["classes"] = classes
        run_workflow(tmp_path, config, target)
        assert load_model(model).class_names == classes
        state = torch.load(tmp_path / "results/digits/guide/resume/last.pt", weights_only=True)
        assert state["epoch"] == 1
    text = log.read_text()
    assert "resuming" not in text and "its run had other training data" in text
    assert "size mismatch" not in text
