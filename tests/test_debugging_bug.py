"""Data debugging end to end on a tiny dataset with a planted bug: class `h`'s training images
lack the mode (rings rather than horizontal bars) that its validation images have, and the pool
holds a few `h` rings among many `h` bars. Models are trained here, on the CPU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lwise.data import dirmap
from lwise.debugging import compare, data, failures, retrain, slices
from lwise.debugging.settings import DebuggingConfig
from lwise.guide.train import TrainConfig, train

SIZE = 16
CLASSES = ("d", "h", "v")  # diagonal, horizontal, vertical bar
BUG = "class=h & mode=shape"
TRAIN = {
    "arch": "small_cnn",
    "image_size": SIZE,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "epochs": 12,
    "batch_size": 16,
    "val_batch_size": 200,
    "workers": 0,
    "lr": 0.05,
    "schedule": "step",
    "adversarial": False,
    "eval_every": 12,
}


def bar_image(kind: str, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Mode "bar": a 3-pixel-wide bar (d: diagonal, h: horizontal, v: vertical) at a random
    offset; mode "shape": a shape of the class (h: a ring, v: a filled square, d: a cross)."""
    img = rng.uniform(0, 0.15, size=(SIZE, SIZE))
    off = int(rng.integers(3, SIZE - 5))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if mode == "shape":
        cy, cx = rng.integers(6, SIZE - 6, size=2)
        if kind == "h":
            img[np.abs(np.hypot(yy - cy, xx - cx) - 4) < 1.2] = 1
        elif kind == "v":
            img[cy - 3 : cy + 4, cx - 3 : cx + 4] = 1
        else:
            cross = (np.abs((yy - cy) - (xx - cx)) <= 1) | (np.abs((yy - cy) + (xx - cx)) <= 1)
            img[cross & (np.abs(yy - cy) <= 4) & (np.abs(xx - cx) <= 4)] = 1
    elif kind == "h":
        img[off : off + 3, 2:-2] = 1
    elif kind == "v":
        img[2:-2, off : off + 3] = 1
    else:
        img[np.abs(yy - xx - (off - SIZE // 2)) <= 1] = 1
    return (np.repeat(img[..., None], 3, axis=2) * 255).astype(np.uint8)


def write_set(root, split: str, counts: dict[tuple[str, str], int], rng) -> list[dict]:
    rows = []
    for (kind, mode), n in counts.items():
        for i in range(n):
            path = root / split / kind / f"{mode}_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(bar_image(kind, mode, rng)).save(path)
            rows.append(
                {
                    "split": "train" if split == "pool" else split,
                    "class": kind,
                    "class_num": CLASSES.index(kind),
                    "im_path": path.relative_to(root).as_posix(),
                    "mode": mode,
                }
            )
    return rows


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """This module trains on one CPU thread; the count is restored after it, as later modules'
    numerical tolerances assume the machine's (see `test_models`' LiveFolded test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The dataset and pool dirmaps, and a model trained on the buggy training set."""
    root = tmp_path_factory.mktemp("bars")
    rng = np.random.default_rng(0)
    both = {(k, m): 15 for k in ("d", "v") for m in ("bar", "shape")}
    train_rows = write_set(root, "train", {("h", "bar"): 30, **both}, rng)
    val_counts = {(k, m): 8 for k in CLASSES for m in ("bar", "shape")}
    val_rows = write_set(root, "val", val_counts, rng)
    pool_counts = {("h", "bar"): 60, ("h", "shape"): 6, **both}
    pool_rows = write_set(root, "pool", pool_counts, rng)
    dirmap.write(pd.DataFrame(train_rows + val_rows), root / "dirmap.csv")
    dirmap.write(pd.DataFrame(pool_rows), root / "pool.csv")
    cfg = TrainConfig.from_config(TRAIN)
    train(root / "dirmap.csv", root / "model.pt", root / "metrics.csv", root / "state", cfg)
    return root


def debugging_config(**extra) -> DebuggingConfig:
    settings = {
        "budget": 6,
        "seeds": [0, 1, 2],
        "slice_columns": ["mode"],
        "failure_slices": 3,
        "min_slice_errors": 2,
        "finetune": {"epochs": 4, "lr": 0.02},
    }
    return DebuggingConfig.from_config(settings | extra)


@pytest.fixture(scope="module")
def found(planted):
    out = planted / "debugging"
    cfg = debugging_config()
    data.prepare(
        planted / "dirmap.csv", out / "data/base.csv", out / "data/pool.csv", cfg,
        pool_csv=planted / "pool.csv",
    )  # fmt: skip
    table = failures.find(
        out / "data/base.csv", out / "data/pool.csv", planted / "model.pt",
        out_signals_pool=out / "signals/pool.csv", out_signals_eval=out / "signals/eval.csv",
        out_embeddings=out / "signals/embeddings.npz", out_slices=out / "failures/slices.csv",
        out_images=out / "failures/images.csv", out_grid=out / "failures/grid.png",
        cfg=cfg, trusted=False,
    )  # fmt: skip
    return out, table


def test_the_planted_bug_is_the_worst_failure_slice(found):
    out, table = found
    worst = table.iloc[0]
    assert worst["slice"] == BUG and worst["failure"] and worst["error_rate"] >= 0.75
    clean = table.set_index("slice").loc["class=h & mode=bar", "error_rate"]
    assert clean <= 0.25
    wrong = pd.read_csv(out / "failures/images.csv")
    assert (wrong["mode"] == "shape").mean() > 0.5
    assert wrong["failure_slices"].fillna("").str.contains(BUG, regex=False).any()
    assert (out / "failures/grid.png").stat().st_size > 0


def run_method(out, model, method: str, seed: int, cfg: DebuggingConfig):
    folder = out / "runs" / method / f"seed{seed}"
    retrain.run(
        base_csv=out / "data/base.csv", pool_csv=out / "signals/pool.csv",
        eval_csv=out / "signals/eval.csv", embeddings=out / "signals/embeddings.npz",
        slices_csv=out / "failures/slices.csv", model_path=model, method=method, seed=seed,
        out_debug_set=folder / "debug_set.csv", out_predictions=folder / "predictions.csv",
        out_metrics=folder / "metrics.csv", work_dir=folder / "training", cfg=cfg,
        guide_train=TRAIN, trusted=False,
    )  # fmt: skip
    return folder


def test_targeted_selection_repairs_the_planted_bug_better_than_random(planted, found):
    out, _ = found
    cfg = debugging_config()
    methods = ["S-Random", "S-Similarity", "L-WISE"]
    folders = {
        (m, s): run_method(out, planted / "model.pt", m, s, cfg) for m in methods for s in cfg.seeds
    }
    ring_h = {}
    for key, folder in folders.items():
        chosen = pd.read_csv(folder / "debug_set.csv")
        ring_h[key] = int(((chosen["class"] == "h") & (chosen["mode"] == "shape")).sum())
    # The pool's h images: 60 bars and 6 rings; random expects about half a ring in 6.
    assert all(ring_h[("S-Similarity", s)] >= 5 for s in cfg.seeds)
    assert all(ring_h[("L-WISE", s)] == 6 for s in cfg.seeds)
    assert np.mean([ring_h[("S-Random", s)] for s in cfg.seeds]) <= 3
    table = compare.run(
        [f / "metrics.csv" for f in folders.values()], out / "signals/eval.csv",
        out / "failures/slices.csv", out / "comparison.csv", out / "comparison.png",
        eval_split="val", dataset="bars",
    )  # fmt: skip
    bug = table[(table["scope"] == "failure_slice") & (table["name"] == BUG)].set_index("method")
    assert bug.loc["before", "mean"] <= 0.25
    best = max(bug.loc["S-Similarity", "mean"], bug.loc["L-WISE", "mean"])
    assert best >= bug.loc["S-Random", "mean"] + 0.2, bug
    assert bug.loc["S-Random", "seeds"] == 3 and not np.isnan(bug.loc["S-Random", "sd"])
    assert (out / "comparison.png").stat().st_size > 0
    metrics = pd.read_csv(folders[("S-Random", 0)] / "metrics.csv")
    assert set(metrics["scope"]) == {"overall", "class", "failure_slice", "model_errors"}
    assert not (folders[("S-Random", 0)] / "training").exists()  # keep_models false


def test_slice_accuracy_matches_predictions(found, planted):
    out, _ = found
    folder = run_method(out, planted / "model.pt", "none", 0, debugging_config())
    predicted = pd.read_csv(folder / "predictions.csv")
    assert pd.read_csv(folder / "debug_set.csv").empty
    scored = dirmap.read(out / "signals/eval.csv")
    val = scored[scored["split"] == "val"].reset_index(drop=True)
    assert list(predicted["im_path"].str.split("/").str[-3:].str.join("/")) == list(
        val["im_path"].str.split("/").str[-3:].str.join("/")
    )
    mask = slices.in_slice(val, BUG)
    metrics = pd.read_csv(folder / "metrics.csv").set_index(["scope", "name"])
    expected = predicted.loc[mask.to_numpy(), "correct"].mean()
    assert metrics.loc[("failure_slice", BUG), "accuracy"] == pytest.approx(expected)
    assert metrics.loc[("overall", "all"), "n"] == len(val)
