import json

import pandas as pd
import pytest
from conftest import make_image, make_imagefolder

from lwise.data import definers, dirmap


def test_imagefolder_numbering_is_shared_across_splits(tmp_path):
    # val lacks "bird": per-split numbering (the reference) would make val's cat 0, not 1.
    make_imagefolder(tmp_path / "raw", {"train": {"bird": 1, "cat": 2}, "val": {"cat": 1}})
    df = definers.define("imagefolder", tmp_path / "raw", tmp_path / "dirmap.csv")
    nums = df.drop_duplicates(["split", "class"]).set_index(["split", "class"])["class_num"]
    assert nums[("train", "cat")] == nums[("val", "cat")] == 1
    assert df["im_path"].str.startswith("raw/train/").sum() == 3
    dirmap.read(tmp_path / "dirmap.csv")  # paths resolve relative to the CSV


def test_imagefolder_split_mapping(tmp_path):
    make_imagefolder(tmp_path / "raw/inat", {"train_mini": {"a": 2}, "val": {"a": 1}})
    df = definers.imagefolder(
        tmp_path / "raw", root="inat", splits={"train_mini": "train", "val": "val"}
    )
    assert sorted(df["split"]) == ["train", "train", "val"]


def test_ham10000_lesion_level_split(tmp_path):
    raw = tmp_path / "raw"
    rows = []
    for i in range(40):
        dx = ["nv", "mel", "bkl", "bcc", "akiec", "vasc", "df"][i % 7]
        lesion = f"HAM_{i // 2:07d}"  # two images per lesion
        rows.append({"lesion_id": lesion, "image_id": f"ISIC_{i:07d}", "dx": dx, "age": 50})
        make_image(raw / ("part1" if i < 20 else "part2") / f"ISIC_{i:07d}.jpg", fmt="JPEG")
    raw.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(raw / "HAM10000_metadata.csv", index=False)
    df = definers.define("ham10000", raw, tmp_path / "dirmap.csv")
    assert df.groupby("lesion_id")["split"].nunique().max() == 1
    assert set(df["split"]) == {"train", "val"}
    order = dict(zip(df["class"], df["class_num"], strict=True))
    assert order == {"akiec": 0, "bcc": 1, "bkl": 2, "df": 3, "mel": 4, "nv": 5, "vasc": 6}
    assert "age" in df.columns
    again = definers.ham10000(raw)
    assert (
        again.sort_values("image_id")["split"].to_numpy()
        == df.sort_values("image_id")["split"].to_numpy()
    ).all()


def test_ham10000_missing_image_is_named(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame([{"lesion_id": "L", "image_id": "ISIC_1", "dx": "nv"}]).to_csv(
        raw / "m.csv", index=False
    )
    with pytest.raises(
        FileNotFoundError, match=r"m.csv: 1 image_id\(s\) have no image file.*ISIC_1"
    ):
        definers.ham10000(raw, metadata="m.csv")


def test_mhist(tmp_path):
    raw = tmp_path / "raw"
    col = "Number of Annotators who Selected SSA (Out of 7)"
    ann = [
        {"Image Name": "MHIST_a.png", "Majority Vote Label": "SSA", col: 6, "Partition": "train"},
        {"Image Name": "MHIST_b.png", "Majority Vote Label": "HP", col: 1, "Partition": "test"},
    ]
    for a in ann:
        make_image(raw / "images" / a["Image Name"])
    pd.DataFrame(ann).to_csv(raw / "annotations.csv", index=False)
    df = definers.define("mhist", raw, tmp_path / "dirmap.csv").set_index("class")
    assert df.loc["hp", "class_num"] == 0 and df.loc["ssa", "class_num"] == 1
    assert df.loc["ssa", "split"] == "train" and df.loc["hp", "split"] == "test"
    assert df.loc["ssa", col] == 6


def test_imagenet16_preset_keeps_fine_class(tmp_path):
    raw = tmp_path / "raw"
    wnids = [f"n{i:08d}" for i in range(1000)]
    for idx in (0, 151, 268, 281, 500):  # fish, dog, dog, house_cat, not an animal of the 16
        make_image(raw / "imagenet/val" / wnids[idx] / f"img_{idx}.JPEG", fmt="JPEG")
    (raw / "imagenet/train").mkdir(parents=True)
    table = {str(i): [w, f"name{i}"] for i, w in enumerate(wnids)}
    (raw / "index.json").write_text(json.dumps(table))
    df = definers.define(
        "imagenet_subset",
        raw,
        tmp_path / "dirmap.csv",
        root="imagenet",
        class_index="index.json",
        preset="imagenet16",
    )
    got = df.set_index("orig_class_num")[["class", "class_num", "orig_class"]]
    assert got.loc[151, "class"] == "dog" and got.loc[151, "class_num"] == 0
    assert got.loc[281, "class"] == "house_cat" and got.loc[281, "class_num"] == 1
    assert got.loc[0, "class"] == "fish" and got.loc[0, "class_num"] == 6
    assert got.loc[268, "orig_class"] == "name268" and 500 not in got.index
    assert sum(len(definers.expand_indices(v)) for v in definers.IMAGENET16.values()) == 277


def test_imagenet_class_list_renumbers_by_index_without_json(tmp_path):
    raw = tmp_path / "raw"
    for w in ("n003", "n001", "n002"):
        make_image(raw / "train" / w / f"{w}.png")
    df = definers.imagenet_subset(raw, classes=[[1, 2]])
    assert dict(zip(df["orig_class"], df["class_num"], strict=True)) == {"n002": 0, "n003": 1}


def test_recipe_and_cub(tmp_path):
    raw = tmp_path / "raw"
    make_image(raw / "sub/imgs/x.png")
    pd.DataFrame([{"split": "test", "class": "x", "class_num": 4, "im_path": "imgs/x.png"}]).to_csv(
        raw / "sub/recipe.csv", index=False
    )
    df = definers.define("recipe", raw, tmp_path / "dirmap.csv", path="sub/recipe.csv")
    assert df.loc[0, "im_path"] == "raw/sub/imgs/x.png"

    cub = raw / "CUB_200_2011"
    files = ["001.Black_footed_Albatross/a.jpg", "002.Laysan_Albatross/b.jpg"]
    for f in files:
        make_image(cub / "images" / f, fmt="JPEG")
    (cub / "images.txt").write_text("1 " + files[0] + "\n2 " + files[1] + "\n")
    (cub / "train_test_split.txt").write_text("1 1\n2 0\n")
    (cub / "image_class_labels.txt").write_text("1 1\n2 2\n")
    cub_df = definers.cub200(raw).set_index("split")
    assert cub_df.loc["train", "class"] == "001.Black_footed_Albatross"
    assert cub_df.loc["test", "class_num"] == 1


def test_unknown_definer(tmp_path):
    with pytest.raises(ValueError, match="unknown definer 'nope'"):
        definers.define("nope", tmp_path, tmp_path / "d.csv")
