"""Config problems are reported before any job runs, naming the file, line or key."""

import subprocess
import sys

import pytest
from conftest import REPO, run_workflow, tiny_config


def test_yaml_syntax_error_names_the_line(tmp_path):
    (tmp_path / "config.yaml").write_text("datasets:\n  digits:\n    sources: [\n  bad: : x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1",
         "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "config.yaml: YAML syntax error at line 4, column 8" in proc.stdout + proc.stderr


def test_an_epsilon_listed_twice_is_a_config_error(tmp_path):
    config = tiny_config()
    config["enhance"]["epsilons"] = [2, 2.0]
    proc = run_workflow(tmp_path, config, "--dry-run", check=False)
    assert proc.returncode != 0
    assert "enhance.epsilons: epsilon(s) 2 listed more than once" in proc.stdout + proc.stderr


def test_close_and_tiny_epsilons_get_their_own_sets_and_contact_sheet(tmp_path):
    config = tiny_config()
    config["enhance"]["epsilons"] = [0.1234567, 0.1234568, 1e-7]
    proc = run_workflow(tmp_path, config, "--dry-run")
    out = proc.stdout
    for name in ("logit_eps0.1234567", "logit_eps0.1234568", "logit_eps0.0000001"):
        assert f"results/digits/stimuli/{name}" in out
    assert "contact_sheet" in out


def test_a_dataset_override_with_an_unknown_key_fails_when_the_workflow_is_parsed(tmp_path):
    config = tiny_config()
    config["datasets"]["digits"]["enhance"] = {"batchsize": 3}
    proc = run_workflow(tmp_path, config, "--dry-run", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "dataset 'digits'" in out and "batchsize" in out


@pytest.mark.parametrize("name", ["imagenette.yaml", "public-datasets.yaml"])
def test_shipped_configs_plan_on_their_own(tmp_path, name):
    # A config names only what differs from the schema's defaults.
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1",
         "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(REPO / "configs" / name), "--replace-workflow-config"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "train_guide" in proc.stdout and "enhance" in proc.stdout


@pytest.mark.parametrize(
    ("cores", "gpus", "threads"), [(16, 1, 16), (16, 2, 8), (8, 2, 4), (64, 1, 16)]
)
def test_stimulus_jobs_share_the_cores_among_the_gpu_slots(tmp_path, cores, gpus, threads):
    """One job per GPU runs at once, each with its share of the PNG encoders."""
    proc = run_workflow(
        tmp_path, tiny_config(), "--dry-run", "--resources", f"gpu={gpus}", cores=cores
    )
    rule, seen = None, {}
    for line in proc.stdout.splitlines():
        if line.startswith("rule "):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("threads:"):
            seen.setdefault(rule, set()).add(int(line.split()[1]))
    assert seen["enhance"] == {threads} and seen["natural_stimuli"] == {threads}
