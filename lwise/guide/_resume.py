"""A training run's resume state: after every epoch, everything a rerun needs to continue
exactly (weights, optimizer, schedule, epoch, metrics so far, best score, RNG states)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from lwise.core.atomic import atomic_path

log = logging.getLogger(__name__)


def rng_state() -> dict:
    """Every random generator's state, as tensors and plain values (weights_only loads it)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_state(last: Path, digest: str, model, opt, sched) -> tuple[list[dict], int, float]:
    """Load `last` into the model, optimizer, schedule and RNGs when it belongs to the run
    whose settings have `digest`; returns the metrics rows so far, the epochs done and the
    best validation score (nothing done when there is no such state)."""
    if not last.exists():
        return [], 0, -1.0
    # On the CPU: RNG states must stay CPU byte tensors; load_state_dict moves the rest.
    state = torch.load(last, map_location="cpu", weights_only=True)
    if state["digest"] != digest:
        log.info("%s belongs to other settings; starting over", last)
        return [], 0, -1.0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    log.info("resuming after epoch %d from %s", state["epoch"], last)
    return state["rows"], state["epoch"], state["best_score"]


def save_state(
    last: Path, digest: str, epoch: int, model, opt, sched, rows: list[dict], best_score: float
) -> None:
    """The state after `epoch`, written atomically to `last`."""
    last.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(last) as tmp:
        torch.save(
            {
                "digest": digest,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rows": rows,
                "best_score": best_score,
                "rng": rng_state(),
            },
            tmp,
        )
