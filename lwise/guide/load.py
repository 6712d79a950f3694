"""The guide model ready for inference: one entry point for every method that uses it.

`load_guide` reads a checkpoint (`lwise.guide.checkpoints.load_model`), puts the model on its
device in eval mode, optionally prepares the fast copy (`lwise.guide.fast`), and
says what the model expects: its input size and, given a dirmap, the label column whose ids are
the model's classes. Scoring, the natural and enhanced stimuli, and every later method built on
the guide model (VisAlign, correspondence, Grad-CAM, debugging sets) load it here.

    guide = load_guide("results/digits/guide/model.pt", trusted=False, dirmap=df)
    logits = guide.net(x.to(guide.device))  # x: images in [0, 1] at guide.input_size
"""

from __future__ import annotations

import contextlib
import os
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
) -> Guide:
    """The guide model at `path`, ready for inference.

    - `trusted`: allow full unpickling (dill-pickled robustness checkpoints run code on load).
    - `device`: default the GPU when there is one, else the CPU.
    - `fast`: prepare the fast copy; None means "on a GPU" (fast mode costs more than it saves
      on the CPU). `fast_dtype` ("float16" or "bfloat16") is then required.
    - `dirmap`, `label_column`: with a dirmap, `Guide.label_column` is `label_column` (checked
      against its columns) or, when that is None or "auto", the column that fits the model's
      classes (`label_column_for`).
    """
    device = torch.device(device) if device is not None else default_device()
    model = load_model(path, trusted=trusted).to(device).eval()
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
        net=prepare_fast(model) if fast else model,
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
