"""A configured guide checkpoint drives the workflow: every layout a user brings, with no
train_guide job; a robustness file needs trust; a missing checkpoint is an error and a
replaced one reruns what uses it."""

import copy
import os
import re

import dill
import pandas as pd
import pytest
import torch
from conftest import SMALL_TRAIN, core_config, run_workflow, tiny_config

from lwise.guide.checkpoints import load_model, save_checkpoint


def planned_jobs(proc) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count ({} when nothing is to be done)."""
    if "Job stats:" not in proc.stdout:
        assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        return {}
    table = proc.stdout.split("Job stats:")[1].split("\n\n")[0]
    return {
        m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"
    }


def write_layout(layout: str, model, path):
    """`model` as users bring it: ours, a plain state dict (with DataParallel's `module.`
    prefix or without), or a dill-pickled robustness-library checkpoint."""
    net = model.net.state_dict()
    if layout == "ours":
        save_checkpoint(path, model, training_args={"image_size": SMALL_TRAIN["image_size"]})
    elif layout == "plain":
        torch.save(net, path)
    elif layout == "plain_module":
        torch.save({f"module.{k}": v for k, v in net.items()}, path)
    elif layout == "robustness":
        norm = {
            "new_mean": model.normalize.mean.view(3, 1, 1),
            "new_std": model.normalize.std.view(3, 1, 1),
        }
        state = {f"module.normalizer.{k}": v for k, v in norm.items()}
        state |= {f"module.model.{k}": v for k, v in net.items()}
        state |= {f"module.attacker.normalize.{k}": v for k, v in norm.items()}
        state |= {f"module.attacker.model.{k}": v for k, v in net.items()}
        # A lambda, as robustness's LambdaLR schedules hold: only dill pickles it. Made with
        # empty globals, so it unpickles in the workflow's processes without this module.
        schedule = {"lr_lambda": eval("lambda epoch: 0.1 ** epoch", {})}
        torch.save({"model": state, "schedule": schedule, "epoch": 4}, path, pickle_module=dill)
    return path


def checkpoint_config(path, *, trusted: bool) -> dict:
    config = core_config()  # the core chain; the families read the guide the same way
    config["guide"].update(
        checkpoint=str(path), trusted=trusted, arch="small_cnn",
        image_size=SMALL_TRAIN["image_size"],
        # Plain state dicts store no normalisation; the others' own wins (the same values).
        mean=SMALL_TRAIN["mean"], std=SMALL_TRAIN["std"],
    )  # fmt: skip
    return config


def assert_guide_was_not_trained(work):
    assert not (work / "results/digits/guide/model.pt").exists()
    assert not (work / "results/logs/digits/train_guide.log").exists()
    assert (work / "results/digits/guide/imported.pt").is_file()


@pytest.fixture(scope="module")
def robust_run(tmp_path_factory, digits_model):
    """The whole default DAG from a dill-pickled robustness checkpoint."""
    work = tmp_path_factory.mktemp("robust_dag")
    path = write_layout("robustness", load_model(digits_model), work / "checkpoint.pt.best")
    config = checkpoint_config(path, trusted=True)
    run_workflow(work, config)
    return work, config, path


@pytest.mark.slow
def test_robustness_checkpoint_drives_the_whole_dag(robust_run):
    work, config, _ = robust_run
    assert_guide_was_not_trained(work)
    scored = pd.read_csv(work / "results/digits/difficulty/dirmap.csv")
    assert scored["correct"].mean() > 0.5  # the trained digits model, not a fresh one
    assert (work / "results/digits/alignment_synthetic/summary.csv").is_file()
    assert planned_jobs(run_workflow(work, config, "--dry-run")) == {}


@pytest.mark.slow
def test_a_missing_checkpoint_is_an_error_not_nothing_to_do(robust_run, tmp_path):
    work, config, _ = robust_run
    gone = copy.deepcopy(config)
    gone["guide"]["checkpoint"] = "models/nothere.pt"
    proc = run_workflow(work, gone, "--dry-run", check=False)
    assert proc.returncode != 0
    assert "guide.checkpoint 'models/nothere.pt' does not exist" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_replaced_checkpoint_reruns_what_uses_it(robust_run, digits_model):
    work, config, path = robust_run
    before = path.stat()
    model = load_model(digits_model)
    with torch.no_grad():
        model.net.fc.bias.add_(1.0)  # other weights
    write_layout("robustness", model, path)
    # A copy that kept an old modification time: Snakemake's mtime check alone misses it.
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns - 10**12))
    jobs = planned_jobs(run_workflow(work, config, "--dry-run"))
    assert jobs["import_guide"] == 1 and jobs["score_difficulty"] == 1
    assert jobs["enhance"] == len(config["enhance"]["epsilons"]) * len(
        config["enhance"].get("objectives", ["logit"])
    )
    assert "train_guide" not in jobs


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ours", "plain", "plain_module"])
def test_other_layouts_drive_scoring_and_enhancement(tmp_path, digits_model, layout):
    path = write_layout(layout, load_model(digits_model), tmp_path / f"{layout}.pt")
    config = checkpoint_config(path, trusted=False)
    # Every rule loads the imported model alike: enhancement once, for the plain state dict.
    targets = ["results/digits/difficulty/dirmap.csv"]
    if layout == "plain":
        targets.append("results/digits/stimuli/logit_eps1")
    run_workflow(tmp_path, config, *targets)
    assert_guide_was_not_trained(tmp_path)
    assert pd.read_csv(tmp_path / "results/digits/difficulty/dirmap.csv")["correct"].mean() > 0.5
    if layout == "plain":
        enhanced = pd.read_csv(tmp_path / "results/digits/stimuli/logit_eps1/dirmap.csv")
        assert enhanced["logit_gain"].mean() > 0


def test_robustness_checkpoint_without_trust_is_refused(tmp_path, digits_model):
    path = write_layout("robustness", load_model(digits_model), tmp_path / "checkpoint.pt")
    config = checkpoint_config(path, trusted=False)
    proc = run_workflow(tmp_path, config, "results/digits/guide/imported.pt", check=False)
    assert proc.returncode != 0
    log = (tmp_path / "results/logs/digits/import_guide.log").read_text()
    assert "runs whatever code the file names" in log and "guide.trusted: true" in log
    assert not (tmp_path / "results/digits/guide/imported.pt").exists()


def test_missing_checkpoint_before_any_run(tmp_path):
    config = tiny_config()
    config["guide"]["checkpoint"] = "models/nothere.pt"
    proc = run_workflow(tmp_path, config, "--dry-run", check=False)
    assert proc.returncode != 0
    assert "guide.checkpoint 'models/nothere.pt' does not exist" in proc.stdout + proc.stderr
