"""Model checkpoints: our own format, plain state dicts, and robustness-library files.

Our format ("lwise-v1") is a dict holding the architecture, class count, normalisation, class
names and the `ImageClassifier` state dict, plus whatever the training code adds (optimizer,
scheduler, epoch, RNG state). Only tensors and plain Python values are stored, so it loads with
`torch.load(weights_only=True)`.

robustness files (written by robustness `train.py`) hold
`{'model': DataParallel(AttackerModel).state_dict(), ...}` with keys `module.model.*` (the
network), `module.normalizer.new_mean/new_std` and `module.attacker.*` (the same tensors again);
they were pickled with dill.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import dill
import torch

from lwise.core.atomic import atomic_path
from lwise.guide.models import ImageClassifier, build_model, head_name

log = logging.getLogger(__name__)

FORMAT = "lwise-v1"
RESERVED = (
    "format",
    "arch",
    "num_classes",
    "mean",
    "std",
    "class_names",
    "state_dict",
    "training_args",
)


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the requested model."""


def save_checkpoint(
    path: str | os.PathLike,
    model: ImageClassifier,
    extra: Mapping[str, Any] | None = None,
    *,
    training_args: Mapping[str, Any] | None = None,
) -> None:
    """Write `model` (and `extra` keys, e.g. optimizer/scheduler/epoch) atomically to `path`."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper saves its module
    clash = sorted(set(extra or {}) & set(RESERVED))
    if clash:
        raise ValueError(f"extra keys {clash} are reserved by the checkpoint format")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "arch": model.arch,
        "num_classes": model.num_classes,
        "mean": model.normalize.mean.flatten().tolist(),
        "std": model.normalize.std.flatten().tolist(),
        "class_names": model.class_names,
        "state_dict": state,
        "training_args": dict(training_args or {}),
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _read(path: str | os.PathLike, trusted: bool, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not trusted:
            raise CheckpointError(
                f"{path} holds Python objects beyond tensors (e.g. a dill-pickled robustness "
                "checkpoint); loading it runs arbitrary code. Pass trusted=True only if you "
                f"trust its source. ({str(err).splitlines()[0]})"
            ) from err
    # robustness saved with pickle_module=dill: objects such as its lambda-based schedules
    # only unpickle with dill.
    return torch.load(path, map_location=map_location, weights_only=False, pickle_module=dill)


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys under `prefix`, with it removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _unwrap(raw: Any) -> tuple[dict[str, torch.Tensor], list[float] | None, list[float] | None]:
    """The network state dict and stored normalisation (None when absent) of a checkpoint."""
    if isinstance(raw, Mapping) and raw.get("format") == FORMAT:
        return _strip(raw["state_dict"], "net."), raw["mean"], raw["std"]
    state = raw
    for key in ("model", "state_dict"):  # robustness nests the state dict under one of these
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            state = raw[key]
            break
    tensors = isinstance(state, Mapping) and all(torch.is_tensor(v) for v in state.values())
    if not (tensors and state):
        raise CheckpointError("not a checkpoint: expected a state dict of tensors")
    # DataParallel adds "module."; strip it only where present (L-WISE drops 7 characters of
    # every key unconditionally: its copy of robustness `model_utils.make_and_restore_model`).
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for norm, net in (("normalizer.new_", "model."), ("normalize.", "net.")):
        if f"{norm}mean" in state:  # robustness AttackerModel, or our ImageClassifier
            mean, std = (state[f"{norm}{s}"].flatten().tolist() for s in ("mean", "std"))
            return _strip(state, net), mean, std
    return dict(state), None, None


def _head_outputs(arch: str, net_state: Mapping[str, torch.Tensor], path) -> int:
    """The number of classes of the checkpoint's head, read from its weight's shape."""
    probe = build_model(arch, 1, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # for the head's name only
    weight = net_state.get(f"{head_name(probe.net)}.weight")
    if weight is None:
        raise CheckpointError(f"{path}: no {arch} classifier head found; give num_classes")
    return weight.shape[0]


def _check_classes(net_state: Mapping[str, torch.Tensor], model: ImageClassifier, path) -> None:
    """A clear message for the commonest misfit: a head with another number of classes."""
    key = f"{head_name(model.net)}.weight"
    if key in net_state and net_state[key].shape[0] != model.num_classes:
        raise CheckpointError(
            f"{path} has {net_state[key].shape[0]} classes but num_classes={model.num_classes} "
            "was requested; to fine-tune on other classes, load it as it is and call "
            "lwise.guide.models.replace_head"
        )


def load_model(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    trusted: bool = False,
    map_location: str | torch.device = "cpu",
) -> ImageClassifier:
    """An eval-mode `ImageClassifier` from any supported checkpoint.

    Our format carries everything; a plain or robustness state dict needs `arch` (the number
    of classes is read from its head unless `num_classes` is given), and a plain one `mean` and
    `std` too. Normalisation stored in the checkpoint
    wins over `mean`/`std` (as in L-WISE, where the checkpoint's buffers override the dataset's).
    `trusted=True` allows full unpickling, needed for dill-pickled robustness files.
    """
    raw = _read(path, trusted, map_location)
    net_state, stored_mean, stored_std = _unwrap(raw)
    if isinstance(raw, Mapping) and raw.get("format") == FORMAT:
        if arch is not None and arch != raw["arch"]:
            raise CheckpointError(f"{path} holds arch {raw['arch']!r}, not {arch!r}")
        arch = raw["arch"]
        num_classes = num_classes if num_classes is not None else raw["num_classes"]
        class_names = class_names if class_names is not None else raw["class_names"]
    if arch is None:
        raise CheckpointError(f"{path} does not record its architecture: give arch")
    if num_classes is None:
        num_classes = _head_outputs(arch, net_state, path)
    if stored_mean is not None:
        given = [torch.tensor(v, dtype=torch.float32) for v in (mean, std) if v is not None]
        stored = [torch.tensor(v) for v in (stored_mean, stored_std)]
        if given and not all(torch.allclose(g, s) for g, s in zip(given, stored, strict=False)):
            log.info(
                "%s: using the checkpoint's normalisation mean=%s std=%s instead of %s %s",
                path,
                stored_mean,
                stored_std,
                mean,
                std,
            )
        mean, std = stored_mean, stored_std
    elif mean is None or std is None:
        raise CheckpointError(f"{path} stores no normalisation: give mean and std")
    model = build_model(arch, num_classes, mean, std, class_names=class_names)
    _check_classes(net_state, model, path)
    try:
        model.net.load_state_dict(net_state)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit arch {arch!r}: {err}") from err
    if isinstance(raw, Mapping) and raw.get("format") == FORMAT:
        model.training_args = dict(raw.get("training_args") or {})
    return model.to(map_location).eval()
