"""The Snakemake DAG from download to ImageFolder, run as a user runs it."""

import hashlib
import io
import tarfile
import zipfile

import pandas as pd
import pytest
import yaml
from conftest import (
    REPO,
    imagefolder_dataset,
    make_image,
    make_imagefolder,
    nothing_to_do,
    run_workflow,
)
from httpserver import serve

from lwise.data import dirmap


def _tgz_of(folder):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buf.getvalue()


@pytest.fixture
def archive_server(tmp_path):
    make_imagefolder(tmp_path / "src/shapes", {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}})
    www = tmp_path / "www"
    www.mkdir()
    data = _tgz_of(tmp_path / "src/shapes")
    (www / "shapes.tar.gz").write_bytes(data)
    with serve(www) as server:
        server.sha256 = hashlib.sha256(data).hexdigest()
        yield server


def _config(dataset: dict, name="shapes", **download):
    """The default config with only this dataset; runs target its ImageFolder (stages 1-3)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["datasets"] = {name: dataset}
    config["download"] |= {"backoff": 0, **download}
    return config


def _build(workdir, config, *args, check=True):
    targets = [f"results/{name}/imagefolder" for name in config["datasets"]]
    return run_workflow(workdir, config, *args, *targets, check=check)


@pytest.mark.slow
# The session's default run (all families, 1,797 images) is set up by the first of these.
@pytest.mark.timeout(1800)
def test_default_run_end_to_end_with_report_and_second_run_is_a_no_op(default_run, tmp_path):
    work, config = default_run
    dry = run_workflow(tmp_path, config, "--dry-run")  # what a fresh checkout plans
    stages = "download dirmap imagefolder train_guide score_difficulty enhance natural_stimuli"
    for rule in (stages + " upload simulate_observers evaluate_alignment").split():
        assert f"rule {rule}:" in dry.stdout
    df = dirmap.read(work / "results/digits/imagefolder/dirmap.csv")
    assert len(df) == 1797 and df["class"].nunique() == 10
    assert df.groupby("split").size().to_dict() == {"train": 1437, "val": 360}
    for name in ("download", "dirmap", "imagefolder", "train_guide", "score_difficulty"):
        assert (work / f"results/logs/digits/{name}.log").exists()
        assert (work / f"results/benchmarks/digits/{name}.tsv").exists()
    scored = dirmap.read(work / "results/digits/difficulty/dirmap.csv")
    assert scored["correct"].mean() > 0.8  # the guide model learnt the digits
    for eps in ("0.5", "1", "2", "4"):
        gain = dirmap.read(work / f"results/digits/stimuli/logit_eps{eps}/dirmap.csv")[
            "logit_gain"
        ]
        assert gain.mean() > 0
    summary = work / "results/digits/alignment_synthetic/summary.csv"
    assert summary.exists() and pd.read_csv(summary)["synthetic"].all()
    report = (work / "results/report.html").read_text(errors="replace")
    assert "synthetic" in report
    assert nothing_to_do(work, config)


def test_http_archive_with_checksum(tmp_path, archive_server):
    url = f"{archive_server.url}/shapes.tar.gz"
    config = _config(imagefolder_dataset(url, root="shapes", sha256=archive_server.sha256))
    _build(tmp_path, config)
    df = dirmap.read(tmp_path / "results/shapes/imagefolder/dirmap.csv")
    assert len(df) == 8 and set(df["class"]) == {"a", "b"}
    assert (tmp_path / "results/shapes/downloads/shapes.tar.gz").exists()
    assert "Nothing to be done" in _build(tmp_path, config, "--dry-run").stdout


def test_http_archive_with_bad_checksum_fails_cleanly(tmp_path, archive_server):
    url = f"{archive_server.url}/shapes.tar.gz"
    config = _config(imagefolder_dataset(url, root="shapes", sha256="ab" * 32))
    proc = _build(tmp_path, config, check=False)
    assert proc.returncode != 0
    log = (tmp_path / "results/logs/shapes/download.log").read_text()
    assert ("sha256 mismatch for shapes.tar.gz: expected " + "ab" * 32) in log
    assert not (tmp_path / "results/shapes/raw").exists()
    assert list((tmp_path / "results/shapes/downloads").iterdir()) == []


def test_interrupted_download_is_resumed_by_the_next_run(tmp_path, archive_server):
    archive_server.cut_after, archive_server.cuts_left = 200, 1
    url = f"{archive_server.url}/shapes.tar.gz"
    config = _config(
        imagefolder_dataset(url, root="shapes", sha256=archive_server.sha256), retries=0
    )
    assert _build(tmp_path, config, check=False).returncode != 0
    assert (tmp_path / "results/shapes/downloads/shapes.tar.gz.part").stat().st_size == 200
    assert not (tmp_path / "results/shapes/raw").exists()
    _build(tmp_path, config)
    assert archive_server.requests[-1]["range"] == "bytes=200-"
    assert len(dirmap.read(tmp_path / "results/shapes/imagefolder/dirmap.csv")) == 8


def test_zip_with_path_traversal_is_refused(tmp_path):
    bad = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("train/a/ok.png", b"")
        zf.writestr("../../escaped.txt", "gotcha")
    config = _config(imagefolder_dataset(f"file://{bad}"), name="evil")
    work = tmp_path / "work"
    assert _build(work, config, check=False).returncode != 0
    log = (work / "results/logs/evil/download.log").read_text()
    assert "member '../../escaped.txt' escapes the target folder" in log
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (work / "results/evil/raw").exists()


def test_corrupt_image_in_local_folder_is_skipped_and_reported(tmp_path):
    folder = make_imagefolder(tmp_path / "mydata", {"train": {"x": 2, "y": 2}})
    (folder / "train/y/broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    make_image(folder / "train/x/big.png", size=(50, 40))
    config = _config(imagefolder_dataset(str(folder), root="mydata"), name="local")
    config["datasets"]["local"]["build"] = {"resize": "crop", "size": 16, "format": "png"}
    _build(tmp_path / "work", config)
    out = tmp_path / "work/results/local/imagefolder"
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["im_path"].tolist() == ["raw/mydata/train/y/broken.jpg"]
    df = dirmap.read(out / "dirmap.csv")
    assert len(df) == 5 and "train/y/broken.png" not in set(df["im_path"])
    assert (
        "skipped raw/mydata/train/y/broken.jpg"
        in (tmp_path / "work/results/logs/local/imagefolder.log").read_text()
    )


def test_invalid_config_names_the_field(tmp_path):
    config = _config(
        {"sources": [{"url": "x", "sha256": "short"}], "definer": {"type": "imagefolder"}}
    )
    proc = _build(tmp_path, config, "--dry-run", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "['sources'][0]['sha256']" in out and "does not match" in out


def test_public_datasets_example_config_is_valid(tmp_path):
    config = yaml.safe_load((REPO / "configs/public-datasets.yaml").read_text())
    dry = run_workflow(tmp_path, config, "--dry-run")
    for name in ("imagenette", "cub200", "ham10000", "inat2021"):
        assert f"dataset={name}" in dry.stdout
