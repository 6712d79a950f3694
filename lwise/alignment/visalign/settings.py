"""The `visalign` section of the config as typed settings (defaults and checks in
schemas/config.schema.yaml, see `lwise.core.config`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lwise.alignment.abstention import ABSTENTION, RULES
from lwise.core.config import ConfigError, Section, defaults, validate

__all__ = ["VisAlignConfig", "check_training"]


@dataclass(frozen=True)
class VisAlignConfig(Section):
    """VisAlign benchmark settings (rules/visalign.smk); every field comes from the schema."""

    SECTION = "visalign"

    datasets: list[str] | None  # null: every dataset
    rule: str  # aligned | reference | reference_exact (lwise.alignment.abstention)
    methods: tuple[str, ...]  # names in lwise.alignment.abstention.ABSTENTION
    costs: tuple[float, ...]  # reliability-score costs c
    models: dict[str, Any]  # name -> {guide: true} or {arch, seeds, train}
    odin: dict[str, Any]
    mds: dict[str, Any]
    knn: dict[str, Any]
    tapudd: dict[str, Any]
    mcdropout: dict[str, Any]
    batch_size: int
    synthetic: dict[str, Any]

    def __post_init__(self) -> None:
        for name in ("odin", "mds", "knn", "tapudd", "mcdropout", "synthetic"):
            # nested sections: the schema's defaults under the given keys
            object.__setattr__(self, name, {**defaults(f"visalign.{name}"), **getattr(self, name)})
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "costs", tuple(float(c) for c in self.costs))
        unknown = [m for m in self.methods if m not in ABSTENTION]
        if unknown:
            raise ConfigError(
                f"config visalign.methods: unknown {unknown}; known {sorted(ABSTENTION)}"
            )
        if self.rule not in RULES:
            raise ConfigError(f"config visalign.rule {self.rule!r}: expected one of {RULES}")

    def method_settings(self) -> dict[str, Any]:
        """What `lwise.alignment.visalign.scoring.score_model` reads."""
        names = ("odin", "mds", "knn", "tapudd", "mcdropout", "batch_size")
        return {n: getattr(self, n) for n in names}


def check_training(section: Mapping[str, Any]) -> None:
    """Check `visalign.train` and every model's `train` against the guide.train schema (keys
    and values), naming the entry; rules/visalign.smk calls it when the workflow is parsed, so
    a typo in a preset stops the run before any job."""
    entries = {"visalign.train": section.get("train") or {}}
    for name, model in (section.get("models") or {}).items():
        entries[f"visalign.models.{name}.train"] = model.get("train") or {}
    for where, train in entries.items():
        try:
            validate(train, "guide.train")
        except ConfigError as err:
            raise ConfigError(f"config {where}: {str(err).removeprefix('config ')}") from None
