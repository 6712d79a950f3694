"""profiles/slurm against a real one-node Slurm cluster on this machine.

tests/slurm/setup_slurm.sh installs and starts Slurm (two fake GPUs as GRES, no accounting
database); the tests are skipped only where that is impossible (exit code 77: not root, no
apt-get, ...). The "compute node" is this machine, so the jobs see this checkout and this
Python environment, as they would on a shared file system.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import yte
from conftest import core_config

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
SETUP = REPO / "tests" / "slurm" / "setup_slurm.sh"
TEARDOWN = REPO / "tests" / "slurm" / "teardown_slurm.sh"

# What the test cluster needs on top of the profile: it has no accounting database, so job
# states come from squeue (MinJobAge=600 keeps finished jobs there); short first status check.
CLUSTER_OVERRIDES = [
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2",
]  # fmt: skip


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node Slurm cluster for the session, stopped afterwards."""
    setup = subprocess.run(
        ["bash", str(SETUP)], capture_output=True, text=True, timeout=900, check=False
    )
    if setup.returncode == 77:
        pytest.skip(f"no Slurm test cluster possible here: {setup.stderr.strip().splitlines()[-1]}")
    if setup.returncode != 0:
        pytest.fail(f"setup_slurm.sh failed with exit code {setup.returncode}:\n{setup.stderr}")
    yield
    subprocess.run(["bash", str(TEARDOWN)], check=False, timeout=120)


def job_env(**extra: str) -> dict[str, str]:
    """The submitting shell's environment, cleared of settings that would change the test."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LWISE_SLURM_", "LWISE_GPU_", "SLURM_"))
        and k not in ("CUDA_VISIBLE_DEVICES", "SNAKEMAKE_PROFILE")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def snakemake(args: list[str], cwd: Path, env: dict[str, str], timeout: int):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result, result.stdout + result.stderr


def show_job(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (finished jobs stay listed for MinJobAge seconds)."""
    text = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


SNAKEFILE = """
rule all:
    input: "cpu.txt", "gpu.txt"

# Named like a rule of the workflow, so that the profile's set-resources entry applies.
rule report:
    output: "cpu.txt"
    shell: "echo $SLURM_JOB_ID > {output}"

rule gpu_job:
    output: "gpu.txt"
    resources: gpu=1
    shell:
        "echo $SLURM_JOB_ID ${{CUDA_VISIBLE_DEVICES:-unset}} > {output}; "
        "{python} -m lwise.core.gpuslots --gpus {resources.gpu} -- "
        "sh -c 'echo $CUDA_VISIBLE_DEVICES >> {output}'"
"""


def load_profile(**env: str) -> dict:
    """The slurm profile as Snakemake reads it, with the given LWISE_SLURM_* variables."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("LWISE_SLURM_PARTITION", "LWISE_SLURM_GPU_PARTITION", "LWISE_SLURM_ACCOUNT"):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        with (PROFILE / "config.yaml").open() as stream:
            return yte.process_yaml(stream, require_use_yte=True)


def test_profile_takes_site_settings_from_the_environment():
    bare = load_profile()
    assert bare["executor"] == "slurm"
    assert "slurm_partition" not in bare["default-resources"]
    assert "slurm_account" not in bare["default-resources"]
    assert "gpu" not in bare["default-resources"]  # else every job would ask for a GPU
    assert all("slurm_partition" not in r for r in bare["set-resources"].values())

    site = load_profile(
        LWISE_SLURM_PARTITION="cpu", LWISE_SLURM_ACCOUNT="proj1", LWISE_SLURM_GPU_PARTITION="gpu"
    )
    assert site["default-resources"]["slurm_partition"] == "cpu"
    assert site["default-resources"]["slurm_account"] == "proj1"
    assert site["set-resources"]["train_guide"]["slurm_partition"] == "gpu"
    assert "slurm_partition" not in site["set-resources"]["download"]


@pytest.mark.slow
def test_profile_submits_cpu_and_gpu_jobs(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE.replace("{python}", sys.executable))
    # The partition comes in through the profile's $LWISE_SLURM_PARTITION.
    env = job_env(LWISE_SLURM_PARTITION="debug")
    result, output = snakemake(
        ["--profile", str(PROFILE), "--workflow-profile", "none", *CLUSTER_OVERRIDES],
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, output

    cpu_job = (tmp_path / "cpu.txt").read_text().split()
    gpu_job, slurm_devices, wrapped_devices = (tmp_path / "gpu.txt").read_text().split()
    assert cpu_job[0].isdigit() and gpu_job.isdigit() and cpu_job[0] != gpu_job
    assert slurm_devices in {"0", "1"}, "Slurm did not set CUDA_VISIBLE_DEVICES"
    # lwise.core.gpuslots uses the allocation Slurm made instead of picking devices itself.
    assert wrapped_devices == slurm_devices

    cpu, gpu = show_job(cpu_job[0]), show_job(gpu_job)
    assert cpu["JobState"] == gpu["JobState"] == "COMPLETED"
    assert cpu["Partition"] == gpu["Partition"] == "debug"
    assert "gpu" in gpu.get("TresPerJob", "") and "gpu" not in cpu.get("TresPerJob", "")
    # default-resources (4000 MB, 60 min) and the set-resources entry for `report` (2000, 30).
    assert (gpu["MinMemoryNode"], gpu["TimeLimit"]) == ("4000M", "01:00:00")
    assert (cpu["MinMemoryNode"], cpu["TimeLimit"]) == ("2000M", "00:30:00")
    # Each job id is one that squeue also lists (it is Snakemake's status source here).
    listed = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {cpu_job[0], gpu_job} <= set(listed)


@pytest.mark.slow
# Minutes of CPU work (training, enhancement) in jobs of 2 cores on this node, plus polling.
@pytest.mark.timeout(2700)
def test_workflow_runs_through_the_slurm_profile(slurm_cluster, tmp_path):
    """The real workflow's core chain, every rule job submitted to Slurm: CPU jobs (download
    to ImageFolder, the pixel cache, the natural set) and GPU jobs (training, scoring, one
    enhanced set) on a digits subset for one epoch. Each job waits on Slurm's scheduling and
    the plugin's status polling, so the whole DAG (which the default-run test runs locally)
    would take CI a quarter of an hour."""
    if not (REPO / "Snakefile").exists():
        pytest.skip("workflow frame not present")
    work = tmp_path / "repo"
    shutil.copytree(
        REPO,
        work,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".snakemake", "results", "resources", "__pycache__", "*.egg-info",
            ".pytest_cache", ".ruff_cache", "build", ".whl",
        ),
    )  # fmt: skip

    (work / "config.yaml").write_text(yaml.safe_dump(core_config()))

    # The test node has 2 cores and a few GB: keep the profile's per-rule entries (which it
    # checks for validity) but shrink their memory, and cap threads at the node's cores.
    profile = yte.process_yaml((PROFILE / "config.yaml").open(), require_use_yte=True)
    set_resources = {
        rule: {**resources, "mem_mb": 1000, "slurm_partition": "debug"}
        for rule, resources in profile["set-resources"].items()
    }
    override = tmp_path / "test-cluster"
    override.mkdir()
    (override / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "default-resources": {"mem_mb": 1000, "runtime": 60, "slurm_partition": "debug"},
                "set-resources": set_resources,
                "max-threads": os.cpu_count() or 1,
                "slurm-keep-successful-logs": True,
            }
        )
    )
    profiles = ["--profile", str(PROFILE), "--profile", str(override)]
    env = job_env()
    targets = ["results/digits/stimuli/natural", "results/digits/stimuli/logit_eps1"]
    result, output = snakemake(
        [*profiles, *CLUSTER_OVERRIDES, *targets], cwd=work, env=env, timeout=2600
    )
    assert result.returncode == 0, output[-20000:]

    # Every non-local job went through sbatch: the plugin kept a Slurm log for its rule.
    submitted = set(re.findall(r"^rule (\w+):", result.stdout + result.stderr, re.MULTILINE))
    assert submitted, output[-5000:]
    logged = {p.name.removeprefix("rule_") for p in (work / ".snakemake" / "slurm_logs").iterdir()}
    assert submitted <= logged
    assert {"imagefolder", "train_guide", "score_difficulty", "enhance", "natural_stimuli"} <= (
        submitted
    )

    again, again_output = snakemake(
        [*profiles, *CLUSTER_OVERRIDES, "--dry-run", *targets], work, env, 300
    )
    assert again.returncode == 0 and "Nothing to be done" in again_output, again_output
