"""The frame of a GPU rule's script: the rule's log, its GPUs, and a quick end.

with gpu_job(snakemake):  # the script's last statement
    enhance(...)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

from lwise.core.gpuslots import acquire_gpus, gpus_requested
from lwise.core.logs import script_logging

__all__ = ["end_process", "gpu_job"]


@contextlib.contextmanager
def gpu_job(snakemake: Any) -> Iterator[list[str]]:
    """Log to the rule's log (`script_logging`) and hold the rule's GPUs (`acquire_gpus`, the
    ids are yielded) for the block; when the block succeeds, end the process at once
    (`end_process`), so nothing after the block runs. A failure propagates as usual."""
    with script_logging(snakemake.log[0]), acquire_gpus(gpus_requested(snakemake.resources)) as ids:
        yield ids
    end_process()


def end_process(code: int = 0) -> NoReturn:
    """Run the atexit handlers (worker pools, logging), flush the standard streams and end the
    process without the interpreter's own teardown. After a job that imported torch and used
    CUDA, that teardown took 0.9 s on an H200 (this: 0.15-0.19 s), time the next job of a
    Snakemake run waits for. Every output file must be closed by then."""
    atexit._run_exitfuncs()  # CPython's own: what a normal exit runs first
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
