"""Stage 8 (experiments): per-participant trial lists for the two study designs.

Learning design (L-WISE learning experiments; MorganBDT/L-WISE,
`psych_code/experiment_files/{idaea4,ham4,mhist}_learn_10/config.yaml`, and the ICLR 2025
paper): training blocks with feedback, then test blocks of natural held-out images without.
Per training block b the curriculum sets
- the largest difficulty fraction an image may come from (`max_difficulty`: 0.10, 0.25, 0.40,
  0.55, 0.70, 0.85 in blocks 1-6, then all images; reference `max_difficulty_selection`):
  within each class, images are ranked by `difficulty` (higher = harder) and only the easiest
  `floor(fraction * n)` may be drawn;
- the enhancement epsilon (`epsilon_taper`: 8, 4, 2, 1, 0.5, 0.25 in blocks 1-6, then natural).

Differences from the reference trial generator (`generate_trials_helpers.py`), on purpose:
- the held-out test sample is seeded per participant (the reference seeds it from the clock, so
  participants generated in the same second share their test images);
- training images are drawn without replacement across blocks unless `repeats` is set (the
  reference drew curriculum blocks with replacement: images repeated several times a session,
  sometimes twice in one block); within a block an image never repeats;
- shuffled conditions record both the block a trial was built for (`source_block`) and the
  block it is shown in (`block`); the reference kept only the former;
- the shuffle keeps every block class-balanced (each class's trials are permuted across blocks).
The catch trial (one natural training image shown again in the last test block) is kept as an
option.

Recognition design (the reference's ImageNet animals experiment,
`psych_code/experiment_files/imagenet_animals_main_10/config.yaml`): a screening block (2 per
class, 200 ms), a warm-up block (2 per class), then a main block (16 per class, every stimulus
set in equal shares, 17 ms presentation, 200 ms blank after it) with calibration trials (a
circle or a triangle, answered with those two buttons) mixed in.

Epsilons that were not made: the taper asks for an epsilon, the workflow made a list of them.
Each block shows the largest available epsilon not above the target (never a stronger
perturbation than the design asks for); when none is that small, natural images.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lwise.core.config import Section
from lwise.core.keys import NATURAL, format_eps
from lwise.experiments.conditions import Condition, get_condition

__all__ = [
    "CurriculumError",
    "LearningDesign",
    "TRIAL_COLUMNS",
    "participant_rng",
    "map_taper",
    "learning_trials",
]

TRIAL_COLUMNS = (
    "participant",
    "condition",
    "trial",
    "block",
    "source_block",
    "phase",
    "feedback",
    "catch",
    "image",
    "class",
    "set",
    "eps",
    "target_eps",
    "stimulus",
    "difficulty",
    "difficulty_quantile",
    "max_difficulty",
    "duration_ms",
    "choices",
)
_EPSILON = 1e-9


class CurriculumError(ValueError):
    """The images cannot fill the design; the message names the class, split and block."""


@dataclass(frozen=True)
class LearningDesign(Section):
    """Settings of the learning design, the `experiments.learning` config section (defaults:
    the reference ham4/idaea4 configs, in schemas/config.schema.yaml):
    `LearningDesign.from_config({"training_blocks": 4})`."""

    SECTION = "experiments.learning"

    training_blocks: int
    trials_per_class: int
    max_difficulty: tuple[float, ...]  # per training block; later blocks 1.0
    epsilon_taper: tuple[float, ...]  # per training block; later blocks natural
    test_blocks: int
    test_per_class: int
    train_split: str
    test_split: str
    repeats: bool
    catch_trial: bool
    stimulus_duration_ms: int  # 0: the image stays until the response

    def __post_init__(self) -> None:  # YAML gives lists; tuples keep the settings hashable
        for name in ("max_difficulty", "epsilon_taper"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    def block_fraction(self, block: int, condition: Condition) -> float:
        """The largest difficulty fraction allowed in training block `block` (1-based)."""
        if condition.select and block <= len(self.max_difficulty):
            return self.max_difficulty[block - 1]
        return 1.0

    def block_target_eps(self, block: int, condition: Condition) -> float:
        """The epsilon the taper asks for in training block `block`; 0 means natural."""
        if condition.enhance and block <= len(self.epsilon_taper):
            return self.epsilon_taper[block - 1]
        return 0.0


def participant_rng(seed: int, participant: str) -> np.random.Generator:
    """The random generator of one participant: from the study seed and the participant's id,
    so a participant's trials do not depend on who else is in the study or on the clock."""
    digest = hashlib.sha256(str(participant).encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def map_taper(taper: Sequence[float], available: Sequence[float]) -> list[float]:
    """The epsilon shown for each target: the largest available one not above the target,
    0 (natural) when none is (see the module docstring)."""
    avail = sorted(float(e) for e in available if float(e) > 0)
    out = []
    for target in taper:
        fits = [e for e in avail if e <= float(target) + _EPSILON]
        out.append(fits[-1] if fits else 0.0)
    return out


# --- shared pieces -------------------------------------------------------------------------------


def _check_images(images: pd.DataFrame, need_difficulty: bool) -> None:
    missing = [c for c in ("key", "image", "class", "split") if c not in images.columns]
    if need_difficulty and "difficulty" not in images.columns:
        missing.append("difficulty")
    if missing:
        raise CurriculumError(f"images table lacks column(s) {missing}")


def _draw(rng, pool: pd.DataFrame, n: int, what: str) -> pd.DataFrame:
    if len(pool) < n:
        raise CurriculumError(f"{what}: needs {n} image(s), only {len(pool)} available")
    return pool.iloc[np.sort(rng.choice(len(pool), size=n, replace=False))]


def _stimulus(versions: Mapping[str, Mapping[str, str]], set_name: str, key: str) -> str:
    try:
        table = versions[set_name]
    except KeyError:
        raise CurriculumError(
            f"stimulus set {set_name!r} is not among the uploaded sets {sorted(versions)}"
        ) from None
    try:
        return table[key]
    except KeyError:
        raise CurriculumError(
            f"stimulus set {set_name!r} has no version of image {key!r} "
            "(keys are matched without their extension)"
        ) from None


def _rows(
    picked: pd.DataFrame, *, block: int, phase: str, feedback: bool, set_name: str, eps: float,
    target_eps: float, max_difficulty: float, duration_ms: int, versions, catch: bool = False,
) -> list[dict]:  # fmt: skip
    out = []
    for row in picked.itertuples(index=False):
        out.append(
            {
                "block": block,
                "source_block": block,
                "phase": phase,
                "feedback": int(feedback),
                "catch": int(catch),
                "image": row.image,
                "class": row.cls,
                "set": set_name,
                "eps": eps,
                "target_eps": target_eps,
                "stimulus": _stimulus(versions, set_name, row.key),
                "difficulty": getattr(row, "difficulty", np.nan),
                "difficulty_quantile": getattr(row, "difficulty_quantile", np.nan),
                "max_difficulty": max_difficulty,
                "duration_ms": duration_ms,
                "choices": "",
                "key": row.key,
            }
        )
    return out


def _set_for(eps: float, objective: str | None) -> str:
    if eps <= 0:
        return NATURAL
    if objective is None:
        raise CurriculumError("an enhanced block needs an objective (experiments.objective)")
    return f"{objective}_eps{format_eps(eps)}"


def _finish(trials: list[dict], participant: str, condition: str) -> pd.DataFrame:
    df = pd.DataFrame(trials)
    df.insert(0, "participant", participant)
    df.insert(1, "condition", condition)
    df.insert(2, "trial", np.arange(1, len(df) + 1))
    return df[[*TRIAL_COLUMNS, "key"]]


def _classes(images: pd.DataFrame) -> list[str]:
    return sorted(images["cls"].unique())


# --- learning design -----------------------------------------------------------------------------


def learning_trials(
    images: pd.DataFrame,
    versions: Mapping[str, Mapping[str, str]],
    design: LearningDesign,
    condition: str,
    participant: str,
    *,
    objective: str | None,
    available_eps: Sequence[float],
    seed: int,
) -> pd.DataFrame:
    """One participant's trial list in the learning design.

    `images`: one row per image with `key` (the image's key without extension, shared by every
    version), `image` (the key as trials name it), `class`, `split` and `difficulty` (higher =
    harder). `versions`: set name -> key -> what the page loads (URL or relative path).
    `available_eps`: the epsilons made with `objective`. Returns one row per trial, in the
    order shown, with the columns of `TRIAL_COLUMNS` (plus `key`).
    """
    cond = get_condition(condition)
    _check_images(images, need_difficulty=True)
    rng = participant_rng(seed, participant)
    images = images.rename(columns={"class": "cls"})
    classes = _classes(images)
    shown_eps = dict(
        zip(design.epsilon_taper, map_taper(design.epsilon_taper, available_eps), strict=True)
    )

    # 1. Test images first, per class, so training never draws them.
    test_blocks: list[list[dict]] = [[] for _ in range(design.test_blocks)]
    held_out: set[str] = set()
    for cls in classes:
        pool = images[(images["cls"] == cls) & (images["split"] == design.test_split)]
        pool = pool.sort_values("key")
        n = design.test_blocks * design.test_per_class
        picked = _draw(rng, pool, n, f"class {cls!r}, split {design.test_split!r}, test blocks")
        picked = picked.iloc[rng.permutation(len(picked))]
        held_out.update(picked["key"])
        for t in range(design.test_blocks):
            chunk = picked.iloc[t * design.test_per_class : (t + 1) * design.test_per_class]
            test_blocks[t] += _rows(
                chunk, block=design.training_blocks + t + 1, phase="test", feedback=False,
                set_name=NATURAL, eps=0.0, target_eps=0.0, max_difficulty=np.nan,
                duration_ms=design.stimulus_duration_ms, versions=versions,
            )  # fmt: skip

    # 2. Training pools: per class, ranked easiest first.
    pools = {}
    for cls in classes:
        pool = images[
            (images["cls"] == cls)
            & (images["split"] == design.train_split)
            & ~images["key"].isin(held_out)
        ]
        diff = pd.to_numeric(pool["difficulty"], errors="coerce")
        if diff.isna().any():
            bad = pool.loc[diff.isna(), "image"].tolist()[:3]
            raise CurriculumError(f"class {cls!r}: images without a difficulty score, e.g. {bad}")
        pool = pool.assign(difficulty=diff).sort_values(["difficulty", "key"], kind="stable")
        pool = pool.assign(difficulty_quantile=np.arange(1, len(pool) + 1) / max(len(pool), 1))
        pools[cls] = pool

    # 3. Training blocks.
    train: list[list[dict]] = []
    used: dict[str, set[str]] = {cls: set() for cls in classes}
    for b in range(1, design.training_blocks + 1):
        fraction = design.block_fraction(b, cond)
        target = design.block_target_eps(b, cond)
        eps = shown_eps.get(target, 0.0) if target > 0 else 0.0
        set_name = _set_for(eps, objective)
        rows: list[dict] = []
        for cls in classes:
            pool = pools[cls]
            allowed = pool.iloc[: math.floor(fraction * len(pool) + _EPSILON)]
            if not design.repeats:
                allowed = allowed[~allowed["key"].isin(used[cls])]
            what = (
                f"class {cls!r}, split {design.train_split!r}, training block {b} "
                f"(easiest {fraction:g} of {len(pool)} images"
                + (", without repeats across blocks" if not design.repeats else "")
                + ")"
            )
            picked = _draw(rng, allowed, design.trials_per_class, what)
            used[cls].update(picked["key"])
            rows += _rows(
                picked, block=b, phase="train", feedback=True, set_name=set_name, eps=eps,
                target_eps=target, max_difficulty=fraction,
                duration_ms=design.stimulus_duration_ms, versions=versions,
            )  # fmt: skip
        train.append(rows)

    # 4. Shuffled conditions: each class's trials permuted across the training blocks.
    if cond.shuffle:
        flat = [r for rows in train for r in rows]
        moved: list[list[dict]] = [[] for _ in train]
        for cls in classes:
            mine = [r for r in flat if r["class"] == cls]
            slots = [r["block"] for r in mine]
            for r, i in zip(mine, rng.permutation(len(mine)), strict=True):
                moved[slots[i] - 1].append({**r, "block": slots[i]})
        train = moved

    # 5. Catch trial: a training image shown again, natural, in the last test block.
    if design.catch_trial and test_blocks:
        flat = [r for rows in train for r in rows]
        natural = [r for r in flat if r["set"] == NATURAL] or flat
        src = natural[rng.integers(len(natural))]
        catch = {
            **src, "block": design.training_blocks + design.test_blocks, "phase": "test",
            "feedback": 0, "catch": 1, "set": NATURAL, "eps": 0.0, "target_eps": 0.0,
            "stimulus": _stimulus(versions, NATURAL, src["key"]), "max_difficulty": np.nan,
        }  # fmt: skip
        test_blocks[-1].append(catch)

    blocks = train + test_blocks
    ordered = [r for rows in blocks for r in (rows[i] for i in rng.permutation(len(rows)))]
    return _finish(ordered, participant, condition)
