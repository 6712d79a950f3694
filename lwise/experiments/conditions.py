"""Stage 8 (experiments): the learning conditions and how participants are assigned to them.

The conditions of the L-WISE learning experiments (Talbot et al., "L-WISE: Boosting Human Visual
Category Learning Through Model-Based Image Selection and Enhancement", ICLR 2025; repository
MorganBDT/L-WISE, `psych_code/experiment_files/{idaea4,ham4}_learn_10/config.yaml`):

- `control`: natural training images drawn at random;
- `select`: natural images chosen by model-estimated difficulty, easiest first (a curriculum);
- `enhance`: random images shown enhanced, with the enhancement tapering to natural;
- `lwise`: both selection and enhancement;
- `select_shuffle`, `enhance_shuffle`: the same trials as `select`/`enhance`, their training
  blocks mixed so the curriculum order is lost (the reference's `combine_and_shuffle`).

The reference configs list 7 condition slots (natural, natural, select, select-shuffle,
enhance, enhance-shuffle, L-WISE), `control` twice, so Control has probability 2/7: the
schema's default of `experiments.conditions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Condition",
    "CONDITIONS",
    "CONTROL",
    "get_condition",
    "assign_conditions",
]


@dataclass(frozen=True)
class Condition:
    """What a condition changes in the training blocks."""

    name: str
    select: bool  # sample from the easiest fraction of each class (difficulty curriculum)
    enhance: bool  # show the enhanced version given by the epsilon taper
    shuffle: bool  # mix the training blocks after building them
    label: str

    def describe(self) -> str:
        parts = [p for p, on in (("selection", self.select), ("enhancement", self.enhance)) if on]
        text = " + ".join(parts) if parts else "random natural images"
        return text + (", blocks shuffled" if self.shuffle else "")


CONTROL = "control"
CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition(CONTROL, select=False, enhance=False, shuffle=False, label="Control"),
        Condition("select", select=True, enhance=False, shuffle=False, label="Select"),
        Condition(
            "select_shuffle", select=True, enhance=False, shuffle=True, label="Select (shuffled)"
        ),
        Condition("enhance", select=False, enhance=True, shuffle=False, label="Enhance"),
        Condition(
            "enhance_shuffle", select=False, enhance=True, shuffle=True, label="Enhance (shuffled)"
        ),
        Condition("lwise", select=True, enhance=True, shuffle=False, label="L-WISE"),
    )
}


def get_condition(name: str) -> Condition:
    try:
        return CONDITIONS[name]
    except KeyError:
        raise ValueError(f"unknown condition {name!r}; valid: {', '.join(CONDITIONS)}") from None


def _check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    if not weights:
        raise ValueError("conditions: give at least one condition with a positive weight")
    out = {}
    for name, w in weights.items():
        get_condition(name)
        w = float(w)
        if not (w >= 0 and np.isfinite(w)):
            raise ValueError(f"conditions.{name}: weight must be a finite number >= 0, got {w}")
        if w > 0:
            out[name] = w
    if not out:
        raise ValueError("conditions: every weight is 0; at least one must be positive")
    return out


def assign_conditions(
    participants: Sequence[str],
    weights: Mapping[str, float],
    *,
    method: str,
    seed: int,
) -> list[str]:
    """The condition of each participant, in order.

    `weights` are relative (normalised to probabilities). `method`:
    - "blocked": whole-number weights are slots; each successive group of sum(weights)
      participants gets every slot once, in a random order (permuted-block randomisation), so
      the proportions hold exactly after every complete group;
    - "random": each participant's condition is drawn independently with those probabilities.
    Seeded by `seed` and the participant's position (group), never by the clock.
    """
    w = _check_weights(weights)
    names = list(w)
    if method == "blocked":
        if any(v != round(v) for v in w.values()):
            raise ValueError(
                f"conditions: method 'blocked' needs whole-number weights (slots), got {w}; "
                "use method 'random' for fractional probabilities"
            )
        slots = [n for n in names for _ in range(int(w[n]))]
        out: list[str] = []
        group = 0
        while len(out) < len(participants):
            rng = np.random.default_rng([seed, group, 1])
            out.extend(slots[i] for i in rng.permutation(len(slots)))
            group += 1
        return out[: len(participants)]
    if method == "random":
        p = np.array([w[n] for n in names]) / sum(w.values())
        return [
            names[np.random.default_rng([seed, i, 2]).choice(len(names), p=p)]
            for i in range(len(participants))
        ]
    raise ValueError(f"conditions: unknown assignment method {method!r}; valid: blocked, random")
