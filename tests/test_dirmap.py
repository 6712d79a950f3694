import pandas as pd
import pytest
from conftest import make_image

from lwise.data import dirmap


def _write(tmp_path, rows, name="dirmap.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _row(split="train", cls="cat", num=0, im="train/cat/a.png", **extra):
    return {"split": split, "class": cls, "class_num": num, "im_path": im, **extra}


def test_valid_dirmap_reads_with_text_classes_and_extra_columns(tmp_path):
    make_image(tmp_path / "train/3/a.png")
    path = _write(tmp_path, [_row(cls="3", num=3, im="train/3/a.png", robust_gt_logit=1.5)])
    df = dirmap.read(path)
    assert df.loc[0, "class"] == "3" and df["class_num"].dtype.kind == "i"
    assert df.loc[0, "robust_gt_logit"] == 1.5


def test_missing_columns_named(tmp_path):
    path = _write(tmp_path, [{"split": "train", "class": "a", "path": "x.png"}])
    with pytest.raises(
        dirmap.DirmapError,
        match=r"(?s)dirmap.csv.*missing required column\(s\) \['class_num', 'im_path'\]",
    ):
        dirmap.read(path)


def test_every_problem_reported_with_line_numbers(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        make_image(tmp_path / name)
    rows = [
        _row(im="a.png"),
        _row(split="training", im="b.png"),  # line 3: unknown split
        _row(cls="dog", num=0, im="c.png"),  # line 4: class_num 0 is both cat and dog
        _row(im="a.png"),  # line 5: duplicate
        _row(cls="cat", im="gone.png"),  # line 6: missing file
    ]
    with pytest.raises(dirmap.DirmapError) as err:
        dirmap.read(_write(tmp_path, rows))
    msg = str(err.value)
    assert "unknown split value(s) ['training']" in msg and "line(s) 3" in msg
    assert "not one-to-one: class_num '0' has class ['cat', 'dog']" in msg
    assert "duplicate 'im_path' at line(s) 2, 5" in msg
    assert "image file(s) missing at line(s) 6" in msg and "gone.png" in msg


def test_non_integer_class_num(tmp_path):
    make_image(tmp_path / "a.png")
    with pytest.raises(dirmap.DirmapError, match="'class_num' is not an integer at line"):
        dirmap.read(_write(tmp_path, [_row(num="x", im="a.png")]))


def test_write_orders_rows_and_columns(tmp_path):
    for n in ("v.png", "t2.png", "t1.png"):
        make_image(tmp_path / n)
    df = pd.DataFrame(
        [
            {"extra": 1, **_row(split="val", im="v.png")},
            {"extra": 2, **_row(cls="dog", num=1, im="t2.png")},
            {"extra": 3, **_row(im="t1.png")},
        ]
    )
    out = dirmap.write(df, tmp_path / "d.csv")
    assert list(out.columns) == ["split", "class", "class_num", "im_path", "extra"]
    assert list(out["im_path"]) == ["t1.png", "t2.png", "v.png"]
    assert pd.read_csv(tmp_path / "d.csv")["extra"].tolist() == [3, 2, 1]


def test_non_utf8_dirmap_names_the_file_and_line(tmp_path):
    path = tmp_path / "dirmap.csv"
    path.write_bytes(b"split,class,class_num,im_path\ntrain,caf\xe9,0,a.png\n")
    with pytest.raises(dirmap.DirmapError, match=r"dirmap.csv: not UTF-8 text.*line 2"):
        dirmap.read(path, check_files=False)


def test_empty_dirmap_file_is_a_clear_error(tmp_path):
    path = tmp_path / "dirmap.csv"
    path.write_bytes(b"")
    with pytest.raises(dirmap.DirmapError, match="dirmap.csv: the file is empty"):
        dirmap.read(path)


def test_header_only_dirmap_is_refused_where_it_is_read(tmp_path):
    path = tmp_path / "dirmap.csv"
    path.write_text("split,class,class_num,im_path\n")
    with pytest.raises(dirmap.DirmapError, match="header but no rows"):
        dirmap.read(path)


def test_existing_image_named_through_dotdot_is_not_reported_missing(tmp_path):
    make_image(tmp_path / "train/cat/a.png")
    path = _write(tmp_path, [_row(im="nothere/../train/cat/a.png")])
    assert dirmap.read(path).loc[0, "im_path"] == "nothere/../train/cat/a.png"


# --- issue 13: mutants that survived the mutation run of lwise/data/dirmap.py ---------------------


def test_images_outside_the_roots_are_refused_with_line_and_path(tmp_path):
    data, elsewhere = tmp_path / "raw", tmp_path / "elsewhere"
    make_image(data / "train/cat/a.png")
    make_image(elsewhere / "b.png")
    rows = [_row(), _row(im="../elsewhere/b.png", cls="dog", num=1)]
    path = _write(data, rows)
    with pytest.raises(
        dirmap.DirmapError,
        match=r"outside the dataset's folders at line\(s\) 3, "
        r"e\.g\. '\.\./elsewhere/b\.png'; images must lie under .*raw \(list",
    ):
        dirmap.read(path, roots=[data])
    assert len(dirmap.read(path, roots=[data, elsewhere])) == 2  # a listed root is allowed
    assert len(dirmap.read(path)) == 2  # no roots: no check
    link = data / "train/cat/link.png"  # a link inside raw/ that points outside is outside
    link.symlink_to(elsewhere / "b.png")
    with pytest.raises(dirmap.DirmapError, match=r"line\(s\) 2, e\.g\. 'train/cat/link\.png'"):
        dirmap.read(_write(data, [_row(im="train/cat/link.png")]), roots=[data])


def test_problem_lines_count_the_rest_and_name_both_sides_of_a_clash(tmp_path):
    make_image(tmp_path / "train/cat/a.png")
    rows = [_row(num=1.5, im=f"x{i}.png") for i in range(7)]
    problems = dirmap.problems(pd.DataFrame(rows), None)
    assert any("'class_num' is not an integer at line(s) 2, 3, 4, 5, 6 (+2 more)" in p
               for p in problems)  # fmt: skip
    assert dirmap.problems(pd.DataFrame([_row(im=f"x{i}.png") for i in range(5)]), None) == []
    clash = pd.DataFrame([_row(im="a.png"), _row(cls="dog", num=0, im="b.png"), _row(cls="cat",
                          num=2, im="c.png")])  # fmt: skip
    text = " | ".join(dirmap.problems(clash, None))
    assert "class 'cat' has class_num ['0', '2'] at line(s) 2, 4" in text
    assert "class_num '0' has class ['cat', 'dog'] at line(s) 2, 3" in text


def test_an_empty_class_num_beside_a_filled_one_is_reported_not_a_crash(tmp_path):
    df = pd.DataFrame([_row(im="a.png"), _row(im="b.png", num=None)])
    found = dirmap.problems(df, None)
    assert any("empty 'class_num' at line(s) 3" in p for p in found)


# --- issue 13 item 16: survivors of the mutmut 3.8.1 run over lwise/data/dirmap.py ----------------


def test_six_bad_rows_list_five_lines_and_count_one_more():
    found = dirmap.problems(pd.DataFrame([_row(num="x", im=f"x{i}.png") for i in range(6)]), None)
    assert "'class_num' is not an integer at line(s) 2, 3, 4, 5, 6 (+1 more)" in found


def test_class_num_comes_back_as_the_integers_in_the_file(tmp_path):
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    path = tmp_path / "dirmap.csv"
    path.write_text("split,class,class_num,im_path\ntrain,cat,4.0,a.png\ntrain,dog,7,b.png\n")
    df = dirmap.read(path)
    assert df["class_num"].tolist() == [4, 7] and df["class_num"].dtype.kind == "i"
    assert list(df.columns) == list(dirmap.REQUIRED)


def test_check_files_false_skips_only_the_file_check(tmp_path):
    rows = [_row(im="not/there.png"), _row(cls="dog", num=1, im="nor/here.png")]
    df = dirmap.read(_write(tmp_path, rows), check_files=False)
    assert df["im_path"].tolist() == ["not/there.png", "nor/here.png"]
    out = dirmap.write(pd.DataFrame(rows), tmp_path / "w.csv", check_files=False)
    assert len(out) == 2 and (tmp_path / "w.csv").is_file()
    with pytest.raises(dirmap.DirmapError, match="duplicate 'im_path'"):
        dirmap.read(_write(tmp_path, [_row(im="x.png")] * 2), check_files=False)


def test_write_and_validate_check_files_by_default(tmp_path):
    df = pd.DataFrame([_row(im="gone.png")])
    with pytest.raises(
        dirmap.DirmapError, match=r"(?s)d\.csv: invalid dirmap.*missing at line\(s\) 2"
    ):
        dirmap.write(df, tmp_path / "d.csv")
    assert not (tmp_path / "d.csv").exists()
    with pytest.raises(dirmap.DirmapError, match="missing"):
        dirmap.validate(df, tmp_path / "d.csv")


def test_write_creates_missing_parent_folders(tmp_path):
    make_image(tmp_path / "a.png")
    out = tmp_path / "new/deeper/d.csv"
    dirmap.write(pd.DataFrame([_row(im="../../a.png")]), out)
    assert pd.read_csv(out)["im_path"].tolist() == ["../../a.png"]


def test_every_problem_is_a_bullet_on_its_own_line(tmp_path):
    rows = [_row(split="training", im="a.png"), _row(im="a.png")]
    with pytest.raises(dirmap.DirmapError) as err:
        dirmap.validate(pd.DataFrame(rows), tmp_path / "d.csv", check_files=False)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{tmp_path / 'd.csv'}: invalid dirmap:"
    assert lines[1].startswith("  - unknown split value(s) ['training']")
    assert lines[2] == "  - duplicate 'im_path' at line(s) 2, 3"


def test_non_utf8_byte_is_shown_with_its_own_line_number(tmp_path):
    path = tmp_path / "dirmap.csv"
    path.write_bytes(
        b"split,class,class_num,im_path\ntrain,cat,0,a.png\ntrain,caf\xe9,1,b.png\n"
        b"train,dog,2,c.png\ntrain,eel,3,d.png\n"
    )
    with pytest.raises(
        dirmap.DirmapError,
        match=r"dirmap\.csv: not UTF-8 text: byte b'\\xe9' at line 3; save the CSV as UTF-8$",
    ):
        dirmap.read(path, check_files=False)


def test_malformed_csv_and_missing_file_name_the_path(tmp_path):
    path = tmp_path / "dirmap.csv"
    path.write_text('split,class,class_num,im_path\ntrain,"cat,0,a.png\n')
    with pytest.raises(dirmap.DirmapError, match=r"dirmap\.csv: not a valid CSV: .*EOF"):
        dirmap.read(path, check_files=False)
    with pytest.raises(dirmap.DirmapError, match=r"nothere\.csv: dirmap not found$"):
        dirmap.read(tmp_path / "nothere.csv")


def test_outside_error_lists_every_root_and_the_config_key(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_image(tmp_path / "c/x.png")
    a.mkdir()
    path = _write(a, [_row(im="../c/x.png")])
    with pytest.raises(dirmap.DirmapError) as err:
        dirmap.read(path, roots=[a, b])
    assert str(err.value).endswith(
        f"images must lie under {a}, {b} (list other folders in the dataset's 'image_roots')"
    )


def test_relative_to_expresses_paths_from_the_folder_with_slashes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = pd.Series([str(tmp_path / "raw/cat/a.png"), "raw/dog/b.png", str(tmp_path / "c.png")])
    out = dirmap.relative_to(paths, tmp_path / "raw")
    assert out.tolist() == ["cat/a.png", "dog/b.png", "../c.png"]
    assert dirmap.relative_to(paths, "raw").tolist() == out.tolist()  # a cwd-relative folder
