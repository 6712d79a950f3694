"""Stage 8 (experiments): the study's static web page and the list of files a study wrote.

`write_web` fills a study's `web/` folder (layout in `lwise.experiments.study`): the assets of
`lwise/experiments/web/` as they are, `study.js` with the page settings and one
`trials/<participant>.js` per trial list, loaded by script tags so the page also works from
file://. `write_listing` records every file of the study folder with its size and MD5 in
`files.csv`, which is what the publishing rule uploads (`lwise.publish.site`): files that
appear in the folder later (downloaded responses, notes) are not in it and are not published.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from lwise.core.config import Section
from lwise.core.keys import FILE_LISTING as LISTING
from lwise.experiments.curriculum import CurriculumError
from lwise.experiments.recognition import CALIBRATION_SHAPES

__all__ = [
    "PageSettings",
    "WEB_ASSETS",
    "write_web",
    "copy_images",
    "records",
    "write_listing",
]

WEB_ASSETS = Path(__file__).parent / "web"
_SVG = {
    "circle": '<circle cx="50" cy="50" r="38" fill="#222"/>',
    "triangle": '<polygon points="50,10 90,85 10,85" fill="#222"/>',
}


@dataclass(frozen=True)
class PageSettings(Section):
    """What the web page shows and how it times trials (`experiments.page`)."""

    SECTION = "experiments.page"

    title: str
    consent: str
    instructions: str
    fixation_ms: int
    feedback_ms: int
    response_timeout_ms: int | None  # null: no limit
    post_stimulus_ms: int  # blank after a timed presentation, before the buttons
    post_endpoint: str | None  # the CSV is POSTed here (text/plain) at the end
    keyboard: bool


def _js(name: str, value: object) -> str:
    # "</" escaped so no string can close a script element.
    text = json.dumps(value, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    return f"window.{name} = {text};\n"


def records(df: pd.DataFrame) -> list[dict]:
    """A trial list as JSON records (the page's and `trials/<participant>.json`'s form)."""
    out = json.loads(df.drop(columns=["key"], errors="ignore").to_json(orient="records"))
    for r in out:
        r["choices"] = r["choices"].split("|") if r["choices"] else []
    return out


def write_web(
    web: Path,
    page: PageSettings,
    per_participant: Mapping[str, pd.DataFrame],
    *,
    dataset: str,
    design: str,
    classes: list[str],
) -> None:
    """Write the page into the (existing) folder `web`."""
    for asset in ("index.html", "experiment.js", "style.css"):
        shutil.copyfile(WEB_ASSETS / asset, web / asset)
    study = {
        "dataset": dataset,
        "design": design,
        "classes": classes,
        "participants": list(per_participant),
        **asdict(page),
    }
    (web / "study.js").write_text(_js("LWISE_STUDY", study))
    (web / "trials").mkdir(exist_ok=True)
    for pid, trials in per_participant.items():
        (web / "trials" / f"{pid}.js").write_text(
            "window.LWISE_TRIALS = window.LWISE_TRIALS || {};\n"
            + _js(f"LWISE_TRIALS[{json.dumps(pid)}]", records(trials))
        )
    if design == "recognition":
        (web / "calibration").mkdir(exist_ok=True)
        for shape in CALIBRATION_SHAPES:
            (web / "calibration" / f"{shape}.svg").write_text(
                '<svg xmlns="http://www.w3.org/2000/svg" width="224" height="224" '
                f'viewBox="0 0 100 100"><rect width="100" height="100" fill="#888"/>'
                f"{_SVG[shape]}</svg>\n"
            )


def copy_images(trials: pd.DataFrame, files: Mapping[str, Mapping[str, Path]], web: Path) -> None:
    """Copy each image version the trials show (`set`, `key`) to `web/<stimulus>`."""
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


def write_listing(folder: Path) -> pd.DataFrame:
    """Write `folder/files.csv`: every file under `folder` (itself excepted), sorted by path."""
    rows = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == LISTING:
            continue
        data = path.read_bytes()
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        rows.append({"path": rel, "size": len(data), "md5": md5})
    listing = pd.DataFrame(rows, columns=["path", "size", "md5"])
    listing.to_csv(folder / LISTING, index=False)
    return listing
