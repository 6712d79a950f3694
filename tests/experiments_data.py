"""A tiny dataset laid out like the workflow's results/<ds>/ tree, for the experiments tests:
imagefolder/, difficulty/dirmap.csv, stimuli/<set>/ and upload/<set>/dirmap.csv (with `url`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lwise.core.keys import NATURAL, set_name


def make_dataset(
    root: Path,
    classes=("cat", "dog", "fox"),
    n_train: int = 40,
    n_val: int = 12,
    epsilons=(0.5, 1, 2, 4),
    objective: str = "logit",
    size: int = 8,
) -> dict:
    """Write the tree under `root`; return the paths `build_study` takes."""
    rng = np.random.default_rng(0)
    rows = []
    for ci, cls in enumerate(classes):
        for split, n in (("train", n_train), ("val", n_val)):
            for i in range(n):
                key = f"{split}/{cls}/{cls}_{split}_{i:03d}.jpg"
                path = root / "imagefolder" / key
                path.parent.mkdir(parents=True, exist_ok=True)
                arr = np.full((size, size, 3), 40 * ci + 20, dtype=np.uint8)
                Image.fromarray(arr).save(path)
                rows.append({"split": split, "class": cls, "class_num": ci, "key": key,
                             "difficulty": float(rng.random())})  # fmt: skip
    images = pd.DataFrame(rows)
    diff = images.assign(im_path="../imagefolder/" + images["key"]).drop(columns=["key"])
    (root / "difficulty").mkdir(parents=True, exist_ok=True)
    diff.to_csv(root / "difficulty" / "dirmap.csv", index=False)
    sets = [NATURAL] + [set_name(objective, e) for e in epsilons]
    uploads = {}
    for s in sets:
        folder = root / "stimuli" / s
        png_keys = images["key"].str.replace(".jpg", ".png", regex=False)
        for ci, key in enumerate(png_keys):
            path = folder / key
            path.parent.mkdir(parents=True, exist_ok=True)
            shade = (sets.index(s) * 30 + ci) % 255
            Image.fromarray(np.full((size, size, 3), shade, dtype=np.uint8)).save(path)
        up = root / "upload" / s / "dirmap.csv"
        up.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({
            "split": images["split"], "class": images["class"], "class_num": images["class_num"],
            "im_path": f"../../stimuli/{s}/" + png_keys,
            "s3_key": png_keys,
            "url": f"http://127.0.0.1:9900/lwise-ds-{s.replace('_', '-')}/" + png_keys,
        }).to_csv(up, index=False)  # fmt: skip
        uploads[s] = up
    return {
        "difficulty_csv": root / "difficulty" / "dirmap.csv",
        "imagefolder": root / "imagefolder",
        "uploads": uploads,
        "stimuli_root": root / "stimuli",
        "images": images,
    }


def upload_sets(root: Path, data: dict, cfg_for) -> dict:
    """Upload every stimulus set of `make_dataset`'s tree for real (`lwise.publish.s3`) and
    return set name -> the upload rule's dirmap (with the objects' URLs), in place of the
    made-up URLs of `data["uploads"]`. `cfg_for(set_name)` gives each set's UploadConfig."""
    from lwise.publish.s3 import upload_image_set

    uploads = {}
    for name, made_up in data["uploads"].items():
        listed = pd.read_csv(made_up)
        folder = data["stimuli_root"] / name
        listed[["split", "class", "class_num"]].assign(im_path=listed["s3_key"]).to_csv(
            folder / "dirmap.csv", index=False
        )
        out = root / "uploaded" / name
        upload_image_set(
            folder / "dirmap.csv", folder, cfg_for(name), out / "dirmap.csv", out / "dirmap.json"
        )
        uploads[name] = out / "dirmap.csv"
    return uploads
