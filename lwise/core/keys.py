"""Names every stage shares: enhancement objectives, stimulus-set names and image keys.

The workflow's wildcard constraints and its list of stimulus sets come from here
(`rules/common.smk` imports this module), so a set name is spelled in one place. Imports only
the standard library, so parsing the Snakefile stays fast.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

__all__ = [
    "NATURAL",
    "OBJECTIVES",
    "EPS_PATTERN",
    "OBJECTIVE_PATTERN",
    "SET_PATTERN",
    "format_eps",
    "set_name",
    "set_names",
    "parse_set",
    "set_epsilon",
    "image_key",
    "image_keys",
    "object_key",
]

NATURAL = "natural"
# A published folder's own list of the files it may publish: path (relative, '/'-separated),
# size (bytes), md5 (hex); written by lwise.experiments.page, read by lwise.publish.site.
FILE_LISTING = "files.csv"
# The enhancement objectives (L-WISE's `enhance.py`: logit, cross-entropy; logit_diverge from
# its "diverge from" mode); lwise.guide.attacks implements them.
OBJECTIVES = ("logit", "logit_diverge", "cross_entropy")

# Positional decimal, no exponent: "8", "0.25", "0.0000001".
EPS_PATTERN = r"[0-9]+(\.[0-9]+)?"
OBJECTIVE_PATTERN = "|".join(sorted(OBJECTIVES, key=len, reverse=True))
SET_PATTERN = rf"{NATURAL}|({OBJECTIVE_PATTERN})_eps{EPS_PATTERN}"
_SET = re.compile(rf"^(?P<objective>{OBJECTIVE_PATTERN})_eps(?P<eps>{EPS_PATTERN})$")
# Older or hand-made names such as "eps2" or "clahe_eps.5" still give an epsilon.
_ANY_EPS = re.compile(r"(?:^|_)eps(\d+(?:\.\d*)?|\.\d+)$")


def format_eps(eps: float) -> str:
    """The epsilon as it appears in paths: the shortest decimal that reads back as the same
    float (8.0 -> "8", 0.25 -> "0.25", 1e-7 -> "0.0000001"), never an exponent."""
    eps = float(eps)
    if not (eps >= 0 and eps != float("inf")):
        raise ValueError(f"epsilon must be a finite number >= 0, got {eps!r}")
    text = repr(eps)
    if "e" in text or "E" in text:
        mantissa, exponent = text.lower().split("e")
        digits = mantissa.replace(".", "")
        point = mantissa.index(".") if "." in mantissa else len(mantissa)
        shift = point + int(exponent)
        if shift <= 0:
            text = "0." + "0" * -shift + digits
        else:
            text = (digits + "0" * max(0, shift - len(digits)))[:shift] + "." + digits[shift:]
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def set_name(objective: str, eps: float) -> str:
    """The folder name of one enhanced set: `logit_eps2`, `cross_entropy_eps0.5`."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    return f"{objective}_eps{format_eps(eps)}"


def set_names(objectives: Iterable[str], epsilons: Iterable[float]) -> list[str]:
    """`natural` then one set per objective and epsilon, in config order.

    Raises ValueError when an epsilon is listed twice (its jobs would share a folder); distinct
    floats always give distinct names, since `format_eps` round-trips."""
    epsilons = [float(e) for e in epsilons]
    repeated = sorted({format_eps(e) for e in epsilons if epsilons.count(e) > 1})
    if repeated:
        raise ValueError(f"epsilon(s) {', '.join(repeated)} listed more than once")
    return [NATURAL] + [set_name(o, e) for o in objectives for e in epsilons]


def parse_set(name: str) -> tuple[str | None, float]:
    """(objective, epsilon) of a set name; `natural` is (None, 0.0)."""
    if name == NATURAL:
        return None, 0.0
    match = _SET.match(name)
    if match is None:
        raise ValueError(
            f"stimulus set {name!r}: expected '{NATURAL}' or '<objective>_eps<number>' "
            f"with an objective among {', '.join(OBJECTIVES)}"
        )
    return match["objective"], float(match["eps"])


def set_epsilon(name: str) -> float:
    """The enhancement epsilon encoded in a stimulus-set name: `natural` is 0, `logit_eps2` is 2."""
    if name == NATURAL:
        return 0.0
    match = _ANY_EPS.search(name)
    if match is None:
        raise ValueError(
            f"stimulus set {name!r}: cannot read an epsilon from its name "
            f"(expected '{NATURAL}' or '<objective>_eps<number>', e.g. 'logit_eps2')"
        )
    return float(match.group(1))


def image_key(
    dirmap_csv: str | os.PathLike, im_path: str, key_root: str | os.PathLike | None = None
) -> str:
    """The key of an image listed as `im_path` in `dirmap_csv`: its path relative to `key_root`
    ('/'-separated), or `im_path` itself when `key_root` is None (a stimulus set's dirmap).

    Keys name the same image across the ImageFolder, every stimulus set, the uploads and the
    human trials."""
    return image_keys([im_path], dirmap_csv, key_root)[0]


def image_keys(
    im_paths: Iterable[str],
    dirmap_csv: str | os.PathLike,
    key_root: str | os.PathLike | None = None,
    *,
    suffix: str | None = None,
) -> list[str]:
    """`image_key` of each path; `suffix` (".png") replaces the extension, as a set's files do."""
    if key_root is None:
        keys = [Path(p).as_posix() for p in im_paths]
    else:  # resolve folders only (files may be links into the raw download), and only once
        base, root = Path(dirmap_csv).parent.resolve(), Path(key_root).resolve()
        keys = [
            Path(os.path.relpath(os.path.normpath(os.path.join(base, p)), root)).as_posix()
            for p in im_paths
        ]
    if suffix is not None:
        keys = [PurePosixPath(k).with_suffix(suffix).as_posix() for k in keys]
    return keys


def object_key(im_path: str, prefix: str = "") -> str | None:
    """`prefix + im_path` ('/'-separated), or None when `im_path` would leave its root
    (absolute, a drive, or a '..' part)."""
    path = im_path.replace("\\", "/")
    parts = PurePosixPath(path)
    if parts.is_absolute() or ".." in parts.parts or ":" in path:
        return None
    return prefix + path
