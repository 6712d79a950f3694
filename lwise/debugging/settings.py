"""The `debugging` config section as typed settings (defaults and checks in the schema)."""

from __future__ import annotations

from dataclasses import dataclass

from lwise.core.config import Section, defaults

__all__ = ["DebuggingConfig"]


@dataclass(frozen=True)
class DebuggingConfig(Section):
    """The `debugging` config section; meanings and defaults in its schema
    (`DebuggingConfig.from_config({"budget": 5})` fills in the rest)."""

    SECTION = "debugging"

    datasets: list | None
    pool: dict
    generated: dict
    methods: list
    budget: int
    seeds: list
    band: list
    difficulty_scope: str
    similarity_fallback: str
    embedding: dict
    slice_split: str
    eval_split: str
    slice_columns: list
    failure_slices: int
    min_slice_errors: int
    grid_images: int
    batch_size: int
    retrain_from: str
    replay_fraction: float
    finetune: dict
    base_train: dict
    keep_models: bool

    def __post_init__(self):
        low, high = self.band
        if low > high:
            raise ValueError(f"config debugging.band {self.band}: low must not exceed high")
        for name in ("pool", "embedding"):  # nested sections get their schema defaults too
            filled = {**defaults(f"{self.SECTION}.{name}"), **getattr(self, name)}
            object.__setattr__(self, name, filled)
