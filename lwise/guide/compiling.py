"""Compiling the fast model (`lwise.guide.fast`) and deciding per job whether it pays: the
on-disk compile cache, `compile_fast`, and the size rules of `compile: auto` and of cuDNN's
autotuning, shared by enhancement and training."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "COMPILE_FROM_IMAGE_STEPS",
    "compile_cache_dir",
    "compile_fast",
    "cudnn_autotune",
    "is_compiled",
    "should_compile",
]

log = logging.getLogger(__name__)

RECOMPILE_LIMIT = 64
# `compile: auto` (enhancement and training) compiles a job of at least this many image-steps
# (images x (attack steps + 1)). H200, ResNet-50, 224 px: enhancement in float16
# (bench/pipeline.py) took 0.107 ms per image-step eager and 0.080 compiled, the training
# attack in bfloat16 (bench/enhance.py --parts train_step) 0.116 and 0.092; compiling took 35 s
# in a job that finds no cache and 15 s loading a cached one: break-even between 0.55 and 1.5
# million image-steps.
COMPILE_FROM_IMAGE_STEPS = 1_000_000


def _repays(images: int, steps: int) -> bool:
    """Whether a job of `images` x (`steps` + 1) image-steps is large enough to repay a fixed
    set-up cost (compiling, autotuning)."""
    return images * (steps + 1) >= COMPILE_FROM_IMAGE_STEPS


def compile_cache_dir() -> Path:
    """Where torch.compile keeps its compiled kernels and graphs, so that every job of a run and
    later runs compile once: `TORCHINDUCTOR_CACHE_DIR` when set, else `lwise/torchinductor`
    under the user's cache folder (`XDG_CACHE_HOME`, default ~/.cache), never inductor's own
    default under /tmp, which machines clear. Triton's kernels follow (`TRITON_CACHE_DIR`).
    Sets both variables for this process and its children."""
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "lwise" / "torchinductor")
    root = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def should_compile(setting: bool | str, images: int, steps: int) -> bool | None:
    """A `compile` setting: True or False as set; "auto" compiles (on a GPU: None lets
    `prepare_fast` decide) when the job is large enough to repay compiling."""
    if setting != "auto":
        return bool(setting)
    if _repays(images, steps):
        return None
    if torch.cuda.is_available():  # the CPU never compiles: nothing to explain there
        log.info("%d images x %d steps: running eager (compiling would not pay off)", images, steps)
    return False


def cudnn_autotune(images: int, steps: int) -> bool:
    """Whether a job of `images` x (`steps` + 1) image-steps should let cuDNN time its
    algorithms for each new shape (`torch.backends.cudnn.benchmark`): only a large one. H200,
    ResNet-50 float16, 4,096 images per fresh process (README, "Speed"; 2026-12-01): the first
    attack batch took 2.2-7.6 s with autotuning and 0.95-1.9 s without; at eps 2 / 4 steps the
    attacks took 4.07 s against 2.88 s, at eps 20 / 40 steps 19.08 against 18.47, while the
    steady state gained 2.4 % per batch with it: break-even near 15,000 images at 40 steps."""
    return _repays(images, steps)


def compile_fast(fast: nn.Module, mode: str | None = None) -> nn.Module:
    """torch.compile of a `prepare_fast` model, static shapes, cached on disk. The parameters
    stay inputs of the compiled code (inductor's freezing is off), so changing them in place
    (`LiveFolded.refresh`) changes what it computes, without recompiling."""
    # Every ImageClassifier shares one forward code object, and each batch size adds a gradient
    # and a no-gradient graph: dynamo's default cap of 8 graphs would silently fall back to eager.
    torch._dynamo.config.recompile_limit = max(
        torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT
    )
    log.info("torch.compile cache: %s", compile_cache_dir())
    return torch.compile(fast, mode=mode, dynamic=False)


def is_compiled(module: nn.Module) -> bool:
    """Whether `module` is what torch.compile returned (`compile_fast`). Nothing is compiled
    before torch._dynamo is imported, so this never imports it."""
    dynamo = sys.modules.get("torch._dynamo")
    return dynamo is not None and isinstance(module, dynamo.eval_frame.OptimizedModule)
