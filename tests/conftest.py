from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _participant_salt(monkeypatch):
    # Keep the participant salt (lwise.core.privacy) out of the checkout during tests.
    monkeypatch.setenv("LWISE_PARTICIPANT_SALT", "lwise-tests")


def workflow_command(workdir: Path, config: dict, *args: str, cores: int = 2) -> list[str]:
    """The snakemake command that runs the repository's Snakefile on `config` in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "test-config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(cfg),
        "--cores", str(cores),
        *args,
    ]  # fmt: skip


def run_workflow(
    workdir: Path, config: dict, *args: str, check: bool = True, cores: int = 2
) -> subprocess.CompletedProcess:
    """Run the workflow as a user would; fail with its output unless `check` is False."""
    proc = subprocess.run(
        workflow_command(workdir, config, *args, cores=cores), capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def nothing_to_do(workdir: Path, config: dict) -> bool:
    proc = run_workflow(workdir, config, "--dry-run")
    return "Nothing to be done" in proc.stdout + proc.stderr


def make_image(path: Path, size=(20, 16), color=(200, 30, 30), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    arr[..., 0] = color[0]
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt)
    return path


def make_imagefolder(root: Path, layout: dict[str, dict[str, int]], ext=".png") -> Path:
    """`{"train": {"cat": 3, "dog": 2}, "val": {...}}` -> files under root/<split>/<class>/."""
    for split, classes in layout.items():
        for cls, n in classes.items():
            for i in range(n):
                make_image(root / split / cls / f"{cls}_{split}_{i}{ext}")
    return root


def imagefolder_dataset(url: str, root: str = ".", **source) -> dict:
    return {
        "sources": [{"url": url, **source}],
        "definer": {"type": "imagefolder", "options": {"root": root}},
    }


@pytest.fixture
def repo() -> Path:
    return REPO


SMALL_TRAIN = {
    "arch": "small_cnn",
    "image_size": 32,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "epochs": 4,
    "batch_size": 25,
    "val_batch_size": 200,
    "workers": 0,
    "lr": 0.05,
    "schedule": "cosine",
    "warmup_epochs": 1,
    "eps": 0.5,
    "attack_steps": 2,
    "attack_lr": 0.25,
    "eval_every": 1,
}


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """A class-balanced subset of the digits as an ImageFolder: 60 train, 20 val per class."""
    from lwise.data.definers import define
    from lwise.data.download import download_dataset
    from lwise.data.imagefolder import BuildOptions, build

    root = tmp_path_factory.mktemp("digits")
    download_dataset([{"builtin": "digits"}], root / "raw", root / "dl")
    define("imagefolder", root / "raw", root / "dirmap.csv", root="digits")
    build(
        root / "dirmap.csv",
        root / "imagefolder",
        BuildOptions.from_config(dict(n_per_class={"train": 60, "val": 20})),
    )
    return root / "imagefolder"


@pytest.fixture(scope="session")
def digits_model(digits_folder, tmp_path_factory) -> Path:
    """A small robust model trained here on the digits subset (a few seconds on the CPU)."""
    from lwise.guide.train import TrainConfig, train

    out = tmp_path_factory.mktemp("guide")
    train(
        digits_folder / "dirmap.csv", out / "model.pt", out / "metrics.csv", out / "state",
        TrainConfig.from_dict(SMALL_TRAIN),
    )  # fmt: skip
    return out / "model.pt"


def tiny_config() -> dict:
    """The default config, shrunk: a digits subset, one short epoch, two epsilons."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["datasets"]["digits"]["build"] = {"n_per_class": {"train": 20, "val": 6}}
    config["guide"]["train"] = {**SMALL_TRAIN, "epochs": 1}
    config["enhance"]["epsilons"] = [1, 2]
    from lwise.publish.s3local import free_port

    config["upload"]["local_port"] = free_port()
    config["simulation"]["n_participants"] = 4
    config["evaluation"]["n_boot"] = 50
    config["evaluation"]["folds"] = 3
    return config


def core_config() -> dict:
    """`tiny_config` with the method families off: for tests of the core chain (download to
    alignment). Each family's own tests turn it on; the default-run test runs them all."""
    config = tiny_config()
    config["experiments"]["enabled"] = False
    config["correspondence"]["datasets"] = []
    config["attention"]["enabled"] = False
    config["visalign"]["datasets"] = []
    config["debugging"]["datasets"] = []
    return config


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> tuple[Path, dict]:
    """The README's main job: the default config, every family, then the HTML report, run once
    per session (the longest workflow of the suite; several tests read its results)."""
    from lwise.publish.s3local import free_port

    work = tmp_path_factory.mktemp("default_run")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["upload"]["local_port"] = free_port()
    run_workflow(work, config, "--report", "results/report.html", "--report-after-run")
    return work, config


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> tuple[Path, dict]:
    """The core chain (`core_config`) run to the end once per session. Tests only plan on it
    (dry runs) or rerun what a changed config asks for, never the base config's outputs."""
    work = tmp_path_factory.mktemp("dag")
    config = core_config()
    run_workflow(work, config)
    return work, config
