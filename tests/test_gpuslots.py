"""GPU slot allocation: distinct devices for concurrent jobs, released on exit, crash and error.

Runs on a CPU machine: device ids are fake (LWISE_GPU_DEVICES), the locks are real. Concurrent
jobs are separate processes, synchronised through files rather than sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yte

from lwise.core import gpuslots
from lwise.core.gpuslots import GpuSlotError, GpuSlotTimeout, acquire_gpus, gpus_requested

REPO = Path(__file__).resolve().parents[1]

# A job that reserves N slots, reports what it got, and holds them until told to stop.
HOLDER = textwrap.dedent(
    """
    import os, sys, time, pathlib
    from lwise.core.gpuslots import acquire_gpus
    n, report, release = int(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    with acquire_gpus(n) as ids:
        tmp = report.with_suffix(".tmp")
        tmp.write_text(",".join(ids) + "|" + os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
        tmp.rename(report)  # appear complete or not at all
        while not release.exists():
            time.sleep(0.02)
    """
)


def wait_until(predicate, what: str, limit: float = 60.0) -> None:
    """Poll `predicate`; the limit only guards against a hung test, it is no timing assertion."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def fake_gpus(tmp_path, monkeypatch) -> dict[str, str]:
    """Three fake devices a,b,c and a private lock folder, for this process and its children."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("LWISE_GPU_DEVICES", "a,b,c")
    monkeypatch.setenv("LWISE_GPU_LOCK_DIR", str(tmp_path / "locks"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Holder:
    """A holder process; `ids` and `cuda` become readable once it has its slots."""

    def __init__(self, tmp_path: Path, name: str, n: int, env: dict[str, str]):
        self.report = tmp_path / f"{name}.report"
        self.release_file = tmp_path / f"{name}.release"
        self.stderr_path = tmp_path / f"{name}.stderr"
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(n), str(self.report), str(self.release_file)],
                env=env,
                stderr=stderr,
            )

    def wait_acquired(self) -> Holder:
        wait_until(lambda: self.report.exists() or self.proc.poll() is not None, "a holder")
        assert self.report.exists(), self.stderr_path.read_text()
        return self

    @property
    def ids(self) -> list[str]:
        return self.report.read_text().split("|")[0].split(",")

    @property
    def cuda(self) -> str:
        return self.report.read_text().split("|")[1]

    def release(self) -> None:
        self.release_file.touch()
        assert self.proc.wait(timeout=60) == 0, self.stderr_path.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def holders(tmp_path, fake_gpus):
    started: list[Holder] = []

    def start(name: str, n: int, **env: str) -> Holder:
        holder = Holder(tmp_path, name, n, dict(fake_gpus, **env))
        started.append(holder)
        return holder

    yield start
    for holder in started:
        holder.kill()


def all_free(n: int = 3) -> bool:
    """True if `n` slots can be taken right now."""
    try:
        with acquire_gpus(n, timeout=0):
            return True
    except GpuSlotTimeout:
        return False


def test_concurrent_jobs_get_different_devices(holders):
    first = holders("first", 1).wait_acquired()
    second = holders("second", 1).wait_acquired()
    # Both hold their slot at the same time here.
    assert len(first.ids) == len(second.ids) == 1
    assert first.ids != second.ids
    assert {*first.ids, *second.ids} <= {"a", "b", "c"}
    assert first.cuda == first.ids[0] and second.cuda == second.ids[0]
    first.release()
    second.release()


def test_two_gpu_job_gets_two_devices(holders):
    job = holders("pair", 2).wait_acquired()
    assert len(set(job.ids)) == 2 and set(job.ids) <= {"a", "b", "c"}
    assert job.cuda == ",".join(job.ids)
    job.release()


def test_third_job_waits_until_a_slot_is_freed(holders):
    pair = holders("pair", 2).wait_acquired()
    single = holders("single", 1).wait_acquired()
    waiter = holders("waiter", 1)
    wait_until(lambda: "waiting for 1 free GPU slot" in waiter.stderr_path.read_text(), "waiting")
    assert not waiter.report.exists()
    pair.release()
    waiter.wait_acquired()
    assert waiter.ids[0] in pair.ids
    single.release()
    waiter.release()


def test_sigkill_releases_the_slots(holders):
    victim = holders("victim", 3).wait_acquired()
    assert not all_free(1)
    victim.proc.send_signal(signal.SIGKILL)
    assert victim.proc.wait() == -signal.SIGKILL
    assert all_free(3)


def test_exception_releases_and_restores_environment(fake_gpus):
    with pytest.raises(RuntimeError, match="job failed"):
        with acquire_gpus(3) as ids:
            assert sorted(ids) == ["a", "b", "c"]
            assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(ids)
            raise RuntimeError("job failed")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert all_free(3)


def test_asking_more_than_exist_fails_clearly(fake_gpus):
    with pytest.raises(GpuSlotError, match=r"asked for 4 GPU\(s\) but only 3 exist \(a,b,c"):
        with acquire_gpus(4):
            pass


def test_timeout_when_slots_stay_busy(holders):
    holders("hog", 3).wait_acquired()
    with pytest.raises(GpuSlotTimeout, match="became free within 0.3 s"):
        with acquire_gpus(1, timeout=0.3):
            pass


def test_scheduler_allocation_is_used_without_locking(holders, monkeypatch, tmp_path):
    # All fake slots are taken, yet a job that Slurm gave device 7 must run on it at once.
    holders("hog", 3).wait_acquired()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    monkeypatch.setenv("LWISE_GPU_LOCK_DIR", str(tmp_path / "unused-locks"))
    with acquire_gpus(1, timeout=0) as ids:
        assert ids == ["7"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    assert not (tmp_path / "unused-locks").exists()


def test_wider_preset_allocation_is_shared_out(holders, monkeypatch):
    # E.g. Snakemake running locally inside a 2-GPU salloc: the jobs split the allocation.
    first = holders("first", 1, CUDA_VISIBLE_DEVICES="4,5").wait_acquired()
    second = holders("second", 1, CUDA_VISIBLE_DEVICES="4,5").wait_acquired()
    assert {first.cuda, second.cuda} == {"4", "5"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(GpuSlotTimeout):
        with acquire_gpus(1, timeout=0):
            pass
    first.release()
    with acquire_gpus(1, timeout=0) as ids:
        assert ids == first.ids
        # A nested request (e.g. a script started under the wrapper) reuses the reservation.
        with acquire_gpus(1, timeout=0) as nested:
            assert nested == ids
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"
    second.release()


def test_explicit_devices_win_and_odd_ids_are_fine(fake_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    mig = "MIG-GPU-1234/1/0"  # MIG ids contain '/', which must not end up in a path
    with acquire_gpus(2, devices=[mig, 3]) as ids:
        assert ids == [mig, "3"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == f"{mig},3"


def test_zero_gpus_hides_all_devices(fake_gpus):
    with acquire_gpus(0) as ids:
        assert ids == []
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_no_devices_means_cpu(fake_gpus, monkeypatch):
    monkeypatch.setenv("LWISE_GPU_DEVICES", "")
    with acquire_gpus(2) as ids:
        assert ids == []
        assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_devices_detected_with_nvidia_smi(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = --query-gpu=index ] || exit 9\nprintf "0\\n1\\n"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("LWISE_GPU_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("LWISE_GPU_LOCK_DIR", str(tmp_path / "locks"))
    assert gpuslots.detect_devices() == ["0", "1"]
    with acquire_gpus(2) as ids:
        assert ids == ["0", "1"]


def test_default_lock_dir_is_per_user_and_per_slurm_job(monkeypatch):
    monkeypatch.delenv("LWISE_GPU_LOCK_DIR", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert gpuslots.default_lock_dir() == Path(f"/tmp/lwise-gpu-slots-{os.getuid()}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert gpuslots.default_lock_dir().name.endswith("-slurm42")


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"gpu": 2}, 2),
        ({"gpu": 0, "gres": "gpu:3"}, 3),
        ({"gres": "gpu:a100:2"}, 2),
        ({"gres": "gpu:a100"}, 1),
        ({"gres": "gpu"}, 1),
        ({"gres": "shard:4"}, 0),
        ({}, 0),
    ],
)
def test_gpus_requested_reads_gpu_or_gres(resources, expected):
    assert gpus_requested(resources) == expected


def test_gpus_requested_accepts_snakemake_resources():
    # What `snakemake.resources` is inside a rule's script.
    from snakemake.iocontainers import Namedlist

    assert gpus_requested(Namedlist(fromdict={"gpu": 2, "mem_mb": 100})) == 2
    assert gpus_requested(Namedlist(fromdict={"mem_mb": 100})) == 0


@pytest.mark.parametrize(("devices", "limit"), [("0,1,2", 3), ("", 1)])
def test_local_profile_allows_one_gpu_job_per_device(monkeypatch, devices, limit):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("LWISE_GPU_DEVICES", devices)
    with (REPO / "profiles" / "local" / "config.yaml").open() as stream:
        profile = yte.process_yaml(stream, require_use_yte=True)
    assert profile["resources"] == {"gpu": limit}


# --- command-line wrapper ---------------------------------------------------------------


def run_cli(env, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lwise.core.gpuslots", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def test_cli_exports_devices_and_passes_exit_code(fake_gpus):
    result = run_cli(
        fake_gpus, "--gpus", "2", "--", "sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"; exit 3'
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == "a,b"
    assert all_free(3)


def test_cli_holds_slots_while_command_runs_and_a_kill_frees_them(fake_gpus, tmp_path):
    ready = tmp_path / "ready"
    # `exec` keeps it one process: children of the command inherit the locks and, by design,
    # keep the slots reserved for as long as they live.
    script = f"touch {ready}; exec sleep 600"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lwise.core.gpuslots", "--gpus", "3", "--", "sh", "-c", script],
        env=fake_gpus,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(ready.exists, "the wrapped command")
        assert not all_free(1)
        # The wrapper became the command (exec), so killing that one process frees the slots.
        proc.kill()
        proc.wait()
        assert all_free(3)
    finally:
        proc.kill()


def test_cli_errors(fake_gpus):
    too_many = run_cli(fake_gpus, "--gpus", "4", "--", "true")
    assert too_many.returncode == 2
    assert "asked for 4 GPU(s) but only 3 exist" in too_many.stderr
    missing = run_cli(fake_gpus, "--gpus", "1", "--", "no-such-command-lwise")
    assert missing.returncode == 127
    assert "cannot run 'no-such-command-lwise'" in missing.stderr
    assert all_free(3)
    assert run_cli(fake_gpus, "--gpus", "1").returncode == 2  # no '--' and no command


# --- end to end through Snakemake ---------------------------------------------------------

SNAKEFILE = """
JOBS = ["j1", "j2", "j3"]

rule all:
    input: expand("out/{{job}}.txt", job=JOBS)
{rules}
"""

GPU_RULE = """
rule {name}:
    output: "out/{name}.txt"
    resources: gpu=1
    shell:
        "{python} -m lwise.core.gpuslots --gpus {{resources.gpu}} -- "
        "sh -c 'date +%s%N > {{output}}; echo $CUDA_VISIBLE_DEVICES >> {{output}}; "
        "sleep 1; date +%s%N >> {{output}}'"
"""


def max_concurrency(intervals: list[tuple[int, int]]) -> int:
    # Ends sort before starts at the same instant: touching intervals did not overlap.
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("resources", [["--resources", "gpu=2"], []], ids=["gpu=2", "no-limit"])
def test_snakemake_jobs_never_share_a_device(tmp_path, fake_gpus, resources):
    """With `--resources gpu=2` Snakemake limits concurrency; without it the locks alone do."""
    rules = "".join(GPU_RULE.format(name=job, python=sys.executable) for job in ["j1", "j2", "j3"])
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SNAKEFILE.format(rules=rules))
    env = dict(fake_gpus, LWISE_GPU_DEVICES="0,1")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory",
         str(tmp_path), "--cores", "3", "--workflow-profile", "none", *resources],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

    runs = []
    for job in ["j1", "j2", "j3"]:
        start, device, end = (tmp_path / "out" / f"{job}.txt").read_text().split()
        assert device in {"0", "1"}
        runs.append((int(start), int(end), device))
    for i, (start_a, end_a, dev_a) in enumerate(runs):
        for start_b, end_b, dev_b in runs[i + 1 :]:
            if start_a < end_b and start_b < end_a:
                assert dev_a != dev_b, f"overlapping jobs shared device {dev_a}: {runs}"
    assert max_concurrency([(start, end) for start, end, _ in runs]) <= 2
