"""Give each concurrently running GPU job its own devices.

Snakemake's `--resources gpu=N` only limits how many GPU jobs run at once; it never tells a job
*which* device it got, so two jobs would both start on device 0. This module hands out devices
through one lock file per device, taken with `flock`. The kernel drops such a lock when its
holder closes the file or dies (SIGKILL included), so a crashed job never leaves a device
reserved.

Where the device ids come from, first match wins:

1. the `devices` argument (or `--devices` of the CLI);
2. `CUDA_VISIBLE_DEVICES`, when already set: a scheduler such as Slurm has allocated these
   devices to this job. If it lists exactly the number of devices asked for, they are used
   without any locking (they are ours alone); if it lists more (e.g. a whole-node `salloc` in
   which Snakemake runs locally), slots are locked among them;
3. `LWISE_GPU_DEVICES`, a comma-separated list (`0,1,3`; an empty value means "no GPUs");
   restricts a workstation to some devices, and lets tests use fake ids on a CPU machine;
4. `nvidia-smi --query-gpu=index`, else `torch.cuda.device_count()`.

With no device found the job runs on the CPU: nothing is locked and an empty list is yielded.
A request made while a reservation is held (a script started under the wrapper below) sees the
narrowed CUDA_VISIBLE_DEVICES and reuses the reservation instead of waiting for itself.

Python use (e.g. in a rule's script)::

    with acquire_gpus(gpus_requested(snakemake.resources)) as ids:  # sets CUDA_VISIBLE_DEVICES
        train(...)

Command-line use (e.g. around `torchrun` in a `shell:` rule)::

    python -m lwise.core.gpuslots --gpus {resources.gpu} -- \
        torchrun --nproc-per-node {resources.gpu} ...

The wrapper replaces itself with the command (exec), which inherits the locks: the devices stay
reserved until the command and any child still holding the lock files have exited.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

DEVICES_ENV = "LWISE_GPU_DEVICES"
LOCK_DIR_ENV = "LWISE_GPU_LOCK_DIR"
CUDA_ENV = "CUDA_VISIBLE_DEVICES"


class GpuSlotError(RuntimeError):
    """A GPU request that can never be met (more devices asked for than exist)."""


class GpuSlotTimeout(GpuSlotError, TimeoutError):
    """The requested devices did not become free within the timeout."""


def _split_ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def detect_devices(*, use_torch: bool = True) -> list[str]:
    """Ids of this machine's GPUs from `nvidia-smi`, else (if `use_torch`) from PyTorch; [] if none.

    `use_torch=False` avoids importing PyTorch (seconds) where a quick answer matters, as in
    the local profile, at the price of finding nothing on machines without `nvidia-smi`.
    """
    if shutil.which("nvidia-smi"):
        try:
            result = subprocess.run(
                ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            return [line.strip() for line in result.stdout.splitlines() if line.strip()]
        except (subprocess.SubprocessError, OSError) as exc:
            # A driver mismatch makes nvidia-smi fail although it exists; try PyTorch.
            log.warning("nvidia-smi failed (%s)", exc)
    if not use_torch:
        return []
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def _device_pool(
    devices: Sequence[str | int] | str | None, use_torch: bool = True
) -> tuple[list[str], str, bool]:
    """Return (ids, where they came from, whether a scheduler handed them to this job)."""
    if devices is not None:
        ids = _split_ids(devices) if isinstance(devices, str) else [str(d) for d in devices]
        return ids, "the devices argument", False
    if CUDA_ENV in os.environ:
        return _split_ids(os.environ[CUDA_ENV]), CUDA_ENV, True
    if DEVICES_ENV in os.environ:
        return _split_ids(os.environ[DEVICES_ENV]), DEVICES_ENV, False
    return detect_devices(use_torch=use_torch), "GPU detection", False


def available_devices(
    devices: Sequence[str | int] | str | None = None, *, use_torch: bool = True
) -> list[str]:
    """The device ids that `acquire_gpus` hands out from (see the module docstring)."""
    return _device_pool(devices, use_torch)[0]


def gpus_requested(resources) -> int:
    """How many GPUs a Snakemake job asked for: its `gpu` resource, else a `gres` like "gpu:2".

    Pass `snakemake.resources`. Clusters whose Slurm lacks `--gpus` (select/cons_res) request
    GPUs as `gres="gpu:2"` or `"gpu:a100:2"` with `gpu=0`; this still finds the 2.
    """
    get = resources.get if hasattr(resources, "get") else lambda k, d=None: getattr(resources, k, d)
    gpu = int(get("gpu", 0) or 0)
    if gpu > 0:
        return gpu
    parts = str(get("gres", "") or "").split(":")
    if parts[0] != "gpu":
        return 0
    count = parts[-1] if len(parts) > 1 else "1"
    # "gpu:a100" names a type and means one device.
    return int(count) if count.isdigit() else 1


def default_lock_dir() -> Path:
    """`$LWISE_GPU_LOCK_DIR`, else a per-user folder in /tmp.

    Deliberately not `$TMPDIR`: Snakemake may give each job its own TMPDIR (the `tmpdir`
    resource), and jobs that see different lock folders would not exclude each other. The
    folder must be local to the machine that owns the GPUs, never a shared file system.
    Inside a Slurm job the job id is added, since device numbers are per allocation there.
    """
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV])
    base = Path("/tmp") if Path("/tmp").is_dir() else Path(os.environ.get("TMPDIR", "."))
    name = f"lwise-gpu-slots-{os.getuid()}"
    if os.environ.get("SLURM_JOB_ID"):
        name += f"-slurm{os.environ['SLURM_JOB_ID']}"
    return base / name


def _lock_path(lock_dir: Path, device: str) -> Path:
    # Ids may be UUIDs or MIG names containing '/'; quote them into one safe file name. The host
    # name keeps machines apart should someone point the lock folder at a shared file system.
    return lock_dir / f"{socket.gethostname()}.gpu-{urllib.parse.quote(device, safe='')}.lock"


def _try_lock(path: Path) -> int | None:
    """Open and exclusively lock `path` without waiting; return the fd, or None if it is taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    # Record the holder, only so that a waiting job can say whom it waits for.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def _take_all_or_none(lock_dir: Path, pool: list[str], n: int) -> dict[str, int] | None:
    """Lock `n` free devices of `pool`, or none at all.

    Keeping a partial set while waiting for the rest could deadlock two jobs that each hold
    one of the devices the other needs, so a partial set is given back at once.
    """
    held: dict[str, int] = {}
    for device in pool:
        fd = _try_lock(_lock_path(lock_dir, device))
        if fd is not None:
            held[device] = fd
            if len(held) == n:
                return held
    for fd in held.values():
        os.close(fd)
    return None


def _lock_slots(
    n: int, pool: list[str], lock_dir: Path, timeout: float | None, poll_interval: float
) -> dict[str, int]:
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    deadline = None if timeout is None else time.monotonic() + timeout
    announced = False
    while True:
        held = _take_all_or_none(lock_dir, pool, n)
        if held is not None:
            return held
        if not announced:
            holders = ", ".join(f"{d}: pid {_holder(_lock_path(lock_dir, d))}" for d in pool)
            log.warning("waiting for %d free GPU slot(s) in %s (held: %s)", n, lock_dir, holders)
            announced = True
        if deadline is not None and time.monotonic() >= deadline:
            raise GpuSlotTimeout(
                f"no {n} of the GPUs {','.join(pool)} became free within {timeout} s "
                f"(lock folder {lock_dir})"
            )
        # Jitter keeps waiting jobs from polling in lockstep.
        time.sleep(poll_interval * (1 + random.random()))


@contextlib.contextmanager
def _cuda_visible(ids: list[str]) -> Iterator[None]:
    """Set CUDA_VISIBLE_DEVICES for the block and restore the previous value afterwards."""
    previous = os.environ.get(CUDA_ENV)
    os.environ[CUDA_ENV] = ",".join(ids)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(CUDA_ENV, None)
        else:
            os.environ[CUDA_ENV] = previous


@contextlib.contextmanager
def _hold(
    n: int,
    devices: Sequence[str | int] | str | None,
    lock_dir: str | os.PathLike | None,
    timeout: float | None,
    poll_interval: float,
) -> Iterator[tuple[list[str], dict[str, int]]]:
    """Reserve the devices; yield (ids, lock fds) with CUDA_VISIBLE_DEVICES set to the ids."""
    if n < 0:
        raise ValueError(f"number of GPUs must be >= 0, got {n}")
    if n == 0:
        # A job that declared no GPU must not wander onto one that another job has reserved.
        with _cuda_visible([]):
            yield [], {}
        return
    pool, source, from_scheduler = _device_pool(devices)
    if not pool:
        if source == CUDA_ENV:
            log.warning("%s is empty: running %d-GPU job on the CPU", CUDA_ENV, n)
        else:
            log.warning("no GPU found (%s): running %d-GPU job on the CPU", source, n)
        yield [], {}
        return
    if n > len(pool):
        raise GpuSlotError(
            f"asked for {n} GPU(s) but only {len(pool)} exist ({','.join(pool)}, from {source}); "
            f"lower the rule's gpu resource or make more devices available"
        )
    if from_scheduler and n == len(pool):
        # The scheduler allocated exactly these devices to this job: nothing to share.
        yield pool, {}
        return
    folder = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    held = _lock_slots(n, pool, folder, timeout, poll_interval)
    try:
        ids = list(held)
        log.info("GPU slot(s) %s taken (lock folder %s)", ",".join(ids), folder)
        with _cuda_visible(ids):
            yield ids, held
    finally:
        for fd in held.values():
            # Unlock explicitly: forked children (e.g. DataLoader workers) share the open file
            # and would otherwise keep the device reserved after the block has ended.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextlib.contextmanager
def acquire_gpus(
    n: int,
    devices: Sequence[str | int] | str | None = None,
    lock_dir: str | os.PathLike | None = None,
    timeout: float | None = None,
    poll_interval: float = 0.2,
) -> Iterator[list[str]]:
    """Reserve `n` GPUs for the block; yield their ids with CUDA_VISIBLE_DEVICES set to them.

    Waits until `n` devices are free (for ever, or `timeout` seconds, then GpuSlotTimeout);
    raises GpuSlotError at once if fewer than `n` devices exist. `n == 0` yields [] with
    CUDA_VISIBLE_DEVICES empty (CPU only); no devices at all yields [] and leaves the variable
    alone. The reservation ends with the block, on an exception, or when the process dies.
    CUDA_VISIBLE_DEVICES is process-wide: don't hold two reservations in two threads at once.
    """
    with _hold(int(n), devices, lock_dir, timeout, poll_interval) as (ids, _fds):
        yield ids


def _parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m lwise.core.gpuslots",
        description="Reserve GPUs, export CUDA_VISIBLE_DEVICES, and run a command on them. "
        "The reservation lasts exactly as long as the command.",
        usage="%(prog)s --gpus N [options] -- COMMAND [ARG ...]",
    )
    parser.add_argument("--gpus", type=int, required=True, help="number of GPUs to reserve")
    parser.add_argument(
        "--devices", help=f"comma-separated device ids (default: see ${DEVICES_ENV})"
    )
    parser.add_argument("--lock-dir", help=f"lock folder (default: ${LOCK_DIR_ENV} or /tmp/...)")
    parser.add_argument("--timeout", type=float, help="give up after this many seconds (exit 75)")
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])  # before the check below, so that --help works
    command = argv[split + 1 :]
    if not command:
        parser.error("give the command after '--'")
    if args.gpus < 0:
        parser.error("--gpus must be >= 0")
    return args, command


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; on success it does not return: the process becomes the command."""
    args, command = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="lwise.core.gpuslots: %(message)s")
    try:
        with _hold(args.gpus, args.devices, args.lock_dir, args.timeout, 0.2) as (ids, fds):
            # exec rather than spawn a child: the command inherits the locked files, so the
            # reservation lives exactly as long as the command (and its children that keep the
            # descriptors) does, even if it is killed; its exit status and signals need no
            # forwarding.
            for fd in fds.values():
                os.set_inheritable(fd, True)
            log.info("%s=%s: %s", CUDA_ENV, os.environ.get(CUDA_ENV, "(unset)"), " ".join(command))
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                os.execvp(command[0], command)
            except OSError as exc:
                print(f"lwise.core.gpuslots: cannot run {command[0]!r}: {exc}", file=sys.stderr)
                return 127 if isinstance(exc, FileNotFoundError) else 126
    except GpuSlotTimeout as exc:
        print(f"lwise.core.gpuslots: {exc}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: trying again later may work
    except GpuSlotError as exc:
        print(f"lwise.core.gpuslots: {exc}", file=sys.stderr)
        return 2
    return 0  # not reached: execvp either replaced the process or raised


if __name__ == "__main__":
    sys.exit(main())
