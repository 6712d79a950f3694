import io
import tarfile
import zipfile

import numpy as np
import pytest

from lwise.data.archive import (
    ArchiveTooLargeError,
    ExtractLimits,
    UnsafeArchiveError,
    extract,
    is_archive,
)


def _tar(path, members, mode="w:gz"):
    with tarfile.open(path, mode) as tar:
        for m in members:
            info = tarfile.TarInfo(m["name"])
            data = m.get("data", b"")
            if "link" in m:
                info.type = m.get("type", tarfile.SYMTYPE)
                info.linkname = m["link"]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_extracts_zip_and_tar_formats(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("data/x.txt", "hello")
    assert extract(z, tmp_path / "oz") == ["data/x.txt"]
    assert (tmp_path / "oz/data/x.txt").read_text() == "hello"
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")):
        t = _tar(tmp_path / f"a{suffix}", [{"name": "d/y.txt", "data": b"yo"}], mode)
        extract(t, tmp_path / f"o{suffix}")
        assert (tmp_path / f"o{suffix}/d/y.txt").read_bytes() == b"yo"


@pytest.mark.parametrize(
    "member, message",
    [
        ({"name": "../evil.txt", "data": b"x"}, "escapes"),
        ({"name": "ok/../../evil.txt", "data": b"x"}, "escapes"),  # '..' after the first part
        ({"name": "/etc/evil.txt", "data": b"x"}, "absolute"),
        ({"name": "ok/link", "link": "../../outside"}, "outside"),
        ({"name": "ok/abs", "link": "/etc/passwd"}, "absolute"),
        ({"name": "ok/hard", "link": "../x", "type": tarfile.LNKTYPE}, "escapes"),
    ],
)
def test_tar_member_outside_target_is_refused(tmp_path, member, message):
    t = _tar(tmp_path / "bad.tar.gz", [{"name": "ok/fine.txt", "data": b"1"}, member])
    with pytest.raises(UnsafeArchiveError, match=message) as err:
        extract(t, tmp_path / "out")
    assert "bad.tar.gz" in str(err.value)
    assert not (tmp_path / "out/ok/fine.txt").exists()  # checked before anything is written
    assert not (tmp_path / "evil.txt").exists()


def test_zip_traversal_is_refused(tmp_path):
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("fine.txt", "1")
        zf.writestr("../../evil.txt", "x")
    with pytest.raises(UnsafeArchiveError, match=r"bad.zip: member '../../evil.txt'"):
        extract(z, tmp_path / "out" / "deep")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out/deep/fine.txt").exists()


def test_link_inside_target_is_allowed(tmp_path):
    t = _tar(
        tmp_path / "ok.tar",
        [{"name": "a/f.txt", "data": b"1"}, {"name": "a/l", "link": "f.txt"}],
        mode="w",
    )
    extract(t, tmp_path / "o")
    assert (tmp_path / "o/a/l").read_bytes() == b"1"


def test_is_archive():
    assert is_archive("x.TAR.GZ") and is_archive("y.zip") and is_archive("z.tgz")
    assert not is_archive("metadata.csv")


def test_zip_member_with_dotdot_after_the_first_part_is_refused_before_writing(tmp_path):
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("fine.txt", "1")
        zf.writestr("ok/../../evil.txt", "x")
    with pytest.raises(UnsafeArchiveError, match="escapes"):
        extract(z, tmp_path / "out" / "deep")
    assert not (tmp_path / "out/deep/fine.txt").exists()
    assert not (tmp_path / "out/evil.txt").exists()


def _zip_bomb(path, megabytes):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("readme.txt", "small")
        zf.writestr("zeros.bin", bytes(megabytes << 20))
    return path


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_expanding_beyond_the_ratio_limit_is_refused_and_writes_nothing(tmp_path, kind):
    if kind == "zip":
        archive = _zip_bomb(tmp_path / "bomb.zip", 8)
    else:
        archive = _tar(tmp_path / "bomb.tar.gz", [{"name": "zeros.bin", "data": bytes(8 << 20)}])
    assert archive.stat().st_size < 100_000  # 8 MiB of zeros compress about 1000-fold
    with pytest.raises(ArchiveTooLargeError, match="max_expansion_ratio"):
        extract(archive, tmp_path / "out", ExtractLimits(max_bytes=1 << 40, max_ratio=100))
    assert not any((tmp_path / "out").rglob("*"))
    # The same archive passes when the user raises the ratio.
    extract(archive, tmp_path / "ok", ExtractLimits(max_bytes=1 << 40, max_ratio=10_000))
    assert (tmp_path / "ok/zeros.bin").stat().st_size == 8 << 20


def test_archive_beyond_the_total_size_limit_is_refused(tmp_path):
    archive = _zip_bomb(tmp_path / "big.zip", 2)
    with pytest.raises(ArchiveTooLargeError, match="max_extracted_gib"):
        extract(archive, tmp_path / "out", ExtractLimits(max_bytes=1 << 20, max_ratio=1e9))


def test_default_limits_pass_an_ordinary_image_archive(tmp_path):
    from lwise.data.download import DownloadConfig

    rng = np.random.default_rng(0)
    archive = _tar(tmp_path / "images.tar.gz", [{"name": "a.jpg", "data": rng.bytes(50_000)}])
    extract(archive, tmp_path / "out", DownloadConfig.from_config().limits)
    assert (tmp_path / "out/a.jpg").stat().st_size == 50_000


# --- issue 13: mutants that survived the mutation run of lwise/data/archive.py ------------------


@pytest.mark.parametrize(
    "name, message",
    [
        ("ok\\..\\..\\evil.txt", "escapes"),  # Windows separators count as separators
        ("\\evil.txt", "absolute"),
        ("C:evil.txt", "absolute"),  # a drive letter
        ("C:\\evil.txt", "absolute"),
    ],
)
def test_zip_member_names_in_windows_form_are_refused(tmp_path, name, message):
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok/fine.txt", "1")
        zf.writestr(zipfile.ZipInfo(name), "x")
    with pytest.raises(UnsafeArchiveError, match=message):
        extract(z, tmp_path / "out")
    assert not (tmp_path / "out/ok/fine.txt").exists()


def test_zip_symlink_is_refused_and_names_the_member(tmp_path):
    z = tmp_path / "link.zip"
    info = zipfile.ZipInfo("ok/link")
    info.external_attr = (0o120777 << 16) | 0  # how zip -y stores a symlink
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok/fine.txt", "1")
        zf.writestr(info, "../../outside")
    with pytest.raises(UnsafeArchiveError, match=r"link\.zip: member 'ok/link' is a symlink"):
        extract(z, tmp_path / "out")
    regular = zipfile.ZipInfo("ok/plain.txt")
    regular.external_attr = 0o100644 << 16
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as zf:
        zf.writestr(regular, "fine")
    assert extract(tmp_path / "plain.zip", tmp_path / "out2") == ["ok/plain.txt"]


def test_limits_allow_exactly_the_limit(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("x.bin", b"\0" * 1000)
    assert extract(z, tmp_path / "out", limits=ExtractLimits(max_bytes=1000, max_ratio=1e9))
    with pytest.raises(ArchiveTooLargeError, match="1,000 bytes"):
        extract(z, tmp_path / "out2", limits=ExtractLimits(max_bytes=999, max_ratio=1e9))
    ratio = 1000 / z.stat().st_size
    with pytest.raises(ArchiveTooLargeError, match=rf"would expand to 1,000 \({ratio:.0f}x\)"):
        extract(z, tmp_path / "out4", limits=ExtractLimits(max_bytes=10**9, max_ratio=ratio * 0.99))
