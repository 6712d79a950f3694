"""The guide model ready for inference: one entry point for every method that uses it.

`load_guide` reads a checkpoint (`lwise.guide.checkpoints.load_model`), puts the model on its
device in eval mode, optionally prepares the fast copy (`lwise.guide.fast`), and
says what the model expects: its input size and, given a dirmap, the label column whose ids are
the model's classes. Scoring, the natural and enhanced stimuli, and every later method built on
the guide model (VisAlign, correspondence, Grad-CAM, debugging sets) load it here.

    guide = load_guide("results/digits/guide/model.pt", trusted=False, dirmap=df)
    logits = guide.net(x.to(guide.device))  # x: images in [0, 1] at guide.input_size

A file that does not record its architecture, class count, normalisation or input size takes
them from `load_guide`'s keywords (the `guide` config section; the workflow applies them once,
in `import_guide`, so every rule loads a file in our format). A 1000-way ImageNet model on a
subset labels images by `orig_class_num`; `pool_logits` turns its logits into the dataset's
K-way decision.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from lwise.guide.checkpoints import load_model
from lwise.guide.fast import FAST_DTYPES, prepare_fast
from lwise.guide.models import ImageClassifier

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "Guide",
    "default_device",
    "label_column_for",
    "load_guide",
    "model_input_size",
    "pool_logits",
    "pooled_members",
    "ready_guide",
]

# The input size when a checkpoint does not record one: L-WISE's (224×224 crops).
DEFAULT_INPUT_SIZE = 224


@dataclass(frozen=True)
class Guide:
    """A loaded guide model and what it expects.

    - `model`: the `ImageClassifier` in eval mode on `device`; its parameters still require
      gradients (Grad-CAM, fine-tuning): freeze them for input gradients only.
    - `net`: what to run: the fast copy of `model` (`lwise.guide.fast.prepare_fast`, frozen)
      when `fast`, else `model` itself. Fast inputs run best in channels_last.
    - `fast_dtype`: the autocast precision of fast mode (a `FAST_DTYPES` name), or None.
    - `label_column`: the dirmap column holding the model's class ids (None without a dirmap).
    - `input_size`: the side of the square images the model was trained on.
    """

    model: ImageClassifier
    net: nn.Module
    device: torch.device
    fast: bool
    fast_dtype: str | None
    input_size: int
    num_classes: int
    class_names: list[str] | None
    label_column: str | None

    @property
    def mode(self) -> str:
        """The `lwise.guide.attacks.pgd` mode that matches `net`: "fast" or "reference"."""
        return "fast" if self.fast else "reference"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to `fast_dtype` in fast mode; no change otherwise."""
        if not self.fast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=FAST_DTYPES[self.fast_dtype])


def default_device() -> torch.device:
    """The GPU when there is one (the job's, see `lwise.core.gpuslots`), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_guide(
    path: str | os.PathLike,
    *,
    trusted: bool,
    device: str | torch.device | None = None,
    fast: bool | None = False,
    fast_dtype: str | None = None,
    dirmap: pd.DataFrame | None = None,
    label_column: str | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    image_size: int | None = None,
    compile: bool | None = None,
) -> Guide:
    """The guide model at `path`, ready for inference.

    - `trusted`: allow full unpickling (dill-pickled robustness checkpoints run code on load).
    - `arch`, `num_classes`, `mean`, `std`, `image_size`: what the file lacks
      (`lwise.guide.checkpoints.load_model`: the file's record wins, a contradiction is an
      error).
    - the rest as `ready_guide`, which this calls on the file's model.
    """
    model = load_model(
        path, trusted=trusted, arch=arch, num_classes=num_classes, mean=mean, std=std,
        image_size=image_size,
    )  # fmt: skip
    return ready_guide(
        model, device=device, fast=fast, fast_dtype=fast_dtype, dirmap=dirmap,
        label_column=label_column, compile=compile,
    )  # fmt: skip


def ready_guide(
    model: ImageClassifier,
    *,
    device: str | torch.device | None = None,
    fast: bool | None = False,
    fast_dtype: str | None = None,
    dirmap: pd.DataFrame | None = None,
    label_column: str | None = None,
    compile: bool | None = None,
) -> Guide:
    """A loaded model (`lwise.guide.checkpoints.load_model`) as a `Guide`: on its device in eval
    mode, with its fast copy. A job that reads images starts its loader between the two steps,
    so that decoding overlaps moving the model and making the fast copy.

    - `device`: default the GPU when there is one, else the CPU.
    - `fast`: prepare the fast copy; None means "on a GPU" (fast mode costs more than it saves
      on the CPU). `fast_dtype` ("float16" or "bfloat16") is then required.
    - `dirmap`, `label_column`: with a dirmap, `Guide.label_column` is `label_column` (checked
      against its columns) or, when that is None or "auto", the column that fits the model's
      classes (`label_column_for`).
    - `compile`: torch.compile the fast copy (`lwise.guide.fast.prepare_fast`; None: on a GPU).
    """
    device = torch.device(device) if device is not None else default_device()
    model = model.to(device).eval()
    fast = device.type == "cuda" if fast is None else fast
    if fast_dtype is not None and fast_dtype not in FAST_DTYPES:
        raise ValueError(f"unknown fast_dtype {fast_dtype!r}; valid: {', '.join(FAST_DTYPES)}")
    if fast and fast_dtype is None:
        raise ValueError("fast mode needs fast_dtype (float16 or bfloat16)")
    label = None
    if dirmap is not None:
        label = label_column_for(dirmap, model.num_classes, label_column or "auto")
    return Guide(
        model=model,
        net=prepare_fast(model, compile=compile) if fast else model,
        device=device,
        fast=fast,
        fast_dtype=fast_dtype,
        input_size=model_input_size(model),
        num_classes=model.num_classes,
        class_names=model.class_names,
        label_column=label,
    )


def label_column_for(df: pd.DataFrame, num_classes: int, requested: str = "auto") -> str:
    """`class_num` when the model's classes are the dirmap's, else `orig_class_num` (the
    1000-way ImageNet index of an ImageNet-16 image); L-WISE's scorer needed this by hand."""
    if requested != "auto":
        if requested not in df.columns:
            raise ValueError(f"label column {requested!r} not in the dirmap")
        return requested
    if df["class_num"].max() < num_classes and df["class"].nunique() == num_classes:
        return "class_num"
    if "orig_class_num" in df.columns and df["orig_class_num"].max() < num_classes:
        return "orig_class_num"
    if df["class_num"].max() < num_classes:
        return "class_num"
    raise ValueError(
        f"no label column fits a {num_classes}-class model: class_num goes up to "
        f"{df['class_num'].max()} and there is no fitting orig_class_num"
    )


def model_input_size(model: ImageClassifier) -> int:
    """The image size a model was trained at (224, L-WISE's, when its checkpoint does not say)."""
    return int(model.training_args.get("image_size", DEFAULT_INPUT_SIZE))


def pooled_members(df: pd.DataFrame, label_column: str) -> dict[int, list[int]] | None:
    """The model classes pooled into each dataset class, or None when no pooling is needed.

    None when the model's labels are the dataset's (`label_column` "class_num"). Otherwise the
    members of class k are the `label_column` ids (the 1000-way ImageNet indices) of the
    dirmap's rows of `class_num` k, over all splits: for ImageNet-16 built with the
    `imagenet16` preset, every fine class of a superclass's ranges that has images. (L-WISE's
    `mapped_models.imagenet_mapped_model` means the full ranges, but its tuple lookup matches
    only their endpoints; fine classes without images cannot be checked against the data.)
    A model class under two dataset classes is an error.
    """
    if label_column == "class_num":
        return None
    pairs = df[["class_num", label_column]].drop_duplicates()
    twice = pairs[pairs[label_column].duplicated(keep=False)]
    if len(twice):
        fine = int(twice[label_column].iloc[0])
        raise ValueError(
            f"{label_column} {fine} belongs to several classes "
            f"({sorted(int(c) for c in twice.loc[twice[label_column] == fine, 'class_num'])}): "
            "its logit cannot be pooled into one"
        )
    return {
        int(k): sorted(int(i) for i in group[label_column])
        for k, group in pairs.groupby("class_num")
    }


def pool_logits(logits: torch.Tensor, members: Mapping[int, Sequence[int]]) -> torch.Tensor:
    """The K-way logits of a model with finer classes: column j is the maximum of the logits of
    the members of the j-th class in sorted order (`members`: class -> model class ids).

    The rule of L-WISE's `imagenet_mapped_model` (`mapped_models.py`, `--superclass
    imagenet16`): a superclass's logit is its most confident member's. A max keeps the scale of
    a logit (a sum or log-sum-exp would favour classes with more members: 118 dog breeds
    against 3 frog species in ImageNet-16), and its argmax is the superclass of the best
    member among all members.
    """
    classes = sorted(members)
    if not classes or any(not members[k] for k in classes):
        raise ValueError("every pooled class needs at least one member")
    width = logits.shape[-1]
    bad = sorted({int(i) for k in classes for i in members[k] if not 0 <= int(i) < width})
    if bad:
        raise ValueError(f"member ids {bad[:5]} are outside the model's {width} classes")
    return torch.stack([logits[..., list(members[k])].amax(-1) for k in classes], dim=-1)
