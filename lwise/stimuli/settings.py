"""Stimulus settings that are not tensors: how every set's files are encoded, the PGD steps
of each epsilon, checked against the configured epsilons, and the provenance record written
inside every enhanced set's folder.

Standard library and `lwise.core.config` only: `rules/common.smk` imports it to resolve one
job's steps (so changing the steps of one epsilon reruns only that epsilon's jobs), the natural
set's settings, and to check the config while planning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lwise.core.config import Section

__all__ = [
    "PNG_STRATEGIES", "PROVENANCE", "Encoding", "check_steps", "provenance", "steps_for",
    "write_provenance",
]  # fmt: skip

PROVENANCE = "provenance.json"

# zlib strategies for PNG files. Z_RLE (matches of distance one only, which the zlib manual
# recommends for PNG image data) encoded 224-px photo crops 3.5x faster than the default
# strategy, natural or perturbed at eps 2, and 1.5x at eps 20, files within 2 % of the
# default's size. On an H200 host (16 cores), eps-2 jobs of 8,192 images ran 951-1,019
# images/s inside the call against 676-686, files 67.5 KiB against 75.2. "default" is what
# L-WISE writes (torchvision `save_image`: PIL's defaults).
PNG_STRATEGIES = {"rle": zlib.Z_RLE, "default": zlib.Z_DEFAULT_STRATEGY}


@dataclasses.dataclass(frozen=True)
class Encoding(Section):
    """How every stimulus set's files are encoded: the `format`, `jpeg_quality` and
    `png_strategy` keys of the `enhance` section (defaults in its schema)."""

    SECTION = "enhance"

    format: str
    jpeg_quality: int
    png_strategy: str

    def save_options(self) -> dict[str, int]:
        """PIL `Image.save` keywords for these files (the format comes from the suffix)."""
        if self.format == "jpeg":
            return {"quality": self.jpeg_quality}
        if self.format == "png":
            return {"compress_type": PNG_STRATEGIES[self.png_strategy]}
        return {}


def _rule(eps: float) -> int:
    """max(1, round(2 eps)): the L-WISE batch scripts' `printf "%.0f"` of 2·eps, 0 made 1
    (L-WISE `scripts/batch_enhance/*.sh`; printf and Python both round halves to even). The same
    rule as `lwise.guide.attacks.steps_for_eps`, here without torch."""
    return max(1, round(2 * eps))


def _epsilon(key: Any, where: str) -> float:
    try:
        value = float(key)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key!r} is not an epsilon") from None
    if not value > 0:
        raise ValueError(f"{where}: epsilon {key!r} must be > 0")
    return value


def _mapping(steps: Mapping, where: str) -> dict[float, int]:
    out = {}
    for key, value in steps.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}.{key}: steps must be an integer >= 1, got {value!r}")
        eps = _epsilon(key, f"{where}.{key}")
        if eps in out:
            raise ValueError(f"{where}: epsilon {eps:g} is given twice")
        out[eps] = value
    return out


def steps_for(steps: int | Mapping | None, eps: float, where: str = "enhance.steps") -> int:
    """The PGD steps at radius `eps` under the `enhance.steps` setting: null is
    max(1, round(2 eps)); an integer is used for every epsilon; a mapping epsilon -> steps gives
    its epsilons' steps (keys may be numbers or strings: 20, 20.0 and "20" are one epsilon), the
    others keep the null rule.

    >>> steps_for(None, 20), steps_for(30, 20), steps_for({20: 80}, 20), steps_for({20: 80}, 4)
    (40, 30, 80, 8)
    """
    if steps is None:
        return _rule(eps)
    if isinstance(steps, Mapping):
        return _mapping(steps, where).get(float(eps), _rule(eps))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{where}: expected null, an integer >= 1 or a mapping, got {steps!r}")
    return steps


def check_steps(
    steps: int | Mapping | None, epsilons: Iterable[float], where: str = "enhance.steps"
) -> None:
    """Raise ValueError when a steps mapping names an epsilon that `epsilons` does not list
    (a typo such as 2.0 for 20 would otherwise be ignored silently)."""
    if not isinstance(steps, Mapping):
        steps_for(steps, 1.0, where)  # type check only
        return
    configured = {float(e) for e in epsilons}
    unknown = [f"{eps:g}" for eps in _mapping(steps, where) if eps not in configured]
    if unknown:
        listed = ", ".join(f"{e:g}" for e in sorted(configured))
        raise ValueError(
            f"{where} names epsilon(s) {unknown} that enhance.epsilons [{listed}] does not list"
        )


def provenance(settings: Any, views: Mapping[str, Any] | None, **facts: Any) -> dict[str, Any]:
    """The record of one enhanced set: every enhancement setting (`settings`, a dataclass such
    as `EnhanceConfig`, its `views` replaced by the resolved `views`: null when off, else every
    key with its default filled in), the facts of the job (epsilon, objective, steps, guide
    model, ...) and the lwise version."""
    from lwise import __version__

    record = {"settings": {**dataclasses.asdict(settings), "views": views}, **facts}
    return record | {"lwise": __version__}


def write_provenance(folder: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write `record` as `<folder>/provenance.json` (sorted keys, UTF-8). The enhancement stage
    writes it into its set's temporary folder, so it appears with the set, atomically."""
    path = Path(folder) / PROVENANCE
    path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path
