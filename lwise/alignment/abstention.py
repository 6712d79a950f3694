"""Abstention methods: how much a model abstains on each image, for VisAlign's output.

VisAlign (Lee et al., NeurIPS 2023; `jiyounglee-0523/VisAlign`) turns the score of an
abstention method into an abstention probability a and compares q = [softmax · (1 − a), a]
with the human label distribution. Its seven methods are registered here by name:

| name | raw score (what `lwise.alignment.visalign.scoring` computes with the model) |
| --- | --- |
| `msp` | the softmax |
| `odin` | the softmax of logits / T after ODIN's input perturbation |
| `mcdropout` | the softmaxes of the dropout passes (passes × K) |
| `deepensemble` | the softmaxes of the ensemble's members (members × K) |
| `mds` | max over classes of −½ Mahalanobis² (higher: in-distribution) |
| `knn` | −(squared L2 distance to the K-th nearest training feature) |
| `tapudd` | mean over GMMs (k = 1…10) of max over components of −½ Mahalanobis² |

A method here is pure: it collapses a raw score to one number per image under a *rule* and
says which way it points; `abstention_probability` maps those numbers to a ∈ [0, 1]:

- `aligned` (default): a rises with uncertainty for every method. Probability-type methods
  give a = 1 − max of their (averaged) softmax, already a probability, except ODIN, whose
  temperature-1000 softmax is near uniform: its 1 − max is min-max normalised over the scored
  images like the distance scores, whose a = 1 − s̃ (s̃ the min-max normalised score).
- `reference`: `evaluate_visual_alignment.py` and `make_leaderboard_submission.py` as written:
  s = the entropy of the stored softmax (MSP, ODIN's full temperature softmax, MC-Dropout's
  softmax of the mean pass softmax, the members' mean entropy for the ensemble) or the raw
  distance score, min-max over all scored images, a = 1 − s̃ for every method, which makes
  confident predictions abstain; computed in float64, a value rounding pushes past [0, 1] is
  clipped.
- `reference_exact`: the reference rule with its float32 arithmetic (min and max of the scores
  in float32, applied to float64 scores), so a score just above the maximum gives s̃ > 1 and
  a = 1, and one just below the minimum a > 1, unclipped (`raw_output` then keeps it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import entropy

from lwise.alignment import metrics

__all__ = [
    "ABSTENTION",
    "KINDS",
    "RULES",
    "AbstentionMethod",
    "ModelOutputs",
    "abstention_probability",
    "collapse",
    "from_collapsed",
    "normalise",
    "raw_output",
    "register_abstention",
]

RULES = ("aligned", "reference", "reference_exact")
KINDS = ("probability", "distance")


@dataclass(frozen=True)
class ModelOutputs:
    """What the methods get, one row per image: the plain softmax over the task's classes and,
    by method name, the raw scores that need the model (`lwise.alignment.visalign.scoring`):
    a (n, K) softmax, a (n, passes or members, K) stack, or a (n,) distance score."""

    probs: np.ndarray  # (n, K), rows summing to 1
    logits: np.ndarray | None = None  # (n, K)
    raw: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class AbstentionMethod:
    """A registered method: `kind` (probability or distance) and `collapse(raw, rule)`, which
    gives one number per image: an uncertainty (higher: abstain) under `aligned`, the
    reference's score s under `reference*` (higher: s̃ higher, a lower)."""

    name: str
    kind: str
    collapse: Callable[[np.ndarray, str], np.ndarray]
    bounded: bool  # under `aligned`: already a probability, used as a without normalisation
    raw_from_softmax: bool = False  # the raw score is the plain softmax itself
    ensemble: bool = False  # the raw scores combine several models (a model's seeds)

    @property
    def needs_model(self) -> bool:
        """Its raw scores need the model itself (input gradients, features, dropout passes)
        or several models, not only the softmax."""
        return not self.raw_from_softmax

    def raw(self, outputs: ModelOutputs) -> np.ndarray:
        if self.raw_from_softmax:
            return np.asarray(outputs.probs, dtype=float)
        if self.name not in outputs.raw:
            raise ValueError(
                f"abstention method {self.name!r} needs the model's raw {self.name} scores "
                "(lwise.alignment.visalign.scoring.model_outputs); only the "
                f"softmax{' and ' + ', '.join(sorted(outputs.raw)) if outputs.raw else ''} "
                "was given"
            )
        return np.asarray(outputs.raw[self.name], dtype=float)


ABSTENTION: dict[str, AbstentionMethod] = {}


def register_abstention(
    name: str, kind: str, *, bounded: bool, raw_from_softmax: bool = False, ensemble: bool = False
):
    """Decorator: register `collapse(raw, rule) -> (n,)` as the method `name`."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {KINDS}")

    def deco(fn: Callable[[np.ndarray, str], np.ndarray]):
        if name in ABSTENTION:
            raise ValueError(f"abstention method {name!r} is registered twice")
        ABSTENTION[name] = AbstentionMethod(name, kind, fn, bounded, raw_from_softmax, ensemble)
        return fn

    return deco


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown abstention rule {rule!r}; valid: {', '.join(RULES)}")


def _rows(raw: np.ndarray, ndim: int, name: str) -> np.ndarray:
    raw = np.asarray(raw, dtype=float)
    if raw.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d raw score array, got shape {raw.shape}")
    return raw


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@register_abstention("msp", "probability", bounded=True, raw_from_softmax=True)
def _msp(raw: np.ndarray, rule: str) -> np.ndarray:
    """aligned: 1 − max softmax; reference: the softmax's entropy (nats, scipy.stats.entropy)."""
    p = _rows(raw, 2, "msp")
    return 1.0 - p.max(axis=1) if rule == "aligned" else entropy(p, axis=1)


@register_abstention("odin", "probability", bounded=False)
def _odin(raw: np.ndarray, rule: str) -> np.ndarray:
    """raw: softmax(perturbed logits / T). aligned: 1 − its max (ODIN's score, Liang et al.
    2018); reference: its entropy (`odin_postprocessor.py` stores the full softmax)."""
    p = _rows(raw, 2, "odin")
    return 1.0 - p.max(axis=1) if rule == "aligned" else entropy(p, axis=1)


@register_abstention("mcdropout", "probability", bounded=True)
def _mcdropout(raw: np.ndarray, rule: str) -> np.ndarray:
    """raw: (n, passes, K) softmaxes. aligned: 1 − max of their mean; reference: the entropy
    of softmax(mean softmax), the double softmax of `mcdropout_postprocessor.py`."""
    passes = _rows(raw, 3, "mcdropout")
    mean = passes.mean(axis=1)
    return 1.0 - mean.max(axis=1) if rule == "aligned" else entropy(_softmax(mean), axis=1)


@register_abstention("deepensemble", "probability", bounded=True, ensemble=True)
def _deepensemble(raw: np.ndarray, rule: str) -> np.ndarray:
    """raw: (n, members, K) softmaxes. aligned: 1 − max of the mean softmax; reference: the
    mean over members of each member's entropy (`evaluate_visual_alignment.py`)."""
    members = _rows(raw, 3, "deepensemble")
    if rule == "aligned":
        return 1.0 - members.mean(axis=1).max(axis=1)
    return entropy(members, axis=2).mean(axis=1)


def _distance(name: str):
    def collapse(raw: np.ndarray, rule: str) -> np.ndarray:
        score = _rows(raw, 1, name)  # higher: in-distribution
        return -score if rule == "aligned" else score

    collapse.__doc__ = f"{name}: aligned: minus the score (higher: far); reference: the score."
    return collapse


for _name in ("mds", "knn", "tapudd"):
    register_abstention(_name, "distance", bounded=False)(_distance(_name))


def normalise(s: np.ndarray, *, exact: bool = False) -> np.ndarray:
    """Min-max over the scored images: (s − min) / (max − min).

    `exact` reproduces the reference's arithmetic (`evaluate_visual_alignment.py`): min and
    max taken from a float32 copy of the scores and applied to the float64 scores, so values
    can land just outside [0, 1]. All-equal scores give 0.
    """
    s = np.asarray(s, dtype=float)
    if exact:
        s32 = s.astype(np.float32)
        lo = float(s32.min())
        hi = float((s32 - np.float32(lo)).max())
    else:
        lo, hi = float(s.min()), float(s.max() - s.min())
    return (s - lo) / hi if hi > 0 else np.zeros_like(s)


def from_collapsed(method: str, s: np.ndarray, rule: str) -> np.ndarray:
    """The abstention probability from the collapsed scores of `method` under `rule`."""
    _check_rule(rule)
    m = ABSTENTION[method]
    s = np.asarray(s, dtype=float)
    if rule == "aligned":
        if m.bounded:
            return np.clip(s, 0.0, 1.0)
        return np.clip(normalise(s), 0.0, 1.0)
    t = normalise(s, exact=rule == "reference_exact")
    if rule == "reference":
        return np.clip(1.0 - t, 0.0, 1.0)
    # `if score > 1: a = 1 else a = 1 - score`, with nothing clipping a below 0 scores.
    return np.where(t > 1, 1.0, 1.0 - t)


def collapse(method: str, outputs: ModelOutputs, rule: str = "aligned") -> np.ndarray:
    """One number per image from `method`'s raw scores (see `AbstentionMethod`)."""
    _check_rule(rule)
    if method not in ABSTENTION:
        raise ValueError(f"unknown abstention method {method!r}; known: {sorted(ABSTENTION)}")
    m = ABSTENTION[method]
    s = m.collapse(m.raw(outputs), rule)
    if s.shape != (len(outputs.probs),):
        raise ValueError(
            f"abstention method {method!r}: expected {len(outputs.probs)} values, got {s.shape}"
        )
    return s


def abstention_probability(method: str, outputs: ModelOutputs, rule: str = "aligned") -> np.ndarray:
    """The abstention probability per image under the registered `method` and `rule`; in [0, 1]
    except under `reference_exact`, where the reference's a > 1 is kept."""
    return from_collapsed(method, collapse(method, outputs, rule), rule)


def raw_output(probs: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The reference's (K+1)-d output: [p · (1 − a), a] with negative entries set to 0, and a
    kept as it is (`evaluate_visual_alignment.py`); rows need not sum to 1 when a > 1. For a
    in [0, 1] it equals `metrics.visalign_output`."""
    a = np.asarray(a, dtype=float)
    if ((a >= 0) & (a <= 1)).all():
        return metrics.visalign_output(probs, a)
    q = np.column_stack([np.asarray(probs, dtype=float) * (1 - a)[:, None], a])
    return np.clip(q, 0.0, None)
