"""The processes of a training run: one per GPU under torchrun, or a single one."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """This process: its device and its place among the run's processes."""

    device: torch.device
    rank: int
    world: int

    @property
    def main(self) -> bool:
        """The process that writes files."""
        return self.rank == 0

    @property
    def fast(self) -> bool:
        """On a GPU: channels_last inputs and fast-mode attacks."""
        return self.device.type == "cuda"


def _world() -> tuple[int, int, int]:
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def check_gpu_count(processes: int) -> None:
    """One process per GPU: on a CUDA machine, more processes than visible GPUs is a
    configuration error (without CUDA, the processes share the CPU instead)."""
    visible = torch.cuda.device_count()
    if processes > visible:
        raise ValueError(
            f"{processes} training processes (guide.gpus) but {visible} visible GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): give "
            "the rule as many GPUs as processes"
        )


def setup_run() -> Run:
    """Join the process group (under torchrun) and pick this process's device."""
    rank, local_rank, world = _world()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        check_gpu_count(world)
        torch.cuda.set_device(local_rank)
        return Run(torch.device("cuda", local_rank), rank, world)
    return Run(torch.device("cpu"), rank, world)


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """`values` summed over every process (themselves in a single process)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics), which each process updated
    on its own shard since DistributedDataParallel last broadcast them: validation then runs
    the model that rank 0 saves."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def replicas_agree(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether every process holds exactly the same parameters and buffers (True alone)."""
    if not dist.is_initialized():
        return True
    differ = torch.zeros(1, dtype=torch.float64, device=device)
    for tensor in model.state_dict().values():
        top = tensor.detach().clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        differ += (top != tensor).any().double()
    dist.all_reduce(differ)
    return differ.item() == 0


def check_replicas(model: torch.nn.Module, run: Run) -> None:
    """Raise unless every process of the run holds the same weights (nothing in one process)."""
    if run.world == 1:
        return
    if not replicas_agree(model, run.device):
        raise RuntimeError(f"the {run.world} training processes ended with different weights")
    log.info("the %d training processes hold identical weights", run.world)


def finish() -> None:
    """Wait for every process, then leave the process group (nothing in a single process)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
