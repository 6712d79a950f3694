"""A training run's resume state: after every epoch, everything a rerun needs to continue
exactly (weights, optimizer, schedule, epoch, metrics so far, best score, RNG states). The
schedule's state is the scheduler's own: a LambdaLR's epoch count, or a ReduceLROnPlateau's
best validation loss, epochs without improvement and cooldown left.

A state belongs to exactly one run, identified by its run key: the training settings, the
training data (the dirmap rows used and each image file's size and modification time) and the
initial checkpoint's bytes. A state whose key or whose model does not match is discarded, and
the log says why, so a changed dataset or a changed starting model never continues an old run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from lwise.core.atomic import atomic_path

log = logging.getLogger(__name__)

# Settings that change how fast a run goes, not what it computes (augmentation is seeded per
# image, whatever the workers; a compiled attack differs from the eager one by rounding only).
RESULT_NEUTRAL = ("workers", "compile")
KEY_PARTS = {
    "settings": "training settings (guide.train)",
    "data": "training data (the dirmap's rows or its image files)",
    "init_checkpoint": "initial checkpoint (guide.train.init_checkpoint)",
}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run_key(settings: Mapping, data_fingerprint: str) -> dict[str, str]:
    """The key of the run with `settings` (TrainConfig fields) on data with that fingerprint."""
    kept = {k: v for k, v in settings.items() if k not in RESULT_NEUTRAL}
    init = settings.get("init_checkpoint")
    return {
        "settings": hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest(),
        "data": data_fingerprint,
        "init_checkpoint": file_sha256(init) if init else "none",
    }


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


def _kinds(opt, sched) -> list[str]:
    return [type(opt).__name__, type(sched).__name__]


def mismatch(
    state: Mapping, key: Mapping[str, str], model: torch.nn.Module, opt=None, sched=None
) -> str | None:
    """Why `state` cannot continue the run with `key`, `model` (and, when given, an optimizer
    and a scheduler of these kinds), or None when it can."""
    old = state.get("run_key")
    if not isinstance(old, Mapping):
        return "it has no run key (written by an older lwise)"
    changed = [KEY_PARTS[part] for part in KEY_PARTS if old.get(part) != key.get(part)]
    if changed:
        return "its run had other " + " and other ".join(changed)
    if opt is not None and sched is not None and "kinds" in state:
        if list(state["kinds"]) != _kinds(opt, sched):
            return (
                f"its optimizer and schedule are {' and '.join(state['kinds'])}, this run's "
                f"{' and '.join(_kinds(opt, sched))}"
            )
    own = model.state_dict()
    theirs = state["model"]
    if set(own) != set(theirs):
        return f"its model has other layers ({sorted(set(own) ^ set(theirs))[:3]} differ)"
    for name, tensor in theirs.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            return (
                f"its model's {name} has shape {tuple(tensor.shape)}, this run's "
                f"{tuple(own[name].shape)} (another number of classes?)"
            )
    return None


def load_state(
    last: Path, key: Mapping[str, str], model, opt, sched
) -> tuple[list[dict], int, float]:
    """Load `last` into the model, optimizer, schedule and RNGs when it belongs to the run with
    `key` (see `run_key`) and fits `model`; returns the metrics rows so far, the epochs done and
    the best validation score (nothing done, and the reason logged, otherwise)."""
    fresh: tuple[list[dict], int, float] = ([], 0, -1.0)
    if not last.exists():
        return fresh
    try:  # on the CPU: RNG states must stay CPU byte tensors; load_state_dict moves the rest
        state = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable state means starting over
        log.warning("%s is unreadable (%s); starting over", last, err)
        return fresh
    why = mismatch(state, key, model, opt, sched)
    if why is not None:
        log.warning("discarding the resume state %s: %s; starting over", last, why)
        return fresh
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    log.info("resuming after epoch %d from %s", state["epoch"], last)
    return state["rows"], state["epoch"], state["best_score"]


def save_state(
    last: Path,
    key: Mapping[str, str],
    epoch: int,
    model,
    opt,
    sched,
    rows: list[dict],
    best_score: float,
) -> None:
    """The state after `epoch`, written atomically to `last`."""
    last.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(last) as tmp:
        torch.save(
            {
                "run_key": dict(key),
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "kinds": _kinds(opt, sched),
                "rows": rows,
                "best_score": best_score,
                "rng": rng_state(),
            },
            tmp,
        )
