"""The `lwise` command line on the digits: score, enhance, export and import checkpoints."""

import shutil
import subprocess
import sys
import tomllib

import dill
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, SMALL_TRAIN

from lwise.cli import main
from lwise.data import dirmap
from lwise.guide.checkpoints import load_model

LOADER = [
    "--arch", "small_cnn", "--image-size", str(SMALL_TRAIN["image_size"]),
    "--mean", *map(str, SMALL_TRAIN["mean"]), "--std", *map(str, SMALL_TRAIN["std"]),
]  # fmt: skip


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def small_set(digits_folder, tmp_path_factory):
    """Two validation images per digit, as a dirmap CSV next to the ImageFolder's."""
    df = dirmap.read(digits_folder / "dirmap.csv")
    df = df[df["split"] == "val"].groupby("class_num").head(2)
    csv = digits_folder / "cli_small.csv"
    df.to_csv(csv, index=False)
    return csv


@pytest.fixture(scope="module")
def scored(digits_folder, digits_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "scored"
    argv = ["score", str(digits_folder), "--checkpoint", str(digits_model), "--out", str(out)]
    assert main(argv) == 0
    return out


def test_console_entry_point_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["lwise"] == "lwise.cli:main"
    help_text = subprocess.run(
        [sys.executable, "-m", "lwise.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("score", "enhance", "export-checkpoint", "import-checkpoint"):
        assert command in help_text


def test_score_an_imagefolder(scored, digits_folder):
    df = dirmap.read(scored / "dirmap.csv")
    assert len(df) == len(dirmap.read(digits_folder / "dirmap.csv"))
    assert df["correct"].mean() > 0.6 and df["difficulty"].between(0, 1).all()
    for name in ("accuracy.csv", "confusion_matrix.png", "probabilities.csv"):
        assert (scored / name).stat().st_size > 0


def test_score_prints_what_it_wrote(capsys, digits_model, small_set, tmp_path):
    code, out, _ = run(capsys, "score", small_set, "--checkpoint", digits_model, "--out", tmp_path)
    assert code == 0
    for name in ("dirmap.csv", "accuracy.csv", "confusion_matrix.png", "probabilities.csv"):
        assert f"wrote {tmp_path / name}:" in out


def test_export_then_score_the_export_gives_the_same_scores(
    capsys, digits_model, small_set, tmp_path
):
    target = tmp_path / "export" / "digits.safetensors"
    code, out, _ = run(capsys, "export-checkpoint", digits_model, "--out", target)
    assert code == 0
    assert f"wrote {target}:" in out and f"wrote {target.with_suffix('.json')}:" in out
    for name, model in (("original", digits_model), ("export", target)):
        assert (
            run(capsys, "score", small_set, "--checkpoint", model, "--out", tmp_path / name)[0] == 0
        )
    a, b = (pd.read_csv(tmp_path / n / "dirmap.csv") for n in ("original", "export"))
    assert list(a["im_path"]) == list(b["im_path"])
    assert np.allclose(a["robust_gt_logit"], b["robust_gt_logit"], atol=1e-5)


def test_plain_state_dict_with_loader_options(capsys, digits_model, small_set, tmp_path):
    reference = tmp_path / "ref"
    assert run(capsys, "score", small_set, "--checkpoint", digits_model, "--out", reference)[0] == 0
    plain = tmp_path / "plain.pt"
    torch.save(
        {f"module.{k}": v for k, v in load_model(digits_model).net.state_dict().items()}, plain
    )
    code, _, err = run(capsys, "score", small_set, "--checkpoint", plain, "--out", tmp_path / "a")
    assert code == 2 and "give arch" in err  # the file does not say; the message says how
    code, _, _ = run(
        capsys, "score", small_set, "--checkpoint", plain, "--out", tmp_path / "b", *LOADER
    )
    assert code == 0
    a = pd.read_csv(reference / "dirmap.csv")["robust_gt_logit"]
    b = pd.read_csv(tmp_path / "b" / "dirmap.csv")["robust_gt_logit"]
    assert np.allclose(a, b, atol=1e-5)


def test_robustness_file_needs_trusted(capsys, digits_model, tmp_path):
    model = load_model(digits_model)
    state = {"module.normalizer.new_mean": model.normalize.mean.view(3, 1, 1),
             "module.normalizer.new_std": model.normalize.std.view(3, 1, 1)}  # fmt: skip
    state |= {f"module.model.{k}": v for k, v in model.net.state_dict().items()}
    robust = tmp_path / "checkpoint.pt.best"
    torch.save({"model": state, "schedule": {"f": lambda e: e}}, robust, pickle_module=dill)
    out = tmp_path / "imported.pt"
    code, _, err = run(capsys, "import-checkpoint", robust, "--out", out, "--arch", "small_cnn")
    assert code == 2 and "--trusted" in err and "runs whatever code" in err and not out.exists()
    args = ["import-checkpoint", robust, "--out", out, "--arch", "small_cnn", "--trusted"]
    code, printed, _ = run(capsys, *args, "--image-size", "32")
    assert code == 0 and f"wrote {out}:" in printed
    torch.load(out, weights_only=True)  # our format: no trust needed any more


def test_enhance_a_folder_of_class_folders(capsys, digits_folder, digits_model, tmp_path):
    """A `<split>/<class>/<image>` tree without a dirmap: indexed first, then enhanced."""
    tree = tmp_path / "tree"
    for f in sorted((digits_folder / "val").glob("*/*"))[::10]:
        (tree / "val" / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tree / "val" / f.parent.name / f.name)
    out = tmp_path / "out"
    code, printed, _ = run(
        capsys, "enhance", tree, "--checkpoint", digits_model, "--out", out, "--eps", "1", "2",
        "--natural", "--batch-size", "8",
    )  # fmt: skip
    assert code == 0
    assert f"wrote {out / 'input' / 'dirmap.csv'}:" in printed
    n = len(list(tree.rglob("*.png")))
    for name in ("natural", "logit_eps1", "logit_eps2"):
        assert f"wrote {out / name}:" in printed
        sets = pd.read_csv(out / name / "dirmap.csv")
        assert len(sets) == n and all((out / name / p).is_file() for p in sets["im_path"])
    eps2 = pd.read_csv(out / "logit_eps2" / "dirmap.csv")
    assert (eps2["l2_distance"] <= 2 + 0.05).all()  # quantised to 8 bits after the PGD
    assert eps2["logit_gain"].mean() > 0
