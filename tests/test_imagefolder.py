import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_image, make_imagefolder
from PIL import Image

from lwise.data import definers, dirmap
from lwise.data.imagefolder import BuildOptions, build, dataset_roots


@pytest.fixture
def recipe(tmp_path):
    make_imagefolder(
        tmp_path / "raw",
        {"train": {"ant": 6, "bee": 2, "cat": 4}, "val": {"ant": 3, "bee": 3, "cat": 1}},
    )
    definers.define("imagefolder", tmp_path / "raw", tmp_path / "dirmap.csv")
    return tmp_path / "dirmap.csv"


def test_plain_build_links_files_and_keeps_origin(recipe, tmp_path):
    out = build(recipe, tmp_path / "if", BuildOptions.from_config())
    assert len(out) == 19
    first = out.iloc[0]
    assert first["im_path"] == "train/ant/ant_train_0.png"
    assert (tmp_path / "if" / first["orig_im_path"]).resolve() == (
        tmp_path / "raw/train/ant/ant_train_0.png"
    )
    src, dst = tmp_path / "raw/train/ant/ant_train_0.png", tmp_path / "if/train/ant/ant_train_0.png"
    assert os.path.samefile(src, dst)  # no transform needed: hard link
    dirmap.read(tmp_path / "if/dirmap.csv")
    assert pd.read_csv(tmp_path / "if/skipped.csv").empty


def test_class_subset_renumbers_and_keeps_old_numbers(recipe, tmp_path):
    out = build(recipe, tmp_path / "if", BuildOptions.from_config(dict(classes=["bee", "cat"])))
    pairs = out.drop_duplicates("class").set_index("class")
    assert pairs.loc["bee", "class_num"] == 0 and pairs.loc["cat", "class_num"] == 1
    assert pairs.loc["bee", "orig_class_num"] == 1 and pairs.loc["cat", "orig_class_num"] == 2
    sub = build(
        recipe,
        tmp_path / "if2",
        BuildOptions.from_config(dict(classes=["a"], classes_inclusive=True)),
    )
    assert set(sub["class"]) == {"ant", "cat"}
    with pytest.raises(ValueError, match=r"class\(es\) \['cow'\] not in the dirmap"):
        build(recipe, tmp_path / "if3", BuildOptions.from_config(dict(classes=["cow"])))
    assert not (tmp_path / "if3").exists()


def test_balanced_subsample_is_reproducible(recipe, tmp_path):
    opts = BuildOptions.from_config(dict(n_per_class={"train": 2}))
    a = build(recipe, tmp_path / "a", opts)
    b = build(recipe, tmp_path / "b", opts)
    assert a["im_path"].tolist() == b["im_path"].tolist()
    counts = a.groupby(["split", "class"]).size()
    assert (counts["train"] == 2).all()
    assert counts[("val", "ant")] == 3  # val not limited
    other = build(
        recipe, tmp_path / "c", BuildOptions.from_config(dict(n_per_class={"train": 2}, seed=5))
    )
    assert other["im_path"].tolist() != a["im_path"].tolist()


def test_oversample_names_copies_distinctly(recipe, tmp_path):
    out = build(recipe, tmp_path / "o", BuildOptions.from_config(dict(oversample=True)))
    counts = out.groupby(["split", "class"]).size()
    assert (counts["train"] == 6).all() and (counts["val"] == 3).all()
    copies = out[out["copy"] > 0]
    assert len(copies) == (6 - 2) + (6 - 4) + (3 - 1)
    assert copies["im_path"].str.contains("__copy").all()
    assert out["im_path"].is_unique and set(out.loc[out["copy"] == 0, "class"]) == {
        "ant",
        "bee",
        "cat",
    }


@pytest.mark.parametrize("mode, expected_red_at_edge", [("squash", True), ("crop", False)])
def test_resize_modes_and_format(tmp_path, mode, expected_red_at_edge):
    raw = tmp_path / "raw/train/x"
    raw.mkdir(parents=True)
    img = np.zeros((20, 60, 3), np.uint8)  # wide: red left third, green middle, blue right
    img[:, :20, 0] = img[:, 20:40, 1] = img[:, 40:, 2] = 255
    Image.fromarray(img).save(raw / "wide.png")
    definers.define("imagefolder", tmp_path / "raw", tmp_path / "d.csv")
    out = build(
        tmp_path / "d.csv",
        tmp_path / "o",
        BuildOptions.from_config(dict(resize=mode, size=(10, 10), format="jpeg")),
    )
    assert out.loc[0, "im_path"] == "train/x/wide.jpg"
    with Image.open(tmp_path / "o/train/x/wide.jpg") as res:
        assert res.size == (10, 10) and res.format == "JPEG"
        left = np.asarray(res)[5, 0]
    assert (left[0] > 150) == expected_red_at_edge  # crop keeps only the green centre


def test_exif_orientation_and_modes_become_rgb(tmp_path):
    folder = tmp_path / "raw/train/x"
    make_image(folder / "cmyk.jpg", mode="CMYK", fmt="JPEG")
    make_image(folder / "gray.png", mode="L")
    make_image(folder / "pal.png", mode="P")
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.save(folder / "alpha.png")
    rotated = Image.new("RGB", (30, 10), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    rotated.save(folder / "rot.jpg", exif=exif)
    definers.define("imagefolder", tmp_path / "raw", tmp_path / "d.csv")
    build(tmp_path / "d.csv", tmp_path / "o", BuildOptions.from_config())
    for name in ("cmyk.jpg", "gray.png", "pal.png", "alpha.png", "rot.jpg"):
        with Image.open(tmp_path / "o/train/x" / name) as im:
            assert im.mode == "RGB", name
    with Image.open(tmp_path / "o/train/x/rot.jpg") as im:
        assert im.size == (10, 30)
    with Image.open(tmp_path / "o/train/x/alpha.png") as im:
        assert im.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black


def test_corrupt_image_is_skipped_and_reported(recipe, tmp_path):
    bad = tmp_path / "raw/train/bee/bee_train_1.png"
    bad.write_bytes(b"not a png at all")
    out = build(recipe, tmp_path / "o", BuildOptions.from_config(dict(resize="squash", size=8)))
    skipped = pd.read_csv(tmp_path / "o/skipped.csv")
    assert skipped["im_path"].tolist() == ["raw/train/bee/bee_train_1.png"]
    assert "UnidentifiedImageError" in skipped.loc[0, "error"]
    assert len(out) == 18 and not (tmp_path / "o/train/bee/bee_train_1.png").exists()


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="resize 'stretch'"):
        BuildOptions.from_config(dict(resize="stretch", size=(2, 2)))
    with pytest.raises(ValueError, match="resize needs 'size'"):
        BuildOptions.from_config(dict(resize="crop"))
    assert BuildOptions.from_config({"size": 32, "resize": "crop"}).size == (32, 32)


def _png16(path, array):
    """A 16-bit-per-channel PNG (grey or RGB) written by hand: PIL cannot write 16-bit RGB."""
    import struct
    import zlib

    height, width = array.shape[:2]
    colour = 0 if array.ndim == 2 else 2
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )  # fmt: skip


@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_images_are_scaled_to_8bit_not_clipped(tmp_path, channels):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    array = ramp if channels == 1 else np.stack([ramp, ramp[::-1], np.full_like(ramp, 30000)], -1)
    _png16(tmp_path / "raw/train/a/ramp.png", array)
    definers.define("imagefolder", tmp_path / "raw", tmp_path / "d.csv")
    build(tmp_path / "d.csv", tmp_path / "o", BuildOptions.from_config({"format": "png"}))
    out = np.asarray(Image.open(tmp_path / "o/train/a/ramp.png").convert("RGB")).astype(int)
    expected = np.rint(ramp / 257.0)
    assert len(np.unique(out[..., 0])) > 200  # a smooth ramp, not 0/255
    assert np.abs(out[..., 0] - expected).max() <= 1
    if channels == 3:
        assert np.abs(out[..., 2] - 30000 / 257).max() <= 1


def test_dirmap_paths_that_leave_the_dataset_are_refused_not_copied(tmp_path):
    private = tmp_path / "outside" / "private_photo.png"
    make_image(private)
    raw = tmp_path / "ds" / "raw"
    make_image(raw / "train/a/ok.png")
    rows = [
        {"split": "train", "class": "a", "class_num": 0, "im_path": "raw/train/a/ok.png"},
        {"split": "train", "class": "a", "class_num": 0,
         "im_path": "raw/../../outside/private_photo.png"},
        {"split": "train", "class": "a", "class_num": 0, "im_path": str(private)},
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "ds/dirmap.csv", index=False)
    roots = dataset_roots(raw)
    escape = r"outside the dataset's folders at line\(s\) 3, 4"
    with pytest.raises(dirmap.DirmapError, match=escape):
        build(tmp_path / "ds/dirmap.csv", tmp_path / "ds/if", BuildOptions.from_config(), 1, roots)
    assert not (tmp_path / "ds/if").exists()
    # Listed explicitly by the user, the outside folder is allowed.
    out = build(
        tmp_path / "ds/dirmap.csv",
        tmp_path / "ds/if",
        BuildOptions.from_config(),
        1,
        dataset_roots(raw, [str(tmp_path / "outside")]),
    )
    assert len(out) == 3


def test_images_of_a_linked_local_source_are_inside_the_dataset(tmp_path):
    mine = tmp_path / "mine"
    make_image(mine / "train/a/x.png")
    raw = tmp_path / "ds" / "raw"
    raw.mkdir(parents=True)
    (raw / "mine").symlink_to(mine, target_is_directory=True)
    pd.DataFrame(
        [{"split": "train", "class": "a", "class_num": 0, "im_path": "raw/mine/train/a/x.png"}]
    ).to_csv(tmp_path / "ds/dirmap.csv", index=False)
    out = build(
        tmp_path / "ds/dirmap.csv", tmp_path / "ds/if", BuildOptions.from_config(), 1,
        dataset_roots(raw),
    )  # fmt: skip
    assert len(out) == 1


def test_subset_numbers_classes_by_sorted_name_and_keeps_a_finer_orig_class_num(tmp_path):
    # Rows in an order that is not sorted by name, with ImageNet indices already present.
    rows = []
    for cls, num, orig in (("tabby", 0, 281), ("beagle", 1, 162), ("albatross", 2, 146)):
        path = make_image(tmp_path / f"raw/{cls}.png")
        rows.append({"split": "train", "class": cls, "class_num": num,
                     "im_path": path.relative_to(tmp_path).as_posix(), "orig_class_num": orig})
    pd.DataFrame(rows).to_csv(tmp_path / "dirmap.csv", index=False)  # fmt: skip
    opts = BuildOptions.from_config({"classes": ["tabby", "albatross"]})
    out = build(tmp_path / "dirmap.csv", tmp_path / "if", opts).set_index("class")
    assert out.loc["albatross", "class_num"] == 0 and out.loc["tabby", "class_num"] == 1
    assert out.loc["albatross", "orig_class_num"] == 146  # not overwritten by the old class_num
    assert out.loc["tabby", "orig_class_num"] == 281


def test_empty_class_list_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match=r"build\.classes \[\].*(short|non-empty)"):
        BuildOptions.from_config({"classes": []})


# --- issue 13 item 16: survivors of the mutmut 3.8.1 run over lwise/data/imagefolder.py ----------


def _recipe(tmp_path, rows):
    """A recipe dirmap at tmp_path/dirmap.csv over images made under tmp_path/raw."""
    for row in rows:
        make_image(tmp_path / row["im_path"], **row.pop("image", {}))
    pd.DataFrame(rows).to_csv(tmp_path / "dirmap.csv", index=False)
    return tmp_path / "dirmap.csv"


def _row(path, cls="a", num=0, split="train", **extra):
    return {"split": split, "class": cls, "class_num": num, "im_path": path, **extra}


def test_size_given_as_a_yaml_list_becomes_a_tuple(recipe, tmp_path):
    opts = BuildOptions.from_config({"size": [8, 6], "resize": "squash"})
    assert opts.size == (8, 6)
    build(recipe, tmp_path / "o", opts)
    with Image.open(tmp_path / "o/train/ant/ant_train_0.png") as im:
        assert im.size == (8, 6)


def test_inclusive_class_match_with_no_hit_names_the_pattern(recipe, tmp_path):
    with pytest.raises(ValueError, match=r"no class matches \['zebra'\]"):
        opts = BuildOptions.from_config(dict(classes=["zebra"], classes_inclusive=True))
        build(recipe, tmp_path / "o", opts)


def test_oversampling_is_reproducible_and_numbers_each_images_copies_from_one(recipe, tmp_path):
    opts = BuildOptions.from_config(dict(oversample=True))
    a = build(recipe, tmp_path / "a", opts)
    b = build(recipe, tmp_path / "b", opts)
    assert a.equals(b)
    copies = a[a["copy"] > 0]
    for _, group in copies.groupby("orig_im_path"):
        assert sorted(group["copy"]) == list(range(1, len(group) + 1))
        stem = Path(group["orig_im_path"].iloc[0]).stem
        assert sorted(group["im_path"]) == sorted(
            f"{r.split}/{r._2}/{stem}__copy{r.copy}.png" for r in group.itertuples()
        )


def test_same_file_names_in_one_class_get_numbered_suffixes(tmp_path):
    rows = [_row(f"raw/{d}/cat.png") for d in ("x", "y", "z")] + [_row("raw/w/CAT.png")]
    out = build(_recipe(tmp_path, rows), tmp_path / "o", BuildOptions.from_config())
    by_source = dict(zip(out["orig_im_path"], out["im_path"], strict=True))
    assert by_source == {
        "../raw/x/cat.png": "train/a/cat.png",
        "../raw/y/cat.png": "train/a/cat__2.png",
        "../raw/z/cat.png": "train/a/cat__3.png",
        "../raw/w/CAT.png": "train/a/CAT__4.png",  # names differing only in case clash too
    }
    for src, dest in by_source.items():
        assert os.path.samefile(tmp_path / "o" / src, tmp_path / "o" / dest)


def test_format_conversion_without_resizing(tmp_path):
    rows = [_row("raw/a.png"), _row("raw/b.PNG")]
    recipe_csv = _recipe(tmp_path, rows)
    jpeg = build(recipe_csv, tmp_path / "j", BuildOptions.from_config({"format": "jpeg"}))
    assert sorted(jpeg["im_path"]) == ["train/a/a.jpg", "train/a/b.jpg"]
    for name in ("a.jpg", "b.jpg"):
        with Image.open(tmp_path / "j/train/a" / name) as im:
            assert im.format == "JPEG"
    # Already in the requested format (whatever the suffix's case): linked, not re-encoded.
    build(recipe_csv, tmp_path / "p", BuildOptions.from_config({"format": "png"}))
    assert os.path.samefile(tmp_path / "raw/a.png", tmp_path / "p/train/a/a.png")
    assert os.path.samefile(tmp_path / "raw/b.PNG", tmp_path / "p/train/a/b.png")


def test_files_are_copied_where_hard_links_fail(recipe, tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    out = build(recipe, tmp_path / "o", BuildOptions.from_config())
    for row in out.itertuples():
        src, dest = tmp_path / "o" / row.orig_im_path, tmp_path / "o" / row.im_path
        assert dest.read_bytes() == src.read_bytes() and not os.path.samefile(src, dest)


@pytest.mark.parametrize("suffix, fmt", [(".png", "jpeg"), (".jpeg", None), (".jpg", None)])
def test_jpeg_quality_is_used_for_every_jpeg_written(tmp_path, suffix, fmt):
    from lwise.data.imaging import load_rgb, resize

    name = f"raw/noise{suffix}"
    recipe_csv = _recipe(tmp_path, [_row(name, image={"size": (40, 32)})])
    sizes = {}
    for quality in (10, 95):
        opts = BuildOptions.from_config(
            {"format": fmt, "jpeg_quality": quality, "resize": "squash", "size": 24}
        )
        out = build(recipe_csv, tmp_path / f"q{quality}", opts)
        written = tmp_path / f"q{quality}" / out.loc[0, "im_path"]
        expected = tmp_path / f"expected{quality}{written.suffix}"
        resize(load_rgb(tmp_path / name)[0], (24, 24), "squash").save(expected, quality=quality)
        assert written.read_bytes() == expected.read_bytes()
        sizes[quality] = written.stat().st_size
    assert sizes[10] < sizes[95]


def test_roots_of_a_dataset_without_a_raw_folder(tmp_path):
    assert dataset_roots(tmp_path / "nothere", ["/data/mine"]) == [
        tmp_path / "nothere",
        Path("/data/mine"),
    ]


def test_build_keeps_an_existing_orig_im_path_and_drops_the_copy_column(tmp_path):
    rows = [_row("raw/a.png", orig_im_path="s3://bucket/originals/a.tif"), _row("raw/b.png")]
    rows[1]["orig_im_path"] = "s3://bucket/originals/b.tif"
    out = build(_recipe(tmp_path, rows), tmp_path / "o", BuildOptions.from_config())
    assert out["orig_im_path"].tolist() == [r["orig_im_path"] for r in rows]
    assert list(out.columns) == ["split", "class", "class_num", "im_path", "orig_im_path"]
    assert list(pd.read_csv(tmp_path / "o/dirmap.csv").columns) == list(out.columns)


def test_build_uses_the_threads_it_is_given(recipe, tmp_path, monkeypatch):
    import threading

    from lwise.data import imagefolder

    used = set()
    real = imagefolder.load_rgb

    def spy(path):
        used.add(threading.get_ident())
        return real(path)

    monkeypatch.setattr(imagefolder, "load_rgb", spy)
    build(recipe, tmp_path / "one", BuildOptions.from_config(), threads=1)
    assert len(used) == 1
    used.clear()
    build(recipe, tmp_path / "zero", BuildOptions.from_config(), threads=0)  # at least one
    assert len(used) == 1


def test_skipped_images_are_logged_listed_and_counted(recipe, tmp_path, caplog, capsys):
    (tmp_path / "raw/train/bee/bee_train_1.png").write_bytes(b"not a png")
    with caplog.at_level(logging.INFO, logger="lwise.data.imagefolder"):
        out = build(recipe, tmp_path / "o", BuildOptions.from_config(dict(oversample=True)))
    assert len(out) < 6 * 3 + 3 * 3 - 1  # the bad image's copies went with it
    assert "skipped raw/train/bee/bee_train_1.png: UnidentifiedImageError" in caplog.text
    built = f"built {tmp_path / 'o'}: {len(out)} images, 1 skipped (listed in skipped.csv)"
    assert built in caplog.text
    skipped = pd.read_csv(tmp_path / "o/skipped.csv")
    assert list(skipped.columns) == ["split", "class", "im_path", "error"]
    assert skipped["im_path"].tolist() == ["raw/train/bee/bee_train_1.png"]  # copies listed once
    err = capsys.readouterr().err
    assert "imagefolder: 100%" in err and "19/19" in err
