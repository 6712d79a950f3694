"""Model checkpoints: our own format, plain state dicts, robustness-library files and exports.

Our format ("lwise-v1") is a dict holding the architecture, class count, normalisation, class
names and the `ImageClassifier` state dict, plus whatever the training code adds (optimizer,
scheduler, epoch, RNG state). Only tensors and plain Python values are stored, so it loads with
`torch.load(weights_only=True)`.

robustness files (written by robustness `train.py`) hold
`{'model': DataParallel(AttackerModel).state_dict(), ...}` with keys `module.model.*` (the
network), `module.normalizer.new_mean/new_std` and `module.attacker.*` (the same tensors again);
they were pickled with dill. A plain torchvision/timm state dict may carry DataParallel's
`module.` prefix. An export (`lwise.guide.export`) is a safetensors state dict with a JSON
sidecar of the same name.

What a file records (architecture, class count, normalisation, input size) wins; the loader's
arguments (the `guide` config section: `GuideFileConfig`) fill in what it lacks, and an
argument that contradicts the record is an error naming both, except the normalisation, where
the file's buffers win as in L-WISE (its copy of robustness `model_utils.make_and_restore_model`
loads the normaliser with the weights, overriding the dataset class's mean/std).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dill
import torch

from lwise.core.atomic import atomic_path
from lwise.core.config import Section
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


@dataclass(frozen=True)
class GuideFileConfig(Section):
    """How to read a ready guide model: the checkpoint keys of the `guide` config section
    (meanings and defaults in its schema). `loader_args()` gives `load_model`'s keywords."""

    SECTION = "guide"

    checkpoint: str | None
    trusted: bool
    arch: str | None
    num_classes: int | None
    mean: list[float] | None
    std: list[float] | None
    image_size: int | None

    def loader_args(self) -> dict[str, Any]:
        return {
            "trusted": self.trusted,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "mean": self.mean,
            "std": self.std,
            "image_size": self.image_size,
        }


@dataclass
class Record:
    """What a checkpoint file holds and says about itself (None: it does not say)."""

    layout: str  # "lwise" (ours), "export" (safetensors + sidecar), "robustness" or "plain"
    net_state: dict[str, torch.Tensor]
    arch: str | None = None
    num_classes: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    class_names: list[str] | None = None
    training_args: dict[str, Any] = field(default_factory=dict)


def _untrusted_message(path, err: Exception) -> str:
    # torch names the first object it refused: "Unsupported global: GLOBAL dill._dill...".
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    detail = f" (its first object: {found[1]})" if found else ""
    return (
        f"{path} is not a plain tensor file: it holds pickled Python objects (robustness-library "
        "checkpoints are saved with dill; training scripts often save their arguments), and "
        "unpickling runs whatever code the file names. Load it only if you trust its source: "
        "set `guide.trusted: true` in the config (`trusted_checkpoint: true` for "
        "guide.train.init_checkpoint), pass --trusted on the command line or trusted=True to "
        "the library; `lwise export-checkpoint --trusted` then writes a safetensors copy that "
        f"needs no trust.{detail}"
    )


def _read(path: str | os.PathLike, trusted: bool, map_location: str | torch.device) -> Any:
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not trusted:
            raise CheckpointError(_untrusted_message(path, err)) from err
    # robustness saved with pickle_module=dill: objects such as its lambda-based schedules
    # only unpickle with dill.
    return torch.load(path, map_location=map_location, weights_only=False, pickle_module=dill)


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of an exported `<name>.safetensors`: `<name>.json` beside it."""
    return Path(path).with_suffix(".json")


def _read_export(path: Path, map_location: str | torch.device) -> Record:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    meta: dict[str, Any] = {}
    side = sidecar_path(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{side}: not valid JSON ({err})") from err
        if not isinstance(meta, dict):
            raise CheckpointError(f"{side}: expected a JSON object")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return Record(
        layout="export",
        net_state=state,
        arch=meta.get("arch"),
        num_classes=meta.get("num_classes"),
        mean=meta.get("mean"),
        std=meta.get("std"),
        class_names=meta.get("class_names"),
        training_args={"image_size": meta["image_size"]} if meta.get("image_size") else {},
    )


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys under `prefix`, with it removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_record(
    path: str | os.PathLike, *, trusted: bool = False, map_location: str | torch.device = "cpu"
) -> Record:
    """The network state dict of any supported checkpoint and what the file records."""
    if Path(path).suffix == ".safetensors":
        return _read_export(Path(path), map_location)
    raw = _read(path, trusted, map_location)
    if isinstance(raw, Mapping) and raw.get("format") == FORMAT:
        return Record(
            layout="lwise",
            net_state=_strip(raw["state_dict"], "net."),
            arch=raw["arch"],
            num_classes=raw["num_classes"],
            mean=raw["mean"],
            std=raw["std"],
            class_names=raw["class_names"],
            training_args=dict(raw.get("training_args") or {}),
        )
    state = raw
    for key in ("model", "state_dict"):  # robustness nests the state dict under one of these
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            state = raw[key]
            break
    tensors = isinstance(state, Mapping) and all(torch.is_tensor(v) for v in state.values())
    if not (tensors and state):
        raise CheckpointError(f"{path}: not a checkpoint: expected a state dict of tensors")
    # DataParallel adds "module."; strip it only where present (L-WISE drops 7 characters of
    # every key unconditionally: its copy of robustness `model_utils.make_and_restore_model`).
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for norm, net, layout in (
        ("normalizer.new_", "model.", "robustness"),
        ("normalize.", "net.", "plain"),
    ):
        if f"{norm}mean" in state:  # robustness AttackerModel, or our ImageClassifier
            mean, std = (state[f"{norm}{s}"].flatten().tolist() for s in ("mean", "std"))
            return Record(layout, _strip(state, net), mean=mean, std=std)
    return Record("plain", dict(state))


def _head_outputs(arch: str, net_state: Mapping[str, torch.Tensor]) -> int | None:
    """The number of classes of the checkpoint's head, read from its weight's shape."""
    probe = build_model(arch, 1, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), empty=True)  # names only
    weight = net_state.get(f"{head_name(probe.net)}.weight")
    return None if weight is None else int(weight.shape[0])


def _filled(
    arch: str, num_classes: int, mean, std, names, state: Mapping[str, torch.Tensor], path
) -> ImageClassifier:
    """The model with the checkpoint's weights. The network is built empty and takes the
    file's tensors as they are when all are contiguous float32 (or integer) tensors; otherwise
    (a buffer the file does not hold, another dtype or layout) it is built and initialised as
    usual, and the weights copied in."""
    model = _loaded(arch, num_classes, mean, std, names, state, path, empty=True)
    if all(
        not t.is_meta
        and t.is_contiguous()
        and (t.dtype == torch.float32 or not t.is_floating_point())
        for t in [*model.net.parameters(), *model.net.buffers()]
    ):
        return model
    return _loaded(arch, num_classes, mean, std, names, state, path, empty=False)


def _loaded(arch, num_classes, mean, std, names, state, path, *, empty: bool) -> ImageClassifier:
    """`build_model` with the file's weights: assigned into an empty network, else copied."""
    model = build_model(arch, num_classes, mean, std, class_names=names, empty=empty)
    try:
        model.net.load_state_dict(state, assign=empty)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit arch {arch!r}: {err}") from err
    return model


def _agree(name: str, recorded: Any, given: Any, path, key: str) -> Any:
    """The file's value, or the given one where the file has none; both and unequal: error."""
    if recorded is not None and given is not None and recorded != given:
        raise CheckpointError(
            f"{path} records {name} {recorded!r}, but {given!r} was given ({key} in the config); "
            "the file's record is what its weights fit: remove the setting or correct it"
        )
    return recorded if recorded is not None else given


def load_model(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
    trusted: bool = False,
    map_location: str | torch.device = "cpu",
) -> ImageClassifier:
    """An eval-mode `ImageClassifier` from any supported checkpoint.

    The file's record wins and the arguments fill in what it lacks: a plain or robustness
    state dict needs `arch` (the number of classes is read from its head), and a plain one
    `mean` and `std` too. `arch`, `num_classes` or `image_size` contradicting the file is an
    error naming both; a stored normalisation wins over `mean`/`std` with a warning (as in
    L-WISE, where the checkpoint's buffers override the dataset's). `class_names` replaces the
    file's. `trusted=True` allows full unpickling, needed for dill-pickled robustness files.
    """
    rec = read_record(path, trusted=trusted, map_location=map_location)
    arch = _agree("arch", rec.arch, arch, path, "guide.arch")
    if arch is None:
        raise CheckpointError(
            f"{path} ({rec.layout} layout) does not record its architecture: give arch "
            "(guide.arch in the config, e.g. resnet50)"
        )
    head = _head_outputs(arch, rec.net_state)
    recorded = rec.num_classes if rec.num_classes is not None else head
    if recorded is not None and num_classes is not None and recorded != num_classes:
        raise CheckpointError(
            f"{path} has {recorded} classes but num_classes={num_classes} was requested "
            f"(guide.num_classes in the config); to use a {recorded}-way model on a subset, "
            "leave num_classes unset (labels come from orig_class_num); to fine-tune on other "
            "classes, load it as it is and call lwise.guide.models.replace_head"
        )
    num_classes = recorded if recorded is not None else num_classes
    if num_classes is None:
        raise CheckpointError(f"{path}: no {arch} classifier head found; give num_classes")
    size = _agree("image_size", rec.training_args.get("image_size"), image_size, path,
                  "guide.image_size")  # fmt: skip
    if rec.mean is not None:
        given = [torch.tensor(v, dtype=torch.float32) for v in (mean, std) if v is not None]
        stored = [torch.tensor(v) for v in (rec.mean, rec.std)]
        if given and not all(torch.allclose(g, s) for g, s in zip(given, stored, strict=False)):
            log.warning(
                "%s: using the checkpoint's normalisation mean=%s std=%s instead of %s %s",
                path, rec.mean, rec.std, mean, std,
            )  # fmt: skip
        mean, std = rec.mean, rec.std
    elif mean is None or std is None:
        raise CheckpointError(
            f"{path} stores no normalisation: give mean and std (guide.mean and guide.std in "
            "the config; ImageNet models: [0.485, 0.456, 0.406] and [0.229, 0.224, 0.225])"
        )
    names = class_names if class_names is not None else rec.class_names
    model = _filled(arch, num_classes, mean, std, names, rec.net_state, path)
    model.training_args = dict(rec.training_args)
    if size is not None:
        model.training_args["image_size"] = int(size)
    return model.to(map_location).eval()
