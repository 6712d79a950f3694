"""Stage 8 (experiments): build a study: per-participant trial lists and the web experiment.

Inputs are the workflow's own products: the scored dirmap (`difficulty/dirmap.csv`, column
`difficulty`, higher = harder, `lwise.guide.score`) and the uploaded stimulus sets
(`upload/<set>/dirmap.csv`, column `url`, `lwise.publish.s3`). An image is the same image in
every table when its key (path relative to the ImageFolder, or to the set's stimulus folder)
matches without the extension (`lwise.core.keys.image_key`).

Output folder:
  participants.csv             participant, condition
  trials.csv                   every participant's trials (the columns of `TRIAL_COLUMNS`)
  trials/<participant>.csv     one participant's trial list (and `.json`, records)
  design.json                  the resolved settings, the epsilon shown per taper step, the sets
  web/                         the static experiment: open web/index.html (file:// works) or
                               serve the folder; `?participant=<id>` picks the trial list
    index.html, experiment.js, style.css   copied from lwise/experiments/web
    study.js                   the study settings (window.LWISE_STUDY)
    trials/<participant>.js    the trial list (window.LWISE_TRIALS), loaded by a script tag,
                               not fetched, so no server is needed
    images/<set>/<key>         with images "copy": the image versions shown
    calibration/*.svg          the recognition design's calibration shapes

`images`: "url" makes trials name the uploaded objects' URLs; "copy" copies the versions shown
into web/images/ and names them by relative path (for a page used offline, or when the upload
server does not outlive the run).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from lwise.core.atomic import atomic_path
from lwise.core.keys import NATURAL, image_key, parse_set
from lwise.data import dirmap
from lwise.data.dirmap import csv_lines
from lwise.experiments.conditions import DEFAULT_WEIGHTS, assign_conditions
from lwise.experiments.curriculum import (
    TRIAL_COLUMNS,
    CurriculumError,
    LearningDesign,
    learning_trials,
    map_taper,
)
from lwise.experiments.recognition import CALIBRATION_SHAPES, RecognitionDesign, recognition_trials

log = logging.getLogger(__name__)

__all__ = ["StudySettings", "PageSettings", "build_study", "WEB_ASSETS", "stem"]

WEB_ASSETS = Path(__file__).parent / "web"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SVG = {
    "circle": '<circle cx="50" cy="50" r="38" fill="#222"/>',
    "triangle": '<polygon points="50,10 90,85 10,85" fill="#222"/>',
}


def stem(key: str) -> str:
    """A key without its extension: what matches an image across its versions."""
    return str(PurePosixPath(key).with_suffix(""))


@dataclass(frozen=True)
class PageSettings:
    """What the web page shows and how it times trials."""

    title: str = "Image categorisation study"
    consent: str = (
        "This study asks you to sort images into categories. It takes about 15 minutes. Your "
        "responses are recorded without your name. You may stop at any time."
    )
    instructions: str = (
        "Each trial shows one image. Click the button of its category (or press the number "
        "key shown on it). In training blocks you are told whether you were right; in test "
        "blocks you are not. Answer as accurately as you can."
    )
    fixation_ms: int = 500
    feedback_ms: int = 1000
    response_timeout_ms: int | None = 10000  # reference: 10 s to respond; null: no limit
    post_stimulus_ms: int = 0  # blank after a timed presentation, before the buttons
    post_endpoint: str | None = None  # the CSV is POSTed here (text/plain) at the end
    keyboard: bool = True


@dataclass(frozen=True)
class StudySettings:
    """The `experiments` config section (defaults in schemas/config.schema.yaml)."""

    design: str = "learning"
    participants: int = 14
    participant_prefix: str = "p"
    seed: int = 0
    conditions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    assignment: str = "blocked"
    objective: str | None = None
    images: str = "url"
    learning: LearningDesign = field(default_factory=LearningDesign)
    recognition: RecognitionDesign = field(default_factory=RecognitionDesign)
    page: PageSettings = field(default_factory=PageSettings)

    @classmethod
    def from_dict(cls, cfg: Mapping) -> StudySettings:
        cfg = dict(cfg)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"experiments: unknown setting(s) {unknown}; valid: {sorted(known)}")
        page = dict(cfg.pop("page", None) or {})
        bad = sorted(set(page) - set(PageSettings.__dataclass_fields__))
        if bad:
            raise ValueError(f"experiments.page: unknown setting(s) {bad}")
        learning = LearningDesign.from_dict(cfg.pop("learning", None))
        recognition = RecognitionDesign.from_dict(cfg.pop("recognition", None))
        out = cls(learning=learning, recognition=recognition, page=PageSettings(**page), **cfg)
        if out.design not in ("learning", "recognition"):
            raise ValueError(f"experiments.design {out.design!r}: expected learning or recognition")
        if out.images not in ("url", "copy"):
            raise ValueError(f"experiments.images {out.images!r}: expected url or copy")
        if out.participants < 1:
            raise ValueError("experiments.participants must be >= 1")
        if not _ID.match(out.participant_prefix + "0"):
            raise ValueError(
                f"experiments.participant_prefix {out.participant_prefix!r}: letters, digits, "
                "'_' and '-' only"
            )
        return out

    def participant_ids(self) -> list[str]:
        width = max(3, len(str(self.participants)))
        return [f"{self.participant_prefix}{i:0{width}d}" for i in range(1, self.participants + 1)]


# --- inputs --------------------------------------------------------------------------------------


def _images(difficulty_csv: Path, imagefolder: Path) -> pd.DataFrame:
    df = dirmap.read(difficulty_csv, check_files=False)
    if "difficulty" not in df.columns:
        raise CurriculumError(
            f"{difficulty_csv}: no 'difficulty' column (score_difficulty writes it); "
            f"found {list(df.columns)}"
        )
    diff = pd.to_numeric(df["difficulty"], errors="coerce")
    bad = diff.isna() | ~np.isfinite(diff)
    if bad.any():
        raise CurriculumError(
            f"{difficulty_csv}: column 'difficulty': not a finite number at line(s) "
            f"{csv_lines(df, bad)}"
        )
    keys = [image_key(difficulty_csv, p, imagefolder) for p in df["im_path"]]
    out = pd.DataFrame(
        {
            "key": [stem(k) for k in keys],
            "class": df["class"],
            "split": df["split"],
            "difficulty": diff.to_numpy(),
        }  # fmt: skip
    )
    dup = out["key"].duplicated(keep=False)
    if dup.any():
        raise CurriculumError(
            f"{difficulty_csv}: several rows name the same image (extension ignored) at "
            f"line(s) {csv_lines(out, dup)}"
        )
    return out


def _versions(
    uploads: Mapping[str, os.PathLike | str], stimuli_root: Path
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Path]], dict[str, str]]:
    """Per set: key stem -> URL, key stem -> local file; and key stem -> natural key."""
    urls: dict[str, dict[str, str]] = {}
    files: dict[str, dict[str, Path]] = {}
    natural_keys: dict[str, str] = {}
    for name, csv in uploads.items():
        csv = Path(csv)
        parse_set(name)
        df = dirmap.read(csv, check_files=False)
        if "url" not in df.columns:
            raise CurriculumError(
                f"{csv}: no 'url' column (the upload rule writes it); found {list(df.columns)}"
            )
        bad = df["url"].isna() | (df["url"].astype(str).str.strip() == "")
        if bad.any():
            raise CurriculumError(f"{csv}: column 'url': empty at line(s) {csv_lines(df, bad)}")
        keys = [image_key(csv, p, stimuli_root / name) for p in df["im_path"]]
        stems = [stem(k) for k in keys]
        if len(set(stems)) != len(stems):
            dup = pd.Series(stems).duplicated(keep=False)
            raise CurriculumError(
                f"{csv}: several rows name the same image (extension ignored) at line(s) "
                f"{csv_lines(df, dup)}"
            )
        urls[name] = dict(zip(stems, df["url"].astype(str), strict=True))
        files[name] = {s: csv.parent / p for s, p in zip(stems, df["im_path"], strict=True)}
        if name == NATURAL:
            natural_keys = dict(zip(stems, keys, strict=True))
    if NATURAL not in uploads:
        raise CurriculumError(
            f"the '{NATURAL}' set's upload dirmap is required; got {list(uploads)}"
        )
    return urls, files, natural_keys


# --- outputs -------------------------------------------------------------------------------------


def _copy_images(trials: pd.DataFrame, files: Mapping[str, Mapping[str, Path]], web: Path) -> None:
    for (set_name, key), first in (
        trials.groupby(["set", "key"], sort=False)
        .head(1)
        .set_index(["set", "key"])["stimulus"]
        .items()
    ):
        if set_name == "calibration":
            continue
        src = files[set_name][key]
        if not src.is_file():
            raise CurriculumError(
                f"image {key!r} of set {set_name!r}: file {src} not found (images: copy reads "
                "the uploaded sets' local files)"
            )
        dest = web / first
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)


def _js(name: str, value: object) -> str:
    # "</" escaped so no string can close a script element.
    text = json.dumps(value, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    return f"window.{name} = {text};\n"


def _records(df: pd.DataFrame) -> list[dict]:
    out = json.loads(df.drop(columns=["key"]).to_json(orient="records"))
    for r in out:
        r["choices"] = r["choices"].split("|") if r["choices"] else []
    return out


def _write_web(
    web: Path, settings: StudySettings, classes: list[str], per_participant, dataset: str
) -> None:
    for asset in ("index.html", "experiment.js", "style.css"):
        shutil.copyfile(WEB_ASSETS / asset, web / asset)
    page = asdict(settings.page)
    study = {
        "dataset": dataset,
        "design": settings.design,
        "classes": classes,
        "participants": list(per_participant),
        **page,
    }
    (web / "study.js").write_text(_js("LWISE_STUDY", study))
    (web / "trials").mkdir(exist_ok=True)
    for pid, trials in per_participant.items():
        (web / "trials" / f"{pid}.js").write_text(
            "window.LWISE_TRIALS = window.LWISE_TRIALS || {};\n"
            + _js(f"LWISE_TRIALS[{json.dumps(pid)}]", _records(trials))
        )
    if settings.design == "recognition":
        (web / "calibration").mkdir(exist_ok=True)
        for shape in CALIBRATION_SHAPES:
            (web / "calibration" / f"{shape}.svg").write_text(
                '<svg xmlns="http://www.w3.org/2000/svg" width="224" height="224" '
                f'viewBox="0 0 100 100"><rect width="100" height="100" fill="#888"/>'
                f"{_SVG[shape]}</svg>\n"
            )


def build_study(
    difficulty_csv: str | os.PathLike,
    imagefolder: str | os.PathLike,
    uploads: Mapping[str, str | os.PathLike],
    stimuli_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: StudySettings | Mapping,
    *,
    dataset: str = "",
) -> pd.DataFrame:
    """Write the study folder (see the module docstring); return every participant's trials.

    `imagefolder`: the folder the difficulty dirmap's keys are relative to. `uploads`: set name
    -> its upload dirmap; each set's keys are relative to `stimuli_root/<set>`.
    """
    if not isinstance(settings, StudySettings):
        settings = StudySettings.from_dict(settings)
    difficulty_csv, stimuli_root = Path(difficulty_csv), Path(stimuli_root)
    images = _images(difficulty_csv, Path(imagefolder))
    urls, files, natural_keys = _versions(uploads, stimuli_root)
    images = images[images["key"].isin(natural_keys)].copy()
    if images.empty:
        raise CurriculumError(
            f"{difficulty_csv}: no image also listed in the natural set's upload dirmap "
            f"{uploads[NATURAL]} (keys matched without the extension)"
        )
    images["image"] = images["key"].map(natural_keys)
    classes = sorted(images["class"].unique())

    enhanced = {n: parse_set(n) for n in urls if n != NATURAL}
    objectives = sorted({o for o, _ in enhanced.values()})
    objective = settings.objective or (objectives[0] if objectives else None)
    if settings.objective and settings.objective not in objectives and enhanced:
        raise CurriculumError(
            f"experiments.objective {settings.objective!r}: no uploaded set made with it; "
            f"uploaded: {sorted(urls)}"
        )
    available = sorted(e for o, e in enhanced.values() if o == objective)

    if settings.images == "copy":
        versions = {
            n: {k: f"images/{n}/{k}{PurePosixPath(str(p)).suffix}" for k, p in table.items()}
            for n, table in files.items()
        }
    else:
        versions = urls
    calibration = {s: f"calibration/{s}.svg" for s in CALIBRATION_SHAPES}

    ids = settings.participant_ids()
    per: dict[str, pd.DataFrame] = {}
    if settings.design == "learning":
        conditions = assign_conditions(
            ids, settings.conditions, method=settings.assignment, seed=settings.seed
        )
        for pid, cond in zip(ids, conditions, strict=True):
            per[pid] = learning_trials(
                images, versions, settings.learning, cond, pid, objective=objective,
                available_eps=available, seed=settings.seed,
            )  # fmt: skip
    else:
        sets = [NATURAL] + [n for n in urls if n != NATURAL and enhanced[n][0] == objective]
        for pid in ids:
            per[pid] = recognition_trials(
                images, versions, settings.recognition, pid, sets=sets, calibration=calibration,
                seed=settings.seed,
            )  # fmt: skip
    everything = pd.concat(per.values(), ignore_index=True)

    design = {
        "dataset": dataset,
        "settings": json.loads(json.dumps(asdict(settings), default=list)),
        "objective": objective,
        "available_eps": available,
        "taper_shown": dict(
            zip(
                [str(e) for e in settings.learning.epsilon_taper],
                map_taper(settings.learning.epsilon_taper, available),
                strict=True,
            )
        ),
        "sets": sorted(urls),
        "classes": classes,
        "rule": "each taper step shows the largest available epsilon not above it; "
        "natural when none is",
    }
    with atomic_path(out_dir, directory=True) as tmp:
        (tmp / "trials").mkdir()
        web = tmp / "web"
        web.mkdir()
        for pid, trials in per.items():
            trials.drop(columns=["key"]).to_csv(tmp / "trials" / f"{pid}.csv", index=False)
            (tmp / "trials" / f"{pid}.json").write_text(
                json.dumps(_records(trials), indent=1, ensure_ascii=False) + "\n"
            )
        everything.drop(columns=["key"]).to_csv(tmp / "trials.csv", index=False)
        everything.groupby("participant", sort=False)["condition"].first().reset_index().to_csv(
            tmp / "participants.csv", index=False
        )
        (tmp / "design.json").write_text(json.dumps(design, indent=1) + "\n")
        _write_web(web, settings, classes, per, dataset)
        if settings.images == "copy":
            _copy_images(everything, files, web)
    log.info(
        "study %s: %d participant(s), %d trials, design %s, objective %s, epsilons %s",
        out_dir, len(per), len(everything), settings.design, objective, available,
    )  # fmt: skip
    return everything[list(TRIAL_COLUMNS)]
