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


# --- issue 13 item 16: survivors of the mutmut 3.8.1 run over lwise/data/archive.py --------------


def test_archive_exactly_at_the_ratio_limit_passes_and_errors_say_nothing_was_extracted(tmp_path):
    def stored(path, n):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("x.bin", b"\0" * n)
        return path

    overhead = stored(tmp_path / "empty.zip", 0).stat().st_size
    z = stored(tmp_path / "a.zip", overhead)  # half of the archive is the member: ratio 0.5
    assert z.stat().st_size == 2 * overhead
    extract(z, tmp_path / "out", limits=ExtractLimits(max_bytes=10**9, max_ratio=0.5))
    assert (tmp_path / "out/x.bin").stat().st_size == overhead
    for limits in (ExtractLimits(overhead - 1, 1e9), ExtractLimits(10**9, 0.49)):
        with pytest.raises(ArchiveTooLargeError, match="; nothing was extracted$"):
            extract(z, tmp_path / "refused", limits=limits)


def test_one_letter_and_bare_drive_member_names(tmp_path):
    z = tmp_path / "short.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a", "1")  # a one-character name is an ordinary file
    assert extract(z, tmp_path / "out") == ["a"]
    assert (tmp_path / "out/a").read_text() == "1"
    with zipfile.ZipFile(tmp_path / "drive.zip", "w") as zf:
        zf.writestr(zipfile.ZipInfo("C:"), "x")  # a bare drive, Windows' current folder there
    with pytest.raises(UnsafeArchiveError, match="'C:' has an absolute path"):
        extract(tmp_path / "drive.zip", tmp_path / "out2")


def test_tar_device_or_fifo_member_is_refused_by_name(tmp_path):
    t = tmp_path / "dev.tar"
    with tarfile.open(t, "w") as tar:
        tar.addfile(tarfile.TarInfo("ok/fine.txt"), io.BytesIO(b""))
        fifo = tarfile.TarInfo("ok/pipe")
        fifo.type = tarfile.FIFOTYPE
        tar.addfile(fifo)
    with pytest.raises(UnsafeArchiveError, match=r"dev\.tar: member 'ok/pipe' is a device or fifo"):
        extract(t, tmp_path / "out")
    assert not (tmp_path / "out/ok").exists()


def test_extracting_into_an_existing_folder_adds_to_it(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/notes.txt").write_text("kept")
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("x.txt", "zip")
    t = _tar(tmp_path / "b.tar.gz", [{"name": "y.txt", "data": b"tar"}])
    extract(z, tmp_path / "raw")
    extract(t, tmp_path / "raw")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["notes.txt", "x.txt", "y.txt"]


def test_tar_setuid_and_world_writable_bits_are_dropped(tmp_path):
    t = tmp_path / "modes.tar"
    with tarfile.open(t, "w") as tar:
        info = tarfile.TarInfo("bin/tool")
        info.size, info.mode = 2, 0o4777  # setuid, writable by everyone
        tar.addfile(info, io.BytesIO(b"#!"))
    extract(t, tmp_path / "out")
    mode = (tmp_path / "out/bin/tool").stat().st_mode & 0o7777
    assert mode & 0o4000 == 0 and mode & 0o022 == 0 and mode & 0o700 == 0o700


def test_unsupported_archive_names_the_file_and_the_supported_suffixes(tmp_path):
    (tmp_path / "photos.rar").write_bytes(b"Rar!")
    with pytest.raises(ValueError, match=r"photos\.rar: not a supported archive \(\.zip, \.tar, "):
        extract(tmp_path / "photos.rar", tmp_path / "out")
