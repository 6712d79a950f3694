"""Stage 8 (experiments): build a study: per-participant trial lists and the web experiment.

Inputs are the workflow's own products: the scored dirmap (`difficulty/dirmap.csv`, column
`difficulty`, higher = harder, `lwise.guide.score`) and the uploaded stimulus sets
(`upload/<set>/dirmap.csv`, column `url`, `lwise.publish.s3`). An image is the same image in
every table when its key (path relative to the ImageFolder, or to the set's stimulus folder)
matches without the extension (`lwise.core.keys.image_key`).

Output folder:
  participants.csv             participant, condition
  trials.csv                   every participant's trials (the columns of `TRIAL_COLUMNS`, then
                               `url`: where the version shown is on S3, whatever `images` is)
  trials/<participant>.csv     one participant's trial list (and `.json`, records)
  design.json                  the resolved settings, the epsilon shown per taper step, the sets
  files.csv                    every file above with its size and MD5 (`page.write_listing`):
                               what the publish_study rule uploads, and nothing else
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
server does not outlive the run); "auto" is "copy" when the natural set's URLs are on this
machine (the workflow's local upload server, `upload.endpoint_url: local`), else "url".
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from lwise.core.atomic import atomic_path
from lwise.core.config import Section
from lwise.core.keys import NATURAL, image_key, parse_set
from lwise.data import dirmap
from lwise.data.dirmap import csv_lines
from lwise.experiments.conditions import assign_conditions
from lwise.experiments.curriculum import (
    TRIAL_COLUMNS,
    CurriculumError,
    LearningDesign,
    learning_trials,
    map_taper,
)
from lwise.experiments.page import (
    WEB_ASSETS,
    PageSettings,
    copy_images,
    records,
    write_listing,
    write_web,
)
from lwise.experiments.recognition import CALIBRATION_SHAPES, RecognitionDesign, recognition_trials

log = logging.getLogger(__name__)

__all__ = [
    "StudySettings",
    "PageSettings",
    "build_study",
    "image_mode",
    "on_this_machine",
    "WEB_ASSETS",
    "stem",
]


def stem(key: str) -> str:
    """A key without its extension: what matches an image across its versions."""
    return str(PurePosixPath(key).with_suffix(""))


@dataclass(frozen=True)
class StudySettings(Section):
    """The `experiments` config section: `StudySettings.from_config({"participants": 7})`.

    Every default and check is in schemas/config.schema.yaml; the nested sections become
    `LearningDesign`, `RecognitionDesign` and `PageSettings` (their own defaults filled in).
    Keys of the section that only the workflow reads (`enabled`, `responses`, ...) are left out.
    """

    SECTION = "experiments"

    design: str  # learning | recognition
    participants: int
    participant_prefix: str
    seed: int
    conditions: Mapping[str, float]
    assignment: str  # blocked | random
    objective: str | None
    images: str  # auto | url | copy
    learning: LearningDesign
    recognition: RecognitionDesign
    page: PageSettings

    def __post_init__(self) -> None:
        for name, cls in (
            ("learning", LearningDesign),
            ("recognition", RecognitionDesign),
            ("page", PageSettings),
        ):
            value = getattr(self, name)
            if not isinstance(value, cls):
                object.__setattr__(self, name, cls.from_config(value))
        object.__setattr__(self, "conditions", dict(self.conditions))

    def participant_ids(self) -> list[str]:
        width = max(3, len(str(self.participants)))
        return [f"{self.participant_prefix}{i:0{width}d}" for i in range(1, self.participants + 1)]


def on_this_machine(url: str) -> bool:
    """Whether `url` names a loopback host (localhost, 127.0.0.0/8, ::1)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def image_mode(settings: StudySettings, urls: Mapping[str, str]) -> str:
    """`settings.images`, with "auto" resolved: "copy" when any of `urls` (the natural set's,
    key -> URL) is on this machine, since the workflow's local upload server (upload.endpoint_url
    local, on 127.0.0.1) stops with the run and its URLs die with it; else "url"."""
    if settings.images != "auto":
        return settings.images
    return "copy" if any(on_this_machine(u) for u in urls.values()) else "url"


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
        settings = StudySettings.from_config(settings)
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

    mode = image_mode(settings, urls[NATURAL])
    if mode == "copy":
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
    for trials in per.values():  # where each version shown is on S3, in either mode
        trials["url"] = [
            urls.get(set_name, {}).get(key, "")
            for set_name, key in zip(trials["set"], trials["key"], strict=True)
        ]
    everything = pd.concat(per.values(), ignore_index=True)

    design = {
        "dataset": dataset,
        "settings": json.loads(json.dumps(asdict(settings), default=list)),
        "images": mode,
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
                json.dumps(records(trials), indent=1, ensure_ascii=False) + "\n"
            )
        everything.drop(columns=["key"]).to_csv(tmp / "trials.csv", index=False)
        everything.groupby("participant", sort=False)["condition"].first().reset_index().to_csv(
            tmp / "participants.csv", index=False
        )
        (tmp / "design.json").write_text(json.dumps(design, indent=1) + "\n")
        write_web(web, settings.page, per, dataset=dataset, design=settings.design,
                  classes=classes)  # fmt: skip
        if mode == "copy":
            copy_images(everything, files, web)
        listing = write_listing(tmp)
    log.info(
        "study %s: %d participant(s), %d trials, design %s, objective %s, epsilons %s, images "
        "%s; %d files", out_dir, len(per), len(everything), settings.design, objective,
        available, mode, len(listing),
    )  # fmt: skip
    return everything[[*TRIAL_COLUMNS, "url"]]
