"""Abstention methods: how much a model abstains on each image, for VisAlign's output.

VisAlign (Lee et al., NeurIPS 2023; `jiyounglee-0523/VisAlign`, `evaluate_visual_alignment.py`)
turns each abstention method's per-image score into an abstention probability a and compares
q = [softmax · (1 − a), a] with the human response distribution. A method here is registered by
name and maps the model's outputs to an `AbstentionScore`:

    @register_abstention("msp")
    def msp(outputs: ModelOutputs) -> AbstentionScore: ...

A method gives either abstention probabilities in [0, 1] (`threshold=None`), or raw scores where
higher means "abstain" together with a threshold, which abstain fully above it. The config's
`evaluation.abstention` names the method (the schema's enum lists the registered names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lwise.alignment import metrics

__all__ = [
    "ABSTENTION",
    "AbstentionMethod",
    "AbstentionScore",
    "ModelOutputs",
    "abstention_probability",
    "register_abstention",
]


@dataclass(frozen=True)
class ModelOutputs:
    """What a method may use, one row per image: the softmax over the task's classes, and the
    logits when the scorer saved them."""

    probs: np.ndarray  # (n, K), rows summing to 1
    logits: np.ndarray | None = None  # (n, K)


@dataclass(frozen=True)
class AbstentionScore:
    """Per-image abstention: probabilities in [0, 1] when `threshold` is None, else raw scores
    (higher = abstain) that abstain fully above `threshold` and not at all at or below it."""

    values: np.ndarray
    threshold: float | None = None

    def probability(self) -> np.ndarray:
        """The abstention mass a of VisAlign's output, per image."""
        values = np.asarray(self.values, dtype=float)
        if self.threshold is None:
            return values
        return (values > self.threshold).astype(float)


AbstentionMethod = Callable[[ModelOutputs], AbstentionScore]
ABSTENTION: dict[str, AbstentionMethod] = {}


def register_abstention(name: str) -> Callable[[AbstentionMethod], AbstentionMethod]:
    def deco(fn: AbstentionMethod) -> AbstentionMethod:
        ABSTENTION[name] = fn
        return fn

    return deco


def abstention_probability(method: str, outputs: ModelOutputs) -> np.ndarray:
    """The abstention probability per image under the registered `method`."""
    if method not in ABSTENTION:
        raise ValueError(f"unknown abstention method {method!r}; known: {sorted(ABSTENTION)}")
    a = ABSTENTION[method](outputs).probability()
    if a.shape != (len(outputs.probs),):
        raise ValueError(
            f"abstention method {method!r}: expected {len(outputs.probs)} values, got {a.shape}"
        )
    return a


@register_abstention("msp")
def msp(outputs: ModelOutputs) -> AbstentionScore:
    """a = 1 − max softmax. VisAlign's `evaluate_visual_alignment.py` takes a = 1 − the min-max
    normalised softmax *entropy* for MSP, which inverts the direction (confident images
    abstain); 1 − MSP keeps it and needs no normalisation over the test set."""
    return AbstentionScore(metrics.max_softmax_abstention(outputs.probs))
