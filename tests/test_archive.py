import io
import tarfile
import zipfile

import pytest

from lwise.data.archive import UnsafeArchiveError, extract, is_archive


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
