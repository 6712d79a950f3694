"""Publishing a study (lwise.publish.site) against a real local S3 server (moto_server on
127.0.0.1): every file the study wrote, and nothing else, lands under the study's prefix with
the content type a browser needs; the trial lists name the uploaded images' URLs; a rerun
uploads nothing; a bad listing is refused with the file and line named."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from pathlib import Path

import boto3
import pandas as pd
import pytest
from experiments_data import make_dataset, upload_sets
from s3server import moto_s3_server

from lwise.core.keys import NATURAL
from lwise.experiments.study import build_study
from lwise.publish.s3 import UploadConfig
from lwise.publish.site import SiteError, publish_site

SETTINGS = {
    "participants": 2,
    "conditions": {"control": 1, "lwise": 1},
    "learning": {"training_blocks": 2, "trials_per_class": 2, "test_blocks": 1,
                 "test_per_class": 2, "max_difficulty": [0.5], "epsilon_taper": [2]},
}  # fmt: skip
MEDIA_TYPES = {
    ".html": "text/html",
    ".js": "application/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".csv": "text/csv",
    ".png": "image/png",
}


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3_server() as endpoint:
        yield endpoint


def upload_config(endpoint: str, run: str, name: str, **overrides) -> UploadConfig:
    options = {"bucket": "lwise-{dataset}-{set}-{run}", "endpoint_url": endpoint,
               "public_read": True, "backoff_s": 0.01} | overrides  # fmt: skip
    return UploadConfig.from_config(options, fields={"dataset": "ds", "set": name, "run": run})


@pytest.fixture(scope="module")
def uploaded(s3_endpoint, tmp_path_factory):
    """A small dataset whose stimulus sets are really uploaded; set name -> upload dirmap."""
    root = tmp_path_factory.mktemp("ds")
    data = make_dataset(root, n_train=12, n_val=6, epsilons=(1, 2))
    run = uuid.uuid4().hex[:8]
    uploads = upload_sets(root, data, lambda name: upload_config(s3_endpoint, run, name))
    return {**data, "uploads": uploads, "run": run}


def study(uploaded, out: Path, **settings) -> pd.DataFrame:
    args = {k: uploaded[k] for k in ("difficulty_csv", "imagefolder", "uploads", "stimuli_root")}
    return build_study(**args, out_dir=out, settings=SETTINGS | settings, dataset="ds")


def publish(folder: Path, cfg: UploadConfig, out: Path):
    stats = publish_site(folder, cfg, out / "manifest.csv", out / "manifest.json")
    return stats, pd.read_csv(out / "manifest.csv")


def bucket_keys(endpoint: str, bucket: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def get(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url) as response:  # anonymous: the objects are public_read
        return response.read(), response.headers["Content-Type"]


def uploaded_urls(uploads) -> dict[str, set[str]]:
    return {name: set(pd.read_csv(csv)["url"]) for name, csv in uploads.items()}


def test_every_study_file_is_published_with_its_content_type(s3_endpoint, uploaded, tmp_path):
    folder = tmp_path / "study"
    trials = study(uploaded, folder, images="url")
    # Files that appear in the folder later are not the study's: never published.
    (folder / "responses_p001.csv").write_text("participant,image\np001,x\n")
    (folder / "web" / "responses_p002.csv").write_text("participant,image\np002,x\n")
    secret = tmp_path / "participant-salt"
    secret.write_text("do not publish")
    os.symlink(secret, folder / "web" / "salt.txt")

    cfg = upload_config(s3_endpoint, uploaded["run"], "study")
    stats, manifest = publish(folder, cfg, tmp_path / "published")
    listing = pd.read_csv(folder / "files.csv")
    assert list(manifest["path"]) == list(listing["path"])
    assert {"web/index.html", "web/experiment.js", "web/style.css", "web/study.js",
            "web/trials/p001.js", "trials/p001.json", "trials/p002.csv", "trials.csv",
            "participants.csv", "design.json"} <= set(manifest["path"])  # fmt: skip
    assert not [p for p in manifest["path"] if "responses" in p or "salt" in p]
    assert (stats.uploaded, stats.skipped) == (len(manifest), 0)
    assert bucket_keys(s3_endpoint, stats.bucket) == set(manifest["key"])
    assert stats.bucket == f"lwise-ds-study-{uploaded['run']}"  # the images' template

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for row in manifest.itertuples():
        local = (folder / row.path).read_bytes()
        head = s3.head_object(Bucket=stats.bucket, Key=row.key)
        media = MEDIA_TYPES[Path(row.path).suffix]
        assert head["ContentType"].split(";")[0] == media, row.path
        assert row.content_type == head["ContentType"] and row.size == len(local)
        assert head["ETag"].strip('"') == row.md5
        assert row.url == f"{s3_endpoint}/{stats.bucket}/{row.key}"
    # What a browser gets from the bucket.
    page = manifest.set_index("path").loc["web/index.html", "url"]
    body, ctype = get(page)
    assert ctype == "text/html; charset=utf-8" and body == (folder / "web/index.html").read_bytes()
    script = manifest.set_index("path").loc["web/trials/p001.js", "url"]
    body, ctype = get(script)
    assert ctype == "application/javascript; charset=utf-8"

    # The published trial list names the uploaded images' URLs, which serve those images.
    body, ctype = get(manifest.set_index("path").loc["trials/p001.json", "url"])
    assert ctype == "application/json"
    records = json.loads(body)
    assert len(records) == (trials["participant"] == "p001").sum()
    urls = uploaded_urls(uploaded["uploads"])
    for r in records:
        assert r["stimulus"] == r["url"] and r["url"] in urls[r["set"]], r
    enhanced = next(r for r in records if r["set"] != NATURAL)
    key = enhanced["url"].split(f"-{uploaded['run']}/", 1)[1]
    image, ctype = get(enhanced["url"])
    assert ctype == "image/png"
    assert image == (uploaded["stimuli_root"] / enhanced["set"] / key).read_bytes()

    # A rerun of an unchanged study sends nothing and writes the same manifest.
    again, manifest2 = publish(folder, cfg, tmp_path / "published")
    assert (again.uploaded, again.skipped) == (0, len(manifest))
    pd.testing.assert_frame_equal(manifest, manifest2)
    records = json.loads((tmp_path / "published" / "manifest.json").read_text())
    assert records == manifest.to_dict(orient="records")


def test_copied_images_travel_with_the_page_and_trials_still_name_urls(
    s3_endpoint, uploaded, tmp_path
):
    # The images' URLs are on 127.0.0.1, so `images: auto` copies them next to the page.
    folder = tmp_path / "study"
    trials = study(uploaded, folder, images="auto")
    assert json.loads((folder / "design.json").read_text())["images"] == "copy"
    assert trials["stimulus"].str.startswith("images/").all()
    urls = uploaded_urls(uploaded["uploads"])
    assert all(u in urls[s] for s, u in zip(trials["set"], trials["url"], strict=True))

    cfg = upload_config(s3_endpoint, uploaded["run"], "copied", key_prefix="copy/")
    stats, manifest = publish(folder, cfg, tmp_path / "published")
    assert manifest["key"].str.startswith("copy/").all()
    images = manifest[manifest["path"].str.startswith("web/images/")]
    assert len(images) == trials[["set", "image"]].drop_duplicates().shape[0]
    assert (images["content_type"] == "image/png").all()
    base = manifest.set_index("path").loc["web/index.html", "url"].rsplit("/", 1)[0]
    stimulus = trials["stimulus"].iloc[0]  # relative to the page, also on the bucket
    body, _ = get(f"{base}/{stimulus}")
    assert body == (folder / "web" / stimulus).read_bytes()


def test_a_bad_listing_is_refused_naming_file_and_line(s3_endpoint, uploaded, tmp_path):
    folder = tmp_path / "study"
    study(uploaded, folder, images="url")
    cfg = upload_config(s3_endpoint, uploaded["run"], "bad", key_prefix="bad/")
    listing = folder / "files.csv"
    original = listing.read_text()

    style = folder / "web" / "style.css"
    css = style.read_text()
    style.write_text(css + "body { color: red }\n")
    with pytest.raises(SiteError, match=r"files\.csv: line \d+ \('web/style\.css'\): changed"):
        publish(folder, cfg, tmp_path / "out")
    style.write_text(css)

    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    for path, problem in (("../outside.txt", "not a relative path"),
                          ("web/link.txt", "a link"), ("nope.html", "not found"),
                          ("web/notes.md", "no content type")):  # fmt: skip
        if path == "web/link.txt":
            os.symlink(outside, folder / path)
        if path == "web/notes.md":
            (folder / path).write_text("x")
        listing.write_text(original + f"{path},1,{'0' * 32}\n")
        with pytest.raises(SiteError, match=problem):
            publish(folder, cfg, tmp_path / "out")
    (folder / "files.csv").unlink()
    with pytest.raises(SiteError, match=r"files\.csv: not found"):
        publish(folder, cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.csv").exists()
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    assert cfg.bucket_name not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
