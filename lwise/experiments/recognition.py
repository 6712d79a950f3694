"""The recognition design (L-WISE's ImageNet animals experiment): screening, warm-up, and a
main block with calibration trials and a short presentation time, per participant."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lwise.core.config import Section
from lwise.core.keys import NATURAL, parse_set
from lwise.experiments.curriculum import (
    CurriculumError,
    _check_images,
    _classes,
    _draw,
    _finish,
    _rows,
    participant_rng,
)

CALIBRATION_SHAPES = ("circle", "triangle")


@dataclass(frozen=True)
class RecognitionDesign(Section):
    """Settings of the recognition design, the `experiments.recognition` config section
    (defaults: the reference ImageNet animals config, in schemas/config.schema.yaml)."""

    SECTION = "experiments.recognition"

    screening_per_class: int
    screening_duration_ms: int
    warmup_per_class: int
    main_per_class: int
    calibration_trials: int
    duration_ms: int
    post_stimulus_ms: int
    screening_split: str
    main_split: str


def recognition_trials(
    images: pd.DataFrame,
    versions: Mapping[str, Mapping[str, str]],
    design: RecognitionDesign,
    participant: str,
    *,
    sets: Sequence[str],
    calibration: Mapping[str, str],
    seed: int,
) -> pd.DataFrame:
    """One participant's trial list in the recognition design (condition `recognition`).

    `sets`: the stimulus sets the main block shows, in equal shares per class. `calibration`:
    shape name -> what the page loads for it (`CALIBRATION_SHAPES`). Other arguments as in
    `learning_trials`.
    """
    _check_images(images, need_difficulty=False)
    if not sets:
        raise CurriculumError("recognition design: no stimulus sets to show")
    rng = participant_rng(seed, participant)
    images = images.rename(columns={"class": "cls"})
    classes = _classes(images)
    used: set[str] = set()
    blocks: list[list[dict]] = []
    plan = (
        ("screening", design.screening_per_class, design.screening_split,
         design.screening_duration_ms, True),
        ("warmup", design.warmup_per_class, design.screening_split, design.duration_ms, True),
        ("main", design.main_per_class, design.main_split, design.duration_ms, False),
    )  # fmt: skip
    for b, (phase, per_class, split, duration, feedback) in enumerate(plan, start=1):
        if per_class == 0:
            continue
        rows: list[dict] = []
        for cls in classes:
            pool = images[
                (images["cls"] == cls) & (images["split"] == split) & ~images["key"].isin(used)
            ].sort_values("key")
            picked = _draw(rng, pool, per_class, f"class {cls!r}, split {split!r}, {phase} block")
            used.update(picked["key"])
            shown = (
                [sets[i] for i in rng.permutation(np.resize(np.arange(len(sets)), per_class))]
                if phase == "main"
                else [NATURAL] * per_class
            )
            for (_, one), set_name in zip(picked.iterrows(), shown, strict=True):
                eps = parse_set(set_name)[1]
                rows += _rows(
                    one.to_frame().T, block=b, phase=phase, feedback=feedback, set_name=set_name,
                    eps=eps, target_eps=eps, max_difficulty=np.nan, duration_ms=duration,
                    versions=versions,
                )  # fmt: skip
        if phase == "main":
            for i in range(design.calibration_trials):
                shape = CALIBRATION_SHAPES[i % len(CALIBRATION_SHAPES)]
                rows.append(
                    {
                        "block": b, "source_block": b, "phase": "calibration", "feedback": 0,
                        "catch": 0, "image": f"calibration/{shape}", "class": shape,
                        "set": "calibration", "eps": 0.0, "target_eps": 0.0,
                        "stimulus": calibration[shape], "difficulty": np.nan,
                        "difficulty_quantile": np.nan, "max_difficulty": np.nan,
                        "duration_ms": design.duration_ms,
                        "choices": "|".join(CALIBRATION_SHAPES), "key": f"calibration/{shape}",
                    }
                )  # fmt: skip
        blocks.append(rows)
    ordered = [r for rows in blocks for r in (rows[i] for i in rng.permutation(len(rows)))]
    return _finish(ordered, participant, "recognition")
